//! What the kernel knows about its clock: whether an NTP daemon has it synchronised
//! (`adjtimex` read-only), and when it is stepped (a `CLOCK_REALTIME` timerfd armed with
//! `TFD_TIMER_CANCEL_ON_SET`, which the kernel cancels on every discontinuous change).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// The kernel's own view of its clock, one line for status: `synchronised (max error N ms)`,
/// `unsynchronised`, or why it could not be read.
///
/// nix 0.30 has no `adjtimex` wrapper, so this is one of the crate's two `unsafe` calls: `modes = 0`
/// only reads (no privilege needed, nothing changes). The other one registers the timerfd
/// with tokio ([`StepWatch::new`]).
#[allow(unsafe_code)]
pub fn sync_state() -> String {
    // SAFETY: `timex` is plain data; zeroed is a valid value (modes = 0: read only), and
    // the pointer is to a live, exclusively borrowed local for the duration of the call.
    let mut tx: nix::libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { nix::libc::adjtimex(&mut tx) };
    if state < 0 {
        return format!("unknown (adjtimex: {})", Errno::last());
    }
    if state == nix::libc::TIME_ERROR || tx.status & nix::libc::STA_UNSYNC != 0 {
        "unsynchronised".to_owned()
    } else {
        format!("synchronised (max error {} ms)", tx.maxerror / 1000)
    }
}

/// Resolves each time the kernel's wall clock is stepped (`date -s`, an NTP daemon's step,
/// an RTC read at boot).
pub struct StepWatch {
    fd: AsyncFd<Timer>,
}

struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl StepWatch {
    /// Arms the watch; needs a tokio runtime with I/O enabled.
    pub fn new() -> std::io::Result<StepWatch> {
        let fd = TimerFd::new(
            ClockId::CLOCK_REALTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        arm(&fd)?;
        Ok(StepWatch {
            fd: register(Timer(fd))?,
        })
    }

    /// Waits for the next step.
    pub async fn stepped(&mut self) -> std::io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut buf = [0u8; 8];
            match nix::unistd::read(ready.get_inner().0.as_fd(), &mut buf) {
                Err(Errno::ECANCELED) => {
                    arm(&ready.get_inner().0)?;
                    return Ok(());
                }
                // The far-future expiry itself (a year of uptime): arm again.
                Ok(_) => arm(&ready.get_inner().0)?,
                Err(Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `timer` registered with tokio's reactor.
#[allow(unsafe_code)]
fn register(timer: Timer) -> std::io::Result<AsyncFd<Timer>> {
    // SAFETY: the `TimerFd` inside is open for the `AsyncFd`'s whole life (it owns it) and
    // `as_raw_fd` returns the same descriptor every time.
    unsafe { AsyncFd::register(timer) }.map_err(std::io::Error::from)
}

/// Sets the timer a year ahead on the wall clock, cancelled by any step before that.
fn arm(fd: &TimerFd) -> nix::Result<()> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
    let year = TimeSpec::from_duration(Duration::from_secs(365 * 24 * 3600));
    fd.set(
        Expiration::OneShot(now + year),
        TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_state_reads_without_privilege() {
        let s = sync_state();
        assert!(
            s == "unsynchronised" || s.starts_with("synchronised (max error "),
            "adjtimex(modes=0) answered {s:?}"
        );
    }

    #[tokio::test]
    async fn the_watch_arms_and_stays_quiet_without_a_step() {
        let mut w = StepWatch::new().expect("timerfd");
        let quiet = tokio::time::timeout(Duration::from_millis(200), w.stepped()).await;
        assert!(quiet.is_err(), "no step happened, yet the watch fired");
    }
}
