//! Redis's glob patterns (`stringmatchlen` in `util.c`), for KEYS, SCAN MATCH and CONFIG GET:
//! `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to quote the next byte. Byte-wise, binary-safe.
//!
//! Patterns come from clients: no pattern may panic, hence the lints (the fuzz target
//! `resp_reply` drives the matcher).
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

pub fn matches(pattern: &[u8], s: &[u8]) -> bool {
    // The rest of the pattern and of the string still to match.
    let (mut p, mut i) = (pattern, s);
    // Where to resume after the last `*`: (pattern after it, string from where it matches).
    let mut star: Option<(&[u8], &[u8])> = None;
    loop {
        if let Some((&pc, p_rest)) = p.split_first() {
            let (sc, i_rest) = match i.split_first() {
                Some((&c, rest)) => (Some(c), rest),
                None => (None, i),
            };
            match (pc, sc) {
                (b'*', _) => {
                    let stars = p.iter().take_while(|&&b| b == b'*').count();
                    p = p.get(stars..).unwrap_or_default();
                    star = Some((p, i));
                    continue;
                }
                (b'?', Some(_)) => {
                    (p, i) = (p_rest, i_rest);
                    continue;
                }
                (b'[', Some(c)) => {
                    let (hit, after) = class(p_rest, c);
                    if hit {
                        (p, i) = (after, i_rest);
                        continue;
                    }
                }
                (b'\\', Some(c)) if p_rest.first() == Some(&c) => {
                    (p, i) = (p_rest.get(1..).unwrap_or_default(), i_rest);
                    continue;
                }
                (c, Some(x)) if c == x && !matches!(c, b'?' | b'[') && (c != b'\\' || p_rest.is_empty()) => {
                    (p, i) = (p_rest, i_rest);
                    continue;
                }
                _ => {}
            }
        } else if i.is_empty() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more byte, if any.
        match star {
            Some((sp, [_, si @ ..])) => {
                star = Some((sp, si));
                (p, i) = (sp, si);
            }
            _ => return false,
        }
    }
}

/// Matches `c` against the class `pattern` starts with (just after its `[`). Returns whether it
/// matched and the pattern after the closing `]`; an unterminated class ends the pattern.
fn class(pattern: &[u8], c: u8) -> (bool, &[u8]) {
    let (not, mut p) = match pattern.strip_prefix(b"^") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let mut hit = false;
    loop {
        match p {
            [] => return (hit != not, p),
            [b']', rest @ ..] => return (hit != not, rest),
            [b'\\', x, rest @ ..] => {
                hit |= *x == c;
                p = rest;
            }
            [lo, b'-', hi, rest @ ..] if *hi != b']' => {
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                hit |= (*lo..=*hi).contains(&c);
                p = rest;
            }
            [x, rest @ ..] => {
                hit |= *x == c;
                p = rest;
            }
        }
    }
}

/// The literal prefix of a pattern (before any special byte): every match starts with it.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    pattern.split(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')).next().unwrap_or(pattern)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_cases() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(m("key:*", "key:000012"));
        assert!(!m("key:*", "kex:1"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b", "xxaxxbxx"));
        assert!(m("[abc", "a"));
        assert!(m("save", "save"));
        assert!(!m("sav", "save"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix(b"key:*"), b"key:");
        assert_eq!(literal_prefix(b"k?y"), b"k");
        assert_eq!(literal_prefix(b"plain"), b"plain");
    }
}
