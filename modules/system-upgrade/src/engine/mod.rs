//! Executes an OS upgrade phase by phase (initramfs/CONTRACT.md §5), persisting every phase
//! in the module store before acting on it, and works out after a restart or reboot where
//! an upgrade stands from the store and the boot-partition state.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::SystemUpgrade;
use fleet_module_api::{CancellationToken, Clock, ModuleStore, StatusSink};

use crate::bootset::BootDir;
use crate::bootstate::{BootState, State, StateFiles};
use crate::config::Config;
use crate::lvm::Lvm;
use crate::record::{Phase, Record};
use crate::selector::BootSelector;
use crate::units::Units;
use crate::NAME;

use shell::{run_shell, ShellError};

mod command;
mod commit;
mod recover;
mod shell;

const CURRENT_KEY: &str = "current";
/// No commit starts this close to the trial's deadline, so the commit never overlaps the
/// deadline timer's rollback.
const COMMIT_MARGIN_SECS: u64 = 30;

fn boot_reason(files: &StateFiles) -> String {
    files
        .current()
        .ok()
        .flatten()
        .map(|b| b.reason)
        .unwrap_or_default()
}
const RECORD_PREFIX: &str = "upgrade.";

/// Outcome of [`Engine::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// A new upgrade was recorded (phase Checking); execute it.
    Started(Record),
    /// An upgrade with this id is known already; nothing starts.
    Known(Record),
}

