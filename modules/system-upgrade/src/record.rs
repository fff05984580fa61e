//! The upgrade record kept in the module's store area (on the agent-state LV, so an OS
//! rollback never rewinds it): phase, reason, boots and the phase history.

use serde::{Deserialize, Serialize};

/// Phase of one OS upgrade (the list; reported as is in status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Checking that the device can take the upgrade.
    Checking,
    /// Recording the upgrade and creating the snapshot.
    Snapshotting,
    /// Copying the boot set to `fleet/preupgrade/`.
    SavingBootSet,
    /// Running the upgrade command.
    Upgrading,
    /// Arming the trial and rebooting (or rebooting to roll back).
    Rebooting,
    /// Running the new system; commits after check-in.
    Probation,
    /// The new system is the default; snapshot removed.
    Committed,
    /// The old system is back (`reason`, `boots`).
    RolledBack,
    /// Ended without a reboot, or could not be rolled back (`reason`).
    Failed,
}

impl Phase {
    /// Committed, RolledBack or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Committed | Phase::RolledBack | Phase::Failed)
    }
}

/// One entry of the phase history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Phase entered.
    pub phase: Phase,
    /// Unix seconds.
    pub at: u64,
    /// What happened.
    pub message: String,
}

/// One OS upgrade as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Upgrade id (idempotency key).
    pub id: String,
    /// The command run.
    pub command: String,
    /// The transient unit running the command (`fleet-os-upgrade-<id>.service`), recorded
    /// before it is started, so a restarted agent follows it instead of running it again.
    #[serde(default)]
    pub unit: Option<String>,
    /// Unix seconds the unit was started (the command timeout counts from here).
    #[serde(default)]
    pub command_started_at: Option<u64>,
    /// Per-boot check-in deadline of the trial.
    pub deadline_secs: u64,
    /// Trial boots allowed.
    pub max_boots: u32,
    /// `desired` or `command:<actor>`.
    pub requested_by: String,
    /// Current phase.
    pub phase: Phase,
    /// Latest progress or outcome text.
    pub message: String,
    /// Why it was rolled back or failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Trial boots counted when the rollback was decided.
    #[serde(default)]
    pub boots: Option<u32>,
    /// Kernel boot id when the current phase was entered.
    pub boot_id: String,
    /// Unix seconds the upgrade was accepted.
    pub started_at: u64,
    /// Unix seconds of the last change.
    pub updated_at: u64,
    /// Every phase entered, oldest first.
    pub history: Vec<Step>,
}

impl Record {
    /// Enters `phase` (or records new progress in the same phase).
    pub fn enter(&mut self, phase: Phase, message: impl Into<String>, at: u64, boot_id: &str) {
        let message = message.into();
        self.phase = phase;
        self.message = message.clone();
        self.updated_at = at;
        self.boot_id = boot_id.to_owned();
        self.history.push(Step { phase, at, message });
        // Bounded: a stuck upgrade re-entering phases must not grow the record forever.
        if self.history.len() > 64 {
            self.history.drain(..self.history.len() - 64);
        }
    }
}
