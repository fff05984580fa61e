//! Status documents the agent publishes about each deployment.

use serde::{Deserialize, Serialize};

/// Lifecycle phase of a deployment on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Accepted, not yet acted on (or no module can act on it yet).
    Pending,
    /// Pulling the image.
    Pulling,
    /// Running init containers.
    Initializing,
    /// Creating and starting the main container.
    Starting,
    /// The main container runs the desired revision.
    Running,
    /// Replacing the previous revision.
    Upgrading,
    /// Could not reach the desired revision; `message` says why.
    Failed,
    /// Being removed from the device.
    Removing,
}

impl Phase {
    /// The phase name as shown in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Pulling => "Pulling",
            Phase::Initializing => "Initializing",
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Upgrading => "Upgrading",
            Phase::Failed => "Failed",
            Phase::Removing => "Removing",
        }
    }
}

/// What the device reports about one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Deployment name (for a manifest that failed to parse: the file stem).
    pub name: String,
    /// Desired revision this status reflects; `None` when the manifest could not be decoded.
    pub revision: Option<u64>,
    /// Current phase.
    pub phase: Phase,
    /// Human-readable detail: the reason for `Failed`, progress otherwise.
    pub message: String,
    /// How many times the main container was restarted by the agent.
    #[serde(default)]
    pub restarts: u32,
    /// Exit code of the last container exit, when one happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// Digest of the running image, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Unix seconds of the last change.
    pub updated_at: u64,
}
