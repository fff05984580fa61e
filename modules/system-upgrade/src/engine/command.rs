//! Phase Upgrading: the upgrade command in its transient unit (see `crate::units`). The
//! unit's name is recorded before the unit is started, so a restarted agent follows the same
//! unit and never starts the command twice; the boot partition's `upgrading` names the
//! upgrade id, from which the unit name follows ([`unit_name`]).

use fleet_module_api::CancellationToken;

use crate::record::{Phase, Record};
use crate::tail;
use crate::units::{unit_name, Outcome, JOURNAL_LINES};

use super::Engine;

/// Bytes of the command's output kept in the phase history.
const OUTPUT_TAIL: usize = 2000;
/// Bytes of it kept in a failure's reason (also written to the boot partition).
const REASON_TAIL: usize = 300;

impl Engine {
    /// Starts the command in its unit (after recording the unit) and follows it.
    pub(super) async fn run_command(&self, mut rec: Record, shutdown: &CancellationToken) {
        let unit = unit_name(&rec.id);
        // A unit of this name can only be left over from a record that was lost (a fresh
        // agent-state LV): a finished one is released, a running one is not ours to touch.
        match self.units.status(&unit).await.map(|s| (s.outcome(), s)) {
            Ok((Outcome::Gone(_), s)) if s.load_state == "not-found" => {}
            Ok((Outcome::Running, s)) => {
                let reason = format!(
                    "unit {unit} is already {}/{}, not started by this upgrade; not starting the command",
                    s.active_state, s.sub_state
                );
                return self.fail_clean(&mut rec, &reason, true).await;
            }
            Ok(_) => {
                if let Err(e) = self.units.release(&unit).await {
                    let reason = format!("cannot release the leftover unit {unit}: {e}");
                    return self.fail_clean(&mut rec, &reason, true).await;
                }
            }
            Err(e) => {
                let reason = format!("cannot ask systemd about unit {unit}: {e}");
                return self.fail_clean(&mut rec, &reason, true).await;
            }
        }
        rec.unit = Some(unit.clone());
        rec.command_started_at = Some(self.now());
        let running = format!("running in unit {unit}: {}", rec.command);
        self.enter(&mut rec, Phase::Upgrading, running);
        if let Err(e) = self.units.start(&unit, &rec.id, &rec.command).await {
            // Did anything run? Only a unit that never came to exist says no.
            match self.units.status(&unit).await.map(|s| s.load_state) {
                Ok(l) if l == "not-found" => {
                    let reason = format!("cannot start the upgrade command: {e}");
                    return self.fail_clean(&mut rec, &reason, true).await;
                }
                _ => {
                    tracing::warn!(upgrade = %rec.id, %unit, error = %e, "systemd-run reported an error; following the unit")
                }
            }
        }
        self.follow(rec, shutdown).await;
    }

    /// Follows the command's unit until it ends, the command timeout stops it, or
    /// `shutdown` fires (the command keeps running; the next start follows it again).
    /// Takes the result and the journal's tail, releases the unit, then arms the trial
    /// (exit 0) or rolls back.
    pub async fn follow(&self, mut rec: Record, shutdown: &CancellationToken) {
        let Some(unit) = rec.unit.clone() else {
            let reason = "the upgrade record names no unit";
            return self.rollback_reboot(&mut rec, reason).await;
        };
        let timeout = self.cfg.command_timeout_secs;
        let started = rec.command_started_at.unwrap_or(rec.updated_at);
        let mut last_error = None;
        let end = loop {
            match self.units.status(&unit).await {
                Ok(s) => match s.outcome() {
                    Outcome::Running => {}
                    end => break end,
                },
                Err(e) => {
                    // A busy or restarting systemd: the timeout bounds how long this may last.
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(upgrade = %rec.id, %unit, error = %e, "cannot read the unit's state; retrying");
                    }
                    last_error = Some(e);
                }
            }
            if self.now().saturating_sub(started) >= timeout {
                let mut why = format!("timed out after {timeout} s; unit {unit} stopped");
                if let Err(e) = self.units.stop(&unit).await {
                    why = format!("timed out after {timeout} s; stopping unit {unit}: {e}");
                }
                break Outcome::Failed(why);
            }
            tokio::select! {
                () = tokio::time::sleep(self.units.poll_interval()) => {}
                () = shutdown.cancelled() => {
                    tracing::info!(upgrade = %rec.id, %unit, "agent stopping; the upgrade command keeps running in its unit and the next start follows it");
                    return;
                }
            }
        };
        let output = match self.units.journal_tail(&unit, JOURNAL_LINES).await {
            Ok(o) => tail(o.trim(), OUTPUT_TAIL).to_owned(),
            Err(e) => format!("(no output: {e})"),
        };
        let why = match end {
            Outcome::Succeeded => {
                tracing::info!(upgrade = %rec.id, %unit, output = %output, "upgrade command succeeded");
                let text = format!("unit {unit}: the upgrade command succeeded; output:\n{output}");
                self.enter(&mut rec, Phase::Upgrading, text);
                self.release(&rec, &unit).await;
                return self.arm_and_reboot(&mut rec).await;
            }
            Outcome::Failed(why) => why,
            Outcome::Running => "the unit still runs".to_owned(),
            Outcome::Gone(why) => {
                format!("{why}; no result is kept, and the command is never run twice")
            }
        };
        let text = format!("unit {unit}: the upgrade command failed: {why}; output:\n{output}");
        self.enter(&mut rec, Phase::Upgrading, text);
        self.release(&rec, &unit).await;
        let reason = format!(
            "upgrade command failed in unit {unit}: {why}: {}",
            tail(&output, REASON_TAIL)
        );
        self.rollback_reboot(&mut rec, &reason).await;
    }

    /// Forgets the finished unit (after its result is in the record), so the name is free.
    async fn release(&self, rec: &Record, unit: &str) {
        if let Err(e) = self.units.release(unit).await {
            tracing::warn!(upgrade = %rec.id, %unit, error = %e, "cannot release the finished unit");
        }
    }
}
