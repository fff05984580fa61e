use std::fmt;

use serde::{Deserialize, Serialize};

/// A device id: `[a-z0-9][a-z0-9-]{0,62}`, safe in NATS subjects, MQTT topics and file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// Why a string is not a valid [`DeviceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// The id is empty.
    #[error("device id is empty")]
    Empty,
    /// The id is longer than 63 characters.
    #[error("device id is {0} characters long; at most 63 are allowed")]
    TooLong(usize),
    /// A machine id is not 32 hexadecimal digits.
    #[error("machine id {} is not 32 hexadecimal digits", crate::quote(.0))]
    BadMachineId(String),
    /// The id contains a character outside `[a-z0-9-]` or starts with `-`.
    #[error(
        "device id {} has {ch:?} at position {pos}; allowed: a-z, 0-9 and '-' (not first)",
        crate::quote(.id)
    )]
    BadChar {
        /// The offending id.
        id: String,
        /// The offending character.
        ch: char,
        /// Its zero-based position.
        pos: usize,
    },
}

impl DeviceId {
    /// Validates `s` as a device id.
    pub fn parse(s: &str) -> Result<Self, DeviceIdError> {
        validate_name(s)
            .map(|()| Self(s.to_owned()))
            .map_err(|e| match e {
                NameError::Empty => DeviceIdError::Empty,
                NameError::TooLong(n) => DeviceIdError::TooLong(n),
                NameError::BadChar { ch, pos } => DeviceIdError::BadChar {
                    id: s.to_owned(),
                    ch,
                    pos,
                },
            })
    }

    /// Derives a device id from `/etc/machine-id` contents (`m-` + the first 16 hex digits).
    pub fn from_machine_id(machine_id: &str) -> Result<Self, DeviceIdError> {
        let hex: String = machine_id.trim().to_ascii_lowercase();
        if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(DeviceIdError::BadMachineId(hex));
        }
        let short: String = hex.chars().take(16).collect();
        Self::parse(&format!("m-{short}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.0
    }
}

pub(crate) enum NameError {
    Empty,
    TooLong(usize),
    BadChar { ch: char, pos: usize },
}

/// The shared naming rule for device ids and deployment names.
pub(crate) fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    let n = s.chars().count();
    if n > 63 {
        return Err(NameError::TooLong(n));
    }
    for (pos, ch) in s.chars().enumerate() {
        let ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || (ch == '-' && pos > 0);
        if !ok {
            return Err(NameError::BadChar { ch, pos });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in ["a", "pi-01", "0abc", &"x".repeat(63)] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_ids_with_reason() {
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::parse(&"x".repeat(64)),
            Err(DeviceIdError::TooLong(64))
        );
        let e = DeviceId::parse("Pi.1").unwrap_err().to_string();
        assert!(e.contains("'P'") && e.contains("position 0"), "{e}");
        assert!(DeviceId::parse("-a").is_err());
        assert!(DeviceId::parse("a.b").is_err(), "dots would split subjects");
        assert!(DeviceId::parse("a>").is_err());
    }

    #[test]
    fn derives_from_machine_id() {
        let d = DeviceId::from_machine_id("0123456789ABCDEF0123456789abcdef\n").unwrap();
        assert_eq!(d.as_str(), "m-0123456789abcdef");
        assert!(matches!(
            DeviceId::from_machine_id(""),
            Err(DeviceIdError::BadMachineId(_))
        ));
        assert!(DeviceId::from_machine_id("uninitialized").is_err());
    }
}
