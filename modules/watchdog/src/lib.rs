//! Module `watchdog`: reports the hardware watchdog, so a fleet operator sees whether a
//! hang on this device turns into a reboot. By default systemd owns it
//! (`RuntimeWatchdogSec=`) and the module only reports it; the agent's own liveness is
//! covered by the service watchdog (`WatchdogSec=`), which the runtime pets only while its
//! loop runs and every module shows progress.
//!
//! With `device` set (where systemd does not own the watchdog), the module drives it: sets
//! its timeout by ioctl, pets it only while the runtime vouches for the agent (the condition
//! that gates the pings to systemd), and writes the magic close character only on a clean
//! shutdown, so a crashed, frozen or stuck agent resets the board.

mod config;
mod decide;
mod device;
mod sysfs;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_module_api::{
    async_trait, Capability, ConfigError, Context, Descriptor, Health, ModuleError, Needs, Probe,
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
    if !(2..=3600).contains(&config.timeout_secs) {
        return Err(ConfigError {
            module: NAME,
            message: format!(
                "timeout_secs must be 2 to 3600, not {}",
                config.timeout_secs
            ),
        });
    }
    if config
        .device
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(ConfigError {
            module: NAME,
            message: "device must be a path such as \"/dev/watchdog0\"".into(),
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

    /// Owns `device` until shutdown: sets its timeout, pets it while the runtime vouches for
    /// the agent, and stops it with the magic close character only on a clean shutdown.
    async fn own(&self, ctx: &Context, device: &Path) -> Result<(), ModuleError> {
        let d = device.display().to_string();
        let dev = device::Device::open(device)
            .map_err(|e| ModuleError::Fatal(decide::open_error(device, &e)))?;
        let timeout = dev
            .set_timeout(self.config.timeout_secs)
            .map_err(|e| ModuleError::external(format!("setting the timeout of {d}"), e))?;
        let identity = dev
            .identity()
            .unwrap_or_else(|e| format!("identity unknown: {e}"));
        // Pet three times per timeout; a stalled host must not look like a hang.
        let every = Duration::from_millis(u64::from(timeout) * 1000 / 3);
        tracing::info!(device = %d, %identity, timeout_secs = timeout, "owning the hardware watchdog");
        ctx.status.detail(
            NAME,
            serde_json::json!({
                "owned": d,
                "identity": identity,
                "timeout_secs": timeout,
            }),
        );
        let mut owner = decide::Owner::default();
        loop {
            ctx.progress.tick();
            match owner.step(ctx.progress.agent_healthy()) {
                decide::Step::Pet { resumed } => {
                    dev.keepalive()
                        .map_err(|e| ModuleError::external(format!("petting {d}"), e))?;
                    if resumed {
                        tracing::warn!(device = %d, "the agent is healthy again; petting the hardware watchdog");
                    }
                    self.set_health(Health::Healthy);
                }
                decide::Step::Withhold { first } => {
                    let why = format!(
                        "the agent is not healthy: not petting {d}; the board resets within {timeout} s unless it recovers"
                    );
                    if first {
                        tracing::error!("{why}");
                    }
                    self.set_health(Health::unhealthy(why));
                }
            }
            ctx.status.health_changed(NAME);
            tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        if decide::magic_close(ctx.shutdown.is_cancelled(), &owner) {
            dev.close_cleanly()
                .map_err(|e| ModuleError::external(format!("closing {d}"), e))?;
            tracing::info!(device = %d, "clean shutdown: stopped the hardware watchdog (magic close)");
        } else {
            tracing::warn!(device = %d, "left the hardware watchdog running");
        }
        Ok(())
    }
}

/// The manager's `RuntimeWatchdogUSec` (`systemctl show`), or `None` without systemd.
async fn systemd_runtime_watchdog() -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("systemctl")
            .args(["show", "--property=RuntimeWatchdogUSec", "--value"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[async_trait]
impl Capability for Watchdog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn needs(&self) -> Needs {
        match self.config.device {
            Some(_) => Needs::none().exclusive("/dev/watchdog"),
            None => Needs::none(),
        }
    }

    async fn probe(&self, _ctx: &Context) -> Probe {
        if let Some(device) = &self.config.device {
            let systemd = systemd_runtime_watchdog().await;
            return decide::device_probe(device, device.exists(), systemd.as_deref());
        }
        match sysfs::devices(&self.config.sysfs) {
            Ok(devices) => decide::probe(&devices, self.config.require_armed),
            Err(e) => {
                Probe::unavailable(format!("cannot read {}: {e}", self.config.sysfs.display()))
            }
        }
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        if let Some(device) = self.config.device.clone() {
            return self.own(&ctx, &device).await;
        }
        let every = Duration::from_secs(self.config.check_interval_secs);
        loop {
            ctx.progress.tick();
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
                () = ctx.progress.pulse() => {}
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
        for bad in ["timeout_secs = 1", "timeout_secs = 99999", "device = \"\""] {
            let v: toml::Value = toml::from_str(bad).unwrap();
            let e = (DESCRIPTOR.build)(Some(&v)).err().unwrap().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(key), "{bad}: {e}");
        }
        let v: toml::Value =
            toml::from_str("device = \"/dev/watchdog0\"\ntimeout_secs = 15").unwrap();
        assert!((DESCRIPTOR.build)(Some(&v)).is_ok());
        assert!((DESCRIPTOR.build)(None).is_ok());
    }
}
