//! What podman's JSON output decodes into, and what the module asks podman to create.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One container as `podman ps -a --format json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PsEntry {
    /// Full container id.
    #[serde(rename = "Id")]
    pub id: String,
    /// Names (podman gives exactly one).
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    /// `created`, `running`, `exited`, `stopping`, `paused`, ...
    #[serde(rename = "State", default)]
    pub state: String,
    /// Exit code of the last run (0 while it never exited).
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
    /// Host pid of the container's main process; 0 when it does not run.
    #[serde(rename = "Pid", default)]
    pub pid: i64,
    /// Unix seconds of the last start.
    #[serde(rename = "StartedAt", default)]
    pub started_at: i64,
    /// Unix seconds of the last exit (negative when it never exited).
    #[serde(rename = "ExitedAt", default)]
    pub exited_at: i64,
    /// Image id.
    #[serde(rename = "ImageID", default)]
    pub image_id: String,
    /// Labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl PsEntry {
    /// The container's name.
    pub fn name(&self) -> &str {
        self.names.first().map_or(self.id.as_str(), String::as_str)
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ImageInspect {
    #[serde(rename = "Digest", default)]
    pub(super) digest: String,
}

/// What to create: the main container of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; the image's default when empty.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `(volume, mount point)` pairs.
    pub volumes: Vec<(String, String)>,
    /// Signal `podman stop` sends first.
    pub stop_signal: String,
    /// Seconds `podman stop` waits before SIGKILL.
    pub stop_timeout: u32,
}
