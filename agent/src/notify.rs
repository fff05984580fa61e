//! systemd notification (READY, STATUS, STOPPING, WATCHDOG) through the pure-Rust `sd-notify`.
//! Every call is a no-op when `NOTIFY_SOCKET` is unset, so the agent runs the same by hand.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the agent is up (modules probed and running).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells systemd a clean shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pets systemd's service watchdog.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The service watchdog interval when systemd armed one for this process (`WATCHDOG_USEC`).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Asks systemd for `by` more start-up time (`EXTEND_TIMEOUT_USEC`), while a start gate holds
/// the start before READY.
pub fn extend_start_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}
