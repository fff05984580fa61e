//! Module `watchdog`: reports the hardware watchdog that systemd arms
//! (`RuntimeWatchdogSec=`), so a fleet operator sees whether a hang on this device turns
//! into a reboot. The agent never opens `/dev/watchdog` itself: systemd owns it, and the
//! agent's own liveness is covered by the service watchdog (`WatchdogSec=`), which the
//! runtime pets only while its supervisor loop runs.

mod config;
mod decide;
mod sysfs;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_module_api::{
    async_trait, Capability, ConfigError, Context, Descriptor, Health, ModuleError, Probe,
};

pub use config::Config;

/// The module's name, cargo feature and config section.
pub const NAME: &str = "watchdog";

/// Registration entry for the agent's module list.
pub const DESCRIPTOR: Descriptor = Descriptor { name: NAME, build };

fn build(section: Option<&toml::Value>) -> Result<Arc<dyn Capability>, ConfigError> {
    let config: Config = fleet_module_api::parse_section(NAME, section)?;
    if config.check_interval_secs == 0 {
        return Err(ConfigError {
            module: NAME,
            message: "check_interval_secs must be at least 1".into(),
        });
    }
    Ok(Arc::new(Watchdog::new(config)))
}

/// The watchdog module.
pub struct Watchdog {
    config: Config,
    health: Mutex<Health>,
}

impl Watchdog {
    /// A module with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            health: Mutex::new(Health::Starting),
        }
    }

    fn set_health(&self, h: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }
}

#[async_trait]
impl Capability for Watchdog {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn probe(&self, _ctx: &Context) -> Probe {
        match sysfs::devices(&self.config.sysfs) {
            Ok(devices) => decide::probe(&devices, self.config.require_armed),
            Err(e) => {
                Probe::unavailable(format!("cannot read {}: {e}", self.config.sysfs.display()))
            }
        }
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let every = Duration::from_secs(self.config.check_interval_secs);
        loop {
            let devices = sysfs::devices(&self.config.sysfs).map_err(|e| {
                ModuleError::external(format!("read {}", self.config.sysfs.display()), e)
            })?;
            let health = decide::health(&devices, self.config.require_armed);
            if !health.is_healthy() {
                tracing::warn!(?health, "hardware watchdog check");
            }
            self.set_health(health);
            ctx.status.health_changed(NAME);
            ctx.status.detail(
                NAME,
                serde_json::json!({
                    "devices": devices,
                    "armed": decide::armed(&devices).map(|d| d.name.clone()),
                }),
            );
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("watchdog0");
        std::fs::create_dir(&w).unwrap();
        std::fs::write(w.join("identity"), "i6300ESB timer\n").unwrap();
        std::fs::write(w.join("state"), "active\n").unwrap();
        std::fs::write(w.join("timeout"), "10\n").unwrap();
        std::fs::create_dir(dir.path().join("other")).unwrap();
        let devices = sysfs::devices(dir.path()).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(
            decide::armed(&devices).map(|d| d.timeout_secs),
            Some(Some(10))
        );
        assert!(sysfs::devices(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn config_rejects_unknown_keys_by_name() {
        let v: toml::Value = toml::from_str("require_armd = true").unwrap();
        let e = (DESCRIPTOR.build)(Some(&v)).err().unwrap();
        assert!(e.to_string().contains("[modules.watchdog]"), "{e}");
        assert!(e.to_string().contains("require_armd"), "{e}");
        let v: toml::Value = toml::from_str("check_interval_secs = 0").unwrap();
        assert!((DESCRIPTOR.build)(Some(&v)).is_err());
        assert!((DESCRIPTOR.build)(None).is_ok());
    }
}
