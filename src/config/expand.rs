//! `${VAR}` references in the native configuration file, expanded from the environment the
//! loader was given (never from the process environment: callers pass it in as a map).
//!
//! - `${NAME}` is the value of `NAME`; a variable that is not set is an error naming the file,
//!   the line, the column and the variable. `${NAME:-default}` uses `default` when `NAME` is unset
//!   or empty. `$${` is a literal `${`. Names are `[A-Za-z_][A-Za-z0-9_]*`.
//! - The text is expanded before it is parsed, so a value must not change how the file reads:
//!   a reference that is the whole of a quoted scalar (`"${SECRET}"`, or `'${SECRET}'` in YAML)
//!   takes any value, escaped for those quotes; anywhere else a value may hold no quote,
//!   backslash, `#`, `,`, bracket, brace, YAML indicator or `: `. A line break or another
//!   control character is refused everywhere.
//! - In YAML, lines whose first non-blank character is `#` (comments) are left as they are.
//!
//! Called by `config::file::load` before parsing. Positions that the parser reports in the
//! expanded text are mapped back to the file as written with [`Expanded::original`].

use std::collections::HashMap;

use super::keys::Position;

/// The expanded text, the variables it used, and where its columns moved.
#[derive(Debug, Default)]
pub struct Expanded {
    pub text: String,
    /// Names of the variables referred to, in order of first use.
    pub referenced: Vec<String>,
    /// Where the columns moved, for positions found later in `text` (the inline RBAC section's
    /// problems are placed after loading).
    pub shifts: Shifts,
}

/// Per replaced reference: line, expanded start and end column, written start and end column
/// (1-based, end exclusive), in text order. Empty: the text is as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shifts(Vec<Shift>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shift {
    line: usize,
    expanded: (usize, usize),
    written: (usize, usize),
}

impl Expanded {
    /// The position in the file as written of `position` in the expanded text.
    pub fn original(&self, position: Position) -> Position {
        self.shifts.original(position)
    }
}

impl Shifts {
    /// The position in the file as written of `position` in the expanded text.
    pub fn original(&self, (line, column): Position) -> Position {
        let mut written = column;
        for shift in self.0.iter().filter(|s| s.line == line) {
            if column >= shift.expanded.1 {
                written = written + (shift.written.1 - shift.written.0)
                    - (shift.expanded.1 - shift.expanded.0);
            } else if column >= shift.expanded.0 {
                // Inside a replaced value: the reference itself.
                return (line, shift.written.0);
            }
        }
        (line, written)
    }
}

