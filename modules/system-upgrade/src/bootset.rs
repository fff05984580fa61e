//! The boot (FAT) partition's files besides the state (initramfs/CONTRACT.md §1, §4, §5):
//! the saved pre-upgrade boot set (firmware blobs included), `config.txt` pointed at it
//! during the upgrade, the trial
//! set (`tryboot.txt`, `fleet/cmdline.trial`) and `fleet/boot.log`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bootstate::{rename_durable, sync_dir};

/// `config.txt` appendix that makes any boot during the upgrade use the saved (old) set.
pub const SAVED_SET_PREFIX: &str = "fleet/preupgrade/";
/// The trial's command line, relative to the boot partition.
pub const TRIAL_CMDLINE: &str = "fleet/cmdline.trial";
/// `boot.log` is trimmed to this many lines once it passes [`BOOT_LOG_MAX`].
const BOOT_LOG_KEEP: usize = 200;
const BOOT_LOG_MAX: u64 = 64 * 1024;

/// The boot partition, mounted at `root`.
#[derive(Debug, Clone)]
pub struct BootDir {
    root: PathBuf,
}

impl BootDir {
    /// The partition mounted at `root` (e.g. `/boot/firmware`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/fleet`.
    pub fn fleet(&self) -> PathBuf {
        self.root.join("fleet")
    }

    /// `<root>/fleet/preupgrade`.
    pub fn saved(&self) -> PathBuf {
        self.root.join(SAVED_SET_PREFIX.trim_end_matches('/'))
    }

    /// Is a saved boot set there?
    pub fn has_saved(&self) -> bool {
        self.saved().is_dir()
    }

    /// The top-level files that make up the boot set: kernel, initramfs, `cmdline.txt`,
    /// `config.txt`, `*.dtb`, the firmware (`start*.elf`, `fixup*.dat`, `bootcode.bin`;
    /// what exists), plus what `config.txt` names with `kernel=` and `initramfs`.
    /// Directories: `overlays/`.
    pub fn boot_set(&self) -> std::io::Result<(Vec<String>, Vec<String>)> {
        let config = std::fs::read_to_string(self.root.join("config.txt")).unwrap_or_default();
        let named = named_files(&config);
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let ft = entry.file_type()?;
            if ft.is_dir() && name == "overlays" {
                dirs.push(name);
            } else if ft.is_file() && (is_boot_file(&name) || named.contains(&name)) {
                files.push(name);
            }
        }
        files.sort();
        Ok((files, dirs))
    }

    /// Copies the boot set to `fleet/preupgrade/` (through a temp dir renamed at the end, so
    /// the saved set is complete or absent). Returns the names saved.
    pub fn save_boot_set(&self) -> std::io::Result<Vec<String>> {
        let (files, dirs) = self.boot_set()?;
        if !files.iter().any(|f| f == "config.txt") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no config.txt", self.root.display()),
            ));
        }
        std::fs::create_dir_all(self.fleet())?;
        let tmp = self.fleet().join("preupgrade.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        if self.saved().exists() {
            std::fs::remove_dir_all(self.saved())?;
        }
        std::fs::create_dir(&tmp)?;
        for f in &files {
            copy_synced(&self.root.join(f), &tmp.join(f))?;
        }
        for d in &dirs {
            copy_dir(&self.root.join(d), &tmp.join(d))?;
        }
        sync_dir(&tmp)?;
        rename_durable(&tmp, &self.saved())?;
        let mut all = files;
        all.extend(dirs.into_iter().map(|d| format!("{d}/")));
        Ok(all)
    }

    /// Rewrites `config.txt` as the saved one followed by `[all]` + `os_prefix=fleet/preupgrade/`
    /// and the `start_file=` / `fixup_file=` lines naming the saved firmware blobs
    /// ([`crate::firmware::saved_firmware_lines`]) where `pin` says this board's firmware
    /// can take them ([`crate::board::read_firmware_pin`]), so any boot during the upgrade
    /// boots the saved (old) kernel and initramfs, and the saved firmware where pinned. A
    /// new blob is only used by the trial (`tryboot.txt` has no such lines) and becomes the
    /// default at commit; unpinned, a non-trial boot loads the top-level (maybe new) blobs.
    pub fn point_default_at_saved(&self, pin: &crate::board::FirmwarePin) -> std::io::Result<()> {
        let saved = std::fs::read_to_string(self.saved().join("config.txt"))?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.saved())? {
            if let Some(n) = entry?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        let firmware = crate::firmware::saved_firmware_lines(&saved, &names, SAVED_SET_PREFIX, pin);
        let text = format!(
            "{}\n[all]\nos_prefix={SAVED_SET_PREFIX}\n{firmware}",
            saved.trim_end()
        );
        self.replace_file("config.txt", text.as_bytes())
    }

    /// Does `config.txt` carry the `os_prefix` line [`Self::point_default_at_saved`] adds?
    /// (The same test as the initramfs's: a line `os_prefix=fleet/preupgrade/`.)
    pub fn default_points_at_saved(&self) -> bool {
        std::fs::read_to_string(self.root.join("config.txt")).is_ok_and(|c| {
            c.lines()
                .any(|l| l.trim() == format!("os_prefix={SAVED_SET_PREFIX}"))
        })
    }

    /// `config.txt` back from `fleet/preupgrade/config.txt`; `false` when nothing is saved.
    pub fn restore_default_config(&self) -> std::io::Result<bool> {
        match std::fs::read(self.saved().join("config.txt")) {
            Ok(saved) => {
                self.replace_file("config.txt", &saved)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `fleet/preupgrade/` (and a leftover temp copy).
    pub fn remove_saved(&self) -> std::io::Result<()> {
        for d in [self.saved(), self.fleet().join("preupgrade.tmp")] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if self.fleet().is_dir() {
            sync_dir(&self.fleet())?;
        }
        Ok(())
    }

    /// Writes the trial set: `fleet/cmdline.trial` (top-level `cmdline.txt` plus
    /// ` fleet.upgrade=<id>`) and `tryboot.txt` (the saved `config.txt`, i.e. the top-level
    /// kernel and initramfs, with `cmdline=fleet/cmdline.trial`).
    pub fn write_trial(&self, upgrade: &str) -> std::io::Result<()> {
        let cmdline = std::fs::read_to_string(self.root.join("cmdline.txt"))?;
        let first = cmdline.lines().next().unwrap_or("").trim();
        let trial_cmdline = format!("{first} fleet.upgrade={upgrade}\n");
        self.replace_file(TRIAL_CMDLINE, trial_cmdline.as_bytes())?;
        let config = std::fs::read_to_string(self.saved().join("config.txt"))?;
        let text = format!("{}\n[all]\ncmdline={TRIAL_CMDLINE}\n", config.trim_end());
        self.replace_file("tryboot.txt", text.as_bytes())
    }

    /// Removes `tryboot.txt` and `fleet/cmdline.trial`.
    pub fn remove_trial(&self) -> std::io::Result<()> {
        for f in [self.root.join("tryboot.txt"), self.root.join(TRIAL_CMDLINE)] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.root)
    }

    /// Replaces `rel` (relative to the root) through a temp file and a rename, synced.
    pub fn replace_file(&self, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.root.join(rel);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(
            ".{}.fleet-new",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        rename_durable(&tmp, &path)
    }

    /// Appends `<unix> agent <text>` to `fleet/boot.log`, trimming it to its last 200 lines
    /// once it passes 64 KiB. Errors are ignored: the log never blocks the upgrade.
    pub fn log(&self, unix: u64, text: &str) {
        let path = self.fleet().join("boot.log");
        let line = format!("{unix} agent {}\n", crate::bootstate::clean_reason(text));
        let _ = std::fs::create_dir_all(self.fleet());
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = f.write_all(line.as_bytes());
            let _ = f.sync_all();
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > BOOT_LOG_MAX) {
            if let Ok(all) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = all.lines().collect();
                let keep = lines[lines.len().saturating_sub(BOOT_LOG_KEEP)..].join("\n");
                let _ = self.replace_file("fleet/boot.log", format!("{keep}\n").as_bytes());
            }
        }
    }
}

