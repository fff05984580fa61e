//! The guard: `fleet-agent guard`, run by systemd as `ExecStartPre=` from the **confirmed**
//! binary before every start, so a broken new binary cannot disable it.
//!
//! No probation record: exit 0 at once (a few file reads). With one, it counts the start
//! attempt (fsynced before the new version starts) or reverts when attempts ran out, the
//! deadline passed, or the cutover was interrupted.
//!
//! # The deadline and clock jumps
//!
//! A Pi has no RTC; its wall clock can jump by months when NTP syncs. So the deadline is
//! kept on the boot's monotonic clock (CLOCK_BOOTTIME, read from `/proc/uptime`) together
//! with the boot id. On the same boot only that clock counts. After a reboot the record is
//! re-anchored on the new boot: the remaining time is what the wall clock says is left,
//! but never more than one full probation length. A clock jump can therefore extend a
//! probation by at most one deadline per boot, and every boot is a start attempt, which is
//! bounded by `max_attempts` anyway.

use crate::layout::{Layout, Probation};

/// What the host clocks say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, Unix seconds.
    pub unix: u64,
    /// Current boot id.
    pub boot_id: String,
    /// CLOCK_BOOTTIME seconds.
    pub uptime: u64,
}

impl Now {
    /// Reads the host clocks (`/proc/sys/kernel/random/boot_id`, `/proc/uptime`).
    pub fn read(unix: u64) -> Self {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<f64>().ok())
            })
            .map_or(0, |f| f as u64);
        Self {
            unix,
            boot_id,
            uptime,
        }
    }
}

/// A new probation record for `from -> to` starting now.
pub fn new_probation(
    from: &str,
    to: &str,
    deadline_secs: u64,
    max_attempts: u32,
    now: &Now,
) -> Probation {
    Probation {
        from: from.to_owned(),
        to: to.to_owned(),
        deadline_unix: now.unix.saturating_add(deadline_secs),
        boot_id: now.boot_id.clone(),
        deadline_uptime_secs: now.uptime.saturating_add(deadline_secs),
        attempts: 0,
        max_attempts,
        deadline_secs,
    }
}

/// Re-anchors the record on this boot when it was written on another (see module docs).
/// Returns true when it changed.
pub fn reanchor(p: &mut Probation, now: &Now) -> bool {
    if p.boot_id == now.boot_id {
        return false;
    }
    let remaining = p
        .deadline_unix
        .saturating_sub(now.unix)
        .min(p.deadline_secs);
    p.boot_id = now.boot_id.clone();
    p.deadline_uptime_secs = now.uptime.saturating_add(remaining);
    true
}

/// Has the deadline passed? (Same boot: monotonic clock only.)
pub fn deadline_passed(p: &Probation, now: &Now) -> bool {
    if p.boot_id == now.boot_id {
        now.uptime >= p.deadline_uptime_secs
    } else {
        now.unix >= p.deadline_unix
    }
}

/// What the guard does at one start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No probation: start whatever the current link points at.
    NoProbation,
    /// `confirmed` already points at the new version (killed while confirming): drop the
    /// stale record.
    AlreadyConfirmed,
    /// Count this start as attempt `n` and let the new version start.
    Attempt(u32),
    /// Revert, for this reason.
    Revert(String),
}

/// The guard's pure decision. `p` is the record after [`reanchor`].
pub fn decide(
    p: Option<&Probation>,
    current: Option<&str>,
    confirmed: Option<&str>,
    now: &Now,
) -> Decision {
    let Some(p) = p else {
        return Decision::NoProbation;
    };
    if confirmed == Some(p.to.as_str()) {
        return Decision::AlreadyConfirmed;
    }
    if current != Some(p.to.as_str()) {
        return Decision::Revert(format!(
            "cutover interrupted: the current link points at {}, not {}",
            current.unwrap_or("(no version)"),
            p.to
        ));
    }
    if p.attempts >= p.max_attempts {
        return Decision::Revert(format!(
            "crash loop: {} start attempts without a check-in",
            p.attempts
        ));
    }
    if deadline_passed(p, now) {
        return Decision::Revert(format!(
            "no check-in within the probation deadline ({} s)",
            p.deadline_secs
        ));
    }
    Decision::Attempt(p.attempts + 1)
}

/// What [`run`] did, for its one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardOutcome {
    /// Nothing to do.
    NoProbation,
    /// A stale record was removed.
    AlreadyConfirmed(String),
    /// The new version may start; attempt n of max.
    Attempt {
        /// The version on probation.
        to: String,
        /// This attempt.
        n: u32,
        /// Allowed.
        max: u32,
    },
    /// Reverted.
    Reverted {
        /// Back to.
        from: String,
        /// Away from.
        to: String,
        /// Why.
        reason: String,
    },
}

/// Runs the guard once.
pub fn run(layout: &Layout, now: &Now) -> Result<GuardOutcome, crate::Error> {
    let Some(mut p) = layout.read_probation()? else {
        return Ok(GuardOutcome::NoProbation);
    };
    let re = reanchor(&mut p, now);
    let current = layout.current_version();
    let confirmed = layout.confirmed_version();
    match decide(Some(&p), current.as_deref(), confirmed.as_deref(), now) {
        Decision::NoProbation => Ok(GuardOutcome::NoProbation),
        Decision::AlreadyConfirmed => {
            layout.clear_probation()?;
            Ok(GuardOutcome::AlreadyConfirmed(p.to))
        }
        Decision::Attempt(n) => {
            p.attempts = n;
            let _ = re;
            layout.write_probation(&p)?;
            Ok(GuardOutcome::Attempt {
                to: p.to,
                n,
                max: p.max_attempts,
            })
        }
        Decision::Revert(reason) => {
            layout.revert(&p.from, &p.to, &reason, now.unix)?;
            Ok(GuardOutcome::Reverted {
                from: p.from,
                to: p.to,
                reason,
            })
        }
    }
}
