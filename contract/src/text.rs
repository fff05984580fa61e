//! Bounded text for messages: a refusal quotes a prefix of a bad value and its length, never
//! the whole value, so a hostile document cannot make a status or log line as large as itself.

use std::fmt::Write as _;

/// Characters of a value quoted in a message; longer values are cut and their length named.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Bytes of one status or error message; longer messages are cut with a note.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// `value` as a Rust-style debug-quoted string of at most [`MAX_QUOTED_CHARS`] characters of
/// the original; a longer value is quoted as its prefix followed by `… (N bytes)`.
///
/// ```
/// assert_eq!(fleet_contract::quote("web"), "\"web\"");
/// let long = "x".repeat(1000);
/// assert_eq!(fleet_contract::quote(&long), format!("\"{}\"… (1000 bytes)", "x".repeat(64)));
/// ```
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] bytes (on a character boundary), with
/// `… (message cut, N bytes)` appended when it was longer.
///
/// ```
/// let m = "e".repeat(5000);
/// let cut = fleet_contract::cap_message(&m);
/// assert!(cut.len() <= fleet_contract::MAX_MESSAGE_BYTES);
/// assert!(cut.ends_with("(message cut, 5000 bytes)"));
/// assert_eq!(fleet_contract::cap_message("short"), "short");
/// ```
pub fn cap_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut note = String::new();
    // Writing into a String cannot fail.
    let _ = write!(note, "… (message cut, {} bytes)", message.len());
    let mut cut = MAX_MESSAGE_BYTES.saturating_sub(note.len());
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{note}", &message[..cut])
}

/// `text` as it is when at most `max_bytes` long; otherwise its prefix (cut on a character
/// boundary) followed by `… (N bytes)`. For message parts that are not quoted values, e.g. a
/// parser's message or a field path built from document keys.
pub(crate) fn bound(text: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_bytes {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..cut], text.len()))
}

/// Longest string the kernel takes as one argv element or environment entry
/// (`MAX_ARG_STRLEN`, 32 pages, less the terminating NUL).
pub const MAX_ARG_BYTES: usize = 32 * 4096 - 1;

/// Why `text` cannot become one argv element or environment value of a container process,
/// or `None` when it can. Refused: NUL (the kernel's strings end there, so podman would run
/// something else than the document says), every other control character except tab,
/// newline and carriage return (C0, DEL and C1: they reach podman's argv, its logs and
/// operators' terminals), and more than [`MAX_ARG_BYTES`] bytes. The message never quotes
/// the text: it may be a secret.
pub fn argv_problem(text: &str) -> Option<String> {
    if text.len() > MAX_ARG_BYTES {
        return Some(format!(
            "is {} bytes; one argument or environment entry is at most {MAX_ARG_BYTES}",
            text.len()
        ));
    }
    let (i, c) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))?;
    Some(if c == '\0' {
        format!(
            "has a NUL byte at byte {i}; a process argument or environment value cannot hold one"
        )
    } else {
        format!(
            "has the control character U+{:04X} at byte {i}; only tab, newline and carriage return are allowed",
            u32::from(c)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_on_a_character_boundary() {
        let v = "é".repeat(100);
        let q = quote(&v);
        assert!(
            q.starts_with(&format!("{:?}", "é".repeat(MAX_QUOTED_CHARS))),
            "{q}"
        );
        assert!(q.ends_with("(200 bytes)"), "{q}");
        assert_eq!(
            quote(&"a".repeat(MAX_QUOTED_CHARS)).len(),
            MAX_QUOTED_CHARS + 2
        );
    }

    #[test]
    fn argv_problem_refuses_nul_and_controls_only() {
        for ok in ["", "a b\tc\nd\r", "\u{200b}é", &"x".repeat(MAX_ARG_BYTES)] {
            assert_eq!(argv_problem(ok), None);
        }
        for bad in [
            "a\0b",
            "\u{1b}[31m",
            "\u{7f}",
            "\u{85}",
            &"x".repeat(MAX_ARG_BYTES + 1),
        ] {
            let m = argv_problem(bad).unwrap();
            assert!(m.len() < 120, "{m}");
        }
        assert!(argv_problem("secret\0value").unwrap().contains("NUL"));
        assert!(!argv_problem("secret\0value").unwrap().contains("secret"));
    }

    #[test]
    fn bound_cuts_long_text_only() {
        assert_eq!(bound("abc", 3), "abc");
        assert_eq!(bound("abcd", 3), "abc… (4 bytes)");
        assert_eq!(bound("éé", 3), "é… (4 bytes)");
    }

    #[test]
    fn quote_escapes_control_characters() {
        assert_eq!(quote("a\0b\u{200b}"), "\"a\\0b\\u{200b}\"");
    }

    #[test]
    fn cap_message_bounds_every_length() {
        for n in [
            0,
            1,
            MAX_MESSAGE_BYTES - 1,
            MAX_MESSAGE_BYTES,
            MAX_MESSAGE_BYTES + 1,
            1 << 20,
        ] {
            let m = "ü".repeat(n / 2) + &"x".repeat(n % 2);
            let c = cap_message(&m);
            assert!(c.len() <= MAX_MESSAGE_BYTES, "{n}: {}", c.len());
            assert_eq!(c == m, m.len() <= MAX_MESSAGE_BYTES, "{n}");
        }
    }
}
