//! OS upgrade requests: the desired-state document under `<device>.system` and the arguments
//! of the signed `system-upgrade` verb (the same document).

use serde::{Deserialize, Serialize};

use crate::manifest::{
    check_api_version, json_document, toml_document_bytes, DecodeError, Document,
};
use crate::text::argv_problem;
use crate::{quote, API_VERSION};

/// Largest request document accepted, in bytes.
pub const MAX_SYSTEM_UPGRADE_BYTES: usize = 16 * 1024;
/// Command run when a request names none.
pub const DEFAULT_UPGRADE_COMMAND: &str = "apt-get full-upgrade -y";
/// Accepted range of `deadlineSecs`.
pub const DEADLINE_RANGE: std::ops::RangeInclusive<u64> = 60..=86_400;
/// Accepted range of `maxBoots`.
pub const MAX_BOOTS_RANGE: std::ops::RangeInclusive<u32> = 1..=10;

/// One OS upgrade of a device. Idempotent by `id`: a request with an id the device has
/// already run (or is running) starts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SystemUpgrade {
    /// Schema version; must equal [`API_VERSION`].
    pub api_version: String,
    /// Upgrade id: `[A-Za-z0-9._-]{1,64}` (it is written to the boot partition and the
    /// kernel command line).
    pub id: String,
    /// Shell command that upgrades the root file system (run with `/bin/sh -c`); the
    /// module's configured default (normally [`DEFAULT_UPGRADE_COMMAND`]) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Seconds the new system has, per boot, to check in before it is rolled back
    /// (60..=86400); the module's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// Boots of the new system that may fail to reach userspace before it is rolled back
    /// (1..=10); the module's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_boots: Option<u32>,
}

impl Document for SystemUpgrade {
    const MAX_BYTES: usize = MAX_SYSTEM_UPGRADE_BYTES;
    fn validate(&self) -> Result<(), (String, String)> {
        self.check()
    }
}

impl SystemUpgrade {
    /// A request for `id` with every optional field left to the device's defaults.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            id: id.into(),
            command: None,
            deadline_secs: None,
            max_boots: None,
        }
    }

    /// Decodes raw TOML bytes (the local plane's file), refusing non-UTF-8 text.
    pub fn from_toml_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        toml_document_bytes(bytes)
    }

    /// Decodes JSON bytes (the network format and the verb's arguments).
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        json_document(bytes)
    }

    /// Decodes an already parsed JSON value (a command's `args`).
    pub fn from_json_value(v: &serde_json::Value) -> Result<Self, DecodeError> {
        // Re-encoding a parsed value cannot fail; the size check then applies as for bytes.
        Self::from_json_slice(&serde_json::to_vec(v).unwrap_or_default())
    }

    /// Encodes to JSON (the form stored in KV and sent as verb arguments).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn check(&self) -> Result<(), (String, String)> {
        check_api_version(&self.api_version)?;
        validate_upgrade_id(&self.id).map_err(|m| ("id".to_owned(), m))?;
        if let Some(c) = &self.command {
            if c.trim().is_empty() {
                return Err(("command".into(), "must not be empty".into()));
            }
            if c.len() > 4096 {
                return Err((
                    "command".into(),
                    format!("is {} bytes; at most 4096", c.len()),
                ));
            }
            // It becomes the argument of `/bin/sh -c`.
            if let Some(why) = argv_problem(c) {
                return Err(("command".into(), why));
            }
        }
        if let Some(d) = self.deadline_secs {
            if !DEADLINE_RANGE.contains(&d) {
                return Err((
                    "deadlineSecs".into(),
                    format!(
                        "{d} is outside {}..={}",
                        DEADLINE_RANGE.start(),
                        DEADLINE_RANGE.end()
                    ),
                ));
            }
        }
        if let Some(n) = self.max_boots {
            if !MAX_BOOTS_RANGE.contains(&n) {
                return Err((
                    "maxBoots".into(),
                    format!(
                        "{n} is outside {}..={}",
                        MAX_BOOTS_RANGE.start(),
                        MAX_BOOTS_RANGE.end()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks an upgrade id: `[A-Za-z0-9._-]{1,64}`.
pub fn validate_upgrade_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 64 {
        return Err(format!("is {} characters; at most 64", id.len()));
    }
    if let Some((pos, ch)) = id
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{} has {ch:?} at position {pos}; allowed: A-Z, a-z, 0-9, '.', '_', '-'",
            quote(id)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_toml_and_json_with_defaults() {
        let t =
            SystemUpgrade::from_toml_bytes(b"apiVersion = \"fleet/v1\"\nid = \"u-1\"\n").unwrap();
        assert_eq!(t, SystemUpgrade::new("u-1"));
        let j = SystemUpgrade::from_json_slice(
            br#"{"apiVersion":"fleet/v1","id":"2026-11-23.a","command":"true","deadlineSecs":600,"maxBoots":3}"#,
        )
        .unwrap();
        assert_eq!(j.command.as_deref(), Some("true"));
        assert_eq!(SystemUpgrade::from_json_slice(&j.to_json()).unwrap(), j);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"apiVersion":"fleet/v1","id":"a b"}"#, "id"),
            (br#"{"apiVersion":"fleet/v1","id":""}"#, "id"),
            (br#"{"apiVersion":"fleet/v2","id":"a"}"#, "apiVersion"),
            (
                br#"{"apiVersion":"fleet/v1","id":"a","deadlineSecs":5}"#,
                "deadlineSecs",
            ),
            (
                br#"{"apiVersion":"fleet/v1","id":"a","maxBoots":0}"#,
                "maxBoots",
            ),
            (
                br#"{"apiVersion":"fleet/v1","id":"a","command":" "}"#,
                "command",
            ),
            (
                br#"{"apiVersion":"fleet/v1","id":"a","colour":1}"#,
                "colour",
            ),
            (br#"{"apiVersion":"fleet/v1"}"#, "id"),
            (
                br#"{"apiVersion":"fleet/v1","id":"a","maxBoots":"x"}"#,
                "maxBoots",
            ),
        ];
        for (doc, field) in cases {
            let e = SystemUpgrade::from_json_slice(doc).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(*field), "{e}");
        }
        let e = SystemUpgrade::from_toml_bytes(
            b"apiVersion = \"fleet/v1\"\nid = \"a\"\nmaxBoots = 99\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_deref(), e.line),
            (Some("maxBoots"), Some(3)),
            "{e}"
        );
        assert!(SystemUpgrade::from_toml_bytes(&[0xff, 0]).is_err());
        assert!(SystemUpgrade::from_json_slice(&vec![b' '; MAX_SYSTEM_UPGRADE_BYTES + 1]).is_err());
    }
}
