//! Agent release signatures (self-upgrade, ARCHITECTURE §6).
//!
//! A release key signs a short statement binding the version to the artifact's SHA-256, not
//! the artifact alone: a correctly signed v1 binary can then never be offered as "v3".
//! The statement is `fleet-agent-release/v1\n<version>\n<sha256 lowercase hex>\n`.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::manifest::{decode_json, DecodeError};
use crate::quote;

/// Largest `<device>.agent` document accepted, in bytes.
pub const MAX_AGENT_RELEASE_BYTES: usize = 16 * 1024;

/// Longest string field of an [`AgentRelease`] (the artifact may be a file path).
const MAX_RELEASE_FIELD_BYTES: usize = 4096;

/// Domain line of the signed statement.
pub const RELEASE_SIGNING_DOMAIN: &str = "fleet-agent-release/v1";

/// What `fleetctl release sign` prints and `fleetctl agent-upgrade` sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSignature {
    /// Agent version the artifact reports (`fleet-agent version`).
    pub version: String,
    /// SHA-256 of the artifact, lowercase hex.
    pub sha256: String,
    /// Name of the release key (a device's `[[modules.self-upgrade.release_keys]]` name).
    pub key: String,
    /// Base64 Ed25519 signature over [`release_statement`].
    pub signature: String,
}

/// The desired-state document `<device>.agent` (KV `fleet-desired`): the agent release this
/// device should run. The same fields as the `agent-upgrade` command, plus `apiVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentRelease {
    /// Always [`crate::API_VERSION`].
    pub api_version: String,
    /// Target version.
    pub version: String,
    /// `nats-object://<name>` or `file:///<path>`.
    pub artifact: String,
    /// SHA-256 pin, lowercase hex.
    pub sha256: String,
    /// Release key name.
    pub key: String,
    /// Base64 Ed25519 signature over [`release_statement`].
    pub signature: String,
}

impl AgentRelease {
    /// Decodes the JSON document strictly (see [`crate::DecodeError`]); the error names the
    /// field or says the whole document.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, String> {
        Self::decode(bytes).map_err(|e| e.to_string())
    }

    /// As [`AgentRelease::from_json_slice`], with the structured error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_AGENT_RELEASE_BYTES {
            return Err(DecodeError::too_large(bytes.len(), MAX_AGENT_RELEASE_BYTES));
        }
        let doc: Self = decode_json(bytes)?;
        if doc.api_version != crate::API_VERSION {
            return Err(DecodeError::field(
                "apiVersion",
                format!(
                    "{} is not {:?}",
                    quote(&doc.api_version),
                    crate::API_VERSION
                ),
            ));
        }
        for (field, value) in [
            ("version", &doc.version),
            ("artifact", &doc.artifact),
            ("sha256", &doc.sha256),
            ("key", &doc.key),
            ("signature", &doc.signature),
        ] {
            if value.len() > MAX_RELEASE_FIELD_BYTES {
                return Err(DecodeError::field(
                    field,
                    format!(
                        "is {} bytes; at most {MAX_RELEASE_FIELD_BYTES}",
                        value.len()
                    ),
                ));
            }
            if let Some((i, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
                return Err(DecodeError::field(
                    field,
                    format!(
                        "has the control character U+{:04X} at byte {i}",
                        u32::from(c)
                    ),
                ));
            }
        }
        Ok(doc)
    }

    /// The `agent-upgrade` command arguments with the same meaning.
    pub fn command_args(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "artifact": self.artifact,
            "sha256": self.sha256,
            "key": self.key,
            "signature": self.signature,
        })
    }
}

/// Why a release signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// `sha256` is not 64 lowercase hex digits.
    #[error("field `sha256`: not 64 lowercase hex digits")]
    BadDigest,
    /// The version is empty, too long or has characters unfit for a directory name.
    #[error("field `version`: {0}")]
    BadVersion(String),
    /// `signature` is not base64 of 64 bytes.
    #[error("field `signature`: not a base64 Ed25519 signature")]
    BadSignatureEncoding,
    /// The signature does not verify under the named key (quoted, bounded).
    #[error("release signature does not verify under key {0}")]
    BadSignature(String),
}

