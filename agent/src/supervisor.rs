//! Runs each module's `run` in isolation: an error or a panic marks the module unhealthy and
//! restarts it with exponential backoff; too many restarts in a window and it stays down and
//! says so. Nothing a module does takes the agent down.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_module_api::{Capability, Context, Health, Probe};
use futures::FutureExt;
use tokio::sync::Notify;
use tracing::Instrument;

/// When and how often a failed module is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First backoff delay.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Window in which restarts are counted.
    pub window: Duration,
    /// Restarts allowed within `window`; one more failure and the module stays down.
    pub max_restarts: usize,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            window: Duration::from_secs(60),
            max_restarts: 5,
        }
    }
}

/// What the supervisor knows about one module; read by the heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct SlotState {
    pub probe: Option<Probe>,
    /// `None` while `run` is executing normally (then the module's own `health()` counts).
    pub health_override: Option<Health>,
    pub restarts: u32,
}

/// One module and its supervision state.
pub(crate) struct Slot {
    pub module: Arc<dyn Capability>,
    pub state: Mutex<SlotState>,
    /// Woken on every change of `state` (the runtime recomputes heartbeat and check-in).
    changed: Arc<Notify>,
}

impl Slot {
    pub fn new(module: Arc<dyn Capability>, changed: Arc<Notify>) -> Self {
        Self {
            module,
            state: Mutex::new(SlotState {
                probe: None,
                health_override: Some(Health::Starting),
                restarts: 0,
            }),
            changed,
        }
    }

    pub fn name(&self) -> &'static str {
        self.module.name()
    }

    pub fn state(&self) -> SlotState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut SlotState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }

    /// Effective health: the supervisor's verdict, else the module's own.
    pub fn health(&self) -> Health {
        match self.state().health_override {
            Some(h) => h,
            None => self.module.health(),
        }
    }
}

/// Supervises `slot`'s module until shutdown or until it exhausts its restarts.
pub(crate) async fn supervise(slot: Arc<Slot>, ctx: Context, policy: RestartPolicy) {
    let name = slot.name();
    let span = tracing::info_span!("module", module = name);
    async move {
        let mut backoff = policy.initial_backoff;
        let mut failures: VecDeque<Instant> = VecDeque::new();
        loop {
            slot.update(|s| s.health_override = None);
            let started = Instant::now();
            let result = AssertUnwindSafe(slot.module.clone().run(ctx.clone()))
                .catch_unwind()
                .await;
            if ctx.shutdown.is_cancelled() {
                if let Ok(Err(e)) = &result {
                    tracing::warn!(error = %e, "module returned an error while shutting down");
                }
                slot.update(|s| {
                    s.health_override = Some(Health::Stopped {
                        reason: "agent shut down".into(),
                    })
                });
                return;
            }
            let reason = match result {
                Ok(Ok(())) => "run returned before shutdown".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            let now = Instant::now();
            while failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.window)
            {
                failures.pop_front();
            }
            if failures.len() >= policy.max_restarts {
                let why = format!(
                    "gave up after {} restarts within {} s; last error: {reason}",
                    policy.max_restarts,
                    policy.window.as_secs()
                );
                tracing::error!(%why, "module stays down");
                slot.update(|s| s.health_override = Some(Health::Stopped { reason: why }));
                return;
            }
            failures.push_back(now);
            if started.elapsed() > policy.window {
                backoff = policy.initial_backoff;
            }
            tracing::error!(error = %reason, restart_in = ?backoff, "module failed; restarting");
            slot.update(|s| {
                s.restarts += 1;
                s.health_override = Some(Health::unhealthy(format!(
                    "{reason}; restarting in {} ms",
                    backoff.as_millis()
                )));
            });
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = ctx.shutdown.cancelled() => {
                    slot.update(|s| s.health_override = Some(Health::Stopped { reason: "agent shut down".into() }));
                    return;
                }
            }
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
    .instrument(span)
    .await
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
