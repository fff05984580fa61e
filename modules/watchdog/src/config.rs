use std::path::PathBuf;

use serde::Deserialize;

/// `[modules.watchdog]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the kernel lists watchdog devices.
    #[serde(default = "default_sysfs")]
    pub sysfs: PathBuf,
    /// Report unhealthy unless a hardware watchdog is armed (by systemd's
    /// `RuntimeWatchdogSec=`). Off by default: not every board has one.
    #[serde(default)]
    pub require_armed: bool,
    /// Seconds between re-checks.
    #[serde(default = "default_interval")]
    pub check_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sysfs: default_sysfs(),
            require_armed: false,
            check_interval_secs: default_interval(),
        }
    }
}

fn default_sysfs() -> PathBuf {
    "/sys/class/watchdog".into()
}
/// The hardware watchdog's armed state changes at boot or when systemd is reconfigured,
/// not on its own: a long re-check keeps an idle agent asleep.
fn default_interval() -> u64 {
    300
}
