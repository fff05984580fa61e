//! Signed commands: the envelope, its canonical bytes, Ed25519 signatures, and replies.
//!
//! The canonical bytes are the envelope's JSON exactly as the sender serialised it; they
//! travel base64-encoded inside [`SignedCommand::payload`], so nothing is re-serialised before
//! verification and no JSON canonicalisation is needed. The signature covers
//! [`SIGNING_DOMAIN`] followed by those bytes, so a signature made for anything else can
//! never verify as a command.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::device::DeviceId;
use crate::manifest::{decode_json, DecodeError, MAX_SAFE_INTEGER};
use crate::quote;

/// Prefix of every signed message (domain separation).
pub const SIGNING_DOMAIN: &[u8] = b"fleet-command-v1\0";
/// Largest signed command accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// The `apiVersion` of command envelopes.
pub const COMMAND_API_VERSION: &str = "fleet/v1";

/// Operator roles, weakest first; a verb needs a minimum role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: `ping`, `status`.
    Viewer,
    /// Day-to-day operations: `reconcile-now`, logs.
    Operator,
    /// Everything, including upgrades and exec.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// What the operator asks the device to do; signed as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommandEnvelope {
    /// Must be [`COMMAND_API_VERSION`].
    pub api_version: String,
    /// Idempotency key: a repeated id returns the recorded reply instead of running again.
    pub id: String,
    /// Target device id; any other device refuses the command.
    pub device: String,
    /// The verb, e.g. `ping`.
    pub verb: String,
    /// Verb-specific arguments.
    #[serde(default)]
    pub args: serde_json::Value,
    /// Who sends it (the operator key's name, informational; the key decides).
    pub actor: String,
    /// Unix seconds when it was issued (at most [`MAX_SAFE_INTEGER`]).
    pub issued_at: u64,
    /// Unix seconds after which it must not run (at most [`MAX_SAFE_INTEGER`]).
    pub expires_at: u64,
}

/// A command on the wire: the envelope bytes, the signer's public key, the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    /// Base64 of the envelope's JSON bytes (the signed bytes).
    pub payload: String,
    /// Base64 of the signer's 32-byte Ed25519 public key.
    pub key: String,
    /// Base64 of the 64-byte signature over [`SIGNING_DOMAIN`] + payload bytes.
    pub sig: String,
}

/// Why a command could not be decoded or verified; each names the field or says the whole
/// document ([`CommandDecodeError::subject`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandDecodeError {
    /// Larger than [`MAX_COMMAND_BYTES`].
    #[error(
        "not a signed command: the whole document: {0} bytes; the limit is {MAX_COMMAND_BYTES}"
    )]
    TooLarge(usize),
    /// Not a signed-command document: what the decoder says, with the field's path.
    #[error("not a signed command: {0}")]
    Malformed(DecodeError),
    /// A field is not valid base64 or has the wrong length.
    #[error("field `{field}`: {message}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The signature does not verify with the given key.
    #[error("field `sig`: bad signature (it does not verify under field `key`)")]
    BadSignature,
    /// The envelope is not valid.
    #[error("envelope: {}{message}", envelope_subject(field.as_deref()))]
    BadEnvelope {
        /// The field; `None` when the refusal is about the whole envelope document.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl SignedCommand {
    /// Signs `env` with `key` (an Ed25519 key pair).
    pub fn sign(env: &CommandEnvelope, key: &Ed25519KeyPair) -> Self {
        // Serialising plain owned data cannot fail.
        let payload = serde_json::to_vec(env).unwrap_or_default();
        let sig = key.sign(&signing_message(&payload));
        Self {
            payload: B64.encode(&payload),
            key: B64.encode(key.public_key().as_ref()),
            sig: B64.encode(sig.as_ref()),
        }
    }

    /// Decodes the wire form (JSON), bounded in size.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandDecodeError> {
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(CommandDecodeError::TooLarge(bytes.len()));
        }
        decode_json(bytes).map_err(CommandDecodeError::Malformed)
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The signer's public key bytes.
    pub fn public_key(&self) -> Result<Vec<u8>, CommandDecodeError> {
        let k = B64
            .decode(&self.key)
            .map_err(|e| CommandDecodeError::BadField {
                field: "key",
                message: e.to_string(),
            })?;
        if k.len() != 32 {
            return Err(CommandDecodeError::BadField {
                field: "key",
                message: format!("{} bytes; an Ed25519 public key has 32", k.len()),
            });
        }
        Ok(k)
    }

    /// Verifies the signature with `public_key`, then decodes and validates the envelope.
    /// Nothing in the payload is looked at before the signature checks out.
    pub fn verify(&self, public_key: &[u8]) -> Result<CommandEnvelope, CommandDecodeError> {
        let payload = B64
            .decode(&self.payload)
            .map_err(|e| CommandDecodeError::BadField {
                field: "payload",
                message: e.to_string(),
            })?;
        let sig = B64
            .decode(&self.sig)
            .map_err(|e| CommandDecodeError::BadField {
                field: "sig",
                message: e.to_string(),
            })?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&signing_message(&payload), &sig)
            .map_err(|_| CommandDecodeError::BadSignature)?;
        let env: CommandEnvelope =
            decode_json(&payload).map_err(|e| CommandDecodeError::BadEnvelope {
                field: e.field,
                message: e.message,
            })?;
        env.validate()?;
        Ok(env)
    }
}

