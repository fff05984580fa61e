//! The initramfs decision (initramfs/CONTRACT.md §6) as a pure function. The same table is
//! implemented in `initramfs/lib/fleet-bootstate.sh`; `tests/decision_table.rs` checks both
//! against `initramfs/decision-table` on every combination of inputs.

use std::fmt;

use crate::bootstate::State;

/// What the initramfs does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Nothing; continue booting.
    Boot,
    /// bootcount+1, re-arm the trial; continue booting.
    Count,
    /// Restore the boot set, merge the snapshot, `rolled-back`, reboot.
    Rollback,
    /// The merge already happened: restore the boot set if saved, `rolled-back`, reboot.
    FinishRollback,
    /// Make the new set the default, `committed`; continue booting.
    Commit,
    /// As `Commit`, then reboot.
    CommitReboot,
    /// No snapshot to merge: `failed`; continue booting.
    Abandon,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 7] = [
        Action::Boot,
        Action::Count,
        Action::Rollback,
        Action::FinishRollback,
        Action::Commit,
        Action::CommitReboot,
        Action::Abandon,
    ];

    /// The table's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Boot => "boot",
            Action::Count => "count",
            Action::Rollback => "rollback",
            Action::FinishRollback => "finish-rollback",
            Action::Commit => "commit",
            Action::CommitReboot => "commit-reboot",
            Action::Abandon => "abandon",
        }
    }

    /// Parses the table's spelling.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The reason code a row gives (`-` = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `-`
    None,
    /// Power lost or reset during the upgrade.
    InterruptedUpgrade,
    /// The trial boot set did not come up.
    TrialDidNotStart,
    /// Too many boots without reaching userspace.
    BootLimit,
    /// The snapshot is missing.
    SnapshotMissing,
    /// Keep the state's reason.
    Requested,
}

impl Reason {
    /// Every reason code.
    pub const ALL: [Reason; 6] = [
        Reason::None,
        Reason::InterruptedUpgrade,
        Reason::TrialDidNotStart,
        Reason::BootLimit,
        Reason::SnapshotMissing,
        Reason::Requested,
    ];

    /// The table's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "-",
            Reason::InterruptedUpgrade => "interrupted-upgrade",
            Reason::TrialDidNotStart => "trial-did-not-start",
            Reason::BootLimit => "boot-limit",
            Reason::SnapshotMissing => "snapshot-missing",
            Reason::Requested => "requested",
        }
    }

    /// Parses the table's spelling.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision for one boot. `state` is `None` when no valid state file exists; `trial`:
/// this boot carries `fleet.upgrade=<upgrade>`; `over`: bootcount + 1 > max_boots, or
/// max_trials > 0 and trials + 1 > max_trials (CONTRACT §6);
/// `snapshot`: the pre-upgrade snapshot exists.
pub fn decide(state: Option<State>, trial: bool, over: bool, snapshot: bool) -> (Action, Reason) {
    use Action as A;
    use Reason as R;
    match state {
        Some(State::Upgrading) if snapshot => (A::Rollback, R::InterruptedUpgrade),
        Some(State::Upgrading) => (A::Abandon, R::InterruptedUpgrade),
        Some(State::Trial) if trial && !over => (A::Count, R::None),
        Some(State::Trial) if trial && snapshot => (A::Rollback, R::BootLimit),
        Some(State::Trial) if !trial && snapshot => (A::Rollback, R::TrialDidNotStart),
        Some(State::Trial) if !snapshot => (A::Abandon, R::SnapshotMissing),
        Some(State::Committing) if trial => (A::Commit, R::None),
        Some(State::Committing) => (A::CommitReboot, R::None),
        Some(State::Rollback) if snapshot => (A::Rollback, R::Requested),
        Some(State::Rollback) => (A::FinishRollback, R::Requested),
        _ => (A::Boot, R::None),
    }
}

/// Human text of a reason code (CONTRACT §6), for a rollback the initramfs decides.
pub fn reason_text(reason: Reason, max_boots: u32, snapshot: &str) -> String {
    match reason {
        Reason::None | Reason::Requested => String::new(),
        Reason::InterruptedUpgrade => "power lost or reset during the upgrade".into(),
        Reason::TrialDidNotStart => "the trial boot set did not come up".into(),
        Reason::BootLimit => format!("{max_boots} boots without reaching userspace"),
        Reason::SnapshotMissing => format!("snapshot {snapshot} is missing"),
    }
}