/// Checks a version string for use as `versions/<v>/`: 1..=64 of `[A-Za-z0-9._+-]`, not
/// starting with a dot.
pub fn check_version(v: &str) -> Result<(), ReleaseError> {
    let ok_chars = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if v.is_empty() || v.len() > 64 || !ok_chars || v.starts_with('.') {
        return Err(ReleaseError::BadVersion(format!(
            "{} must be 1-64 of [A-Za-z0-9._+-], not starting with a dot",
            quote(v)
        )));
    }
    Ok(())
}

/// Checks a lowercase hex SHA-256.
pub fn check_sha256(hex: &str) -> Result<(), ReleaseError> {
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err(ReleaseError::BadDigest)
    }
}

/// The bytes a release key signs.
pub fn release_statement(version: &str, sha256_hex: &str) -> Vec<u8> {
    format!("{RELEASE_SIGNING_DOMAIN}\n{version}\n{sha256_hex}\n").into_bytes()
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ReleaseSignature {
    /// Signs `version` + `sha256_hex` with a release key named `key_name`.
    pub fn sign(
        version: &str,
        sha256_hex: &str,
        key_name: &str,
        key: &Ed25519KeyPair,
    ) -> Result<Self, ReleaseError> {
        check_version(version)?;
        check_sha256(sha256_hex)?;
        let sig = key.sign(&release_statement(version, sha256_hex));
        Ok(Self {
            version: version.to_owned(),
            sha256: sha256_hex.to_owned(),
            key: key_name.to_owned(),
            signature: B64.encode(sig.as_ref()),
        })
    }

    /// Verifies the signature under `public_key` (32 raw bytes).
    pub fn verify(&self, public_key: &[u8]) -> Result<(), ReleaseError> {
        check_version(&self.version)?;
        check_sha256(&self.sha256)?;
        let sig = B64
            .decode(self.signature.trim())
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or(ReleaseError::BadSignatureEncoding)?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&release_statement(&self.version, &self.sha256), &sig)
            .map_err(|_| ReleaseError::BadSignature(quote(&self.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate_key_pkcs8, key_pair_from_b64};
    use ring::signature::KeyPair;

    fn key() -> Ed25519KeyPair {
        key_pair_from_b64(&B64.encode(generate_key_pkcs8().unwrap())).unwrap()
    }

    #[test]
    fn signature_binds_version_and_digest() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let digest = sha256_hex(b"binary");
        let s = ReleaseSignature::sign("2.0.0", &digest, "rel", &k).unwrap();
        s.verify(&pk).unwrap();
        let mut other_version = s.clone();
        other_version.version = "3.0.0".into();
        assert_eq!(
            other_version.verify(&pk),
            Err(ReleaseError::BadSignature("\"rel\"".into()))
        );
        let mut other_digest = s.clone();
        other_digest.sha256 = sha256_hex(b"other");
        assert!(other_digest.verify(&pk).is_err());
        let other_key = key();
        assert!(s.verify(other_key.public_key().as_ref()).is_err());
        let mut garbage = s;
        garbage.signature = "!!".into();
        assert_eq!(garbage.verify(&pk), Err(ReleaseError::BadSignatureEncoding));
    }

    #[test]
    fn agent_release_documents_name_bad_fields() {
        let good = br#"{"apiVersion":"fleet/v1","version":"2","artifact":"file:///x","sha256":"ab","key":"k","signature":"s"}"#;
        let d = AgentRelease::from_json_slice(good).unwrap();
        assert_eq!(d.command_args()["version"], "2");
        let e = AgentRelease::from_json_slice(br#"{"apiVersion":"fleet/v1","versoin":"2"}"#)
            .unwrap_err();
        assert!(e.contains("versoin"), "{e}");
        let e = AgentRelease::from_json_slice(
            &String::from_utf8_lossy(good)
                .replace("fleet/v1", "v0")
                .into_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("apiVersion"), "{e}");
    }

    #[test]
    fn versions_and_digests_are_checked() {
        for bad in ["", "../x", ".hidden", "a/b", "v 1", &"x".repeat(65)] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        check_version("2.0.0-test+g1").unwrap();
        assert!(check_sha256("ABC").is_err());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        check_sha256(&sha256_hex(b"")).unwrap();
    }
}
