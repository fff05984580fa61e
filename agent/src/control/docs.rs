//! The desired documents a plane received: decoded, size-checked before they are copied,
//! refused documents kept as their length and error, ignored inputs, and the update built
//! from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_contract::{DecodeError, Deployment, SystemUpgrade};
use fleet_module_api::{DesiredDeployment, DesiredState, DesiredSystem};
use serde::{Deserialize, Serialize};

use crate::store::DesiredRecord;

/// Decodes one network desired-state document (JSON manifest) for deployment `name`.
/// Anything wrong makes it `Invalid` with the reason; nothing here panics.
pub(crate) fn decode_network_deployment(
    name: &str,
    source: &str,
    bytes: &[u8],
) -> DesiredDeployment {
    match Deployment::from_json_slice(bytes) {
        Ok(d) if d.name == name => DesiredDeployment::Valid(Box::new(d)),
        Ok(d) => DesiredDeployment::Invalid {
            source_name: source.to_owned(),
            error: DecodeError {
                source_name: Some(source.to_owned()),
                line: None,
                column: None,
                field: Some("name".into()),
                message: format!(
                    "manifest names {} but is stored under {}",
                    fleet_contract::quote(&d.name),
                    fleet_contract::quote(name)
                ),
            },
        },
        Err(error) => DesiredDeployment::Invalid {
            source_name: source.to_owned(),
            error: error.with_source(source),
        },
    }
}

/// Key of the OS upgrade request in the desired-state cache.
pub(crate) const SYSTEM_RECORD_KEY: &str = "system";

/// Decodes the OS upgrade request document (`<device>.system`; TOML when `source` is a
/// `.toml` file, JSON otherwise). Anything wrong makes it `Invalid` with the reason.
pub(crate) fn decode_system(source: &str, bytes: &[u8]) -> DesiredSystem {
    let decoded = if source.ends_with(".toml") {
        SystemUpgrade::from_toml_bytes(bytes)
    } else {
        SystemUpgrade::from_json_slice(bytes)
    };
    match decoded {
        Ok(s) => DesiredSystem::Valid(s),
        Err(error) => DesiredSystem::Invalid {
            source_name: source.to_owned(),
            error: error.with_source(source),
        },
    }
}

/// A document as received: where it came from and its body, or, when it was refused by size
/// before being copied, only its length and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Doc {
    /// File path or KV key/topic it came from.
    pub source: String,
    /// The body, or the refusal.
    pub body: Result<Vec<u8>, Refusal>,
}

/// Why a document was refused (unread for its size, or decoded and found invalid): its
/// length and the error, never its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The document's length in bytes.
    pub length: u64,
    /// Why it was refused (no source attached).
    pub error: DecodeError,
}

impl Refusal {
    /// A document of `length` bytes refused for `error`.
    pub(crate) fn new(length: usize, error: DecodeError) -> Self {
        Self {
            length: length as u64,
            error: DecodeError {
                source_name: None,
                ..error
            },
        }
    }

    /// The error, attributed to `source`.
    pub(crate) fn error_at(&self, source: &str) -> DecodeError {
        self.error.clone().with_source(source)
    }

    /// The form kept in the cache's `refused` column (the error as JSON, so a restart
    /// reports exactly what was reported before).
    pub(crate) fn cached(&self) -> String {
        serde_json::to_string(&self.error).unwrap_or_else(|_| self.error.to_string())
    }

    /// The cache record of the refused document: key, source, length and error only.
    pub(crate) fn record(&self, key: String, source: &str) -> DesiredRecord {
        DesiredRecord {
            key,
            source: source.to_owned(),
            revision: None,
            length: self.length,
            body: Vec::new(),
            refused: Some(self.cached()),
        }
    }

