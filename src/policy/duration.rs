//! Gateway API durations (GEP-2257).

use std::time::Duration;

/// Parses a Gateway API duration (GEP-2257): one to four components, each one to five decimal
/// digits followed by `h`, `m`, `s` or `ms`, summed (`1h30m`, `10s`, `500ms`).
///
/// Returns `None` for anything else: `0` (no unit), floats, negatives, `d`, `us`, spaces.
///
/// ```
/// use std::time::Duration;
/// use tower_session_persistence::policy::parse_duration;
///
/// assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
/// assert_eq!(parse_duration("1.5h"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut components = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 5 {
            return None;
        }
        // At most five digits: always fits in a u64.
        let value: u64 = text[start..i].parse().ok()?;
        let unit = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                Duration::from_millis(value)
            }
            (Some(b'h'), _) => {
                i += 1;
                Duration::from_secs(value * 3600)
            }
            (Some(b'm'), _) => {
                i += 1;
                Duration::from_secs(value * 60)
            }
            (Some(b's'), _) => {
                i += 1;
                Duration::from_secs(value)
            }
            _ => return None,
        };
        total += unit;
        components += 1;
        if components > 4 {
            return None;
        }
    }
    (components > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_gep_examples() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h2h20m10m"), Some(Duration::from_secs(3 * 3600 + 1800)));
        assert_eq!(parse_duration("99999s"), Some(Duration::from_secs(99999)));
        assert_eq!(parse_duration("1m1ms"), Some(Duration::from_millis(60_001)));
    }

    #[test]
    fn rejects_what_the_gep_forbids() {
        for bad in [
            "",
            "0",
            "1",
            "1d",
            "1us",
            "-1s",
            "1.5h",
            "100000s",
            "1h1h1h1h1h",
            " 1h",
            "1h ",
            "h",
            "1 h",
            "1H",
            "１s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
