//! Decoding JSON and TOML documents into typed values, and the errors that say where a
//! document is wrong: file, line, column, field.

use std::fmt;

/// Why a manifest was rejected: where (file, line, column), which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(src) = &self.source_name {
            write!(f, "{src}: ")?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl DecodeError {
    /// An error about the whole document (no line or field), e.g. "cannot read".
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            source_name: None,
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error about one field, with no position (e.g. a JSON document's semantic check).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::whole(message)
        }
    }

    /// Attaches the file or key name the document came from.
    pub fn with_source(mut self, name: impl Into<String>) -> Self {
        self.source_name = Some(name.into());
        self
    }
}

/// Decodes any JSON document, turning errors into a [`DecodeError`] with line, column and the
/// field's path.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        DecodeError {
            source_name: None,
            line: Some(inner.line()),
            column: Some(inner.column()),
            // "." is serde_path_to_error's name for the document root.
            field: unknown_or_missing_field(&inner.to_string())
                .or_else(|| (path != ".").then_some(path)),
            message: inner.to_string(),
        }
    })
}

/// Decodes any TOML document, turning errors into a [`DecodeError`] with line, column and field.
pub fn decode_toml<T: serde::de::DeserializeOwned>(src: &str) -> Result<T, DecodeError> {
    toml::from_str(src).map_err(|e| toml_error(src, &e))
}

/// A [`DecodeError`] for a semantic problem with `field` (dotted path, e.g. `init[1].name` or
/// `modules.watchdog.device`), located in TOML source `src` by its table headers.
pub fn located_error(src: &str, field: String, message: String) -> DecodeError {
    let (line, column) = locate_toml_field(src, &field).unzip();
    DecodeError {
        source_name: None,
        line,
        column,
        field: Some(field),
        message,
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
        source_name: None,
        line,
        column,
        field,
        message,
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
