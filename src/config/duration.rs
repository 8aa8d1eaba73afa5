//! Durations in settings: `500ms`, `5s`, `1m`, `1h`, or a bare number of seconds (`10`, `0.5`).

use std::time::Duration;

/// Parses a duration as written in checkpoint's variables. The error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid duration \"{text}\": expected a number such as 500ms, 5s or 1m"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\": \"{number}\" is not a number"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration \"{text}\": unknown unit \"{other}\" (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("invalid duration \"{text}\": out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_spelling() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("10", Duration::from_secs(10)),
            ("0", Duration::ZERO),
            ("0.25", Duration::from_millis(250)),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for text in ["", "s", "5x", "-1", "1.2.3s", "5 minutes", "1e400"] {
            let err = parse(text).expect_err(text);
            assert!(err.starts_with("invalid duration"), "{text}: {err}");
        }
    }
}
