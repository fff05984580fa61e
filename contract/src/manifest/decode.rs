//! Decoding JSON and TOML documents into typed values, and the errors that say where a
//! document is wrong: file, line, column, field.

use std::cell::RefCell;
use std::fmt;

use crate::strict::{check_shape, read_shape, Shape};
use crate::text::bound;

/// Why a manifest was rejected: where (file, line, column), which field, and what is wrong.
/// Serialisable, so a refusal can be kept (the agent caches it in place of the document).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct DecodeError {
    /// The file or key the document came from, when known.
    pub source_name: Option<String>,
    /// 1-based line, when the format has lines.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted path of the offending field, when known (e.g. `container.image`).
    pub field: Option<String>,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for DecodeError {
    /// `[source: ][line L, column C: ]field `F`: message`, or `the whole document: message`
    /// when no field is named. Every part is bounded, so the line stays short whatever the
    /// document held.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(src) = &self.source_name {
            write!(f, "{}: ", bound(src, MAX_SOURCE_BYTES + NOTE_BYTES))?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        match &self.field {
            Some(field) => write!(
                f,
                "field `{}`: ",
                bound(field, MAX_FIELD_BYTES + NOTE_BYTES)
            )?,
            None => f.write_str("the whole document: ")?,
        }
        f.write_str(&bound(&self.message, MAX_REASON_BYTES + NOTE_BYTES))
    }
}

/// Bytes of a source name (file or key) in a message.
const MAX_SOURCE_BYTES: usize = 96;
/// Bytes of a field path in a message (paths hold document keys, which can be long).
const MAX_FIELD_BYTES: usize = 64;
/// Bytes of the reason in a message (parsers' messages may quote the bad value).
const MAX_REASON_BYTES: usize = 128;
/// What `… (N bytes)` adds to a bounded part: [`Display`](fmt::Display) bounds again (for
/// errors built field by field) without cutting what a constructor already bounded.
const NOTE_BYTES: usize = 32;

impl DecodeError {
    /// An error about the whole document (no line or field), e.g. "cannot read".
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            source_name: None,
            line: None,
            column: None,
            field: None,
            message: bound(&message.into(), MAX_REASON_BYTES).into_owned(),
        }
    }

    /// An error about one field, with no position (e.g. a JSON document's semantic check).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(bound(&field.into(), MAX_FIELD_BYTES).into_owned()),
            ..Self::whole(message)
        }
    }

    /// An error about `path`, or about the whole document when `path` is empty.
    pub(crate) fn at(path: String, message: impl Into<String>) -> Self {
        if path.is_empty() {
            Self::whole(message)
        } else {
            Self::field(path, message)
        }
    }

    /// The whole document is larger than `limit` bytes.
    pub fn too_large(len: usize, limit: usize) -> Self {
        Self::whole(format!("{len} bytes; the limit is {limit}"))
    }

    /// The whole document is not UTF-8 text.
    pub fn not_utf8(e: &std::str::Utf8Error) -> Self {
        Self::whole(format!(
            "not UTF-8 text (first bad byte at offset {})",
            e.valid_up_to()
        ))
    }

    /// Attaches the file or key name the document came from.
    pub fn with_source(mut self, name: impl Into<String>) -> Self {
        self.source_name = Some(bound(&name.into(), MAX_SOURCE_BYTES).into_owned());
        self
    }

    /// What the refusal is about: the field's dotted path, or `None` for the whole document.
    pub fn subject(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

/// Decodes a JSON document strictly, turning errors into a [`DecodeError`] with line,
/// column and the field's path. Refused besides what the type refuses: content after the
/// document (whitespace is fine), a duplicate key in any object, and a list where the type
/// has a struct (serde's derive would take the fields by position).
pub(crate) fn decode_json<T>(bytes: &[u8]) -> Result<T, DecodeError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let failed_at = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let shape = read_shape(&mut de, &failed_at)
        .and_then(|shape| de.end().map(|()| shape))
        .map_err(|e| json_error(&e, failed_at.take().unwrap_or_default()))?;
    let tree: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| json_error(&e, String::new()))?;
    let value: T = typed(tree).map_err(|(path, e)| json_error(&e, path))?;
    check_decoded_shape(&shape, &value)?;
    Ok(value)
}

