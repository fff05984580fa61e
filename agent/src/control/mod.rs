//! Control planes: where desired state comes from and where status goes. The local plane
//! (a watched manifest directory) is the embedded default; NATS and MQTT adapters plug in
//! behind the same [`ControlPlane`] trait.

pub mod local;
pub mod mqtt;
pub mod nats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_contract::{DecodeError, Deployment, DeploymentStatus, SystemUpgrade};
use fleet_module_api::{CancellationToken, DesiredDeployment, DesiredState, DesiredSystem};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::heartbeat::Heartbeat;
use crate::store::DesiredRecord;

/// Everything a plane exchanges with the runtime.
pub struct PlaneIo {
    /// Desired state out: the full current state on every change.
    pub desired: watch::Sender<DesiredUpdate>,
    /// Status in: the latest heartbeat and deployment statuses (publish what changed; after a
    /// reconnect, publish everything).
    pub status: watch::Receiver<StatusSnapshot>,
    /// Raw signed commands to the runtime, each with a channel for the reply bytes.
    pub commands: mpsc::Sender<CommandRequest>,
    /// Audit records to publish.
    pub audit: broadcast::Receiver<serde_json::Value>,
    /// Where the plane reports documents it could not publish (shown in status).
    pub failures: Arc<PublishFailures>,
}

/// Most publish failures listed in status at once.
pub const MAX_PUBLISH_FAILURES: usize = 16;

/// One document the plane could not publish, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishFailure {
    /// Which document (`info`, `deploy.<name>`).
    pub document: String,
    /// Why (capped).
    pub reason: String,
}

/// Documents a plane could not publish, by document; cleared when one goes out.
#[derive(Debug, Default)]
pub struct PublishFailures {
    failed: std::sync::Mutex<BTreeMap<String, String>>,
}

impl PublishFailures {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `document` could not be published: logged and kept for status.
    pub fn failed(&self, document: &str, reason: &str) {
        let reason = fleet_contract::cap_message(reason);
        tracing::warn!(document, %reason, "cannot publish; the plane goes on");
        let mut map = self.map();
        if map.len() < MAX_PUBLISH_FAILURES || map.contains_key(document) {
            map.insert(document.to_owned(), reason);
        }
    }

    /// `document` went out.
    pub fn ok(&self, document: &str) {
        self.map().remove(document);
    }

    /// Every recorded failure.
    pub fn list(&self) -> Vec<PublishFailure> {
        self.map()
            .iter()
            .map(|(d, r)| PublishFailure {
                document: d.clone(),
                reason: r.clone(),
            })
            .collect()
    }
}

/// `body` if it fits in `limit` bytes, else a small document saying it was cut.
pub(crate) fn fit_document(body: Vec<u8>, limit: usize, what: &str) -> Vec<u8> {
    if body.len() <= limit {
        return body;
    }
    tracing::warn!(
        document = what,
        length = body.len(),
        limit,
        "document cut to fit the broker's limit"
    );
    serde_json::to_vec(&serde_json::json!({
        "cut": true,
        "document": what,
        "length": body.len(),
        "limit": limit,
        "message": format!("{what} of {} bytes cut to fit the broker's limit of {limit} bytes", body.len()),
    }))
    .unwrap_or_default()
}

/// Where a network plane writes status documents; each call returns the failure in words
/// (naming what could not be published).
#[async_trait]
pub(crate) trait StatusOut: Sync {
    /// The info document (the heartbeat, also sent as the heartbeat message).
    async fn info(&self, body: Vec<u8>) -> Result<(), String>;
    /// Deployment `name`'s status document.
    async fn deployment(&self, name: &str, body: Vec<u8>) -> Result<(), String>;
    /// Deployment `name` has no status any more.
    async fn deployment_gone(&self, name: &str) -> Result<(), String>;
}

/// Publishes through `out` what differs between `published` and `new` (info + heartbeat,
/// changed deployment statuses, removals), each document within `limit` bytes, and records
/// in `published` what went out. A failure is logged and reported in `failures`, never ends
/// the session; the document is tried again with the next change.
pub(crate) async fn publish_changes(
    out: &impl StatusOut,
    limit: usize,
    failures: &PublishFailures,
    published: &mut StatusSnapshot,
    new: &StatusSnapshot,
) {
    if let Some(hb) = &new.heartbeat {
        if published.heartbeat.as_ref() != Some(hb) {
            match out.info(hb.to_json_within(limit)).await {
                Ok(()) => {
                    failures.ok("info");
                    published.heartbeat = Some(hb.clone());
                }
                Err(e) => failures.failed("info", &e),
            }
        }
    }
    for (name, st) in &new.deployments {
        if published.deployments.get(name) != Some(st) {
            let what = format!("deploy.{name}");
            match out.deployment(name, status_within(st, limit)).await {
                Ok(()) => {
                    failures.ok(&what);
                    published.deployments.insert(name.clone(), st.clone());
                }
                Err(e) => failures.failed(&what, &e),
            }
        }
    }
    let gone: Vec<String> = published
        .deployments
        .keys()
        .filter(|n| !new.deployments.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        let what = format!("deploy.{name}");
        match out.deployment_gone(&name).await {
            Ok(()) => {
                failures.ok(&what);
                published.deployments.remove(&name);
            }
            Err(e) => failures.failed(&what, &e),
        }
    }
}

