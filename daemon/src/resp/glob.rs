//! Redis's glob patterns (`stringmatchlen` in `util.c`), for KEYS, SCAN MATCH and CONFIG GET:
//! `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to quote the next byte. Byte-wise, binary-safe.

pub fn matches(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern position after it, string position).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' if i < s.len() => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' if i < s.len() && class(pattern, p + 1, s[i]).0 => {
                    p = class(pattern, p + 1, s[i]).1;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() && i < s.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                c if !matches!(c, b'?' | b'[')
                    && (c != b'\\' || p + 1 == pattern.len())
                    && i < s.len()
                    && c == s[i] =>
                {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more byte, if any.
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches `c` against the class starting at `pattern[start]` (after `[`). Returns whether it
/// matched and the position after the closing `]`; an unterminated class ends the pattern.
fn class(pattern: &[u8], start: usize, c: u8) -> (bool, usize) {
    let mut p = start;
    let not = pattern.get(p) == Some(&b'^');
    if not {
        p += 1;
    }
    let mut hit = false;
    loop {
        match pattern.get(p) {
            None => return (hit != not, p),
            Some(b']') => return (hit != not, p + 1),
            Some(b'\\') if p + 1 < pattern.len() => {
                hit |= pattern[p + 1] == c;
                p += 2;
            }
            Some(&lo) if pattern.get(p + 1) == Some(&b'-') && p + 2 < pattern.len() && pattern[p + 2] != b']' => {
                let hi = pattern[p + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                hit |= (lo..=hi).contains(&c);
                p += 3;
            }
            Some(&x) => {
                hit |= x == c;
                p += 1;
            }
        }
    }
}

/// The literal prefix of a pattern (before any special byte): every match starts with it.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern.iter().position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')).unwrap_or(pattern.len());
    &pattern[..end]
}

#[cfg(test)]
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