impl CommandEnvelope {
    fn validate(&self) -> Result<(), CommandDecodeError> {
        let bad = |field: &str, message: String| CommandDecodeError::BadEnvelope {
            field: Some(field.to_owned()),
            message,
        };
        if self.api_version != COMMAND_API_VERSION {
            return Err(bad(
                "apiVersion",
                format!(
                    "unsupported {}; expected {COMMAND_API_VERSION:?}",
                    quote(&self.api_version)
                ),
            ));
        }
        if self.id.is_empty()
            || self.id.len() > 128
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad(
                "id",
                "1..=128 characters of A-Z, a-z, 0-9, '-', '_', '.'".into(),
            ));
        }
        DeviceId::parse(&self.device).map_err(|e| bad("device", e.to_string()))?;
        if self.verb.is_empty()
            || self.verb.len() > 64
            || !self
                .verb
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad("verb", "1..=64 characters of a-z, 0-9, '-'".into()));
        }
        if self.actor.len() > MAX_ACTOR_BYTES || self.actor.chars().any(char::is_control) {
            return Err(bad(
                "actor",
                format!("at most {MAX_ACTOR_BYTES} bytes without control characters"),
            ));
        }
        for (field, t) in [("issuedAt", self.issued_at), ("expiresAt", self.expires_at)] {
            if t > MAX_SAFE_INTEGER {
                return Err(bad(
                    field,
                    format!("{t} is above the limit of {MAX_SAFE_INTEGER} (2^53 - 1)"),
                ));
            }
        }
        if self.expires_at <= self.issued_at {
            return Err(bad("expiresAt", "must be later than issuedAt".into()));
        }
        Ok(())
    }
}

/// Longest `actor` name.
const MAX_ACTOR_BYTES: usize = 256;

fn envelope_subject(field: Option<&str>) -> String {
    match field {
        Some(f) => format!("field `{f}`: "),
        None => "the whole document: ".to_owned(),
    }
}

impl CommandDecodeError {
    /// What the refusal is about: a field's path (`sig`, `payload`, an envelope field such as
    /// `args.x`), or `None` for the whole document.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Self::TooLarge(_) => None,
            Self::Malformed(e) => e.subject(),
            Self::BadField { field, .. } => Some(field),
            Self::BadSignature => Some("sig"),
            Self::BadEnvelope { field, .. } => field.as_deref(),
        }
    }
}

fn signing_message(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + payload.len());
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(payload);
    m
}

/// The device's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandReply {
    /// The command id, when the command could be decoded that far.
    pub id: Option<String>,
    /// True when the verb ran and succeeded.
    pub ok: bool,
    /// `ok`, or a stable error code (`denied`, `bad-request`, `unsupported`, `failed`, ...).
    pub code: String,
    /// Human-readable reason.
    pub message: String,
    /// Verb-specific result.
    #[serde(default)]
    pub body: serde_json::Value,
    /// True when this is the recorded reply of an earlier execution of the same id.
    #[serde(default)]
    pub replayed: bool,
}