/// A deployment status as JSON within `limit` bytes: its message is capped, and a status
/// still too large keeps its fields but says it was cut.
pub(crate) fn status_within(st: &DeploymentStatus, limit: usize) -> Vec<u8> {
    let body = serde_json::to_vec(st).unwrap_or_default();
    if body.len() <= limit {
        return body;
    }
    let cut = DeploymentStatus {
        message: format!(
            "status of {} bytes cut to fit the broker's limit of {limit} bytes",
            body.len()
        ),
        image_digest: None,
        ..st.clone()
    };
    fit_document(
        serde_json::to_vec(&cut).unwrap_or_default(),
        limit,
        "deployment status",
    )
}

/// The latest status the device wants published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusSnapshot {
    /// The latest heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// Every deployment's status, by name.
    pub deployments: BTreeMap<String, DeploymentStatus>,
}

/// A command received by a plane.
#[derive(Debug)]
pub struct CommandRequest {
    /// The signed command exactly as received.
    pub bytes: Vec<u8>,
    /// Where the encoded reply goes.
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// Jittered exponential backoff for reconnect loops: 0.5 s doubling to 30 s, ±25 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    /// The delay to wait now; the following one is longer.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        base.mul_f64(jitter)
    }

    /// Back to the shortest delay (after a successful connection).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Decodes one network desired-state document (JSON manifest) for deployment `name`.
