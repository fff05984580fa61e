//! The service-watchdog pinger: a thread of its own, outside tokio, so that a module
//! blocking a worker thread (or a task stuck behind one) cannot also stop the loop that
//! decides whether to ping. It pings systemd (`WATCHDOG=1`, when systemd armed a watchdog)
//! and vouches for the agent to modules ([`fleet_module_api::Liveness`]) only while
//!
//! - the runtime's own loop (which asks every module's health) ran recently,
//! - no module is stuck (aborted for lack of progress, and its task did not stop), and
//! - no running module is past its progress budget by more than its supervisor needs to act.
//!
//! When that stops holding it says why, once, and stays quiet: systemd then restarts the
//! agent, and a hardware watchdog driven by the watchdog module resets the board.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Weak;
use std::time::Duration;

use super::Shared;
use crate::notify;
use crate::supervisor::secs;

/// The pinger's timing.
#[derive(Debug, Clone, Copy)]
pub(super) struct PingTiming {
    /// How often the runtime loop runs and the pinger decides (half systemd's interval).
    pub period: Duration,
    /// Whether systemd armed a service watchdog (else only the liveness verdict is kept).
    pub systemd: bool,
    /// How long the supervisor may take to stop a task after its abort.
    pub abort_grace: Duration,
}

impl PingTiming {
    /// The runtime loop counts as stalled after this long without a tick.
    pub fn loop_budget(&self) -> Duration {
        self.period * 2
    }
}

/// Stops the pinger thread when dropped.
pub(super) struct Pinger {
    _stop: mpsc::Sender<()>,
}

/// Starts the pinger thread; it ends when the returned [`Pinger`] is dropped or the runtime
/// is gone.
pub(super) fn start(shared: Weak<Shared>, timing: PingTiming) -> std::io::Result<Pinger> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("fleet-ping".into())
        .spawn(move || run(&shared, &stopped, timing))?;
    Ok(Pinger { _stop: stop })
}

fn run(shared: &Weak<Shared>, stopped: &mpsc::Receiver<()>, timing: PingTiming) {
    let mut failing = false;
    // Decide at once (a hardware watchdog the module just armed needs the verdict), then
    // every period.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            match stopped.recv_timeout(timing.period) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match verdict(&shared, timing) {
            Ok(()) => {
                if timing.systemd {
                    notify::watchdog();
                }
                shared.liveness.vouch(timing.period * 2);
                if failing {
                    failing = false;
                    tracing::warn!("the agent is healthy again; petting the service watchdog");
                }
            }
            Err(why) => {
                shared.liveness.withdraw();
                if !failing {
                    failing = true;
                    tracing::error!(
                        %why,
                        "not petting the service watchdog any more: systemd restarts the agent"
                    );
                }
            }
        }
    }
}

/// May the agent be vouched for now? `Err` says why not.
fn verdict(shared: &Shared, timing: PingTiming) -> Result<(), String> {
    let loop_age = shared.loop_progress.since_tick();
    if loop_age > timing.loop_budget() {
        return Err(format!(
            "the runtime loop has not run for {}",
            secs(loop_age)
        ));
    }
    for (slot, ctx) in &shared.slots {
        let st = slot.state();
        if let Some(why) = st.stuck {
            return Err(format!("module {} cannot be restarted: {why}", slot.name()));
        }
        let quiet = ctx.progress.since_tick();
        let allowed = ctx.progress.budget() + timing.abort_grace + timing.loop_budget();
        if st.running && quiet > allowed {
            return Err(format!(
                "module {} made no progress for {} and its supervisor did not restart it",
                slot.name(),
                secs(quiet)
            ));
        }
    }
    Ok(())
}