/// The typed value of a parsed tree, or the failing field's path and serde's error.
///
/// Every document, JSON or TOML, reaches its type through this one function, from a
/// `serde_json::Value`: each type's `Deserialize` is instantiated once, for this
/// deserializer, instead of once per parser (measured in issue 17: the TOML and JSON
/// instantiations of the manifest's container fields cost the agent about 250 KB). A type
/// error found here has no line of its own; TOML documents are located by field path.
fn typed<T: serde::de::DeserializeOwned>(
    tree: serde_json::Value,
) -> Result<T, (String, serde_json::Error)> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        // "." is serde_path_to_error's name for the document root.
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner())
    })
}

/// Refuses a document whose lists stand where `value` has structs (see [`check_shape`]).
fn check_decoded_shape<T: serde::Serialize>(shape: &Shape, value: &T) -> Result<(), DecodeError> {
    // Plain owned data with string keys always serialises.
    let v = serde_json::to_value(value)
        .map_err(|e| DecodeError::whole(format!("cannot re-encode: {e}")))?;
    check_shape(shape, &v).map_err(|(path, message)| DecodeError::at(path, message))
}

fn json_error(e: &serde_json::Error, path: String) -> DecodeError {
    let full = e.to_string();
    // serde_json appends " at line L column C"; the position has its own fields.
    let message = match full.rfind(" at line ") {
        Some(i) if e.line() > 0 => &full[..i],
        _ => &full,
    };
    let field = unknown_or_missing_field(message).unwrap_or(path);
    let mut err = DecodeError::at(field, message);
    if e.line() > 0 {
        err.line = Some(e.line());
        err.column = Some(e.column());
    }
    err
}

/// A document of the contract with its own size cap and semantic checks, decoded the same way
/// from TOML (the local plane's files) and JSON (the network format).
pub(crate) trait Document: serde::de::DeserializeOwned + serde::Serialize {
    /// Largest document accepted, in bytes; anything bigger is refused before parsing.
    const MAX_BYTES: usize;
    /// Semantic checks serde cannot express; returns (field path, message).
    fn validate(&self) -> Result<(), (String, String)>;
}

fn check_document_size<T: Document>(len: usize) -> Result<(), DecodeError> {
    if len > T::MAX_BYTES {
        return Err(DecodeError::too_large(len, T::MAX_BYTES));
    }
    Ok(())
}

/// Decodes and validates TOML text; a semantic error is located by its table headers.
pub(crate) fn toml_document<T: Document>(src: &str) -> Result<T, DecodeError> {
    check_document_size::<T>(src.len())?;
    let doc: T = decode_toml_strict(src)?;
    doc.validate()
        .map_err(|(field, message)| located_error(src, field, message))?;
    Ok(doc)
}

/// Decodes and validates raw TOML bytes, refusing non-UTF-8 text.
pub(crate) fn toml_document_bytes<T: Document>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_document_size::<T>(bytes.len())?;
    let src = std::str::from_utf8(bytes).map_err(|e| DecodeError::not_utf8(&e))?;
    toml_document(src)
}

/// Decodes and validates a JSON document.
pub(crate) fn json_document<T: Document>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_document_size::<T>(bytes.len())?;
    let doc: T = decode_json(bytes)?;
    doc.validate()
        .map_err(|(field, message)| DecodeError::field(field, message))?;
    Ok(doc)
}

/// Decodes a TOML document strictly: as [`decode_toml`], and an array where the type has a
/// table (`lifecycle = []`) is refused, located in `src`.
pub(crate) fn decode_toml_strict<T>(src: &str) -> Result<T, DecodeError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    // Parsed untyped, then typed through the one JSON-tree instantiation (see `typed`).
    let table: toml::Table = decode_toml(src)?;
    let tree = serde_json::to_value(&table)
        .map_err(|e| DecodeError::whole(format!("cannot convert the TOML tree: {e}")))?;
    let value: T = typed(tree).map_err(|(path, e)| {
        let message = e.to_string();
        let field = unknown_or_missing_field(&message).unwrap_or(path);
        if field.is_empty() {
            DecodeError::whole(message)
        } else {
            located_error(src, field, message)
        }
    })?;
    let failed_at = RefCell::new(None);
    let shape = toml::Deserializer::parse(src)
        .and_then(|de| read_shape(de, &failed_at))
        .map_err(|e| toml_error(src, &e))?;
    check_decoded_shape(&shape, &value).map_err(|e| match e.field {
        Some(field) => located_error(src, field, e.message),
        None => e,
    })?;
    Ok(value)
}

/// Decodes any TOML document, turning errors into a [`DecodeError`] with line, column and field.
pub fn decode_toml<T: serde::de::DeserializeOwned>(src: &str) -> Result<T, DecodeError> {
    toml::from_str(src).map_err(|e| toml_error(src, &e))
}

