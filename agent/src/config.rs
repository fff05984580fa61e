//! The agent's TOML config: parsed strictly, located errors, defaults in code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_contract::{decode_toml, located_error, DecodeError, DeviceId};
use serde::Deserialize;

/// Default config file path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet-agent/config.toml";

/// Names of every module fleet-agent has, built in or not; a `[modules.<name>]` section for
/// any other name is a typo and rejected.
pub const KNOWN_MODULES: &[&str] = &[
    "time-guard",
    "watchdog",
    "secrets",
    "containers",
    "init-containers",
    "logs-exec",
    "self-upgrade",
    "system-upgrade",
];

/// The agent's configuration (`config.toml`); every key is documented in `config.example.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Device id; derived from `machine_id_file` when absent.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Where the derived device id comes from.
    #[serde(default = "default_machine_id_file")]
    pub machine_id_file: PathBuf,
    /// Persistent state (state.db), ideally on its own volume.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Volatile runtime files.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
    /// Control plane selection and settings.
    #[serde(default)]
    pub control: ControlConfig,
    /// Store settings.
    #[serde(default)]
    pub store: StoreConfig,
    /// Logging settings.
    #[serde(default)]
    pub log: LogConfig,
    /// Per-module sections, parsed by each module's descriptor.
    #[serde(default)]
    pub modules: BTreeMap<String, toml::Value>,
}

/// `[control]`: which control plane feeds desired state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `local` (manifest directory, the default).
    #[serde(default = "default_plane")]
    pub plane: String,
    /// Directory of deployment manifests for the local plane.
    #[serde(default = "default_deployments_dir")]
    pub deployments_dir: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            plane: default_plane(),
            deployments_dir: default_deployments_dir(),
        }
    }
}

/// `[store]`: SQLite state settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Audit entries kept; older ones are trimmed and the trim recorded as a watermark.
    #[serde(default = "default_audit_max")]
    pub audit_max_entries: u64,
    /// Milliseconds a writer waits for a lock before failing.
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            audit_max_entries: default_audit_max(),
            busy_timeout_ms: default_busy_timeout(),
        }
    }
}

/// `[log]`: log filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
        }
    }
}

fn default_machine_id_file() -> PathBuf {
    "/etc/machine-id".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/fleet-agent".into()
}
fn default_run_dir() -> PathBuf {
    "/run/fleet-agent".into()
}
fn default_deployments_dir() -> PathBuf {
    "/etc/fleet-agent/deployments.d".into()
}
fn default_plane() -> String {
    "local".into()
}
fn default_heartbeat() -> u64 {
    10
}
fn default_audit_max() -> u64 {
    10_000
}
fn default_busy_timeout() -> u64 {
    5_000
}
fn default_level() -> String {
    "info".into()
}

/// A config problem: the file, and where in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid config.
    #[error("{0}")]
    Invalid(DecodeError),
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&src)
            .map_err(|e| ConfigError::Invalid(e.with_source(path.display().to_string())))
    }

    /// Parses and validates config text.
    pub fn parse(src: &str) -> Result<Self, DecodeError> {
        let cfg: Config = decode_toml(src)?;
        cfg.validate()
            .map_err(|(field, message)| located_error(src, field, message))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if let Some(id) = &self.device_id {
            DeviceId::parse(id).map_err(|e| ("device_id".to_owned(), e.to_string()))?;
        }
        if self.control.plane != "local" {
            return Err((
                "control.plane".into(),
                format!(
                    "unknown control plane {:?}; this build supports \"local\"",
                    self.control.plane
                ),
            ));
        }
        if !(1..=3600).contains(&self.heartbeat_interval_secs) {
            return Err((
                "heartbeat_interval_secs".into(),
                format!("{} is outside 1..=3600", self.heartbeat_interval_secs),
            ));
        }
        if self.store.audit_max_entries < 100 {
            return Err((
                "store.audit_max_entries".into(),
                format!(
                    "{} is below the minimum of 100",
                    self.store.audit_max_entries
                ),
            ));
        }
        for (name, value) in &self.modules {
            if !KNOWN_MODULES.contains(&name.as_str()) {
                return Err((
                    format!("modules.{name}"),
                    format!(
                        "unknown module {name:?}; known modules: {}",
                        KNOWN_MODULES.join(", ")
                    ),
                ));
            }
            if !value.is_table() {
                return Err((format!("modules.{name}"), "must be a table".into()));
            }
        }
        Ok(())
    }

    /// The device id: configured, or derived from the machine id.
    pub fn device_id(&self) -> Result<DeviceId, String> {
        if let Some(id) = &self.device_id {
            return DeviceId::parse(id).map_err(|e| format!("device_id: {e}"));
        }
        let raw = std::fs::read_to_string(&self.machine_id_file).map_err(|e| {
            format!(
                "no device_id configured and {} is unreadable: {e}",
                self.machine_id_file.display()
            )
        })?;
        DeviceId::from_machine_id(&raw).map_err(|e| {
            format!(
                "no device_id configured and {} does not hold a machine id: {e}",
                self.machine_id_file.display()
            )
        })
    }

    /// Path of the SQLite state file.
    pub fn state_db(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let src = include_str!("../config.example.toml");
        let cfg = Config::parse(src).expect("config.example.toml must parse");
        assert_eq!(cfg.heartbeat_interval_secs, default_heartbeat());
        assert_eq!(cfg.control.deployments_dir, default_deployments_dir());
        assert_eq!(cfg.store.audit_max_entries, default_audit_max());
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/fleet-agent"));
        assert_eq!(cfg.control.plane, "local");
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = Config::parse("device_id = \"pi-1\"\n[store]\naudit_max = 5\n").unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(3), Some("audit_max")),
            "{e}"
        );
        let e = Config::parse("[store]\naudit_max_entries = 5\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("store.audit_max_entries"));
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("device_id = \"Pi_1\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("device_id")));
        let e = Config::parse("[modules.containrs]\n").unwrap_err();
        assert!(e.message.contains("unknown module \"containrs\""), "{e}");
        let e = Config::parse("heartbeat_interval_secs = \"10\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("heartbeat_interval_secs"), "{e}");
    }

    #[test]
    fn device_id_derived_from_machine_id() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("machine-id");
        std::fs::write(&mid, "4c4c4544004d3510804bb4c04f4d3232\n").unwrap();
        let cfg = Config::parse(&format!("machine_id_file = {:?}\n", mid)).unwrap();
        assert_eq!(cfg.device_id().unwrap().as_str(), "m-4c4c4544004d3510");
        std::fs::write(&mid, "").unwrap();
        assert!(cfg.device_id().unwrap_err().contains("machine id"));
    }
}
