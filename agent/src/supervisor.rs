//! Runs each module's `run` in isolation: an error, a panic or no progress within its budget
//! marks the module unhealthy and restarts it with exponential backoff; too many restarts in
//! a window and it stays down and says so. Nothing a module does takes the agent down, with
//! one exception: a module whose task cannot be stopped (a thread blocked in a synchronous
//! call, which tokio cannot cancel) is marked stuck, and the runtime then stops petting
//! systemd's service watchdog, so systemd restarts the whole agent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_module_api::{Capability, Context, Health, ModuleError, Probe};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument;

/// How long a module's task may take to finish after the supervisor aborted it for lack of
/// progress; past this it counts as stuck (see the module docs).
pub const ABORT_GRACE: Duration = Duration::from_secs(10);

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
    /// `run` is executing (its progress ticks are watched).
    pub running: bool,
    /// Why the module's task could not be stopped after an abort; the runtime stops
    /// petting systemd's service watchdog while this is set.
    pub stuck: Option<String>,
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
                running: false,
                stuck: None,
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

/// Aborts the task when dropped (the supervisor's own task abandoned at shutdown).
struct AbortOnDrop(JoinHandle<Result<(), ModuleError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one run of a module ended.
enum Ended {
    /// The task finished: returned, failed or panicked.
    Finished(Result<Result<(), ModuleError>, JoinError>),
    /// No tick for this long; the task was aborted and has stopped.
    NoProgress(Duration),
    /// Shutdown fired while the module was stuck.
    Shutdown,
}

/// Supervises `slot`'s module until shutdown or until it exhausts its restarts. Each run is
/// a task of its own, watched for progress; `abort_grace` is [`ABORT_GRACE`] outside tests.
pub(crate) async fn supervise(
    slot: Arc<Slot>,
    ctx: Context,
    policy: RestartPolicy,
    abort_grace: Duration,
) {
    let name = slot.name();
    let span = tracing::info_span!("module", module = name);
    async move {
        let mut backoff = policy.initial_backoff;
        let mut failures: VecDeque<Instant> = VecDeque::new();
        loop {
            ctx.progress.tick();
            slot.update(|s| {
                s.health_override = None;
                s.running = true;
            });
            let started = Instant::now();
            let ended = run_once(&slot, &ctx, abort_grace).await;
            slot.update(|s| s.running = false);
            if ctx.shutdown.is_cancelled() {
                if let Ended::Finished(Ok(Err(e))) = &ended {
                    tracing::warn!(error = %e, "module returned an error while shutting down");
                }
                slot.update(|s| {
                    s.health_override = Some(Health::Stopped {
                        reason: "agent shut down".into(),
                    })
                });
                return;
            }
            let reason = match ended {
                Ended::Finished(Ok(Ok(()))) => "run returned before shutdown".to_owned(),
                Ended::Finished(Ok(Err(e))) => e.to_string(),
                Ended::Finished(Err(e)) if e.is_panic() => {
                    format!("panicked: {}", panic_message(e.into_panic().as_ref()))
                }
                Ended::Finished(Err(_)) => "its task was cancelled".to_owned(),
                Ended::NoProgress(quiet) => format!("no progress for {}", secs(quiet)),
                Ended::Shutdown => return,
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

/// Runs the module once in its own task, until it finishes or makes no progress within its
/// budget. A task that does not stop within `abort_grace` of its abort marks the slot stuck
/// (logged once) until it does stop, if ever.
async fn run_once(slot: &Slot, ctx: &Context, abort_grace: Duration) -> Ended {
    let budget = ctx.progress.budget();
    let run = slot.module.clone().run(ctx.clone());
    let mut task = AbortOnDrop(tokio::spawn(run.in_current_span()));
    let quiet = loop {
        let since = ctx.progress.since_tick();
        if since >= budget {
            break since;
        }
        tokio::select! {
            done = &mut task.0 => return Ended::Finished(done),
            () = tokio::time::sleep(budget - since) => {}
        }
    };
    let quiet_for = secs(quiet);
    tracing::error!(
        budget = %secs(budget),
        "no progress for {quiet_for}; aborting the module to restart it"
    );
    slot.update(|s| {
        s.health_override = Some(Health::unhealthy(format!(
            "no progress for {quiet_for}; restarting"
        )))
    });
    task.0.abort();
    if tokio::time::timeout(abort_grace, &mut task.0).await.is_ok() {
        return Ended::NoProgress(quiet);
    }
    let why = format!(
        "no progress for {quiet_for} and its task did not stop within {} of an abort \
         (a thread blocked in a synchronous call?)",
        secs(abort_grace)
    );
    tracing::error!(
        %why,
        "module cannot be restarted; the agent stops petting the service watchdog"
    );
    slot.update(|s| {
        s.stuck = Some(why.clone());
        s.health_override = Some(Health::unhealthy(why));
    });
    let ended = tokio::select! {
        _ = &mut task.0 => Ended::NoProgress(quiet),
        () = ctx.shutdown.cancelled() => Ended::Shutdown,
    };
    if matches!(ended, Ended::NoProgress(_)) {
        tracing::warn!("the stuck module's task stopped at last; restarting it");
        slot.update(|s| s.stuck = None);
    }
    ended
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

/// `12 s`, or `0.3 s` below ten seconds.
pub(crate) fn secs(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f32())
    }
}
