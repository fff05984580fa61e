//! The device layout for self-upgrade and every file operation on it: versioned installs,
//! atomic symlink swaps, fsynced records on the state volume, pruning.
//!
//! ```text
//! <install_root>/versions/<v>/fleet-agent     every installed version (keep the last N)
//! <install_root>/versions/.staging-<v>/       downloads in progress (never executable)
//! <install_root>/confirmed -> versions/<v>    last version that proved itself
//! <current_link> -> <install_root>/versions/<v>/fleet-agent   what systemd starts
//! <state_dir>/self-upgrade/probation.json     from, to, deadline, attempts (during probation)
//! <state_dir>/self-upgrade/outcome.json       Confirmed | Reverted{from, to, reason}
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Error;

/// Binary name inside a version directory.
pub const BINARY: &str = "fleet-agent";

/// Resolved paths of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<install_root>`.
    pub install_root: PathBuf,
    /// `<install_root>/versions`.
    pub versions: PathBuf,
    /// `<install_root>/confirmed`.
    pub confirmed: PathBuf,
    /// The link systemd starts.
    pub current: PathBuf,
    /// `<state_dir>/self-upgrade`.
    pub records: PathBuf,
}

/// Written at cutover, before the current link moves; read by the guard at every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probation {
    /// Version that was running (and is `confirmed`).
    pub from: String,
    /// Version on probation.
    pub to: String,
    /// Wall-clock deadline, Unix seconds (used only across reboots, see [`crate::guard`]).
    pub deadline_unix: u64,
    /// Boot the monotonic deadline belongs to (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Deadline on that boot's CLOCK_BOOTTIME (`/proc/uptime`), seconds.
    pub deadline_uptime_secs: u64,
    /// Start attempts of `to` counted by the guard so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Length of the probation, seconds (bounds re-anchoring after a reboot).
    pub deadline_secs: u64,
}

/// How the last upgrade ended; read by the agent on start and shown in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase", deny_unknown_fields)]
pub enum Outcome {
    /// `to` checked in and is `confirmed`.
    Confirmed {
        /// Previous version.
        from: String,
        /// Confirmed version.
        to: String,
        /// Unix seconds.
        at: u64,
    },
    /// The upgrade was undone; `confirmed` runs again.
    Reverted {
        /// Version that was running before.
        from: String,
        /// Version that failed.
        to: String,
        /// Why, in one line.
        reason: String,
        /// Unix seconds.
        at: u64,
    },
}

impl Layout {
    /// Paths from the module config and the agent's state dir.
    pub fn new(cfg: &Config, state_dir: &Path) -> Self {
        Self {
            install_root: cfg.install_root.clone(),
            versions: cfg.install_root.join("versions"),
            confirmed: cfg.install_root.join("confirmed"),
            current: cfg.current_link.clone(),
            records: state_dir.join("self-upgrade"),
        }
    }

    /// `versions/<v>`.
    pub fn version_dir(&self, v: &str) -> PathBuf {
        self.versions.join(v)
    }

    /// `versions/<v>/fleet-agent`.
    pub fn binary(&self, v: &str) -> PathBuf {
        self.version_dir(v).join(BINARY)
    }

    /// `versions/.staging-<v>`.
    pub fn staging_dir(&self, v: &str) -> PathBuf {
        self.versions.join(format!(".staging-{v}"))
    }

    /// The probation record.
    pub fn probation_path(&self) -> PathBuf {
        self.records.join("probation.json")
    }

    /// The outcome record.
    pub fn outcome_path(&self) -> PathBuf {
        self.records.join("outcome.json")
    }

    /// Version the current link points at (`None`: not a link into `versions/`).
    pub fn current_version(&self) -> Option<String> {
        let target = fs::read_link(&self.current).ok()?;
        let target = if target.is_absolute() {
            target
        } else {
            self.current.parent()?.join(target)
        };
        self.version_of(&target)
    }

