use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

/// The wall clock as a module must see it: the kernel's clock (the one TLS, podman and the
/// journal use too), with what the time guard last measured about it.
pub trait Clock: Send + Sync + 'static {
    /// Current wall-clock time: the kernel's, never corrected by the measured offset (a
    /// command's expiry and a certificate's validity must be judged on the same clock).
    fn now(&self) -> SystemTime;
    /// What the time guard last found; [`ClockStatus::Unguarded`] without one.
    fn status(&self) -> ClockStatus {
        ClockStatus::Unguarded
    }
    /// False while the clock is known to be off by more than the limit; time-bound
    /// operations (command expiry, certificate checks, secret fetches) must refuse to run
    /// then, with [`ClockStatus::untrusted_reason`] as the error.
    fn trusted(&self) -> bool {
        self.status().untrusted_reason().is_none()
    }
    /// The last measured offset of the kernel clock (true time minus kernel time), if any.
    fn offset(&self) -> Option<Duration> {
        None
    }
    /// Current time as Unix seconds (0 if the clock is before 1970).
    fn unix_secs(&self) -> u64 {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The host's clock, trusted as is (no time guard built in).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// What the time guard last measured, as the heartbeat and `status` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ClockStatus {
    /// No time guard is built in, or it has not measured yet: the kernel clock as is.
    Unguarded,
    /// Within the limit.
    Trusted {
        /// True time minus kernel time, milliseconds (positive: the kernel is behind).
        offset_ms: i64,
        /// Unix seconds of the measurement.
        checked_at: u64,
        /// The kernel's own view (`adjtimex`): synchronised by an NTP daemon, or why not known.
        kernel: String,
    },
    /// Off by more than the limit: time-bound work is refused.
    Skewed {
        /// True time minus kernel time, milliseconds.
        offset_ms: i64,
        /// The configured limit, milliseconds.
        limit_ms: i64,
        /// Unix seconds of the measurement (kernel time).
        checked_at: u64,
        /// The kernel's own view, as for `Trusted`.
        kernel: String,
    },
    /// No server answered: nothing says the clock is wrong, nothing says it is right (an
    /// offline Pi without an RTC). Time-bound work goes ahead on the kernel clock.
    Unverified {
        /// Why each server gave no usable answer.
        reason: String,
        /// Unix seconds of the attempt.
        checked_at: u64,
        /// The kernel's own view, as for `Trusted`.
        kernel: String,
    },
}

impl ClockStatus {
    /// Why time-bound work must be refused now, or `None` when it may go ahead.
    pub fn untrusted_reason(&self) -> Option<String> {
        match self {
            ClockStatus::Skewed {
                offset_ms,
                limit_ms,
                ..
            } => Some(format!(
                "clock not trusted: skew {}s exceeds {}s",
                offset_ms.unsigned_abs().saturating_add(500) / 1000,
                limit_ms.unsigned_abs().saturating_add(500) / 1000
            )),
            _ => None,
        }
    }

    /// The state's name (`unguarded`, `trusted`, `skewed`, `unverified`).
    pub fn state(&self) -> &'static str {
        match self {
            ClockStatus::Unguarded => "unguarded",
            ClockStatus::Trusted { .. } => "trusted",
            ClockStatus::Skewed { .. } => "skewed",
            ClockStatus::Unverified { .. } => "unverified",
        }
    }

    /// The measured offset, milliseconds, when there is one.
    pub fn offset_ms(&self) -> Option<i64> {
        match self {
            ClockStatus::Trusted { offset_ms, .. } | ClockStatus::Skewed { offset_ms, .. } => {
                Some(*offset_ms)
            }
            _ => None,
        }
    }
}

/// The runtime's clock: the kernel clock plus the time guard's last report. One instance is
/// shared by every module's [`crate::Context`]; only the [`ClockAuthority`] writes it.
#[derive(Debug)]
pub struct GuardedClock {
    status: Mutex<ClockStatus>,
}

impl Default for GuardedClock {
    fn default() -> Self {
        Self {
            status: Mutex::new(ClockStatus::Unguarded),
        }
    }
}

impl GuardedClock {
    /// A clock nobody has measured yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the status; returns whether the state (not just the figures) changed.
    pub fn set(&self, status: ClockStatus) -> bool {
        let mut cur = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let changed = cur.state() != status.state();
        *cur = status;
        changed
    }
}

impl Clock for GuardedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn status(&self) -> ClockStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn offset(&self) -> Option<Duration> {
        self.status()
            .offset_ms()
            .map(|ms| Duration::from_millis(ms.unsigned_abs()))
    }
}

/// The write side of the runtime's clock, provided by the runtime (not by a module) to the
/// one module that measures time (`exclusive("clock")`).
pub trait ClockAuthority: Send + Sync + 'static {
    /// Records a measurement; the heartbeat and every module's clock see it at once.
    fn report(&self, status: ClockStatus);
}

/// Checked by the runtime before the control plane and any module start (the time guard's
/// refusal to start on a skewed clock).
#[async_trait]
pub trait StartGate: Send + Sync + 'static {
    /// Who refuses, for the log.
    fn name(&self) -> &'static str;
    /// One check. The runtime re-asks every [`GateVerdict::Refuse::recheck`] while it holds.
    async fn admit(&self) -> GateVerdict;
}

/// A [`StartGate`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Start.
    Admit,
    /// Do not start. Run by hand, the agent exits at once with code 4 and `message`; under
    /// systemd it first holds for `hold` (not READY, pinging the watchdog, re-asking every
    /// `recheck`, logging `message` once), starting as soon as the gate admits, and exits 4
    /// when the hold ends, so systemd's restarts do not flood the journal.
    Refuse {
        /// The refusal, logged and printed as is.
        message: String,
        /// How long to hold before exiting (under systemd).
        hold: Duration,
        /// How often to re-ask while holding.
        recheck: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_follows_the_status() {
        let clock = GuardedClock::new();
        assert!(clock.trusted() && clock.offset().is_none());
        let skewed = ClockStatus::Skewed {
            offset_ms: -300_400,
            limit_ms: 30_000,
            checked_at: 1,
            kernel: "unsynchronised".into(),
        };
        assert!(clock.set(skewed));
        assert!(!clock.trusted());
        assert_eq!(clock.offset(), Some(Duration::from_millis(300_400)));
        assert_eq!(
            clock.status().untrusted_reason().as_deref(),
            Some("clock not trusted: skew 300s exceeds 30s")
        );
        let unverified = ClockStatus::Unverified {
            reason: "127.0.0.1:9: no answer".into(),
            checked_at: 2,
            kernel: "unsynchronised".into(),
        };
        assert!(clock.set(unverified.clone()));
        assert!(!clock.set(unverified), "same state: not a change");
        assert!(clock.trusted() && clock.offset().is_none());
    }
}
