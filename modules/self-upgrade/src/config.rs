//! `[modules.self-upgrade]`: where the versions live, the probation limits and the release
//! keys. Every path is configurable so tests run in temp dirs.

use std::path::PathBuf;

use serde::Deserialize;

/// The module's config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of the installed versions: `<install_root>/versions/<v>/fleet-agent` and the
    /// `<install_root>/confirmed -> versions/<v>` link.
    #[serde(default = "default_install_root")]
    pub install_root: PathBuf,
    /// The link systemd starts (`ExecStart=`): `-> <install_root>/versions/<v>/fleet-agent`.
    #[serde(default = "default_current_link")]
    pub current_link: PathBuf,
    /// The agent's config file, passed to `<new> self-test --config` and the guard.
    #[serde(default = "default_config_path")]
    pub config_path: PathBuf,
    /// Seconds a new version has to check in (control plane reached, modules healthy).
    #[serde(default = "default_deadline")]
    pub probation_deadline_secs: u64,
    /// Start attempts of a new version during probation before the guard reverts.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Largest artifact accepted, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_artifact_bytes: u64,
    /// Seconds `<new> self-test` may take.
    #[serde(default = "default_self_test_timeout")]
    pub self_test_timeout_secs: u64,
    /// Installed versions kept (besides `confirmed` and current, which are never deleted).
    #[serde(default = "default_keep")]
    pub keep_versions: usize,
    /// Release public keys; separate from `[[trust.operators]]`. Empty: every upgrade is
    /// refused.
    #[serde(default)]
    pub release_keys: Vec<ReleaseKey>,
    /// Let the desired-state document `<device>.agent` move the agent to an older version.
    /// Off: that document is not operator-signed, so only the signed `agent-upgrade`
    /// command may downgrade.
    #[serde(default)]
    pub allow_desired_downgrade: bool,
}

/// One `[[modules.self-upgrade.release_keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseKey {
    /// Name a release signature refers to.
    pub name: String,
    /// Base64 Ed25519 public key (`fleetctl keygen` prints it).
    pub public_key: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            install_root: default_install_root(),
            current_link: default_current_link(),
            config_path: default_config_path(),
            probation_deadline_secs: default_deadline(),
            max_attempts: default_attempts(),
            max_artifact_bytes: default_max_bytes(),
            self_test_timeout_secs: default_self_test_timeout(),
            keep_versions: default_keep(),
            release_keys: Vec::new(),
            allow_desired_downgrade: false,
        }
    }
}

impl Config {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts: must be at least 1".into());
        }
        if self.probation_deadline_secs == 0 {
            return Err("probation_deadline_secs: must be at least 1".into());
        }
        if self.keep_versions < 2 {
            return Err("keep_versions: must be at least 2 (the confirmed and the new one)".into());
        }
        for (i, k) in self.release_keys.iter().enumerate() {
            fleet_contract::decode_public_key(&k.public_key)
                .map_err(|e| format!("release_keys[{i}].public_key ({}): {e}", k.name))?;
        }
        Ok(())
    }
}

fn default_install_root() -> PathBuf {
    "/usr/lib/fleet-agent".into()
}
fn default_current_link() -> PathBuf {
    "/usr/bin/fleet-agent".into()
}
fn default_config_path() -> PathBuf {
    "/etc/fleet-agent/config.toml".into()
}
fn default_deadline() -> u64 {
    600
}
fn default_attempts() -> u32 {
    3
}
fn default_max_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_self_test_timeout() -> u64 {
    60
}
fn default_keep() -> usize {
    3
}
