//! Probation and the commit (CONTRACT §5), and the cleanup after it.

use crate::bootstate::{BootState, State};
use crate::record::{Phase, Record};

use super::{boot_reason, Engine, COMMIT_MARGIN_SECS};

impl Engine {
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
    pub(super) async fn commit(&self, rec: &mut Record) {
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
    pub(super) async fn finish_commit_cleanup(
        &self,
        rec: &mut Record,
        _b: &BootState,
        report: bool,
    ) {
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