    /// Version `confirmed` points at.
    pub fn confirmed_version(&self) -> Option<String> {
        let target = fs::read_link(&self.confirmed).ok()?;
        let target = if target.is_absolute() {
            target
        } else {
            self.install_root.join(target)
        };
        self.version_of(&target.join(BINARY))
    }

    fn version_of(&self, binary: &Path) -> Option<String> {
        let dir = binary.parent()?;
        if dir.parent()? != self.versions {
            return None;
        }
        let v = dir.file_name()?.to_str()?.to_owned();
        (binary.file_name()? == BINARY).then_some(v)
    }

    /// Errors unless `confirmed` and the current link are in place.
    pub fn check(&self) -> Result<(String, String), Error> {
        let confirmed = self.confirmed_version().ok_or_else(|| {
            Error::Layout(format!(
                "{} is not a link into {}",
                self.confirmed.display(),
                self.versions.display()
            ))
        })?;
        let current = self.current_version().ok_or_else(|| {
            Error::Layout(format!(
                "{} is not a link to {}/<v>/{BINARY}",
                self.current.display(),
                self.versions.display()
            ))
        })?;
        Ok((confirmed, current))
    }

    /// Lays out a device whose current link is a plain file (a fresh install): copies the
    /// running binary to `versions/<version>/`, points `confirmed` at it and replaces the
    /// plain file by a link. Does nothing when the layout exists.
    pub fn adopt(&self, version: &str, running_exe: &Path) -> Result<bool, Error> {
        if self.confirmed_version().is_some() && self.current_version().is_some() {
            return Ok(false);
        }
        fs::create_dir_all(&self.versions).map_err(Error::io(&self.versions))?;
        let bin = self.binary(version);
        if !bin.exists() {
            let staging = self.staging_dir(version);
            let _ = fs::remove_dir_all(&staging);
            fs::create_dir_all(&staging).map_err(Error::io(&staging))?;
            let part = staging.join(BINARY);
            fs::copy(running_exe, &part).map_err(Error::io(&part))?;
            File::open(&part)
                .and_then(|f| f.sync_all())
                .map_err(Error::io(&part))?;
            fs::set_permissions(&part, fs::Permissions::from_mode(0o755))
                .map_err(Error::io(&part))?;
            fs::rename(&staging, self.version_dir(version)).map_err(Error::io(&staging))?;
            sync_dir(&self.versions)?;
        }
        if self.confirmed_version().is_none() {
            swap_link(&self.confirmed, &Path::new("versions").join(version))?;
        }
        if self.current_version().is_none() {
            swap_link(&self.current, &bin)?;
        }
        Ok(true)
    }

