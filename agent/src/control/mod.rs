//! Control planes: where desired state comes from and where status goes. The local plane
//! (a watched manifest directory) is the embedded default; NATS and MQTT adapters plug in
//! behind the same [`ControlPlane`] trait.

pub mod local;

use std::sync::Arc;

use async_trait::async_trait;
use fleet_module_api::{CancellationToken, DesiredState};
use tokio::sync::watch;

use crate::store::DesiredRecord;

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
    /// Feeds desired state into `tx` until `shutdown` fires; every change is sent as the
    /// full current state, so a restart replays everything.
    async fn run(
        self: Arc<Self>,
        tx: watch::Sender<DesiredUpdate>,
        shutdown: CancellationToken,
    ) -> Result<(), ControlError>;
}