    /// The error kept in the cache by [`Refusal::cached`], attributed to `source`; any other
    /// text (a marker the store wrote itself) is a whole-document refusal.
    pub(crate) fn from_cached(text: &str, source: &str) -> DecodeError {
        serde_json::from_str::<DecodeError>(text)
            .unwrap_or_else(|_| DecodeError::whole(text))
            .with_source(source)
    }
}

impl Doc {
    /// A document of `len` bytes from `source`: its body is copied by `body` only when `len`
    /// is within `cap`; a longer one is kept as (length, reason).
    pub(crate) fn checked(
        source: String,
        len: usize,
        cap: usize,
        body: impl FnOnce() -> Vec<u8>,
    ) -> Self {
        let body = if len > cap {
            Err(Refusal::new(len, DecodeError::too_large(len, cap)))
        } else {
            Ok(body())
        };
        Doc { source, body }
    }

    fn record(&self, key: String, revision: Option<u64>) -> DesiredRecord {
        match &self.body {
            Ok(bytes) => DesiredRecord {
                key,
                source: self.source.clone(),
                revision,
                length: bytes.len() as u64,
                body: bytes.clone(),
                refused: None,
            },
            Err(r) => r.record(key, &self.source),
        }
    }
}

/// An input a plane received and did not use (an odd key, topic or file, a document refused
/// unread), shown in status with the reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IgnoredInput {
    /// The input, quoted with [`fleet_contract::quote`] (plane, bucket or directory, key).
    pub input: String,
    /// Why it was not used.
    pub reason: String,
}

impl IgnoredInput {
    /// `input` (already quoted) ignored because of `reason` (capped).
    pub fn new(input: impl Into<String>, reason: &str) -> Self {
        Self {
            input: input.into(),
            reason: fleet_contract::cap_message(reason),
        }
    }
}

/// How many ignored inputs a plane tracks at once; more are only counted.
pub(crate) const MAX_IGNORED_TRACKED: usize = 1024;

/// A plane's ignored inputs by key, bounded: past [`MAX_IGNORED_TRACKED`] only counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoredSet {
    by_key: BTreeMap<String, IgnoredInput>,
    /// Inputs ignored while the set was full (until the next full replay).
    overflow: u64,
}

impl IgnoredSet {
    /// Records `key` as ignored (replacing an earlier reason).
    pub(crate) fn insert(&mut self, key: &str, input: IgnoredInput) {
        if self.by_key.len() >= MAX_IGNORED_TRACKED && !self.by_key.contains_key(key) {
            self.overflow += 1;
            return;
        }
        self.by_key.insert(key.to_owned(), input);
    }

