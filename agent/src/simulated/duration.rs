//! Durations written as Go and Kubernetes write them (`500ms`, `2s`, `1m30s`, `1.5h`), as the
//! simulator's annotations and the command line take them.

use std::time::Duration;

/// Parses a non-negative Go-style duration: one or more `<number><unit>` terms with units
/// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: missing unit (ms, s, m, h) after the number"))?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
        let unit_seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
                ))
            }
        };
        let term = Duration::try_from_secs_f64(value * unit_seconds)
            .map_err(|_| format!("{text:?} is out of range"))?;
        total = total
            .checked_add(term)
            .ok_or_else(|| format!("{text:?} is out of range"))?;
        rest = after;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration(" 250us "), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in ["", "2", "s", "2x", "-1s", "1..5s", "2 s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }
}
