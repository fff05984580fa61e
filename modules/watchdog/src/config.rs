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
    /// `RuntimeWatchdogSec=`, or by this module with `device`). Off by default: not every
    /// board has one.
    #[serde(default)]
    pub require_armed: bool,
    /// Seconds between re-checks.
    #[serde(default = "default_interval")]
    pub check_interval_secs: u64,
    /// Drive this watchdog device (e.g. `/dev/watchdog0`) where systemd does not: set its
    /// timeout, pet it while the agent is healthy, stop it on a clean shutdown only. Unset
    /// (the default): only report the watchdog systemd owns.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// The hardware timeout set on `device`, in seconds: shorter than the service's
    /// `WatchdogSec=`, or systemd restarts a hung agent (which opens and pets the device
    /// again) before the board resets.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sysfs: default_sysfs(),
            require_armed: false,
            check_interval_secs: default_interval(),
            device: None,
            timeout_secs: default_timeout(),
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
/// Below the unit's `WatchdogSec=30s`, above the stalls a loaded board shows.
fn default_timeout() -> u32 {
    20
}
