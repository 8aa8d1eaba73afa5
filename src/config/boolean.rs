//! The one boolean parser of the configuration: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`,
//! in any case, for environment variables and for the native file's boolean fields alike.
//!
//! Called by `config::env` (each boolean variable) and, through [`deserialize`] and [`schema`],
//! by the native file's types. Never guesses: any other value is an error naming it.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// The accepted spellings, `true` then `false` for each pair, as written in error messages.
const SPELLINGS: [(&str, &str); 4] = [("true", "false"), ("1", "0"), ("yes", "no"), ("on", "off")];

/// Reads a boolean written `true/false/1/0/yes/no/on/off` in any case, surrounding spaces
/// ignored; the error names the value.
pub fn parse(text: &str) -> Result<bool, String> {
    let word = text.trim();
    for (yes, no) in SPELLINGS {
        if word.eq_ignore_ascii_case(yes) {
            return Ok(true);
        }
        if word.eq_ignore_ascii_case(no) {
            return Ok(false);
        }
    }
    Err(format!(
        "\"{text}\" is not a boolean (true, false, 1, 0, yes, no, on, off)"
    ))
}

/// `deserialize_with` for a boolean field of the native file: a YAML or JSON boolean, the
/// numbers 1 and 0, or a string [`parse`] accepts.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Flag;
    impl Visitor<'_> for Flag {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean (true, false, 1, 0, yes, no, on, off)")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<bool, E> {
            parse(&value.to_string()).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<bool, E> {
            parse(&value.to_string()).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<bool, E> {
            parse(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Flag)
}

/// `schemars(schema_with)` for a field read by [`deserialize`].
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let either = |word: &str| -> String {
        word.chars()
            .map(|c| match (c.to_ascii_lowercase(), c.to_ascii_uppercase()) {
                (lower, upper) if lower != upper => format!("[{upper}{lower}]"),
                _ => c.to_string(),
            })
            .collect()
    };
    let words: Vec<String> = SPELLINGS
        .iter()
        .flat_map(|(yes, no)| [either(yes), either(no)])
        .collect();
    schemars::json_schema!({
        "description": "a boolean; also 1/0, yes/no, on/off in any case",
        "anyOf": [
            { "type": "boolean" },
            { "type": "integer", "enum": [0, 1] },
            { "type": "string", "pattern": format!("^\\s*({})\\s*$", words.join("|")) }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_in_any_case() {
        for word in [
            "true", "TRUE", "True", "1", "yes", "Yes", "on", "ON", " on ",
        ] {
            assert_eq!(parse(word), Ok(true), "{word:?}");
        }
        for word in ["false", "False", "0", "no", "NO", "off", "Off"] {
            assert_eq!(parse(word), Ok(false), "{word:?}");
        }
        for word in ["", "y", "n", "2", "-1", "maybe", "enabled", "tru", "o"] {
            let message = parse(word).expect_err(word);
            assert!(
                message.starts_with(&format!("\"{word}\" is not a boolean")),
                "{message}"
            );
        }
    }

    #[test]
    fn the_schema_pattern_matches_what_parse_accepts() {
        let schema = serde_json::to_value(schema(&mut schemars::SchemaGenerator::default()))
            .expect("schema");
        let pattern = schema["anyOf"][2]["pattern"].as_str().expect("pattern");
        assert!(pattern.contains("[Tt][Rr][Uu][Ee]"), "{pattern}");
        assert!(pattern.contains("|1|0|"), "{pattern}");
        assert!(pattern.contains("[Oo][Ff][Ff]"), "{pattern}");
    }
}
