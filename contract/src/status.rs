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
    /// The main container runs the desired revision (and its probes, if any, pass).
    Running,
    /// The container runs but a health probe failed past its threshold; `probe` says which
    /// and how. The container is restarted by its restart policy.
    Unhealthy,
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
            Phase::Unhealthy => "Unhealthy",
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
    /// Why the container last stopped, beyond its exit code: `oom-killed` when the kernel
    /// killed it for its memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    /// The deployment's health probe result: the failing probe, else the last one checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeStatus>,
    /// Unix seconds of the last change.
    pub updated_at: u64,
}

/// The last result of a deployment's health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    /// The probe's name (its kind when unnamed).
    pub name: String,
    /// Did the last check pass?
    pub passing: bool,
    /// What the last check saw, e.g. `HTTP 503` or `connection refused`.
    pub result: String,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// Unix seconds of the last check.
    pub checked_at: u64,
}
