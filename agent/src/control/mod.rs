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
                message: format!("manifest names {:?} but is stored under {name:?}", d.name),
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

/// A document as received: (source, raw bytes).
pub(crate) type Doc = (String, Vec<u8>);

/// Builds a [`DesiredUpdate`] from a map of deployment name -> document, the OS upgrade
/// request (`<device>.system`) and the agent release (`<device>.agent`), if any. The agent
/// release is not cached: a device that starts offline does not upgrade itself from cache.
pub(crate) fn update_from_docs(
    docs: &BTreeMap<String, Doc>,
    system: Option<&Doc>,
    agent: Option<&Doc>,
) -> DesiredUpdate {
    let mut deployments = BTreeMap::new();
    let mut records = Vec::new();
    for (name, (source, bytes)) in docs {
        let d = decode_network_deployment(name, source, bytes);
        let revision = match &d {
            DesiredDeployment::Valid(dep) => Some(dep.revision),
            DesiredDeployment::Invalid { .. } => None,
        };
        records.push(DesiredRecord {
            key: format!("deploy.{name}"),
            source: source.clone(),
            revision,
            body: bytes.clone(),
        });
        deployments.insert(name.clone(), d);
    }
    let system = system.map(|(source, bytes)| {
        records.push(DesiredRecord {
            key: SYSTEM_RECORD_KEY.to_owned(),
            source: source.clone(),
            revision: None,
            body: bytes.clone(),
        });
        decode_system(source, bytes)
    });
    let agent = agent.map(|(source, bytes)| {
        match fleet_contract::release::AgentRelease::from_json_slice(bytes) {
            Ok(rel) => fleet_module_api::DesiredAgent::Valid(rel),
            Err(error) => fleet_module_api::DesiredAgent::Invalid {
                source_name: source.clone(),
                error,
            },
        }
    });
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
    }
}

/// One desired-state update: the merged state plus the raw documents to cache.
#[derive(Debug, Clone, Default)]
pub struct DesiredUpdate {
    /// Decoded state handed to modules.
    pub state: Arc<DesiredState>,
    /// The documents as received, for the SQLite cache.
    pub records: Vec<DesiredRecord>,
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
