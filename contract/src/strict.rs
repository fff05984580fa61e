//! Strict document shape: what serde's derive lets through and a wire document must not.
//!
//! serde's derived `Deserialize` for a struct accepts a sequence as well as a map (fields by
//! position), and a map type such as `BTreeMap` keeps the last of two equal keys. A document
//! is therefore read twice: once into a [`Shape`] (lists, maps with their keys, leaves), which
//! refuses duplicate keys, and once into the typed value. The typed value's own serialised
//! shape is then compared with the document's: wherever the value is an object, the document
//! must have had a map, not a list.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::quote;

/// The structure of a parsed document: which nodes are lists, which are maps (with keys).
#[derive(Debug)]
pub(crate) enum Shape {
    /// A string, number, boolean or null.
    Leaf,
    /// A JSON array or TOML array.
    List(Vec<Shape>),
    /// A JSON object or TOML table, keys in document order.
    Map(Vec<(String, Shape)>),
}

/// Reads a [`Shape`] from `de`, refusing duplicate map keys. On an error, `failed_at` holds
/// the dotted path of the innermost node that failed (empty for the document root).
pub(crate) fn read_shape<'de, D: Deserializer<'de>>(
    de: D,
    failed_at: &RefCell<Option<String>>,
) -> Result<Shape, D::Error> {
    ShapeSeed {
        at: At::Root,
        failed_at,
    }
    .deserialize(de)
}

/// Where a node is, as a chain to the root: rendered only when something fails there.
#[derive(Clone, Copy)]
enum At<'p> {
    Root,
    Key(&'p At<'p>, &'p str),
    Index(&'p At<'p>, usize),
}

impl At<'_> {
    fn render(&self) -> String {
        match self {
            At::Root => String::new(),
            At::Key(parent, key) => {
                let mut p = parent.render();
                if !p.is_empty() {
                    p.push('.');
                }
                p.push_str(key);
                p
            }
            At::Index(parent, i) => {
                let mut p = parent.render();
                let _ = write!(p, "[{i}]");
                p
            }
        }
    }
}

/// Maps with more keys than this check duplicates through a set, smaller ones by a scan.
const SCAN_KEYS: usize = 16;

struct ShapeSeed<'a, 'p> {
    at: At<'p>,
    failed_at: &'a RefCell<Option<String>>,
}

impl ShapeSeed<'_, '_> {
    fn fail<E>(&self, at: &At<'_>, e: E) -> E {
        let mut slot = self.failed_at.borrow_mut();
        if slot.is_none() {
            *slot = Some(at.render());
        }
        e
    }
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_, '_> {
    type Value = Shape;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Shape, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ShapeSeed<'_, '_> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_none<E>(self) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Shape, D::Error> {
        de.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Shape, D::Error> {
        de.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        loop {
            let at = At::Index(&self.at, items.len());
            let seed = ShapeSeed {
                at,
                failed_at: self.failed_at,
            };
            match seq.next_element_seed(seed) {
                Ok(Some(s)) => items.push(s),
                Ok(None) => return Ok(Shape::List(items)),
                Err(e) => return Err(self.fail(&at, e)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut entries: Vec<(String, Shape)> = Vec::new();
        let mut seen: Option<BTreeSet<String>> = None;
        loop {
            let key = match map.next_key::<String>() {
                Ok(Some(k)) => k,
                Ok(None) => return Ok(Shape::Map(entries)),
                Err(e) => return Err(self.fail(&self.at, e)),
            };
            let dup = match &mut seen {
                Some(set) => !set.insert(key.clone()),
                None => entries.iter().any(|(k, _)| *k == key),
            };
            let at = At::Key(&self.at, &key);
            if dup {
                let e = de::Error::custom(format_args!(
                    "duplicate key {}; each key may appear once",
                    quote(&key)
                ));
                return Err(self.fail(&at, e));
            }
            if seen.is_none() && entries.len() >= SCAN_KEYS {
                let keys = entries.iter().map(|(k, _)| k.clone());
                seen = Some(keys.chain([key.clone()]).collect());
            }
            let seed = ShapeSeed {
                at,
                failed_at: self.failed_at,
            };
            match map.next_value_seed(seed) {
                Ok(v) => entries.push((key, v)),
                Err(e) => {
                    let e = self.fail(&At::Key(&self.at, &key), e);
                    return Err(e);
                }
            }
        }
    }
}

/// Compares a document's shape with the shape of the value decoded from it: a list where
/// the value has an object (a struct decoded by position) is refused. Returns the dotted
/// path (empty for the whole document) and the message.
pub(crate) fn check_shape(doc: &Shape, value: &serde_json::Value) -> Result<(), (String, String)> {
    walk(doc, value, &mut String::new())
}

fn walk(doc: &Shape, value: &serde_json::Value, path: &mut String) -> Result<(), (String, String)> {
    use serde_json::Value;
    match (doc, value) {
        (Shape::List(_), Value::Object(_)) => Err((
            path.clone(),
            "is a list; a table of named fields is expected here".to_owned(),
        )),
        (Shape::Map(entries), Value::Object(fields)) => {
            for (key, sub) in entries {
                if let Some(v) = fields.get(key) {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    walk(sub, v, path)?;
                    path.truncate(len);
                }
            }
            Ok(())
        }
        (Shape::List(items), Value::Array(values)) => {
            for (i, (sub, v)) in items.iter().zip(values).enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk(sub, v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(json: &str) -> Result<Shape, (Option<String>, String)> {
        let failed = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_str(json);
        read_shape(&mut de, &failed).map_err(|e| (failed.take(), e.to_string()))
    }

    #[test]
    fn duplicate_keys_are_refused_at_their_path() {
        let (at, msg) = shape(r#"{"a":{"b":[{"c":1,"c":2}]}}"#).unwrap_err();
        assert_eq!(at.as_deref(), Some("a.b[0].c"));
        assert!(msg.contains("duplicate key \"c\""), "{msg}");
        shape(r#"{"a":{"c":1},"b":{"c":2}}"#).unwrap();
    }

    #[test]
    fn many_keys_are_checked_through_a_set() {
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":1")).collect();
        shape(&format!("{{{}}}", keys.join(","))).unwrap();
        for dup in [0, 15, 16, 17, 39] {
            let doc = format!("{{{},\"k{dup}\":2}}", keys.join(","));
            let (at, _) = shape(&doc).unwrap_err();
            assert_eq!(at, Some(format!("k{dup}")));
        }
    }

    #[test]
    fn a_list_where_an_object_was_decoded_is_named() {
        let doc = shape(r#"{"a":[1,2],"b":{"c":[[1]]}}"#).unwrap();
        let ok = serde_json::json!({"a":[1,2],"b":{"c":[[1]]}});
        check_shape(&doc, &ok).unwrap();
        let bad = serde_json::json!({"a":[1,2],"b":{"c":[{"x":1}]}});
        assert_eq!(check_shape(&doc, &bad).unwrap_err().0, "b.c[0]");
        let root = shape("[1]").unwrap();
        assert_eq!(
            check_shape(&root, &serde_json::json!({})).unwrap_err().0,
            ""
        );
    }
}