    /// `key` is gone (deleted) or became a used input.
    pub(crate) fn remove(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    pub(crate) fn to_vec(&self) -> (Vec<IgnoredInput>, u64) {
        (self.by_key.values().cloned().collect(), self.overflow)
    }
}

/// Size caps of the desired documents, checked before a body is copied.
pub(crate) mod caps {
    /// A deployment manifest.
    pub const DEPLOYMENT: usize = fleet_contract::MAX_MANIFEST_BYTES;
    /// The OS upgrade request.
    pub const SYSTEM: usize = fleet_contract::MAX_SYSTEM_UPGRADE_BYTES;
    /// The agent release document (small; the manifest cap bounds it).
    pub const AGENT: usize = fleet_contract::MAX_MANIFEST_BYTES;
}

/// The plane's desired documents: deployments by name, the OS upgrade request, the agent
/// release, and the inputs it ignored.
#[derive(Debug, Clone, Default)]
pub(crate) struct Docs {
    pub deployments: BTreeMap<String, Doc>,
    pub system: Option<Doc>,
    pub agent: Option<Doc>,
    pub ignored: IgnoredSet,
}

impl Docs {
    /// Builds a [`DesiredUpdate`]: the full listing of the plane, just received (`complete`).
    /// The agent release is not cached: a device that starts offline does not upgrade itself
    /// from cache.
    ///
    /// A document that does not decode is refused for good: its body is dropped here, and
    /// only its length and error are kept (and cached), never a copy of hostile bytes.
    pub(crate) fn update(&mut self) -> DesiredUpdate {
        let mut deployments = BTreeMap::new();
        let mut records = Vec::new();
        for (name, doc) in &mut self.deployments {
            let d = match &doc.body {
                Ok(bytes) => decode_network_deployment(name, &doc.source, bytes),
                Err(r) => refused_deployment(&doc.source, r),
            };
            if let (Ok(bytes), DesiredDeployment::Invalid { error, .. }) = (&doc.body, &d) {
                doc.body = Err(Refusal::new(bytes.len(), error.clone()));
            }
            let revision = match &d {
                DesiredDeployment::Valid(dep) => Some(dep.revision),
                DesiredDeployment::Invalid { .. } => None,
            };
            records.push(doc.record(format!("deploy.{name}"), revision));
            deployments.insert(name.clone(), d);
        }
        let system = self.system.as_mut().map(|doc| {
            let system = match &doc.body {
                Ok(bytes) => decode_system(&doc.source, bytes),
                Err(r) => DesiredSystem::Invalid {
                    source_name: doc.source.clone(),
                    error: r.error_at(&doc.source),
                },
            };
            if let (Ok(bytes), DesiredSystem::Invalid { error, .. }) = (&doc.body, &system) {
                doc.body = Err(Refusal::new(bytes.len(), error.clone()));
            }
            records.push(doc.record(SYSTEM_RECORD_KEY.to_owned(), None));
            system
        });
        let agent = self.agent.as_ref().map(|doc| match &doc.body {
            Ok(bytes) => match fleet_contract::release::AgentRelease::from_json_slice(bytes) {
                Ok(rel) => fleet_module_api::DesiredAgent::Valid(rel),
                Err(error) => fleet_module_api::DesiredAgent::Invalid {
                    source_name: doc.source.clone(),
                    error: fleet_contract::cap_message(&error),
                },
            },
            Err(r) => fleet_module_api::DesiredAgent::Invalid {
                source_name: doc.source.clone(),
                error: r.error.to_string(),
            },
        });
        let (ignored, ignored_overflow) = self.ignored.to_vec();
        DesiredUpdate {
            state: Arc::new(DesiredState {
                deployments,
                system,
                agent,
                // The plane's full listing, just received: an absent deployment was deleted.
                complete: true,
                deleted: Default::default(),
            }),
            records,
            ignored,
            ignored_overflow,
        }
    }
}

/// The deployment name a desired-state key or topic carries (`name`, when it has the shape of
/// one), or why it is not used: not such a key (`not_ours`), or a name that is not valid.
pub(crate) fn deployment_name(
    name: Option<&str>,
    not_ours: impl FnOnce() -> String,
) -> Result<&str, String> {
    let name = name.ok_or_else(not_ours)?;
    fleet_contract::DeviceId::parse(name)
        .map(|_| name)
        .map_err(|e| {
            fleet_contract::cap_message(&format!(
                "deployment name {}: {e}",
                fleet_contract::quote(name)
            ))
        })
}

/// A deployment whose document was refused (unread by size, or found invalid before).
pub(crate) fn refused_deployment(source: &str, r: &Refusal) -> DesiredDeployment {
    DesiredDeployment::Invalid {
        source_name: source.to_owned(),
        error: r.error_at(source),
    }
}

/// One desired-state update: the merged state plus the raw documents to cache.
#[derive(Debug, Clone, Default)]
pub struct DesiredUpdate {
    /// Decoded state handed to modules.
    pub state: Arc<DesiredState>,
    /// The documents as received, for the SQLite cache.
    pub records: Vec<DesiredRecord>,
    /// Inputs the plane received and did not use.
    pub ignored: Vec<IgnoredInput>,
    /// Further ignored inputs, only counted.
    pub ignored_overflow: u64,
}