/// Top-level files that belong to a boot set by name.
fn is_boot_file(name: &str) -> bool {
    crate::firmware::is_firmware_file(name)
        || name == "config.txt"
        || name == "cmdline.txt"
        || name.ends_with(".dtb")
        || (name.starts_with("kernel") && name.ends_with(".img"))
        || name.starts_with("vmlinuz")
        || name.starts_with("initrd")
        || name.starts_with("initramfs")
}

/// Files `config.txt` names with `kernel=` and `initramfs <file>` (no prefix, top level).
fn named_files(config: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in config.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("kernel=") {
            out.push(k.trim().to_owned());
        } else if let Some(rest) = line
            .strip_prefix("initramfs ")
            .or_else(|| line.strip_prefix("initramfs\t"))
        {
            if let Some(f) = rest.split_whitespace().next() {
                out.push(f.to_owned());
            }
        }
    }
    out.retain(|f| !f.is_empty() && !f.contains('/'));
    out
}

fn copy_synced(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let target = to.join(entry.file_name());
        if ft.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if ft.is_file() {
            copy_synced(&entry.path(), &target)?;
        }
    }
    sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_config_txt() {
        let c = "kernel=Image\ninitramfs initrd.gz followkernel\n#kernel=x\nkernel=sub/dir.img\n";
        assert_eq!(named_files(c), ["Image", "initrd.gz"]);
        assert!(is_boot_file("kernel8.img"));
        assert!(is_boot_file("bcm2711-rpi-4-b.dtb"));
        assert!(is_boot_file("start4.elf") && is_boot_file("fixup4.dat"));
        assert!(!is_boot_file("tryboot.txt"));
    }
}
