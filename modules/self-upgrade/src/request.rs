//! The `agent-upgrade` request: its fields, checked with the release signature.

use fleet_contract::release::{check_sha256, check_version, ReleaseSignature};
use fleet_module_api::CommandError;
use serde::Serialize;

use crate::{fetch, SelfUpgrade};

/// A validated `agent-upgrade` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Target version.
    pub version: String,
    /// Where the artifact is.
    pub artifact: String,
    /// SHA-256 pin.
    pub sha256: String,
    /// Release key name.
    pub key: String,
    /// Base64 signature.
    #[serde(skip)]
    pub signature: String,
}

impl SelfUpgrade {
    /// Validates an `agent-upgrade` request and its signature (no I/O).
    pub fn check_request(&self, args: &serde_json::Value) -> Result<Request, CommandError> {
        let field = |name: &'static str| -> Result<String, CommandError> {
            args.get(name)
                .and_then(|v| v.as_str())
                .map(ToOwned::to_owned)
                .ok_or_else(|| CommandError::BadRequest {
                    field: name.into(),
                    message: "missing or not a string".into(),
                })
        };
        if let Some(obj) = args.as_object() {
            let known = ["version", "artifact", "sha256", "signature", "key"];
            if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(CommandError::BadRequest {
                    field: k.clone(),
                    message: format!("unknown field; expected one of {}", known.join(", ")),
                });
            }
        }
        let req = Request {
            version: field("version")?,
            artifact: field("artifact")?,
            sha256: field("sha256")?,
            key: field("key")?,
            signature: field("signature")?,
        };
        let bad = |field: &str, e: String| CommandError::BadRequest {
            field: field.into(),
            message: e,
        };
        check_version(&req.version).map_err(|e| bad("version", e.to_string()))?;
        check_sha256(&req.sha256).map_err(|e| bad("sha256", e.to_string()))?;
        fetch::Location::parse(&req.artifact).map_err(|e| bad("artifact", e.to_string()))?;
        let key = self
            .cfg
            .release_keys
            .iter()
            .find(|k| k.name == req.key)
            .ok_or_else(|| {
                CommandError::Denied(format!(
                    "unknown release key {} (not in [[modules.self-upgrade.release_keys]])",
                    fleet_contract::quote(&req.key)
                ))
            })?;
        let pk = fleet_contract::decode_public_key(&key.public_key)
            .map_err(|e| CommandError::Failed(format!("release key {:?}: {e}", key.name)))?;
        signature_of(&req)
            .verify(&pk)
            .map_err(|e| CommandError::Denied(e.to_string()))?;
        Ok(req)
    }
}

/// The release statement the request's signature covers.
pub(crate) fn signature_of(req: &Request) -> ReleaseSignature {
    ReleaseSignature {
        version: req.version.clone(),
        sha256: req.sha256.clone(),
        key: req.key.clone(),
        signature: req.signature.clone(),
    }
}
