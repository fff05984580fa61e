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
