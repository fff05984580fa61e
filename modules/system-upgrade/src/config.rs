use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which [`crate::selector::BootSelector`] arms the trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorKind {
    /// Raspberry Pi firmware `tryboot` (mailbox reboot flag).
    RpiTryboot,
    /// The VM harness's fake firmware (`tryboot.flag`).
    Vm,
}

impl SelectorKind {
    /// The state file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorKind::RpiTryboot => "rpi-tryboot",
            SelectorKind::Vm => "vm",
        }
    }
}

/// `[modules.system-upgrade]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mount point of the boot (FAT) partition.
    #[serde(default = "default_boot_dir")]
    pub boot_dir: PathBuf,
    /// Volume group of the root LV.
    #[serde(default = "default_vg")]
    pub vg: String,
    /// The root LV (thin).
    #[serde(default = "default_root_lv")]
    pub root_lv: String,
    /// Name of the pre-upgrade snapshot (the initramfs merges `vg/snapshot_lv`).
    #[serde(default = "default_snapshot_lv")]
    pub snapshot_lv: String,
    /// The thin pool must have at least this share free (0..=99).
    #[serde(default = "default_min_free_percent")]
    pub min_pool_free_percent: u8,
    /// ... and at least this many bytes free.
    #[serde(default = "default_min_free_bytes")]
    pub min_pool_free_bytes: u64,
    /// `rpi-tryboot` or `vm`.
    #[serde(default = "default_selector")]
    pub selector: SelectorKind,
    /// Upgrade command when a request names none (run with `/bin/sh -c` in the transient
    /// unit `fleet-os-upgrade-<id>.service`).
    #[serde(default = "default_command")]
    pub command: String,
    /// Seconds a trial boot has to check in, when a request names none.
    #[serde(default = "default_deadline")]
    pub deadline_secs: u64,
    /// Trial boots allowed to fail before rollback, when a request names none.
    #[serde(default = "default_max_boots")]
    pub max_boots: u32,
    /// Trial boots allowed beyond `max_boots` in all, counting boots that reached userspace
    /// (a hang after the good-boot mark, a reboot during probation): without this limit a
    /// system that hangs late would be tried forever (CONTRACT §6).
    #[serde(default = "default_spare_trial_boots")]
    pub spare_trial_boots: u32,
    /// The upgrade command's unit is stopped (and the upgrade rolled back) after this long,
    /// counted from its start (across agent restarts).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// Reboots the device (run with `/bin/sh -c`).
    #[serde(default = "default_reboot")]
    pub reboot_command: String,
    /// The `lvm` program.
    #[serde(default = "default_lvm")]
    pub lvm: PathBuf,
    /// Files that must exist for the initramfs side to be installed.
    #[serde(default = "default_hooks")]
    pub initramfs_hook_files: Vec<PathBuf>,
    /// The firmware mailbox device (`rpi-tryboot`).
    #[serde(default = "default_vcio")]
    pub vcio_device: PathBuf,
    /// Kernel command line (tells a trial boot).
    #[serde(default = "default_cmdline")]
    pub cmdline_file: PathBuf,
    /// Mount table (the probe checks the boot partition and root).
    #[serde(default = "default_mountinfo")]
    pub mountinfo_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            boot_dir: default_boot_dir(),
            vg: default_vg(),
            root_lv: default_root_lv(),
            snapshot_lv: default_snapshot_lv(),
            min_pool_free_percent: default_min_free_percent(),
            min_pool_free_bytes: default_min_free_bytes(),
            selector: default_selector(),
            command: default_command(),
            deadline_secs: default_deadline(),
            max_boots: default_max_boots(),
            spare_trial_boots: default_spare_trial_boots(),
            command_timeout_secs: default_command_timeout(),
            reboot_command: default_reboot(),
            lvm: default_lvm(),
            initramfs_hook_files: default_hooks(),
            vcio_device: default_vcio(),
            cmdline_file: default_cmdline(),
            mountinfo_file: default_mountinfo(),
        }
    }
}

impl Config {
    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_pool_free_percent > 99 {
            return Err(format!(
                "min_pool_free_percent: {} is above 99",
                self.min_pool_free_percent
            ));
        }
        if !fleet_contract::DEADLINE_RANGE.contains(&self.deadline_secs) {
            return Err(format!(
                "deadline_secs: {} is outside 60..=86400",
                self.deadline_secs
            ));
        }
        if !fleet_contract::MAX_BOOTS_RANGE.contains(&self.max_boots) {
            return Err(format!("max_boots: {} is outside 1..=10", self.max_boots));
        }
        if self.spare_trial_boots > 10 {
            return Err(format!(
                "spare_trial_boots: {} is outside 0..=10",
                self.spare_trial_boots
            ));
        }
        if self.command_timeout_secs == 0 {
            return Err("command_timeout_secs must be at least 1".into());
        }
        for (key, v) in [
            ("command", &self.command),
            ("reboot_command", &self.reboot_command),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{key} must not be empty"));
            }
        }
        for (key, v) in [
            ("vg", &self.vg),
            ("root_lv", &self.root_lv),
            ("snapshot_lv", &self.snapshot_lv),
        ] {
            let ok = !v.is_empty()
                && !v.starts_with('-')
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
            if !ok {
                return Err(format!("{key}: {v:?} is not an LVM name"));
            }
        }
        if self.root_lv == self.snapshot_lv {
            return Err("snapshot_lv must differ from root_lv".into());
        }
        Ok(())
    }
}

fn default_boot_dir() -> PathBuf {
    "/boot/firmware".into()
}
fn default_vg() -> String {
    "vg0".into()
}
fn default_root_lv() -> String {
    "root".into()
}
fn default_snapshot_lv() -> String {
    "root_preupgrade".into()
}
fn default_min_free_percent() -> u8 {
    10
}
fn default_min_free_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_selector() -> SelectorKind {
    SelectorKind::RpiTryboot
}
fn default_command() -> String {
    fleet_contract::DEFAULT_UPGRADE_COMMAND.into()
}
fn default_deadline() -> u64 {
    600
}
fn default_max_boots() -> u32 {
    3
}
fn default_spare_trial_boots() -> u32 {
    2
}
fn default_command_timeout() -> u64 {
    3600
}
fn default_reboot() -> String {
    "systemctl reboot".into()
}
fn default_lvm() -> PathBuf {
    "lvm".into()
}
fn default_hooks() -> Vec<PathBuf> {
    vec![
        "/usr/share/initramfs-tools/hooks/fleet-bootcount".into(),
        "/usr/share/initramfs-tools/scripts/local-top/fleet-bootcount".into(),
    ]
}
fn default_vcio() -> PathBuf {
    "/dev/vcio".into()
}
fn default_cmdline() -> PathBuf {
    "/proc/cmdline".into()
}
fn default_mountinfo() -> PathBuf {
    "/proc/self/mountinfo".into()
}
