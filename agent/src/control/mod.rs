//! Control planes: where desired state comes from and where status goes. The local plane
//! (a watched manifest directory) is the embedded default; NATS and MQTT adapters plug in
//! behind the same [`ControlPlane`] trait.

mod docs;
pub mod local;
pub mod mqtt;
pub mod nats;
mod publish;

pub use docs::*;
pub use publish::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_contract::DeploymentStatus;
use fleet_module_api::CancellationToken;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::heartbeat::Heartbeat;

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
    /// Does the plane publish a heartbeat every `heartbeat_interval_secs` (network planes,
    /// for presence)? Without one the runtime keeps no heartbeat timer: the stored record
    /// is rewritten only when something in it changes.
    fn publishes_heartbeats(&self) -> bool {
        true
    }
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
    use fleet_module_api::DesiredDeployment;

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
            clock: serde_json::Value::Null,
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
            exit_reason: None,
            probe: None,
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