/// What is left after [`Engine::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Nothing to do until the next request.
    Nothing,
    /// On the trial: commit after check-in.
    Probation,
    /// An accepted upgrade that has not started changing anything: execute it.
    Execute(Box<Record>),
    /// The upgrade command runs in its unit (the agent restarted meanwhile): follow it.
    Follow(Box<Record>),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another upgrade is in progress.
    #[error("upgrade {id} is in progress (phase {phase:?})")]
    Busy {
        /// The one in progress.
        id: String,
        /// Its phase.
        phase: Phase,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// Everything an upgrade touches.
pub struct Engine {
    /// Module config.
    pub cfg: Config,
    /// The boot partition.
    pub boot: BootDir,
    /// Its state files.
    pub files: StateFiles,
    /// LVM.
    pub lvm: Arc<dyn Lvm>,
    /// Trial arming.
    pub selector: Arc<dyn BootSelector>,
    /// The service manager running the upgrade command.
    pub units: Arc<dyn Units>,
    store: Arc<dyn ModuleStore>,
    status: Arc<dyn StatusSink>,
    clock: Arc<dyn Clock>,
    /// Kernel boot id source (a file; `/proc/sys/kernel/random/boot_id`).
    pub boot_id_file: PathBuf,
    /// Uptime source (`/proc/uptime`).
    pub uptime_file: PathBuf,
    /// The device tree (`/proc/device-tree`): may the saved firmware be pinned
    /// ([`crate::board`])?
    pub device_tree_dir: PathBuf,
    current: Mutex<Option<Record>>,
    rejected: Mutex<Option<String>>,
}

impl Engine {
    /// An engine over the given parts.
    pub fn new(
        cfg: Config,
        lvm: Arc<dyn Lvm>,
        selector: Arc<dyn BootSelector>,
        units: Arc<dyn Units>,
        store: Arc<dyn ModuleStore>,
        status: Arc<dyn StatusSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let boot = BootDir::new(&cfg.boot_dir);
        let files = StateFiles::new(boot.fleet());
        Self {
            cfg,
            boot,
            files,
            lvm,
            selector,
            units,
            store,
            status,
            clock,
            boot_id_file: "/proc/sys/kernel/random/boot_id".into(),
            uptime_file: "/proc/uptime".into(),
            device_tree_dir: crate::board::DEVICE_TREE.into(),
            current: Mutex::new(None),
            rejected: Mutex::new(None),
        }
    }

    fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id_file)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    fn uptime(&self) -> u64 {
        std::fs::read_to_string(&self.uptime_file)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |f| f as u64)
    }

    fn cmdline(&self) -> String {
        std::fs::read_to_string(&self.cfg.cmdline_file).unwrap_or_default()
    }

    /// The latest upgrade record (active or last finished).
    pub fn current(&self) -> Option<Record> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A stored record by id.
    pub fn record(&self, id: &str) -> Result<Option<Record>, String> {
        match self.store.get(&format!("{RECORD_PREFIX}{id}")) {
            Ok(Some(b)) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("stored record {id}: {e}")),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn load_current(&self) -> Result<Option<Record>, String> {
        match self.store.get(CURRENT_KEY).map_err(|e| e.to_string())? {
            Some(id) => self.record(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Persists `rec` (store first, then status) and makes it current.
    fn save(&self, rec: &Record) {
        let body = serde_json::to_vec(rec).unwrap_or_default();
        if let Err(e) = self
            .store
            .put(&format!("{RECORD_PREFIX}{}", rec.id), &body)
            .and_then(|()| self.store.put(CURRENT_KEY, rec.id.as_bytes()))
        {
            tracing::error!(error = %e, upgrade = %rec.id, "cannot record the upgrade phase");
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec.clone());
        self.publish();
    }

    fn enter(&self, rec: &mut Record, phase: Phase, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(upgrade = %rec.id, phase = ?phase, %message, "system upgrade");
        rec.enter(phase, message, self.now(), &self.boot_id());
        self.save(rec);
    }

    /// Publishes the status detail (`details["system-upgrade"]` in the heartbeat).
    pub fn publish(&self) {
        let rec = self.current();
        let boot_state = self.files.current().ok().flatten();
        let mut doc = match &rec {
            Some(r) => serde_json::to_value(r).unwrap_or_default(),
            None => serde_json::json!({ "phase": null }),
        };
        if let Some(obj) = doc.as_object_mut() {
            obj.insert(
                "bootState".into(),
                serde_json::to_value(&boot_state).unwrap_or_default(),
            );
            obj.insert(
                "rejected".into(),
                serde_json::to_value(
                    self.rejected
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                )
                .unwrap_or_default(),
            );
        }
        self.status.detail(NAME, doc);
    }

    /// Records why the latest request was not accepted (shown in status), or clears it.
    pub fn set_rejected(&self, why: Option<String>) {
        let mut r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if *r != why {
            if let Some(w) = &why {
                tracing::warn!(reason = %w, "system upgrade request not accepted");
            }
            *r = why;
            drop(r);
            self.publish();
        }
    }

    /// Accepts `req` unless its id is known (idempotent) or another upgrade is in progress.
    pub fn begin(&self, req: &SystemUpgrade, requested_by: &str) -> Result<Begin, Refusal> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cur.as_ref().filter(|c| c.id == req.id) {
            return Ok(Begin::Known(c.clone()));
        }
        if let Some(known) = self.record(&req.id).map_err(Refusal::Store)? {
            return Ok(Begin::Known(known));
        }
        if let Some(c) = cur.as_ref().filter(|c| !c.phase.is_terminal()) {
            return Err(Refusal::Busy {
                id: c.id.clone(),
                phase: c.phase,
            });
        }
        let now = self.now();
        let mut rec = Record {
            id: req.id.clone(),
            command: req
                .command
                .clone()
                .unwrap_or_else(|| self.cfg.command.clone()),
            unit: None,
            command_started_at: None,
            deadline_secs: req.deadline_secs.unwrap_or(self.cfg.deadline_secs),
            max_boots: req.max_boots.unwrap_or(self.cfg.max_boots),
            requested_by: requested_by.to_owned(),
            phase: Phase::Checking,
            message: String::new(),
            reason: None,
            boots: None,
            boot_id: String::new(),
            started_at: now,
            updated_at: now,
            history: Vec::new(),
        };
        rec.enter(Phase::Checking, "accepted", now, &self.boot_id());
        let body = serde_json::to_vec(&rec).unwrap_or_default();
        self.store
            .put(&format!("{RECORD_PREFIX}{}", rec.id), &body)
            .and_then(|()| self.store.put(CURRENT_KEY, rec.id.as_bytes()))
            .map_err(|e| Refusal::Store(e.to_string()))?;
        *cur = Some(rec.clone());
        drop(cur);
        tracing::info!(upgrade = %rec.id, by = requested_by, command = %rec.command, "system upgrade accepted");
        self.publish();
        Ok(Begin::Started(rec))
    }

    fn boot_state_for(&self, rec: &Record, state: State) -> BootState {
        BootState {
            seq: 0,
            upgrade: rec.id.clone(),
            state,
            bootcount: 0,
            max_boots: rec.max_boots,
            trials: 0,
            max_trials: rec.max_boots + self.cfg.spare_trial_boots,
            deadline_secs: rec.deadline_secs,
            selector: self.selector.name().to_owned(),
            reason: String::new(),
            boots: 0,
        }
    }

    fn write_state(&self, st: &BootState) -> Result<BootState, String> {
        self.files
            .write(st)
            .map_err(|e| format!("cannot write {}: {e}", self.files.dir().display()))
    }

    async fn snapshot_exists(&self) -> Result<bool, String> {
        let lvs = self.lvm.lvs().await.map_err(|e| e.to_string())?;
        Ok(lvs
            .iter()
            .any(|l| l.vg == self.cfg.vg && l.name == self.cfg.snapshot_lv))
    }

    /// Checks before anything changes: thin root, pool headroom, no leftover snapshot, a
    /// boot set with `config.txt`, a writable `fleet/`.
    pub async fn preflight(&self) -> Result<String, String> {
        let lvs = self.lvm.lvs().await.map_err(|e| e.to_string())?;
        let found = crate::probe::thin_root(&self.cfg, &lvs)?;
        if lvs
            .iter()
            .any(|l| l.vg == self.cfg.vg && l.name == self.cfg.snapshot_lv)
        {
            return Err(format!(
                "snapshot {}/{} already exists (left over from an earlier upgrade?)",
                self.cfg.vg, self.cfg.snapshot_lv
            ));
        }
        if !self.boot.root().join("config.txt").is_file() {
            return Err(format!(
                "{} has no config.txt (is the boot partition mounted?)",
                self.boot.root().display()
            ));
        }
        std::fs::create_dir_all(self.boot.fleet())
            .map_err(|e| format!("cannot create {}: {e}", self.boot.fleet().display()))?;
        Ok(found)
    }

    /// Runs an accepted upgrade from Checking to the reboot. Returns when the device is
    /// rebooting, the upgrade ended, or `shutdown` fired (the upgrade command, if started,
    /// keeps running in its unit; the next start follows it).
    pub async fn execute(&self, mut rec: Record, shutdown: &CancellationToken) {
        // Checking: nothing has changed yet.
        let found = match self.preflight().await {
            Ok(f) => f,
            Err(reason) => return self.fail_clean(&mut rec, &reason, false).await,
        };
        self.enter(&mut rec, Phase::Snapshotting, found);
        if let Err(reason) = self.write_state(&self.boot_state_for(&rec, State::Upgrading)) {
            return self.fail_clean(&mut rec, &reason, false).await;
        }
        if let Err(e) = self
            .lvm
            .create_snapshot(&self.cfg.vg, &self.cfg.root_lv, &self.cfg.snapshot_lv)
            .await
        {
            // lvcreate failed: whatever exists under the snapshot name is not ours.
            return self.fail_clean(&mut rec, &e.to_string(), false).await;
        }
        self.enter(
            &mut rec,
            Phase::SavingBootSet,
            format!("snapshot {}/{} created", self.cfg.vg, self.cfg.snapshot_lv),
        );
        let pin = crate::board::read_firmware_pin(&self.device_tree_dir);
        let saved = self.boot.save_boot_set().and_then(|saved| {
            self.boot.point_default_at_saved(&pin)?;
            Ok(saved)
        });
        let saved = match saved {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot save the boot set: {e}");
                return self.fail_clean(&mut rec, &reason, true).await;
            }
        };
        self.boot.log(
            self.now(),
            &format!("{} saved boot set: {}", rec.id, saved.join(" ")),
        );
        if let crate::board::FirmwarePin::NotPinned(why) = &pin {
            // Logged once (info, by enter), kept in the phase history and on the FAT.
            let note =
                format!("firmware not pinned (non-trial boots load the top-level blobs): {why}");
            self.boot.log(self.now(), &format!("{} {note}", rec.id));
            self.enter(
                &mut rec,
                Phase::SavingBootSet,
                format!("boot set saved; {note}"),
            );
        }
        self.run_command(rec, shutdown).await;
    }

    pub(super) async fn arm_and_reboot(&self, rec: &mut Record) {
        self.enter(rec, Phase::Rebooting, "arming the trial boot");
        let armed = self
            .boot
            .write_trial(&rec.id)
            .map_err(|e| format!("cannot write the trial boot set: {e}"))
            .and_then(|()| self.write_state(&self.boot_state_for(rec, State::Trial)))
            .and_then(|_| self.selector.arm().map_err(|e| e.to_string()));
        if let Err(reason) = armed {
            return self.rollback_reboot(rec, &reason).await;
        }
        self.boot
            .log(self.now(), &format!("{} trial armed; rebooting", rec.id));
        self.enter(rec, Phase::Rebooting, "rebooting into the trial");
        self.reboot(rec).await;
    }

    async fn reboot(&self, rec: &mut Record) {
        let never = CancellationToken::new();
        if let Err(e) = run_shell(&self.cfg.reboot_command, Duration::from_secs(120), &never).await
        {
            let msg = match e {
                ShellError::Failed(m) => m,
                ShellError::Shutdown => "interrupted".into(),
            };
            let text = format!(
                "reboot command `{}` failed: {msg}; the deadline timer will roll back",
                self.cfg.reboot_command
            );
            self.enter(rec, Phase::Rebooting, text);
        }
    }

    /// A failure before root changed: back to how it was, `failed`. `ours` = the snapshot
    /// (if it exists) was created by this upgrade and is removed; otherwise it is left alone.
    pub(super) async fn fail_clean(&self, rec: &mut Record, reason: &str, ours: bool) {
        let mut problems = Vec::new();
        // Only a config.txt this upgrade pointed at the saved set is put back.
        if self.boot.default_points_at_saved() {
            if let Err(e) = self.boot.restore_default_config() {
                problems.push(format!("restoring config.txt: {e}"));
            }
        }
        if let Err(e) = self.boot.remove_trial() {
            problems.push(format!("removing the trial set: {e}"));
        }
        if let Err(e) = self.selector.disarm() {
            problems.push(format!("disarming: {e}"));
        }
        if let Err(e) = self.boot.remove_saved() {
            problems.push(format!("removing the saved boot set: {e}"));
        }
        match self.snapshot_exists().await {
            Ok(true) if ours => {
                if let Err(e) = self.lvm.remove(&self.cfg.vg, &self.cfg.snapshot_lv).await {
                    problems.push(e.to_string());
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        let mut full = reason.to_owned();
        if !problems.is_empty() {
            full.push_str(&format!(" (cleanup: {})", problems.join("; ")));
        }
        // Only an upgrade that reached the boot partition (past Checking) leaves `failed`
        // there; a state naming this id from elsewhere (a lost store) is not touched.
        let wrote_state = rec.phase != Phase::Checking
            && self
                .files
                .current()
                .ok()
                .flatten()
                .is_some_and(|b| b.upgrade == rec.id);
        if wrote_state {
            let mut st = self.boot_state_for(rec, State::Failed);
            st.reason = full.clone();
            if let Err(e) = self.write_state(&st) {
                tracing::error!(error = %e, "cannot record the failure on the boot partition");
            }
        }
        self.boot
            .log(self.now(), &format!("{} failed: {full}", rec.id));
        rec.reason = Some(full.clone());
        self.enter(rec, Phase::Failed, full);
    }

    /// A failure after root may have changed: request the rollback and reboot, so the
    /// initramfs merges the snapshot and restores the boot set.
    pub(super) async fn rollback_reboot(&self, rec: &mut Record, reason: &str) {
        let _ = self.selector.disarm();
        let _ = self.boot.remove_trial();
        let mut st = self.boot_state_for(rec, State::Rollback);
        st.reason = reason.to_owned();
        if let Err(e) = self.write_state(&st) {
            // Without the request on the boot partition a reboot would not roll back.
            let full = format!("{reason}; and cannot request the rollback: {e}");
            rec.reason = Some(full.clone());
            return self.enter(rec, Phase::Failed, full);
        }
        self.boot.log(
            self.now(),
            &format!("{} rollback requested: {reason}", rec.id),
        );
        rec.reason = Some(reason.to_owned());
        self.enter(
            rec,
            Phase::Rebooting,
            format!("rolling back: {reason}; rebooting so the initramfs merges the snapshot"),
        );
        self.reboot(rec).await;
    }
}
