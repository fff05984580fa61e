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
    /// Command acceptance limits.
    #[serde(default)]
    pub commands: CommandsConfig,
    /// Trusted operator keys.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Per-module sections, parsed by each module's descriptor.
    #[serde(default)]
    pub modules: BTreeMap<String, toml::Value>,
}

/// `[control]`: which control plane feeds desired state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `local` (manifest directory, the default), `nats` or `mqtt`.
    #[serde(default = "default_plane")]
    pub plane: String,
    /// Directory of deployment manifests for the local plane.
    #[serde(default = "default_deployments_dir")]
    pub deployments_dir: PathBuf,
    /// NATS settings (plane = "nats").
    #[serde(default)]
    pub nats: NatsConfig,
    /// MQTT 5 settings (plane = "mqtt").
    #[serde(default)]
    pub mqtt: MqttConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            plane: default_plane(),
            deployments_dir: default_deployments_dir(),
            nats: NatsConfig::default(),
            mqtt: MqttConfig::default(),
        }
    }
}

/// `[control.nats]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (a cluster: list several); tried in order, reconnects anywhere.
    #[serde(default)]
    pub servers: Vec<String>,
    /// `.creds` file (JWT + nkey seed) for authentication.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// CA bundle to verify the servers' TLS certificates (enables TLS).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

/// `[control.mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host.
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id; the device id when absent (a persistent session is keyed by it).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (root-only); never the password itself in config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// How long the broker keeps the session (and queued QoS 1 messages) while offline.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            client_id: None,
            username: None,
            password_file: None,
            keep_alive_secs: default_keep_alive(),
            session_expiry_secs: default_session_expiry(),
        }
    }
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> u64 {
    30
}
fn default_session_expiry() -> u32 {
    3600
}

/// `[commands]`: limits on signed commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// A command issued more than this far in the future is refused.
    #[serde(default = "default_skew")]
    pub max_clock_skew_secs: u64,
    /// A command valid for longer than this is refused (bounds the replay journal).
    #[serde(default = "default_lifetime")]
    pub max_lifetime_secs: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            max_clock_skew_secs: default_skew(),
            max_lifetime_secs: default_lifetime(),
        }
    }
}

fn default_skew() -> u64 {
    60
}
fn default_lifetime() -> u64 {
    86_400
}

/// `[trust]`: who may command this device. Empty = every command is denied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Operator public keys with their roles.
    #[serde(default)]
    pub operators: Vec<OperatorKey>,
}

/// One `[[trust.operators]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorKey {
    /// Name shown in the audit log.
    pub name: String,
    /// Base64 Ed25519 public key (`fleetctl keygen` prints it).
    pub public_key: String,
    /// `viewer`, `operator` or `admin`.
    pub role: fleet_contract::Role,
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
        match self.control.plane.as_str() {
            "local" => {}
            "nats" => {
                if self.control.nats.servers.is_empty() {
                    return Err((
                        "control.nats.servers".into(),
                        "plane \"nats\" needs at least one server URL".into(),
                    ));
                }
                for url in &self.control.nats.servers {
                    if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                        return Err((
                            "control.nats.servers".into(),
                            format!("{url:?} is not a nats:// or tls:// URL"),
                        ));
                    }
                }
                if self.control.nats.tls_cert_file.is_some()
                    != self.control.nats.tls_key_file.is_some()
                {
                    return Err((
                        "control.nats.tls_key_file".into(),
                        "tls_cert_file and tls_key_file go together".into(),
                    ));
                }
            }
            "mqtt" => {
                if self.control.mqtt.host.is_empty() {
                    return Err(("control.mqtt.host".into(), "must not be empty".into()));
                }
                if self.control.mqtt.keep_alive_secs < 5 {
                    return Err((
                        "control.mqtt.keep_alive_secs".into(),
                        "must be at least 5".into(),
                    ));
                }
            }
            other => {
                return Err((
                    "control.plane".into(),
                    format!("unknown control plane {other:?}; use \"local\", \"nats\" or \"mqtt\""),
                ))
            }
        }
        for (i, op) in self.trust.operators.iter().enumerate() {
            if let Err(e) = fleet_contract::decode_public_key(&op.public_key) {
                return Err((format!("trust.operators[{i}].public_key"), e));
            }
            if op.name.is_empty() {
                return Err((
                    format!("trust.operators[{i}].name"),
                    "must not be empty".into(),
                ));
            }
        }
        if self.commands.max_lifetime_secs == 0 {
            return Err((
                "commands.max_lifetime_secs".into(),
                "must be at least 1".into(),
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
    fn control_plane_and_trust_errors_are_located() {
        let e = Config::parse("[control]\nplane = \"nats\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("control.nats.servers"), "{e}");
        let e = Config::parse(
            "[control]\nplane = \"nats\"\n[control.nats]\nservers = [\"http://x\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_deref(), e.line),
            (Some("control.nats.servers"), Some(4)),
            "{e}"
        );
        let e = Config::parse("[control]\nplane = \"amqp\"\n").unwrap_err();
        assert_eq!(
            (e.field.as_deref(), e.line),
            (Some("control.plane"), Some(2)),
            "{e}"
        );
        let src = "[[trust.operators]]\nname = \"a\"\npublic_key = \"AAAA\"\nrole = \"admin\"\n";
        let e = Config::parse(src).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("trust.operators[0].public_key"),
            "{e}"
        );
        assert_eq!(e.line, Some(3), "{e}");
        let e = Config::parse(&src.replace("admin", "root")).unwrap_err();
        assert_eq!(e.line, Some(4), "unknown role is located: {e}");
        assert!(
            Config::parse("[control]\nplane = \"mqtt\"\n").is_ok(),
            "mqtt defaults are usable"
        );
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
