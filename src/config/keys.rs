//! Where the keys of a configuration document are, and which of them are duplicated.
//!
//! serde_json and serde_yaml_ng keep the last of two equal keys in a map (and a derived struct
//! reports a duplicate field without saying where the first one was), so a rule written twice
//! silently replaced the first. This module finds every duplicate key, at any depth, with the
//! line and column of both occurrences:
//!
//! - JSON ([`JsonKeys::scan`]): one pass over text that serde_json has already accepted,
//!   recording every object key with its path; key strings are decoded by serde_json.
//! - YAML ([`yaml_duplicates`]): serde_yaml_ng reads the document, and a visitor that tracks
//!   the keys of each mapping stops at a duplicate; serde_yaml_ng puts the position of the key
//!   being read on that error. One more read finds the first occurrence. The same parser as the
//!   one that loads the file, so the keys are the keys it sees.
//!
//! Called by `config::rules` (auth.json) and `config::file` (the native file). Never fails: a
//! document it cannot read yields no duplicates, and its loader reports the syntax error.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A 1-based line and column.
pub type Position = (usize, usize);

/// One step from the document's root: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path from the root, written `server.grpc_addr` or `identity.sources[0].type`.
pub fn dotted(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// A key that appears twice in the same object or mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The path of the key itself (its parent's path, then the key).
    pub path: Vec<Segment>,
    pub first: Position,
    pub second: Position,
}

impl Duplicate {
    /// `duplicate key "server.grpc_addr" (first at FILE:L:C)`, for a message that starts with
    /// the second occurrence's place; `first` is where the first one is, written `FILE:L:C`.
    pub fn describe(&self, first: &str, path: &[Segment]) -> String {
        format!("duplicate key \"{}\" (first at {first})", dotted(path))
    }
}

/// The first occurrence of every key path of a JSON document, and its duplicates.
#[derive(Debug, Default)]
pub struct JsonKeys {
    first: HashMap<Vec<Segment>, Position>,
    pub duplicates: Vec<Duplicate>,
}

