use std::time::SystemTime;

/// The wall clock as a module must see it: corrected by the time guard, with a trust flag.
pub trait Clock: Send + Sync + 'static {
    /// Current wall-clock time (with any measured offset applied).
    fn now(&self) -> SystemTime;
    /// False while the clock is known or suspected to be wrong; time-bound operations
    /// (certificate checks, command expiry) should refuse to run then.
    fn trusted(&self) -> bool;
    /// Current time as Unix seconds (0 if the clock is before 1970).
    fn unix_secs(&self) -> u64 {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The host's clock, trusted as is (until a time guard says otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn trusted(&self) -> bool {
        true
    }
}