/// Anything wrong makes it `Invalid` with the reason; nothing here panics.
pub(crate) fn decode_network_deployment(
    name: &str,
    source: &str,
    bytes: &[u8],
) -> DesiredDeployment {
    match Deployment::from_json_slice(bytes) {
        Ok(d) if d.name == name => DesiredDeployment::Valid(d),
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

    fn to_vec(&self) -> (Vec<IgnoredInput>, u64) {
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

/// Failure of a control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The plane could not be set up (directory, watcher, connection).
    #[error("{plane} control plane: {message}")]
    Setup {
        /// Which plane.
        plane: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A source of desired state (and, for network planes, a sink for status and commands).
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Short name shown in status (`local`, `nats`, `mqtt`).
    fn name(&self) -> &'static str;
    /// Is the plane reachable right now? Used by `self-test`.
    async fn check(&self) -> Result<String, ControlError>;
    /// Feeds desired state into `io.desired` until `shutdown` fires (every change as the
    /// full current state, so a restart replays everything), publishes status and audit, and
    /// passes commands to the runtime. Network planes reconnect by themselves and never
    /// return an error for a lost connection.
    async fn run(
        self: Arc<Self>,
        io: PlaneIo,
        shutdown: CancellationToken,
    ) -> Result<(), ControlError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_contract::Phase;

    fn heartbeat(detail: usize) -> Heartbeat {
        let mut details = serde_json::Map::new();
        details.insert(
            "m".into(),
            serde_json::json!({ "blob": "x".repeat(detail) }),
        );
        Heartbeat {
            device: "dev-1".into(),
            version: "1.0.0".into(),
            pid: 1,
            boot_id: "b".into(),
            started_at: 1,
            at: 2,
            agent_uptime_secs: 1,
            control_plane: "nats".into(),
            stopped: false,
            modules: Vec::new(),
            details,
            ignored_inputs: crate::heartbeat::IgnoredReport::bounded(
                (0..40)
                    .map(|i| IgnoredInput::new(format!("k{i}"), "odd"))
                    .collect(),
                3,
            ),
            publish_failures: Vec::new(),
        }
    }

    #[test]
    fn an_over_size_heartbeat_keeps_who_and_when() {
        let hb = heartbeat(10_000);
        assert_eq!(hb.ignored_inputs.listed.len(), crate::MAX_IGNORED_LISTED);
        assert_eq!(hb.ignored_inputs.more, 40 - 16 + 3);
        let small = hb.to_json_within(100_000);
        assert_eq!(serde_json::from_slice::<Heartbeat>(&small).unwrap(), hb);
        let cut = hb.to_json_within(2048);
        assert!(cut.len() <= 2048, "{}", cut.len());
        let v: Heartbeat = serde_json::from_slice(&cut).unwrap();
        assert_eq!((v.device.as_str(), v.at), ("dev-1", 2));
        assert!(v.details["cut"]["length"].as_u64().unwrap() > 10_000);
        assert_eq!(v.ignored_inputs.more, 40 + 3);
    }

    #[test]
    fn documents_and_statuses_are_cut_to_the_limit() {
        assert_eq!(fit_document(b"abc".to_vec(), 3, "x"), b"abc");
        let cut = fit_document(vec![b'a'; 5000], 1024, "audit record");
        assert!(cut.len() <= 1024);
        let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(
            (v["cut"].as_bool(), v["length"].as_u64()),
            (Some(true), Some(5000))
        );
        let st = DeploymentStatus {
            name: "web".into(),
            revision: Some(3),
            phase: Phase::Failed,
            message: "m".repeat(50_000),
            restarts: 0,
            last_exit_code: None,
            image_digest: None,
            updated_at: 1,
        };
        let body = status_within(&st, 4096);
        assert!(body.len() <= 4096);
        let back: DeploymentStatus = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (back.name.as_str(), back.revision, back.phase),
            ("web", Some(3), Phase::Failed)
        );
        assert!(back.message.contains("cut to fit"), "{}", back.message);
    }

    #[test]
    fn a_document_over_its_cap_is_never_copied() {
        let d = Doc::checked("src".into(), 10, 5, || panic!("copied"));
        assert_eq!(d.body.unwrap_err().length, 10);
        let d = Doc::checked("src".into(), 5, 5, || b"12345".to_vec());
        assert_eq!(d.body.unwrap(), b"12345");
    }

    #[test]
    fn an_invalid_document_is_kept_and_cached_as_its_error_only() {
        let mut docs = Docs::default();
        let bad = format!(
            r#"{{"apiVersion":"fleet/v1","name":"web","pad":"{}"}}"#,
            "p".repeat(200_000)
        );
        docs.deployments.insert(
            "web".into(),
            Doc::checked("nats:k@1".into(), bad.len(), caps::DEPLOYMENT, || {
                bad.clone().into_bytes()
            }),
        );
        docs.system = Some(Doc::checked("nats:s@2".into(), 7, caps::SYSTEM, || {
            b"[1,2,3]".to_vec()
        }));
        let first = docs.update();
        // The bodies are dropped: neither the plane nor the cache keeps hostile bytes.
        assert!(docs.deployments["web"].body.is_err());
        assert!(docs.system.as_ref().unwrap().body.is_err());
        for rec in &first.records {
            assert!(
                rec.body.is_empty(),
                "{} cached {} bytes",
                rec.key,
                rec.body.len()
            );
            assert!(rec.refused.is_some(), "{}", rec.key);
        }
        let web = first
            .records
            .iter()
            .find(|r| r.key == "deploy.web")
            .unwrap();
        assert_eq!(web.length, bad.len() as u64);
        // The same error is reported again on the next update and after a restart.
        let DesiredDeployment::Invalid { error, .. } = &first.state.deployments["web"] else {
            panic!("web decoded");
        };
        let again = docs.update();
        assert_eq!(
            again.state.deployments["web"],
            first.state.deployments["web"]
        );
        let restored = Refusal::from_cached(web.refused.as_deref().unwrap(), &web.source);
        assert_eq!(&restored, error);
        assert_eq!(error.field.as_deref(), Some("pad"), "{error}");
        // A marker the store wrote itself reads as a whole-document refusal.
        let marker = Refusal::from_cached("not cached: too big", "src");
        assert_eq!(
            (marker.field, marker.message.as_str()),
            (None, "not cached: too big")
        );
    }

    #[test]
    fn the_ignored_set_is_bounded() {
        let mut set = IgnoredSet::default();
        for i in 0..MAX_IGNORED_TRACKED + 5 {
            set.insert(&format!("k{i}"), IgnoredInput::new(format!("k{i}"), "odd"));
        }
        let (listed, overflow) = set.to_vec();
        assert_eq!((listed.len(), overflow), (MAX_IGNORED_TRACKED, 5));
        set.remove("k0");
        assert_eq!(set.to_vec().0.len(), MAX_IGNORED_TRACKED - 1);
    }

    #[test]
    fn module_reasons_in_a_heartbeat_are_capped() {
        let health = fleet_module_api::Health::Unhealthy {
            reason: "r".repeat(100_000),
        };
        let m = crate::ModuleReport::new("m", None, &health, 0);
        let reason = m.health["reason"].as_str().unwrap();
        assert!(
            reason.len() <= fleet_contract::MAX_MESSAGE_BYTES,
            "{}",
            reason.len()
        );
        assert!(reason.ends_with("(message cut, 100000 bytes)"));
    }
}
