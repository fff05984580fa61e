use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use fleet_contract::{DecodeError, Deployment, DeploymentStatus, SystemUpgrade};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Clock, Extensions};

/// Everything a module may touch. Cheap to clone; one per module, built by the runtime.
#[derive(Clone)]
pub struct Context {
    /// The module's name (same as [`crate::Capability::name`]).
    pub module: &'static str,
    /// The module's own key/value area in the agent's store.
    pub store: Arc<dyn ModuleStore>,
    /// Desired state; every change from any control plane arrives here.
    pub desired: DesiredStream,
    /// Where the module reports what it did.
    pub status: Arc<dyn StatusSink>,
    /// Wall clock with trust flag.
    pub clock: Arc<dyn Clock>,
    /// Injected directories; never hard-code `/etc` or `/var`.
    pub paths: Paths,
    /// Fires when the agent shuts down; `run` must return soon after.
    pub shutdown: CancellationToken,
    /// Extension points provided by other modules.
    pub ext: Extensions,
    /// Whether the agent has checked in (control plane reached, modules healthy); fed by the
    /// runtime. Upgrade modules commit only once it says so.
    pub checkin: CheckInStream,
    /// Where the run loop shows progress ([`crate::Progress::tick`]) to the supervisor.
    pub progress: crate::Progress,
}

/// The agent's check-in as the runtime last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckIn {
    /// The control plane delivered desired state in this run of the agent (local plane: the
    /// deployments directory was read).
    pub plane_reached: bool,
    /// Every module's probe has finished.
    pub probed: bool,
    /// Available modules that are not healthy (modules unavailable on this device are not
    /// counted), as `(name, health state)`.
    pub unhealthy: Vec<(String, String)>,
}

impl CheckIn {
    /// Why the agent has not checked in yet, not counting module `except` (the asking
    /// upgrade module itself); `None` once the control plane was reached and every other
    /// available module is healthy. Upgrades commit or confirm only on `None`.
    pub fn waiting_for(&self, except: &str) -> Option<String> {
        if !self.plane_reached {
            return Some("control plane not reached yet".to_owned());
        }
        if !self.probed {
            return Some("modules not checked yet".to_owned());
        }
        let unhealthy: Vec<String> = self
            .unhealthy
            .iter()
            .filter(|(name, _)| name != except)
            .map(|(name, state)| format!("{name} {state}"))
            .collect();
        (!unhealthy.is_empty()).then(|| format!("unhealthy: {}", unhealthy.join(", ")))
    }
}

/// Latest [`CheckIn`], as a watch channel.
pub type CheckInStream = watch::Receiver<CheckIn>;

/// Directories a module may use, injected by the runtime (temp dirs in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Config directory (`/etc/fleet-agent`).
    pub config_dir: PathBuf,
    /// Persistent state (`/var/lib/fleet-agent`, on its own volume).
    pub state_dir: PathBuf,
    /// Volatile runtime files (`/run/fleet-agent`, tmpfs).
    pub run_dir: PathBuf,
}

/// Latest desired state, as a watch channel: modules read the whole current state and
/// reconcile towards it (level-triggered), so a missed intermediate version loses nothing.
pub type DesiredStream = watch::Receiver<Arc<DesiredState>>;

/// The full desired state of this device, merged from the control plane in use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    /// Deployments by name.
    pub deployments: BTreeMap<String, DesiredDeployment>,
    /// `<device>.agent`: the agent release this device should run (self-upgrade).
    pub agent: Option<DesiredAgent>,
    /// The OS upgrade request (`<device>.system`), when there is one.
    pub system: Option<DesiredSystem>,
    /// `true` when `deployments` is the control plane's complete set, just received: a
    /// deployment absent from it was deleted. `false` for state rebuilt from the cache (or
    /// anything else that may be partial): then only the names in `deleted` were deleted, and
    /// any other container the device finds is kept, never removed for an absence.
    pub complete: bool,
    /// Deletions known from the cache (received before and recorded there); used when
    /// `complete` is `false`.
    pub deleted: BTreeSet<String>,
}

impl DesiredState {
    /// May the device remove what it runs for deployment `name`, which is not in
    /// `deployments`? Only when a deletion was received: the set is complete, or the cache
    /// recorded the deletion. An absence caused by a lost or failed cache write never is.
    pub fn removal_received(&self, name: &str) -> bool {
        !self.deployments.contains_key(name) && (self.complete || self.deleted.contains(name))
    }
}

/// The desired OS upgrade, or the reason its document could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredSystem {
    /// A decoded, validated request.
    Valid(SystemUpgrade),
    /// The document was rejected.
    Invalid {
        /// Where the document came from (file path or KV key).
        source_name: String,
        /// Why it was rejected (line, field, message).
        error: DecodeError,
    },
}

/// The desired agent release, or why its document could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredAgent {
    /// A decoded document (its signature is checked by the self-upgrade module).
    Valid(fleet_contract::release::AgentRelease),
    /// The document was rejected.
    Invalid {
        /// Where it came from (KV key and revision).
        source_name: String,
        /// Why, naming the field.
        error: String,
    },
}

/// One desired deployment, or the reason its document could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredDeployment {
    /// A decoded, validated manifest.
    Valid(Box<Deployment>),
    /// The document was rejected; only this deployment is affected.
    Invalid {
        /// Where the document came from (file path or KV key).
        source_name: String,
        /// Why it was rejected (line, field, message).
        error: DecodeError,
    },
}

/// Error from a module's store area.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// A module's private key/value area in the agent's SQLite store. Calls are short local
/// transactions; values are opaque bytes (JSON by convention).
pub trait ModuleStore: Send + Sync + 'static {
    /// Reads `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `key` durably (committed when this returns).
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Lists keys starting with `prefix`, in order.
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

/// Where modules publish status; the runtime persists it and forwards it to the control plane.
pub trait StatusSink: Send + Sync + 'static {
    /// Records the current status of one deployment.
    fn deployment(&self, status: DeploymentStatus);
    /// Forgets a deployment that was removed from the device.
    fn deployment_removed(&self, name: &str);
    /// Attaches a module-specific detail document to the heartbeat (e.g. upgrade phase).
    fn detail(&self, module: &'static str, detail: serde_json::Value);
    /// Says that what [`crate::Capability::health`] returns for `module` may have changed.
    /// The runtime does not poll a settled module's health: it recomputes the heartbeat and
    /// the check-in when told (or when anything else about the module changes).
    fn health_changed(&self, _module: &'static str) {}
}