/// A [`DecodeError`] for a semantic problem with `field` (dotted path, e.g. `init[1].name` or
/// `modules.watchdog.device`), located in TOML source `src` by its table headers.
pub fn located_error(src: &str, field: String, message: String) -> DecodeError {
    let (line, column) = locate_toml_field(src, &field)
        .or_else(|| locate_array_entry(src, &field))
        .or_else(|| locate_enclosing(src, &field))
        .unzip();
    DecodeError {
        line,
        column,
        ..DecodeError::field(field, message)
    }
}

/// Turns a toml error into line/column plus the key written on that line.
fn toml_error(src: &str, e: &toml::de::Error) -> DecodeError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(src, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    let message = e.message().trim().replace('\n', "; ");
    let field = unknown_or_missing_field(&message).or_else(|| {
        line.and_then(|l| src.lines().nth(l - 1))
            .and_then(key_on_line)
    });
    DecodeError {
        line,
        column,
        ..DecodeError::at(field.unwrap_or_default(), message)
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// serde's "unknown field `x`" / "missing field `x`" messages name the field already.
fn unknown_or_missing_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
}

fn key_on_line(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

/// Finds `field` (a dotted path such as `container.image` or `init[1].name`) in TOML source,
/// by tracking table headers; returns 1-based (line, column) of its key.
fn locate_toml_field(src: &str, field: &str) -> Option<(usize, usize)> {
    let (table, index, key) = split_path(field);
    let mut array_seen: usize = 0;
    let mut in_target = table.is_empty();
    for (n, raw) in src.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let is_table = h.trim() == table;
            if is_table {
                array_seen += 1;
            }
            in_target = is_table && Some(array_seen - 1) == index;
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            in_target = h.trim() == table && index.is_none();
            continue;
        }
        if in_target {
            if let Some(k) = key_on_line(line) {
                if k == key {
                    let col = raw.len() - raw.trim_start().len() + 1;
                    return Some((n + 1, col));
                }
            }
        }
    }
    None
}

/// Where the nearest enclosing part of `field` is written, for a field inside an inline
/// table or array (`resources = { memoryMib = 2 }`, `capAdd = ["X"]`): the key of the
/// inline value, or the `[[table]]` header of an array entry.
fn locate_enclosing(src: &str, field: &str) -> Option<(usize, usize)> {
    let mut f = field;
    loop {
        f = if f.ends_with(']') {
            &f[..f.rfind('[')?]
        } else {
            &f[..f.rfind('.')?]
        };
        if let Some(at) = locate_toml_field(src, f).or_else(|| locate_array_entry(src, f)) {
            return Some(at);
        }
    }
}

/// `container.probes[1]` -> the second `[[container.probes]]` header.
fn locate_array_entry(src: &str, field: &str) -> Option<(usize, usize)> {
    let (table, index) = field.strip_suffix(']')?.rsplit_once('[')?;
    let index: usize = index.parse().ok()?;
    src.lines()
        .enumerate()
        .filter(|(_, raw)| {
            raw.trim()
                .strip_prefix("[[")
                .and_then(|l| l.split("]]").next())
                .is_some_and(|h| h.trim() == table)
        })
        .nth(index)
        .map(|(n, raw)| (n + 1, raw.len() - raw.trim_start().len() + 1))
}

/// `init[1].name` -> ("init", Some(1), "name"); `container.image` -> ("container", None, "image").
fn split_path(field: &str) -> (String, Option<usize>, String) {
    let (table, key) = match field.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", field),
    };
    let (table, index) = match table.split_once('[') {
        Some((t, rest)) => (t, rest.trim_end_matches(']').parse().ok()),
        None => (table, None),
    };
    // `container.env.KEY`: the key lives under [container.env] or inline in [container].
    (table.to_owned(), index, key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_inside_inline_values_are_located_at_their_key() {
        let src = "[container]\nimage = \"a\"\ncapAdd = [\"X\"]\nresources = { memoryMib = 2 }\n\n[[container.probes]]\nexec = { command = [] }\n[[container.probes]]\nexec = { command = [] }\n";
        for (field, at) in [
            ("container.capAdd[0]", (3, 1)),
            ("container.resources.memoryMib", (4, 1)),
            ("container.probes[1].exec.command", (9, 1)),
            ("container.probes[1]", (8, 1)),
        ] {
            let e = located_error(src, field.into(), "bad".into());
            assert_eq!((e.line, e.column), (Some(at.0), Some(at.1)), "{field}");
        }
        let e = located_error(src, "nowhere.x".into(), "bad".into());
        assert_eq!(e.line, None);
    }
}
