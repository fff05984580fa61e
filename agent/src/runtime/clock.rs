//! The runtime's side of the clock guard: the write handle a time guard reports through, and
//! the start gates checked before anything runs.

use std::sync::Arc;
use std::time::Duration;

use fleet_module_api::{
    CancellationToken, ClockAuthority, ClockStatus, Context, GateVerdict, GuardedClock, StartGate,
};
use tokio::sync::Notify;

use super::AgentError;
use crate::notify;
use crate::supervisor::Slot;

/// [`ClockAuthority`] as the runtime provides it: updates the shared clock and wakes the
/// heartbeat when the clock's state changed.
pub(super) struct Authority {
    pub clock: Arc<GuardedClock>,
    pub changed: Arc<Notify>,
}

impl ClockAuthority for Authority {
    fn report(&self, status: ClockStatus) {
        if self.clock.set(status) {
            self.changed.notify_one();
        }
    }
}

/// Asks every start gate, in module order. `Ok(true)`: start. `Ok(false)`: `stop` fired
/// while a gate held the start. `Err(StartRefused)`: exit 4.
///
/// Run by hand (no `NOTIFY_SOCKET`), a refusal exits at once. Under systemd the agent holds
/// instead: not READY, the refusal logged once, the gate re-asked every `recheck` (the
/// service watchdog pinged and the start timeout extended meanwhile), so a fixed clock starts
/// the agent within one `recheck`; it exits 4 only when the hold ends, and systemd's restart
/// then begins the next hold. One refusal line per hold instead of one per restart.
pub(super) async fn pass_start_gates(
    slots: &[(Arc<Slot>, Context)],
    stop: &CancellationToken,
) -> Result<bool, AgentError> {
    let Some((_, ctx)) = slots.first() else {
        return Ok(true);
    };
    let supervised = std::env::var_os("NOTIFY_SOCKET").is_some();
    for gate in ctx.ext.all::<dyn StartGate>() {
        if !hold(gate.as_ref(), supervised, stop).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn hold(
    gate: &dyn StartGate,
    supervised: bool,
    stop: &CancellationToken,
) -> Result<bool, AgentError> {
    let mut held: Option<tokio::time::Instant> = None;
    loop {
        let (message, hold, recheck) = match gate.admit().await {
            GateVerdict::Admit => {
                if held.is_some() {
                    tracing::info!(gate = gate.name(), "start gate admits now: starting");
                }
                return Ok(true);
            }
            GateVerdict::Refuse {
                message,
                hold,
                recheck,
            } => (message, hold, recheck.max(Duration::from_millis(100))),
        };
        let since = match held {
            Some(t) => t,
            None => {
                tracing::error!(gate = gate.name(), "{message}");
                let t = tokio::time::Instant::now();
                held = Some(t);
                t
            }
        };
        if !supervised || since.elapsed() >= hold {
            return Err(AgentError::StartRefused(message));
        }
        notify::status(&format!("not started: {message}"));
        // Each pause: the watchdog pinged, the start timeout pushed past the next answer.
        let mut left = recheck;
        while !left.is_zero() {
            let step = notify::watchdog_interval()
                .map_or(left, |w| (w / 2).min(left))
                .max(Duration::from_millis(50));
            notify::extend_start_timeout(step + recheck + Duration::from_secs(10));
            notify::watchdog();
            tokio::select! {
                () = stop.cancelled() => return Ok(false),
                () = tokio::time::sleep(step) => {}
            }
            left = left.saturating_sub(step);
        }
    }
}