/// Expands every reference of `text`; `label` names the file in errors, which are all
/// returned at once.
pub fn expand(
    text: &str,
    vars: &HashMap<String, String>,
    label: &str,
    yaml: bool,
) -> Result<Expanded, Vec<String>> {
    let mut out = Expanded {
        text: String::with_capacity(text.len()),
        ..Expanded::default()
    };
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if yaml && line.trim_start().starts_with('#') {
            out.text.push_str(line);
            continue;
        }
        expand_line(line, number, vars, label, &mut out, &mut problems);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn expand_line(
    line: &str,
    number: usize,
    vars: &HashMap<String, String>,
    label: &str,
    out: &mut Expanded,
    problems: &mut Vec<String>,
) {
    // Columns count characters, as the parsers' do; `written` and `expanded` are 1-based.
    let mut expanded_column = 1usize;
    let mut rest = line;
    let mut written_column = 1usize;
    while let Some(at) = rest.find('$') {
        let (before, from_dollar) = rest.split_at(at);
        out.text.push_str(before);
        let advance = before.chars().count();
        written_column += advance;
        expanded_column += advance;
        if let Some(after) = from_dollar.strip_prefix("$${") {
            out.text.push_str("${");
            out.shifts.0.push(Shift {
                line: number,
                expanded: (expanded_column, expanded_column + 2),
                written: (written_column, written_column + 3),
            });
            written_column += 3;
            expanded_column += 2;
            rest = after;
            continue;
        }
        let Some(body) = from_dollar.strip_prefix("${") else {
            out.text.push('$');
            written_column += 1;
            expanded_column += 1;
            rest = from_dollar.get(1..).unwrap_or_default();
            continue;
        };
        let place = format!("{label}:{number}:{written_column}");
        let Some((inner, tail)) = body.split_once('}') else {
            problems.push(format!(
                "{place}: \"${{\" is not closed on this line: write ${{NAME}} or ${{NAME:-default}}, or $${{ for a literal ${{"
            ));
            out.text.push_str(from_dollar);
            return;
        };
        // `${`, what is inside and `}`, counted in bytes: always a character boundary.
        let reference = from_dollar.get(..inner.len() + 3).unwrap_or(from_dollar);
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let value = if !is_name(name) {
            problems.push(format!(
                "{place}: {reference}: \"{name}\" is not a variable name (letters, digits and _, not starting with a digit)"
            ));
            None
        } else {
            if !out.referenced.iter().any(|n| n == name) {
                out.referenced.push(name.to_owned());
            }
            match (vars.get(name), default) {
                (Some(value), Some(default)) if value.is_empty() => Some(default),
                (Some(value), _) => Some(value.as_str()),
                (None, Some(default)) => Some(default),
                (None, None) => {
                    problems.push(format!(
                        "{place}: {reference}: the variable {name} is not set (${{{name}:-default}} gives a default)"
                    ));
                    None
                }
            }
        };
        let quote = quoted(before, tail);
        let text = value.and_then(|value| match insert(value, quote) {
            Ok(text) => Some(text),
            Err(why) => {
                problems.push(format!("{place}: {reference}: the value of {name} {why}"));
                None
            }
        });
        let text = text.unwrap_or_default();
        let written_len = reference.chars().count();
        let expanded_len = text.chars().count();
        out.text.push_str(&text);
        out.shifts.0.push(Shift {
            line: number,
            expanded: (expanded_column, expanded_column + expanded_len),
            written: (written_column, written_column + written_len),
        });
        written_column += written_len;
        expanded_column += expanded_len;
        rest = tail;
    }
    out.text.push_str(rest);
}

/// The quotes around a reference that is the whole of a quoted scalar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

fn quoted(before: &str, after: &str) -> Quote {
    match (before.chars().last(), after.chars().next()) {
        (Some('"'), Some('"')) => Quote::Double,
        (Some('\''), Some('\'')) => Quote::Single,
        _ => Quote::None,
    }
}

/// The text that replaces a reference, or why the value cannot go there.
fn insert(value: &str, quote: Quote) -> Result<String, String> {
    if value.chars().any(|c| c == '\n' || c == '\r') {
        return Err("has a line break, which would change the file's structure".to_owned());
    }
    if value.chars().any(char::is_control) {
        return Err("has a control character".to_owned());
    }
    match quote {
        // A JSON string's escapes are also YAML's double-quoted escapes.
        Quote::Double => {
            let json = serde_json::Value::from(value).to_string();
            Ok(json
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or_default()
                .to_owned())
        }
        Quote::Single => Ok(value.replace('\'', "''")),
        Quote::None => {
            let syntax = value.contains(|c: char| "\"'\\#,[]{}&*!|>%@`".contains(c))
                || value.contains(": ")
                || value.ends_with(':')
                || value.starts_with(['-', '?', ' ', '\t'])
                || value.ends_with([' ', '\t']);
            if syntax {
                Err("has characters the file would read as syntax (quotes, #, commas, brackets, \": \", a leading - or ?, outer spaces): write the reference alone in double quotes, \"${...}\"".to_owned())
            } else {
                Ok(value.to_owned())
            }
        }
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn yaml(text: &str, pairs: &[(&str, &str)]) -> Result<String, Vec<String>> {
        expand(text, &vars(pairs), "c.yaml", true).map(|e| e.text)
    }

    #[test]
    fn references_defaults_and_escapes() {
        let env = [("A", "x"), ("EMPTY", "")];
        for (text, want) in [
            ("k: ${A}", "k: x"),
            ("k: a${A}b${A}", "k: axbx"),
            ("k: ${B:-d:1}", "k: d:1"),
            ("k: ${EMPTY:-d}", "k: d"),
            ("k: ${EMPTY}", "k: "),
            ("k: $${A}", "k: ${A}"),
            ("k: $$${A}", "k: $${A}"),
            ("k: $A $ {A}", "k: $A $ {A}"),
            (
                "  # ${UNSET} in a comment\nk: 1",
                "  # ${UNSET} in a comment\nk: 1",
            ),
        ] {
            assert_eq!(yaml(text, &env).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn values_are_escaped_for_their_quotes_or_refused() {
        let env = [("V", "a \"b\" #c\\ 'd'")];
        assert_eq!(
            yaml("k: \"${V}\"", &env).as_deref(),
            Ok("k: \"a \\\"b\\\" #c\\\\ 'd'\"")
        );
        assert_eq!(
            yaml("k: '${V}'", &env).as_deref(),
            Ok("k: 'a \"b\" #c\\ ''d'''")
        );
        for value in ["a #b", "a: b", "{x}", "a,b", "-a", "x\"", "a\\b", " a"] {
            let errors = yaml("k: ${V}", &[("V", value)]).expect_err(value);
            assert!(
                errors[0].starts_with("c.yaml:1:4: ${V}: the value of V has characters"),
                "{value}: {errors:?}"
            );
        }
        let errors = yaml("k: \"${V}\"", &[("V", "a\nb: 1")]).expect_err("line break");
        assert!(errors[0].contains("line break"), "{errors:?}");
    }

    #[test]
    fn every_problem_names_its_place_and_variable() {
        let errors = yaml(
            "a: ${UNSET}\nb: x ${1BAD} ${OK}\nc: ${OPEN\n",
            &[("OK", "1")],
        )
        .expect_err("problems");
        assert_eq!(
            errors,
            [
                "c.yaml:1:4: ${UNSET}: the variable UNSET is not set (${UNSET:-default} gives a default)",
                "c.yaml:2:6: ${1BAD}: \"1BAD\" is not a variable name (letters, digits and _, not starting with a digit)",
                "c.yaml:3:4: \"${\" is not closed on this line: write ${NAME} or ${NAME:-default}, or $${ for a literal ${",
            ]
        );
    }

    #[test]
    fn positions_map_back_to_the_file_as_written() {
        let expanded = expand(
            "a: ${LONG}, b: 1, c: ${S} d\nx: 1\n",
            &vars(&[("LONG", "0123456789"), ("S", "")]),
            "c.yaml",
            true,
        )
        .expect("valid");
        assert_eq!(expanded.text, "a: 0123456789, b: 1, c:  d\nx: 1\n");
        assert_eq!(
            expanded.original((1, 16)),
            (1, 13),
            "b after a longer value"
        );
        assert_eq!(expanded.original((1, 8)), (1, 4), "inside the value");
        assert_eq!(
            expanded.original((1, 26)),
            (1, 27),
            "d after an empty value"
        );
        assert_eq!(expanded.original((2, 1)), (2, 1));
        assert_eq!(expanded.referenced, ["LONG", "S"]);
    }
}
