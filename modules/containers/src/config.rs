//! `[modules.containers]`: every key optional, unknown keys rejected.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::policy::{Logs, Policy};

/// `[modules.containers]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `false` turns the module off: it provides no container runtime, so deployments are
    /// reported `Pending` by the runtime and nothing on the device is touched.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Namespace of this agent's containers: part of every name and the `fleet.instance`
    /// label, so two agents (or parallel tests) on one host never touch each other's
    /// containers. `default` gives the plain names `fleet-<deployment>`.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Extra labels put on every container and volume this module creates.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The podman binary.
    #[serde(default = "default_podman")]
    pub podman: PathBuf,
    /// A `registries.conf` for podman (e.g. to mark a plain-HTTP registry insecure); passed
    /// as `CONTAINERS_REGISTRIES_CONF`. Absent: podman's own configuration.
    #[serde(default)]
    pub registries_conf: Option<PathBuf>,
    /// Registry credentials (containers-auth.json format). Must be owned by root and not
    /// readable by group or others, or pulls fail saying so.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Deployments worked on at the same time.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Seconds between full resyncs: the safety net under the exit watcher, for what no
    /// container process exit shows (a stopped container removed by hand, a stray volume).
    #[serde(default = "default_resync")]
    pub resync_secs: u64,
    /// First retry delay after a failed pull, start or init, and after a crash (seconds).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_secs: u64,
    /// Retry delays double up to this (seconds).
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
    /// A container that ran at least this long before exiting is not crash-looping: it is
    /// restarted at once and the backoff starts over (seconds).
    #[serde(default = "default_healthy_after")]
    pub healthy_after_secs: u64,
    /// Where the deployment's data volume is mounted in its main and init containers.
    #[serde(default = "default_data_mount")]
    pub data_mount: String,
    /// `[modules.containers.policy]`: what a manifest may ask of the host beyond an
    /// ordinary container (privileged mode, host network, low ports, bind mounts, devices,
    /// capabilities). Nothing by default.
    #[serde(default)]
    pub policy: Policy,
    /// `[modules.containers.logs]`: every container's log size cap.
    #[serde(default)]
    pub logs: Logs,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            instance: default_instance(),
            labels: BTreeMap::new(),
            podman: default_podman(),
            registries_conf: None,
            auth_file: None,
            parallelism: default_parallelism(),
            resync_secs: default_resync(),
            backoff_initial_secs: default_backoff_initial(),
            backoff_max_secs: default_backoff_max(),
            healthy_after_secs: default_healthy_after(),
            data_mount: default_data_mount(),
            policy: Policy::default(),
            logs: Logs::default(),
        }
    }
}

impl Config {
    /// Semantic checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ok_instance = !self.instance.is_empty()
            && self.instance.len() <= 63
            && self
                .instance
                .starts_with(|c: char| c.is_ascii_alphanumeric())
            && self
                .instance
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok_instance {
            return Err(format!(
                "instance {:?}: use 1-63 of a-z, 0-9, '-', '_', starting with a letter or digit",
                self.instance
            ));
        }
        if self.parallelism == 0 {
            return Err("parallelism must be at least 1".into());
        }
        if self.resync_secs == 0 {
            return Err("resync_secs must be at least 1".into());
        }
        if self.backoff_initial_secs == 0 || self.backoff_max_secs < self.backoff_initial_secs {
            return Err(
                "backoff_initial_secs must be at least 1 and at most backoff_max_secs".into(),
            );
        }
        if !self.data_mount.starts_with('/') || self.data_mount.contains(':') {
            return Err(format!(
                "data_mount {:?} must be an absolute path without ':'",
                self.data_mount
            ));
        }
        self.policy.validate()?;
        self.logs.validate()?;
        for (k, v) in &self.labels {
            if k.is_empty() || k.starts_with("fleet.") && !k.starts_with("fleet.test.") {
                return Err(format!(
                    "labels.{k}: empty keys and the fleet.* namespace are reserved"
                ));
            }
            if v.contains('\n') {
                return Err(format!("labels.{k}: value must be one line"));
            }
        }
        Ok(())
    }
}

fn default_true() -> bool {
    true
}
fn default_instance() -> String {
    "default".into()
}
fn default_podman() -> PathBuf {
    "podman".into()
}
fn default_parallelism() -> usize {
    4
}
fn default_resync() -> u64 {
    600
}
fn default_backoff_initial() -> u64 {
    1
}
fn default_backoff_max() -> u64 {
    60
}
fn default_healthy_after() -> u64 {
    10
}
fn default_data_mount() -> String {
    "/data".into()
}
