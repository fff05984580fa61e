//! What podman's JSON output decodes into, and what the module asks podman to create.

use std::collections::BTreeMap;

use serde::Deserialize;
use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::json_error;
use crate::error::Error;

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

/// One line of `podman events --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `container`, `image`, `volume`, ...
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// `create`, `start`, `died`, `remove`, ...
    #[serde(rename = "Status", default)]
    pub status: String,
    /// Container name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Labels (and podman's own attributes).
    #[serde(rename = "Attributes", default)]
    pub attributes: Option<BTreeMap<String, String>>,
}

impl Event {
    /// Decodes one event line.
    pub fn parse(line: &str) -> Result<Event, Error> {
        serde_json::from_str(line).map_err(|e| Error::Decode {
            what: "podman events".into(),
            message: json_error(&e, line.len()),
        })
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.attributes.as_ref()?.get(key).map(String::as_str)
    }
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

/// A running `podman events` process; killed when dropped.
pub struct EventStream {
    pub(super) lines: Lines<BufReader<ChildStdout>>,
    // Held so the process is killed on drop.
    pub(super) _child: Child,
}

impl EventStream {
    /// The next event; `Ok(None)` when podman ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .map_err(|source| Error::Spawn {
                    what: "podman events".into(),
                    source,
                })?;
            match line {
                None => return Ok(None),
                Some(l) if l.trim().is_empty() => continue,
                Some(l) => return Event::parse(&l).map(Some),
            }
        }
    }
}
