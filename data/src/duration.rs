//! Durations as people type them: `10d`, `12h`, `30m`, `90s`, `2w`, or `0`, shared by chd's
//! settings (`tombstone_grace`) and chctl (`quarantine purge --older-than`).

use std::time::Duration;

/// Parses a whole number with one unit (s, m, h, d, w), or `0`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration like 10d, 12h, 30m, 90s or 0");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).filter(|&i| i > 0).ok_or_else(err)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(err()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(err)
}

/// The shortest exact form [`parse`] reads back (`864000s` is `10d`).
pub fn render(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)] {
        if s > 0 && s % n == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    if s == 0 {
        "0".into()
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_render_back() {
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "7", "d", "7x", "-1d", "1.5h", "99999999999999999999d", "1d2h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        for s in ["10d", "2w", "12h", "90s", "0", "45m"] {
            assert_eq!(render(parse(s).unwrap()), s);
        }
    }
}