/// A container being scanned.
enum Frame {
    Object {
        /// Keys of this object and where they are.
        seen: HashMap<String, Position>,
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

impl JsonKeys {
    /// Scans `text`, which must be JSON that serde_json accepted.
    pub fn scan(text: &str) -> JsonKeys {
        let mut found = JsonKeys::default();
        let mut frames: Vec<Frame> = Vec::new();
        // The path of the innermost container, and the segment of the value about to start.
        let mut path: Vec<Segment> = Vec::new();
        let mut next: Option<Segment> = None;
        let (mut line, mut column) = (1usize, 0usize);
        let mut chars = text.char_indices();
        while let Some((start, c)) = chars.next() {
            column += 1;
            match c {
                '\n' => {
                    line += 1;
                    column = 0;
                }
                '{' | '[' => {
                    if !frames.is_empty() {
                        // Valid JSON always has one: the key before the value, or the index.
                        let segment = next.take().or_else(|| element(&frames));
                        path.push(segment.unwrap_or(Segment::Index(0)));
                    }
                    frames.push(if c == '{' {
                        Frame::Object {
                            seen: HashMap::new(),
                            expecting_key: true,
                        }
                    } else {
                        Frame::Array { index: 0 }
                    });
                }
                '}' | ']' => {
                    frames.pop();
                    if !frames.is_empty() {
                        path.pop();
                    }
                    next = None;
                }
                ',' => match frames.last_mut() {
                    Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                    Some(Frame::Array { index }) => *index += 1,
                    None => {}
                },
                '"' => {
                    let (key_line, key_column) = (line, column);
                    let mut end = start + 1;
                    let mut escaped = false;
                    for (i, sc) in chars.by_ref() {
                        column += 1;
                        end = i + sc.len_utf8();
                        if escaped {
                            escaped = false;
                        } else if sc == '\\' {
                            escaped = true;
                        } else if sc == '"' {
                            break;
                        }
                    }
                    let Some(Frame::Object {
                        seen,
                        expecting_key: expecting_key @ true,
                    }) = frames.last_mut()
                    else {
                        next = None;
                        continue;
                    };
                    *expecting_key = false;
                    let Some(key) = text
                        .get(start..end)
                        .and_then(|raw| serde_json::from_str::<String>(raw).ok())
                    else {
                        continue;
                    };
                    let mut key_path = path.clone();
                    key_path.push(Segment::Key(key.clone()));
                    let here = (key_line, key_column);
                    match seen.get(&key) {
                        Some(&first) => found.duplicates.push(Duplicate {
                            path: key_path,
                            first,
                            second: here,
                        }),
                        None => {
                            seen.insert(key.clone(), here);
                            found.first.insert(key_path, here);
                        }
                    }
                    next = Some(Segment::Key(key));
                }
                _ => {}
            }
        }
        found
    }

    /// Where the key at `path` (object keys only) first appears.
    pub fn position(&self, path: &[&str]) -> Option<Position> {
        let path: Vec<Segment> = path.iter().map(|k| Segment::Key((*k).to_owned())).collect();
        self.first.get(&path).copied()
    }
}

/// The segment of the next element of the innermost array, if that is where we are.
fn element(frames: &[Frame]) -> Option<Segment> {
    match frames.last() {
        Some(Frame::Array { index }) => Some(Segment::Index(*index)),
        _ => None,
    }
}

/// Every duplicate key of a YAML document (at most [`MAX_DUPLICATES`]), in document order.
pub fn yaml_duplicates(text: &str) -> Vec<Duplicate> {
    let mut duplicates = Vec::new();
    let mut known = HashSet::new();
    while duplicates.len() < MAX_DUPLICATES {
        let Some((second, found)) = yaml_find(text, Target::NextDuplicate(&known)) else {
            break;
        };
        let first_occurrence = Occurrence {
            occurrence: 1,
            ..found.occurrence.clone()
        };
        let Some((first, _)) = yaml_find(text, Target::Exactly(&first_occurrence)) else {
            break;
        };
        known.insert(found.occurrence);
        duplicates.push(Duplicate {
            path: found.path,
            first,
            second,
        });
    }
    duplicates
}

/// Where the key at `path` (keys and indices from the root) first appears in a YAML document
/// (JSON included: YAML reads it), as serde_yaml_ng reports it. One read of the document: for
/// error messages, not for a loop.
pub fn yaml_position(text: &str, path: &[Segment]) -> Option<Position> {
    yaml_find(text, Target::Path(path)).map(|(position, _)| position)
}

/// Past this many, the file has a bigger problem than its duplicates.
pub const MAX_DUPLICATES: usize = 50;

/// The `occurrence`-th appearance of `key` in the `mapping`-th mapping of the document (counted
/// in document order, as the reader enters them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Occurrence {
    mapping: usize,
    key: String,
    occurrence: usize,
}

/// What one read of the document stops at.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The first repeated key not already known.
    NextDuplicate(&'a HashSet<Occurrence>),
    /// This very key.
    Exactly(&'a Occurrence),
    /// The first key at this path.
    Path(&'a [Segment]),
}

struct Found {
    occurrence: Occurrence,
    path: Vec<Segment>,
}

/// State shared by the visitors of one read.
struct Walk<'a> {
    target: Target<'a>,
    mappings: usize,
    found: Option<Found>,
}

/// Reads the document and stops at `target`: the position serde_yaml_ng gives the key.
fn yaml_find(text: &str, target: Target<'_>) -> Option<(Position, Found)> {
    let walk = RefCell::new(Walk {
        target,
        mappings: 0,
        found: None,
    });
    let result = Node {
        walk: &walk,
        path: Vec::new(),
    }
    .deserialize(serde_yaml_ng::Deserializer::from_str(text));
    let error = result.err()?;
    let found = walk.into_inner().found?;
    let location = error.location()?;
    Some(((location.line(), location.column()), found))
}

/// Any node: walks mappings and sequences, ignores scalars.
struct Node<'w, 'a> {
    walk: &'w RefCell<Walk<'a>>,
    path: Vec<Segment>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Marks the error that stops a read at its target; the message is never shown.
const STOP: &str = "stop: key found";

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mapping = {
            let mut walk = self.walk.borrow_mut();
            walk.mappings += 1;
            walk.mappings - 1
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        while let Some(key) = map.next_key_seed(Key {
            walk: self.walk,
            path: &self.path,
            mapping,
            counts: &mut counts,
        })? {
            let mut path = self.path.clone();
            path.push(Segment::Key(key.unwrap_or_default()));
            map.next_value_seed(Node {
                walk: self.walk,
                path,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let mut path = self.path.clone();
            path.push(Segment::Index(index));
            if seq
                .next_element_seed(Node {
                    walk: self.walk,
                    path,
                })?
                .is_none()
            {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): walk the value.
        let (IgnoredAny, variant) = data.variant()?;
        de::VariantAccess::newtype_variant_seed(variant, self)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A mapping key: its text (scalars are compared as written, so `1` and `"1"` are the same
/// key), or `None` for a mapping or sequence used as a key, which is walked like any node.
struct Key<'w, 'a, 'p> {
    walk: &'w RefCell<Walk<'a>>,
    path: &'p [Segment],
    mapping: usize,
    counts: &'p mut HashMap<String, usize>,
}

impl Key<'_, '_, '_> {
    fn scalar<E: de::Error>(self, text: String) -> Result<Option<String>, E> {
        let count = self.counts.entry(text.clone()).or_insert(0);
        *count += 1;
        let occurrence = Occurrence {
            mapping: self.mapping,
            key: text.clone(),
            occurrence: *count,
        };
        let mut walk = self.walk.borrow_mut();
        let stop = match walk.target {
            Target::NextDuplicate(known) => {
                occurrence.occurrence > 1 && !known.contains(&occurrence)
            }
            Target::Exactly(wanted) => *wanted == occurrence,
            Target::Path(wanted) => {
                wanted.len() == self.path.len() + 1
                    && wanted.starts_with(self.path)
                    && wanted.last() == Some(&Segment::Key(text.clone()))
            }
        };
        if !stop {
            return Ok(Some(text));
        }
        let mut path = self.path.to_vec();
        path.push(Segment::Key(text));
        walk.found = Some(Found { occurrence, path });
        Err(E::custom(STOP))
    }
}

impl<'de> DeserializeSeed<'de> for Key<'_, '_, '_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_, '_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        self.scalar(value.to_owned())
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        self.scalar(value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        self.scalar(value.to_string())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        self.scalar(value.to_string())
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Self::Value, E> {
        self.scalar(value.to_string())
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Self::Value, E> {
        self.scalar(value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        self.scalar(value.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar("null".to_owned())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar("null".to_owned())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Node {
            walk: self.walk,
            path: self.path.to_vec(),
        }
        .visit_map(map)
        .map(|()| None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Node {
            walk: self.walk,
            path: self.path.to_vec(),
        }
        .visit_seq(seq)
        .map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_owned())
    }

    #[test]
    fn json_keys_and_their_duplicates_at_any_depth() {
        let text = "{\n  \"a\": { \"x\": [1, {\"y\": 1, \"y\": 2}], \"x\": \"\\\"x\" },\n  \"b\": [[], {\"a\": 1}],\n  \"\\u0061\": 3\n}";
        let keys = JsonKeys::scan(text);
        assert_eq!(keys.position(&["a"]), Some((2, 3)));
        assert_eq!(keys.position(&["a", "x"]), Some((2, 10)));
        assert_eq!(keys.position(&["b"]), Some((3, 3)));
        assert_eq!(
            keys.duplicates,
            [
                Duplicate {
                    path: vec![key("a"), key("x"), Segment::Index(1), key("y")],
                    first: (2, 20),
                    second: (2, 28),
                },
                Duplicate {
                    path: vec![key("a"), key("x")],
                    first: (2, 10),
                    second: (2, 38),
                },
                Duplicate {
                    path: vec![key("a")],
                    first: (2, 3),
                    second: (4, 3),
                },
            ]
        );
        assert_eq!(dotted(&keys.duplicates[0].path), "a.x[1].y");
    }

    #[test]
    fn yaml_duplicates_in_block_and_flow_style() {
        let text = "a: 1\nb:\n  c: { d: 1, d: 2 }\n  e:\n    - f: 1\n      f: 2\n  c: 3\n\"a\": 4\n1: x\n'1': y\n";
        assert_eq!(
            yaml_duplicates(text),
            [
                Duplicate {
                    path: vec![key("b"), key("c"), key("d")],
                    first: (3, 8),
                    second: (3, 14),
                },
                Duplicate {
                    path: vec![key("b"), key("e"), Segment::Index(0), key("f")],
                    first: (5, 7),
                    second: (6, 7),
                },
                Duplicate {
                    path: vec![key("b"), key("c")],
                    first: (3, 3),
                    second: (7, 3),
                },
                Duplicate {
                    path: vec![key("a")],
                    first: (1, 1),
                    second: (8, 1),
                },
                Duplicate {
                    path: vec![key("1")],
                    first: (9, 1),
                    second: (10, 1),
                },
            ]
        );
        assert!(yaml_duplicates("a: 1\nb: [1, {a: 2}]\n").is_empty());
        assert!(
            yaml_duplicates("a: [\n").is_empty(),
            "syntax errors are not ours"
        );
    }
}