    /// Moves a fully written, verified staging dir to `versions/<v>/` (atomic rename; the
    /// binary becomes executable only now). An existing `versions/<v>` is replaced unless
    /// it is current or confirmed.
    pub fn install(&self, v: &str) -> Result<PathBuf, Error> {
        let staging = self.staging_dir(v);
        let part = staging.join(BINARY);
        fs::set_permissions(&part, fs::Permissions::from_mode(0o755)).map_err(Error::io(&part))?;
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(Error::io(&part))?;
        let dir = self.version_dir(v);
        if dir.exists() {
            if self.current_version().as_deref() == Some(v)
                || self.confirmed_version().as_deref() == Some(v)
            {
                return Err(Error::Refused(format!(
                    "version {v} is already installed and in use"
                )));
            }
            fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        fs::rename(&staging, &dir).map_err(Error::io(&staging))?;
        sync_dir(&self.versions)?;
        Ok(dir.join(BINARY))
    }

    /// Removes staging dirs left by an interrupted download.
    pub fn clean_staging(&self, except: Option<&str>) {
        let Ok(rd) = fs::read_dir(&self.versions) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix(".staging-") {
                if Some(v) != except {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Keeps the `keep` most recently installed versions plus `confirmed` and current;
    /// returns what it removed.
    pub fn prune(&self, keep: usize) -> Vec<String> {
        let protect = [self.confirmed_version(), self.current_version()];
        let Ok(rd) = fs::read_dir(&self.versions) else {
            return Vec::new();
        };
        let mut versions: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let m = e.metadata().ok()?.modified().ok()?;
                Some((m, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        let mut removed = Vec::new();
        for (_, v) in versions.into_iter().skip(keep) {
            if protect.iter().any(|p| p.as_deref() == Some(v.as_str())) {
                continue;
            }
            if fs::remove_dir_all(self.version_dir(&v)).is_ok() {
                removed.push(v);
            }
        }
        removed
    }

    /// Reads the probation record (`None` when there is none).
    pub fn read_probation(&self) -> Result<Option<Probation>, Error> {
        read_json(&self.probation_path())
    }

    /// Writes the probation record durably.
    pub fn write_probation(&self, p: &Probation) -> Result<(), Error> {
        write_json(&self.records, &self.probation_path(), p)
    }

    /// Deletes the probation record durably.
    pub fn clear_probation(&self) -> Result<(), Error> {
        let p = self.probation_path();
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.records),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(p)(e)),
        }
    }

    /// Reads the outcome of the last upgrade.
    pub fn read_outcome(&self) -> Result<Option<Outcome>, Error> {
        read_json(&self.outcome_path())
    }

    /// Writes the outcome durably.
    pub fn write_outcome(&self, o: &Outcome) -> Result<(), Error> {
        write_json(&self.records, &self.outcome_path(), o)
    }

    /// Forgets the last outcome (a new upgrade starts).
    pub fn clear_outcome(&self) -> Result<(), Error> {
        match fs::remove_file(self.outcome_path()) {
            Ok(()) => sync_dir(&self.records),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(self.outcome_path())(e)),
        }
    }

    /// The one revert path, whatever failed (crash loop, self-test, no check-in, interrupted
    /// cutover): current link back to `confirmed`'s binary, outcome `Reverted` written, the
    /// probation record removed, in that order, each step durable and idempotent.
    pub fn revert(&self, from: &str, to: &str, reason: &str, now_unix: u64) -> Result<(), Error> {
        let confirmed = self.confirmed_version().ok_or_else(|| {
            Error::Layout(format!(
                "{} is missing; cannot revert",
                self.confirmed.display()
            ))
        })?;
        if self.current_version().as_deref() != Some(confirmed.as_str()) {
            swap_link(&self.current, &self.binary(&confirmed))?;
        }
        self.write_outcome(&Outcome::Reverted {
            from: from.to_owned(),
            to: to.to_owned(),
            reason: reason.to_owned(),
            at: now_unix,
        })?;
        self.clear_probation()
    }

    /// Confirms the version on probation: `confirmed` moves to it, outcome `Confirmed`, the
    /// probation record is removed.
    pub fn confirm(&self, p: &Probation, now_unix: u64) -> Result<(), Error> {
        swap_link(&self.confirmed, &Path::new("versions").join(&p.to))?;
        self.write_outcome(&Outcome::Confirmed {
            from: p.from.clone(),
            to: p.to.clone(),
            at: now_unix,
        })?;
        self.clear_probation()
    }
}

/// Points `link` at `target` atomically: a new link beside it, renamed over it, the
/// directory fsynced. A reader sees the old or the new target, never neither.
pub fn swap_link(link: &Path, target: &Path) -> Result<(), Error> {
    let dir = link
        .parent()
        .ok_or_else(|| Error::Layout(format!("{} has no parent", link.display())))?;
    let name = link
        .file_name()
        .ok_or_else(|| Error::Layout(format!("{} has no file name", link.display())))?;
    let tmp = dir.join(format!(
        ".{}.new-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).map_err(Error::io(&tmp))?;
    fs::rename(&tmp, link).map_err(Error::io(link))?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Record {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Writes `value` to `path` via a temp file, fsync, rename, directory fsync.
fn write_json<T: Serialize>(dir: &Path, path: &Path, value: &T) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::Record {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(&tmp))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(&tmp))?;
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(dir)
}
