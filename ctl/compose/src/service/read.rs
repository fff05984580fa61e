//! Reading compose values: a scalar as a string (with interpolation), lists, booleans,
//! integers, mappings, and sizes in MiB; each failure names the compose path and position.

use super::{Cx, R};
use crate::values::{self, shorten};
use crate::yaml::{Key, Kind, Mark, Node};
use crate::ServiceError;

pub(crate) fn err(path: &str, mark: Mark, message: impl Into<String>) -> ServiceError {
    ServiceError {
        path: path.to_owned(),
        mark: Some(mark),
        message: message.into(),
    }
}

/// A scalar's text with Compose interpolation applied; `None` for null, or when the value
/// depends on interpolation (a finding says so). A list or mapping is an error.
pub(crate) fn string(cx: &mut Cx, path: &str, v: &Node) -> R<Option<String>> {
    match &v.kind {
        _ if v.is_null() => Ok(None),
        Kind::Scalar { text, .. } => match values::interpolate(text) {
            Ok(s) => Ok(Some(s)),
            Err(why) => {
                cx.drop(path.to_owned(), v.mark, why);
                Ok(None)
            }
        },
        _ => Err(err(
            path,
            v.mark,
            format!("is {}; a string is expected", v.describe()),
        )),
    }
}

/// A list of strings (each element as [`string`]); `None` if any element is not carried.
pub(crate) fn string_list(cx: &mut Cx, path: &str, v: &Node) -> R<Option<Vec<String>>> {
    let Kind::Seq(items) = &v.kind else {
        return Err(err(
            path,
            v.mark,
            format!("is {}; a list of strings is expected", v.describe()),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match string(cx, &format!("{path}[{i}]"), item)? {
            Some(s) => out.push(s),
            None if item.is_null() => {
                return Err(err(
                    &format!("{path}[{i}]"),
                    item.mark,
                    "is null; a string is expected",
                ))
            }
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

pub(crate) fn boolean(path: &str, v: &Node) -> R<bool> {
    match &v.kind {
        Kind::Scalar { text, .. } => match text.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            _ => Err(err(
                path,
                v.mark,
                format!("{:?} is not true or false", shorten(text)),
            )),
        },
        _ => Err(err(
            path,
            v.mark,
            format!("is {}; true or false is expected", v.describe()),
        )),
    }
}

pub(crate) fn integer(path: &str, v: &Node) -> R<i64> {
    match &v.kind {
        Kind::Scalar { text, .. } => text.trim().parse::<i64>().map_err(|_| {
            err(
                path,
                v.mark,
                format!("{:?} is not a whole number", shorten(text)),
            )
        }),
        _ => Err(err(
            path,
            v.mark,
            format!("is {}; a number is expected", v.describe()),
        )),
    }
}

/// The mapping's entries, or an error naming what it is instead.
pub(crate) fn mapping<'n>(path: &str, v: &'n Node) -> R<&'n [(Key, Node)]> {
    v.as_map().ok_or_else(|| {
        err(
            path,
            v.mark,
            format!("is {}; a mapping is expected", v.describe()),
        )
    })
}

/// Bytes as whole MiB, rounded up (with a note when not exact).
pub(crate) fn mib(cx: &mut Cx, path: &str, mark: Mark, bytes: u128) -> R<u32> {
    let m = bytes.div_ceil(1 << 20);
    if bytes % (1 << 20) != 0 {
        cx.note(path.to_owned(), mark, format!("rounded up to {m} MiB"));
    }
    u32::try_from(m).map_err(|_| err(path, mark, format!("{m} MiB is too large")))
}
