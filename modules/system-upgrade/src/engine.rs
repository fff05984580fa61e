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
use crate::selector::{on_trial, BootSelector};
use crate::{tail, NAME};

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
    store: Arc<dyn ModuleStore>,
    status: Arc<dyn StatusSink>,
    clock: Arc<dyn Clock>,
    /// Kernel boot id source (a file; `/proc/sys/kernel/random/boot_id`).
    pub boot_id_file: PathBuf,
    /// Uptime source (`/proc/uptime`).
    pub uptime_file: PathBuf,
    current: Mutex<Option<Record>>,
    rejected: Mutex<Option<String>>,
}

impl Engine {
    /// An engine over the given parts.
    pub fn new(
        cfg: Config,
        lvm: Arc<dyn Lvm>,
        selector: Arc<dyn BootSelector>,
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
            store,
            status,
            clock,
            boot_id_file: "/proc/sys/kernel/random/boot_id".into(),
            uptime_file: "/proc/uptime".into(),
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
    /// rebooting, the upgrade ended, or `shutdown` fired (the next start resolves it).
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
        let saved = self.boot.save_boot_set().and_then(|saved| {
            self.boot.point_default_at_saved()?;
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
        let running = format!("running: {}", rec.command);
        self.enter(&mut rec, Phase::Upgrading, running);
        let timeout = Duration::from_secs(self.cfg.command_timeout_secs);
        match run_shell(&rec.command, timeout, shutdown).await {
            Ok(out) => {
                tracing::info!(upgrade = %rec.id, output = %tail(&out, 2000), "upgrade command succeeded");
            }
            Err(ShellError::Shutdown) => {
                tracing::warn!(upgrade = %rec.id, "agent stopping while the upgrade command runs; the next start rolls back");
                return;
            }
            Err(ShellError::Failed(reason)) => {
                let reason = format!("upgrade command failed: {reason}");
                return self.rollback_reboot(&mut rec, &reason).await;
            }
        }
        self.arm_and_reboot(&mut rec).await;
    }

    async fn arm_and_reboot(&self, rec: &mut Record) {
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
    async fn fail_clean(&self, rec: &mut Record, reason: &str, ours: bool) {
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
    async fn rollback_reboot(&self, rec: &mut Record, reason: &str) {
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

    /// Works out where the last upgrade stands after a start (restart or reboot) and acts:
    /// resumes the reboot, enters Probation on the trial, reports what the initramfs did,
    /// finishes a commit, and never runs the command again. Tells the caller what is left.
    pub async fn recover(&self) -> Resume {
        let boot = match self.files.current() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the boot-partition state");
                None
            }
        };
        let rec = match self.load_current() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the upgrade record");
                None
            }
        };
        let this_boot = self.boot_id();
        let Some(mut rec) = rec else {
            // No record (e.g. a fresh agent-state LV): adopt what the boot partition says.
            if let Some(b) = boot.filter(|b| !b.upgrade.is_empty()) {
                if matches!(
                    b.state,
                    State::RolledBack | State::Failed | State::Committed
                ) && self.record(&b.upgrade).ok().flatten().is_none()
                {
                    let now = self.now();
                    let mut rec = Record {
                        id: b.upgrade.clone(),
                        command: String::new(),
                        deadline_secs: b.deadline_secs,
                        max_boots: b.max_boots,
                        requested_by: "boot-partition".into(),
                        phase: Phase::Checking,
                        message: String::new(),
                        reason: None,
                        boots: None,
                        boot_id: this_boot.clone(),
                        started_at: now,
                        updated_at: now,
                        history: Vec::new(),
                    };
                    self.resolve_from_boot(&mut rec, &b).await;
                }
            }
            self.publish();
            return Resume::Nothing;
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec.clone());
        if rec.phase.is_terminal() {
            if let Some(b) = boot.filter(|b| b.upgrade == rec.id && b.state == State::Committed) {
                if rec.phase == Phase::Committed {
                    self.finish_commit_cleanup(&mut rec, &b, false).await;
                }
            }
            self.publish();
            return Resume::Nothing;
        }
        if rec.phase == Phase::Checking {
            // Accepted, nothing changed yet (Checking only reads): carry it out now.
            return Resume::Execute(Box::new(rec));
        }
        let same_boot = rec.boot_id == this_boot;
        let Some(b) = boot.filter(|b| b.upgrade == rec.id) else {
            let reason =
                "the boot partition's state does not name this upgrade (lost or overwritten)";
            rec.reason = Some(reason.into());
            self.enter(&mut rec, Phase::Failed, reason);
            return Resume::Nothing;
        };
        match b.state {
            State::Upgrading if same_boot => match rec.phase {
                Phase::Upgrading | Phase::Rebooting => {
                    let reason = "the agent stopped while the upgrade command ran";
                    self.rollback_reboot(&mut rec, reason).await;
                }
                p => {
                    let reason =
                        format!("the agent stopped during {p:?}, before the upgrade command ran");
                    // Checking found no snapshot and `upgrading` was written before lvcreate:
                    // a snapshot there now is this upgrade's.
                    self.fail_clean(&mut rec, &reason, true).await;
                }
            },
            State::Upgrading => {
                let reason = "rebooted during the upgrade and the initramfs did not roll back (is its hook installed?)";
                rec.reason = Some(reason.into());
                self.enter(&mut rec, Phase::Failed, reason);
            }
            State::Trial if on_trial(&self.cmdline(), &rec.id) => {
                self.enter(
                    &mut rec,
                    Phase::Probation,
                    format!(
                        "booted the trial (trial boot {} of at most {}); committing after check-in",
                        b.trials.max(1),
                        b.max_trials.max(b.max_boots)
                    ),
                );
                return Resume::Probation;
            }
            State::Trial if same_boot && rec.phase == Phase::Rebooting => {
                // The agent restarted before the reboot happened: arm and reboot again.
                self.arm_and_reboot(&mut rec).await;
            }
            State::Trial => {
                self.enter(
                    &mut rec,
                    Phase::Rebooting,
                    "this boot is not the trial; waiting for the initramfs or the deadline to roll back",
                );
            }
            State::Committing => {
                self.commit(&mut rec).await;
            }
            State::Rollback if same_boot && rec.phase == Phase::Rebooting => {
                self.reboot(&mut rec).await;
            }
            State::Rollback => {
                let text = format!("rollback requested ({}); waiting for the reboot", b.reason);
                rec.reason = Some(b.reason.clone());
                self.enter(&mut rec, Phase::Rebooting, text);
            }
            State::Committed | State::RolledBack | State::Failed => {
                self.resolve_from_boot(&mut rec, &b).await;
            }
            State::Idle => {
                let reason = "the boot partition's state was reset to idle";
                rec.reason = Some(reason.into());
                self.enter(&mut rec, Phase::Failed, reason);
            }
        }
        Resume::Nothing
    }

    /// Takes over an outcome written by the initramfs (or an earlier commit).
    async fn resolve_from_boot(&self, rec: &mut Record, b: &BootState) {
        match b.state {
            State::RolledBack => {
                rec.reason = Some(b.reason.clone());
                rec.boots = Some(b.boots);
                let text = format!("rolled back after {} trial boot(s): {}", b.boots, b.reason);
                self.enter(rec, Phase::RolledBack, text);
            }
            State::Failed => {
                rec.reason = Some(b.reason.clone());
                self.enter(rec, Phase::Failed, b.reason.clone());
            }
            State::Committed => self.finish_commit_cleanup(rec, b, true).await,
            _ => {}
        }
    }

    /// Probation: commit when checked in and still within the deadline. Returns true when
    /// the upgrade left Probation.
    pub async fn try_commit(&self, checkin: &fleet_module_api::CheckIn) -> bool {
        let Some(mut rec) = self.current().filter(|r| r.phase == Phase::Probation) else {
            return true;
        };
        let boot = self.files.current().ok().flatten();
        let wait = if let Some(why) = checkin.waiting_for(crate::NAME) {
            Some(format!("waiting for check-in: {why}"))
        } else if boot
            .as_ref()
            .is_some_and(|b| b.upgrade == rec.id && b.state == State::Trial && b.bootcount > 0)
        {
            // The good-boot unit arms the trial and then sets bootcount=0 (CONTRACT §5);
            // committing before it ran would race its state write and its arming.
            Some("checked in; waiting for the boot to be marked good (fleet-boot-good)".to_owned())
        } else if self.uptime() + COMMIT_MARGIN_SECS >= rec.deadline_secs {
            Some(format!(
                "checked in too close to the deadline of {} s (uptime {} s); the deadline timer rolls back",
                rec.deadline_secs,
                self.uptime()
            ))
        } else {
            None
        };
        if let Some(text) = wait {
            if rec.message != text {
                rec.message = text;
                rec.updated_at = self.now();
                self.save(&rec);
            }
            return boot.is_some_and(|b| b.upgrade == rec.id && b.state == State::Rollback)
                && self.rollback_seen(&mut rec, boot_reason(&self.files));
        }
        self.commit(&mut rec).await;
        rec.phase != Phase::Probation
    }

    /// The deadline timer asked for a rollback while in Probation: report it, stop waiting.
    fn rollback_seen(&self, rec: &mut Record, reason: String) -> bool {
        rec.reason = Some(reason.clone());
        self.enter(
            rec,
            Phase::Rebooting,
            format!("rollback requested ({reason}); not committing"),
        );
        true
    }

    /// Commit (CONTRACT §5): `committing` → default `config.txt` → disarm, remove the trial
    /// set → `committed` → remove the snapshot and the saved set.
    async fn commit(&self, rec: &mut Record) {
        let mut st = match self.files.current() {
            Ok(Some(b)) if b.upgrade == rec.id => b,
            Ok(other) => {
                let found =
                    other.map_or("none".to_owned(), |b| format!("{} {}", b.state, b.upgrade));
                let reason = format!("cannot commit: the boot partition's state is {found}");
                rec.reason = Some(reason.clone());
                return self.enter(rec, Phase::Failed, reason);
            }
            Err(e) => return self.commit_problem(rec, &format!("reading the state: {e}")),
        };
        match st.state {
            State::Trial | State::Committing => {}
            State::Rollback => {
                // The deadline timer (or an operator) asked for a rollback first: it wins.
                rec.reason = Some(st.reason.clone());
                let text = format!("rollback requested ({}); not committing", st.reason);
                return self.enter(rec, Phase::Rebooting, text);
            }
            other => {
                let reason = format!("cannot commit: the boot partition's state is {other}");
                rec.reason = Some(reason.clone());
                return self.enter(rec, Phase::Failed, reason);
            }
        }
        if st.state != State::Committing {
            st.state = State::Committing;
            if let Err(e) = self.write_state(&st) {
                return self.commit_problem(rec, &e);
            }
        }
        if let Err(e) = self.boot.restore_default_config() {
            return self.commit_problem(rec, &format!("restoring config.txt: {e}"));
        }
        if let Err(e) = self.selector.disarm() {
            return self.commit_problem(rec, &format!("disarming the trial: {e}"));
        }
        if let Err(e) = self.boot.remove_trial() {
            return self.commit_problem(rec, &format!("removing the trial set: {e}"));
        }
        st.state = State::Committed;
        let st = match self.write_state(&st) {
            Ok(st) => st,
            Err(e) => return self.commit_problem(rec, &e),
        };
        self.boot.log(self.now(), &format!("{} committed", rec.id));
        self.finish_commit_cleanup(rec, &st, true).await;
    }

    fn commit_problem(&self, rec: &mut Record, problem: &str) {
        tracing::error!(upgrade = %rec.id, %problem, "commit step failed; retrying");
        rec.message = format!("commit step failed, retrying: {problem}");
        rec.updated_at = self.now();
        self.save(rec);
    }

    /// After `committed`: remove the snapshot and the saved set (again after a restart).
    async fn finish_commit_cleanup(&self, rec: &mut Record, _b: &BootState, report: bool) {
        let mut problems = Vec::new();
        match self.snapshot_exists().await {
            Ok(true) => {
                if let Err(e) = self.lvm.remove(&self.cfg.vg, &self.cfg.snapshot_lv).await {
                    problems.push(e.to_string());
                }
            }
            Ok(false) => {}
            Err(e) => problems.push(e),
        }
        if let Err(e) = self.boot.remove_saved() {
            problems.push(format!("removing the saved boot set: {e}"));
        }
        // Again, in case a good-boot unit re-armed the trial while the commit ran.
        if let Err(e) = self.selector.disarm() {
            problems.push(format!("disarming: {e}"));
        }
        let text = if problems.is_empty() {
            "committed: the new system is the default; snapshot and saved boot set removed"
                .to_owned()
        } else {
            format!(
                "committed; cleanup incomplete (retried at the next start): {}",
                problems.join("; ")
            )
        };
        if report || rec.message != text {
            rec.reason = None;
            self.enter(rec, Phase::Committed, text);
        }
    }
}

/// Why a shell command did not succeed.
#[derive(Debug)]
enum ShellError {
    /// Non-zero exit, signal, timeout or spawn failure, with the output's tail.
    Failed(String),
    /// The agent is shutting down; the command was killed.
    Shutdown,
}

/// Runs `command` with `/bin/sh -c` (non-interactive apt), capturing its output.
async fn run_shell(
    command: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<String, ShellError> {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ShellError::Failed(format!("cannot run /bin/sh: {e}")))?;
    let out = tokio::select! {
        r = tokio::time::timeout(timeout, child.wait_with_output()) => match r {
            Err(_) => return Err(ShellError::Failed(format!("timed out after {} s", timeout.as_secs()))),
            Ok(Err(e)) => return Err(ShellError::Failed(e.to_string())),
            Ok(Ok(out)) => out,
        },
        () = shutdown.cancelled() => return Err(ShellError::Shutdown),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(ShellError::Failed(format!(
            "{}: {}",
            out.status,
            tail(text.trim(), 300)
        )))
    }
}