/// Generates a new Ed25519 key pair as a PKCS#8 document (store it base64, mode 0600).
pub fn generate_key_pkcs8() -> Result<Vec<u8>, String> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| "cannot generate an Ed25519 key".to_owned())
}

/// Loads a key pair from base64 PKCS#8 text (as written by `fleetctl keygen`).
pub fn key_pair_from_b64(text: &str) -> Result<Ed25519KeyPair, String> {
    let der = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
}

/// Base64 of a key pair's public key (what goes into a device's trust config).
pub fn public_key_b64(key: &Ed25519KeyPair) -> String {
    B64.encode(key.public_key().as_ref())
}

/// Decodes a base64 public key from config, checking its length.
pub fn decode_public_key(text: &str) -> Result<Vec<u8>, String> {
    let k = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if k.len() != 32 {
        return Err(format!("{} bytes; an Ed25519 public key has 32", k.len()));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Ed25519KeyPair {
        let der = generate_key_pkcs8().unwrap();
        key_pair_from_b64(&B64.encode(der)).unwrap()
    }

    fn env() -> CommandEnvelope {
        CommandEnvelope {
            api_version: COMMAND_API_VERSION.into(),
            id: "c-1".into(),
            device: "pi-1".into(),
            verb: "ping".into(),
            args: serde_json::json!({"x": 1}),
            actor: "alice".into(),
            issued_at: 100,
            expires_at: 200,
        }
    }

    #[test]
    fn sign_verify_round_trip() {
        let k = key();
        let wire = SignedCommand::sign(&env(), &k).encode();
        let cmd = SignedCommand::decode(&wire).unwrap();
        let pk = cmd.public_key().unwrap();
        assert_eq!(cmd.verify(&pk).unwrap(), env());
    }

    #[test]
    fn tampering_and_wrong_key_fail() {
        let k = key();
        let mut cmd = SignedCommand::sign(&env(), &k);
        let mut other = env();
        other.verb = "reboot".into();
        cmd.payload = B64.encode(serde_json::to_vec(&other).unwrap());
        let pk = cmd.public_key().unwrap();
        assert_eq!(cmd.verify(&pk), Err(CommandDecodeError::BadSignature));
        let good = SignedCommand::sign(&env(), &k);
        let stranger = key();
        assert_eq!(
            good.verify(stranger.public_key().as_ref()),
            Err(CommandDecodeError::BadSignature)
        );
    }

    #[test]
    fn envelope_errors_name_the_field() {
        let k = key();
        for (mutate, field) in [
            (
                Box::new(|e: &mut CommandEnvelope| e.device = "Bad Id".into())
                    as Box<dyn Fn(&mut CommandEnvelope)>,
                "device",
            ),
            (
                Box::new(|e: &mut CommandEnvelope| e.verb = "Ping!".into()),
                "verb",
            ),
            (
                Box::new(|e: &mut CommandEnvelope| e.id = String::new()),
                "id",
            ),
            (
                Box::new(|e: &mut CommandEnvelope| e.expires_at = 50),
                "expiresAt",
            ),
            (
                Box::new(|e: &mut CommandEnvelope| e.api_version = "v0".into()),
                "apiVersion",
            ),
        ] {
            let mut e = env();
            mutate(&mut e);
            let cmd = SignedCommand::sign(&e, &k);
            match cmd.verify(k.public_key().as_ref()) {
                Err(CommandDecodeError::BadEnvelope { field: f, .. }) => {
                    assert_eq!(f.as_deref(), Some(field))
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"{", b"[]", b"{\"payload\":1}", &[0xff; 10]] {
            assert!(SignedCommand::decode(bytes).is_err());
        }
        let big = vec![b' '; MAX_COMMAND_BYTES + 1];
        assert!(matches!(
            SignedCommand::decode(&big),
            Err(CommandDecodeError::TooLarge(_))
        ));
        let bad = SignedCommand {
            payload: "!!".into(),
            key: "AAAA".into(),
            sig: "x".into(),
        };
        assert!(bad.public_key().is_err());
        assert!(bad.verify(&[0; 32]).is_err());
    }
}
