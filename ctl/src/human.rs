//! Sizes and ages as a person reads them in chctl's tables.

pub fn human_age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `n` and the noun, singular for one: "1 record", "2 records".
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A key as a person can read it on a terminal: as it is when every byte is printable ASCII
/// (space included), otherwise quoted with escapes as redis-cli shows it (`"\x00\xff"`), so
/// that a binary key never sends control bytes to the terminal.
pub fn key_text(key: &[u8]) -> String {
    if key.iter().all(|&b| (0x20..0x7f).contains(&b)) && !key.starts_with(b"\"") {
        return String::from_utf8_lossy(key).into_owned();
    }
    let mut s = String::from("\"");
    for &b in key {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            7 => s.push_str("\\a"),
            8 => s.push_str("\\b"),
            0x20..0x7f => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_with_their_number() {
        assert_eq!(count(1, "record"), "1 record");
        assert_eq!(count(0, "record"), "0 records");
        assert_eq!(count(2, "key"), "2 keys");
    }

    #[test]
    fn binary_keys_are_escaped_as_redis_cli_shows_them() {
        assert_eq!(key_text(b"user:1 x"), "user:1 x");
        assert_eq!(key_text(b"\x00\xff"), "\"\\x00\\xff\"");
        assert_eq!(key_text(b"a\"b\\\n\x1b[2J"), "\"a\\\"b\\\\\\n\\x1b[2J\"");
        assert_eq!(key_text("é".as_bytes()), "\"\\xc3\\xa9\"");
        assert_eq!(key_text(b"\"quoted"), "\"\\\"quoted\"");
    }
}
