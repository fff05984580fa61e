//! After a start (restart or reboot): where the last upgrade stands, from the store and the
//! boot-partition state.

use crate::bootstate::{BootState, State};
use crate::record::{Phase, Record};
use crate::selector::on_trial;

use super::{Engine, Resume};

impl Engine {
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
                        unit: None,
                        command_started_at: None,
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
                Phase::Upgrading if rec.unit.is_some() => {
                    // The command runs (or ran) in its own unit: follow it, never start it again.
                    return Resume::Follow(Box::new(rec));
                }
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
    pub(super) async fn resolve_from_boot(&self, rec: &mut Record, b: &BootState) {
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
}
