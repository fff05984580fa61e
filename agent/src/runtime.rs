//! The agent runtime: wires modules, probes them, runs them under the supervisor, feeds them
//! desired state, routes commands and writes heartbeats, until shutdown.

mod agent_self;
mod builder;
mod clock;
mod desired;
mod health;
mod ping;
mod sink;

pub use builder::{plane_for, AgentBuilder};
use desired::apply_desired;
use health::status_line;
use sink::RuntimeSink;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_contract::{DeviceId, Phase};
use fleet_module_api::{
    CancellationToken, CheckIn, Command, CommandError, Context, DesiredState, GuardedClock, Health,
    Liveness, Probe, Progress, Reply, SystemClock,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::commands::CommandGate;
use crate::config::Config;
use crate::control::{ControlPlane, DesiredUpdate, PlaneIo, PublishFailures};
use crate::heartbeat::{Heartbeat, IgnoredReport};
use crate::router::Router;
use crate::store::{OpenReport, Store, StoreError};
use crate::supervisor::{supervise, RestartPolicy, Slot, ABORT_GRACE};
use crate::{notify, VERSION};

/// How long a module's probe may take, per attempt: a probe that does not answer is asked
/// again with the next, longer budget, and counts as unavailable only after the last one.
/// (A single 10 s budget stopped `system-upgrade` for a whole boot on a TCG guest at load 9,
/// where its `lvs` took longer; a real "unavailable" answer is never retried.)
pub const PROBE_TIMEOUTS: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(90),
];
/// While a module is not settled (probe pending, or available and not healthy), its health
/// is also read this often, for modules that do not announce changes
/// ([`fleet_module_api::StatusSink::health_changed`]); a settled agent keeps no such timer.
const UNSETTLED_POLL: Duration = Duration::from_secs(2);
/// How often the runtime loop proves itself alive (and the pinger decides) when systemd
/// armed no service watchdog: the watchdog module may follow the verdict to pet a hardware
/// watchdog. With one armed, half its interval.
const UNARMED_CHECK: Duration = Duration::from_secs(10);
/// How long shutdown waits for modules before abandoning them (systemd allows 15 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Modules could not be wired together (a build defect).
    #[error("wiring modules: {0}")]
    Wiring(String),
    /// A module asked for a restart (self-upgrade cutover or missed deadline); exit code 3.
    #[error("restart requested: {0}")]
    Restart(String),
    /// A start gate refused the start (the clock is skewed past the limit); exit code 4.
    #[error("{0}")]
    StartRefused(String),
}

impl AgentError {
    /// The documented process exit code: 2 config/usage, 3 restart, 4 start refused, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Restart(_) => 3,
            AgentError::StartRefused(_) => 4,
            _ => 1,
        }
    }
}

/// Current Unix time in seconds, from the same clock modules get.
fn unix_now() -> u64 {
    use fleet_module_api::Clock;
    SystemClock.unix_secs()
}

/// State shared by the runtime's tasks and [`AgentHandle`]s.
struct Shared {
    device: DeviceId,
    gate: CommandGate,
    /// The kernel clock with the time guard's last measurement (every module's clock).
    clock: Arc<GuardedClock>,
    audit_tx: broadcast::Sender<serde_json::Value>,
    /// Desired state as handed to modules (re-sent by `reconcile-now`).
    to_modules: watch::Sender<Arc<DesiredState>>,
    store: Arc<Store>,
    slots: Vec<(Arc<Slot>, Context)>,
    router: Router,
    sink: Arc<RuntimeSink>,
    plane_name: &'static str,
    started_at: u64,
    started: Instant,
    boot_id: String,
    /// `None` while a module provides an available container runtime and owns the status of
    /// valid deployments; otherwise the phase and reason the runtime reports for them.
    deployments_blocked: Mutex<Option<(Phase, String)>>,
    /// Modules providing the container runtime.
    runtime_providers: Vec<&'static str>,
    /// Check-in signal for modules (upgrade commits): plane reached, modules healthy.
    checkin: watch::Sender<CheckIn>,
    /// Inputs the plane (or the cache) did not use, as the heartbeat shows them.
    ignored: Mutex<IgnoredReport>,
    /// Documents the plane could not publish.
    publish_failures: Arc<PublishFailures>,
    /// The heartbeat last written to the store (rewritten only when its content changes).
    written: Mutex<Option<Heartbeat>>,
    /// The status line last sent to systemd.
    status_sent: Mutex<String>,
    /// Fires once every module providing the container runtime has answered its probe
    /// (`deployments_blocked` is then final); desired state is applied only after.
    providers_probed: CancellationToken,
    /// The runtime's verdict on the agent, kept by the pinger, read by modules.
    liveness: Arc<Liveness>,
    /// Ticked by the runtime loop each time it has asked every module's health.
    loop_progress: Progress,
}

impl Shared {
    /// Replaces the ignored inputs shown in status; a change is published at once.
    fn set_ignored(&self, report: IgnoredReport) {
        let changed = {
            let mut cur = self.ignored.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *cur != report;
            *cur = report;
            changed
        };
        if changed {
            self.sink.changed.notify_one();
        }
    }

    async fn command(&self, cmd: Command) -> Result<Reply, CommandError> {
        match cmd.verb.as_str() {
            "ping" => Ok(Reply::json(serde_json::json!({
                "pong": true, "device": self.device, "version": VERSION
            }))),
            "status" => {
                let deployments = self.store.statuses().unwrap_or_default();
                Ok(Reply::json(serde_json::json!({
                    "heartbeat": self.heartbeat(false),
                    "deployments": deployments,
                })))
            }
            "reconcile-now" => {
                let current = self.to_modules.borrow().clone();
                self.to_modules.send_replace(current);
                Ok(Reply::json(serde_json::json!({ "reconciling": true })))
            }
            _ => self.router.dispatch(cmd).await,
        }
    }
}

/// A running agent's handle for tests and the command path: heartbeat and command routing.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
}

impl AgentHandle {
    /// The current heartbeat (probes, health, restarts of every module).
    pub fn heartbeat(&self) -> Heartbeat {
        self.shared.heartbeat(false)
    }

    /// Routes an (already authorised) command to the module serving its verb.
    pub async fn command(&self, cmd: Command) -> Result<Reply, CommandError> {
        self.shared.command(cmd).await
    }

    /// Runs raw signed-command bytes through the gate (signature, device, expiry, role,
    /// idempotency, audit) exactly as a control plane does.
    pub async fn signed_command(&self, bytes: &[u8]) -> fleet_contract::CommandReply {
        let shared = self.shared.clone();
        self.shared
            .gate
            .process(bytes, &*self.shared.clock, |cmd| async move {
                shared.command(cmd).await
            })
            .await
    }

    /// Every verb this agent serves.
    pub fn verbs(&self) -> Vec<&'static str> {
        self.shared.router.verbs()
    }
}

/// The agent, wired and ready to run.
pub struct Agent {
    agent_self: Arc<agent_self::RuntimeSelf>,
    config: Config,
    shared: Arc<Shared>,
    plane: Arc<dyn ControlPlane>,
    open_report: OpenReport,
    policy: RestartPolicy,
    probe_timeouts: Vec<Duration>,
    abort_grace: Duration,
    shutdown: CancellationToken,
}

impl Agent {
    /// Starts building an agent from `config`.
    pub fn builder(config: Config) -> AgentBuilder {
        AgentBuilder {
            config,
            extra: Vec::new(),
            compiled_in: true,
            policy: RestartPolicy::default(),
            probe_timeouts: PROBE_TIMEOUTS.to_vec(),
            abort_grace: ABORT_GRACE,
        }
    }

    /// A handle for heartbeats and commands while the agent runs.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            shared: self.shared.clone(),
        }
    }

    /// Probes every module without running any (for `self-test`); unmet needs count as
    /// unavailable.
    pub async fn probe_all(&self) -> Vec<(&'static str, Probe)> {
        let mut out = Vec::new();
        for (slot, ctx) in &self.shared.slots {
            let probe = match slot.state().probe {
                Some(p) => p,
                None => probe_module(slot, ctx, &self.probe_timeouts).await,
            };
            out.push((slot.name(), probe));
        }
        out
    }

    /// What opening the store found (creation, recovery from corruption).
    pub fn store_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// Runs until `stop` fires, then shuts down cleanly within [`SHUTDOWN_GRACE`].
    pub async fn run(self, stop: CancellationToken) -> Result<(), AgentError> {
        let shared = self.shared.clone();
        tracing::info!(
            device = %shared.device,
            version = VERSION,
            plane = shared.plane_name,
            modules = shared.slots.len(),
            "fleet-agent starting"
        );
        // A start gate (the time guard on a skewed clock) may hold the start or refuse it.
        if !clock::pass_start_gates(&shared.slots, &stop).await? {
            return Ok(());
        }

        // Each module is probed and then run under the supervisor in its own task; READY
        // does not wait for probes (a module still probing shows `starting`, and the
        // check-in does not count it before its probe answered).
        let mut module_tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
        for (slot, ctx) in &shared.slots {
            if slot.state().probe.is_some() {
                continue; // unmet needs, already reported
            }
            let (slot, ctx, shared, policy, grace) = (
                slot.clone(),
                ctx.clone(),
                shared.clone(),
                self.policy,
                self.abort_grace,
            );
            let timeouts = self.probe_timeouts.clone();
            let name = slot.name();
            module_tasks.push((
                name,
                tokio::spawn(async move {
                    let probe = tokio::select! {
                        p = probe_module(&slot, &ctx, &timeouts) => p,
                        () = ctx.shutdown.cancelled() => return,
                    };
                    let available = probe.is_available();
                    let reason = match &probe {
                        Probe::Unavailable { reason } => reason.clone(),
                        Probe::Available { .. } => String::new(),
                    };
                    slot.update(|s| {
                        s.probe = Some(probe);
                        if !available {
                            s.health_override = Some(Health::Stopped {
                                reason: format!("unavailable: {reason}"),
                            });
                        }
                    });
                    shared.providers_answered();
                    drop(shared);
                    if available {
                        supervise(slot, ctx, policy, grace).await;
                    }
                }),
            ));
        }
        shared.providers_answered();

        // Desired state: control plane -> cache + runtime-owned statuses -> modules.
        let (plane_tx, plane_rx) = watch::channel(DesiredUpdate::default());
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<crate::control::CommandRequest>(64);
        let io = PlaneIo {
            desired: plane_tx,
            status: shared.sink.published.subscribe(),
            commands: cmd_tx,
            audit: shared.audit_tx.subscribe(),
            failures: shared.publish_failures.clone(),
        };
        let plane_task = {
            let plane = self.plane.clone();
            let token = self.shutdown.child_token();
            tokio::spawn(async move {
                if let Err(e) = plane.run(io, token).await {
                    tracing::error!(error = %e, "control plane stopped; running from cached desired state");
                }
            })
        };
        let desired_task = tokio::spawn(apply_desired(
            shared.clone(),
            plane_rx,
            self.shutdown.child_token(),
        ));
        // Commands are handled one at a time, so a repeated id can never run twice.
        let command_task = {
            let handle = self.handle();
            tokio::spawn(async move {
                while let Some(req) = cmd_rx.recv().await {
                    let reply = handle.signed_command(&req.bytes).await;
                    let _ = req
                        .reply
                        .send(serde_json::to_vec(&reply).unwrap_or_default());
                    if let Err(e) = handle.shared.store.journal_prune(unix_now()) {
                        tracing::warn!(error = %e, "cannot prune command journal");
                    }
                }
            })
        };

        // Wired: READY now, then the first heartbeat record (its fsync is not in the way).
        let line = status_line(&shared.heartbeat(false), &shared);
        notify::ready(&line);
        *shared.status_sent.lock().unwrap_or_else(|p| p.into_inner()) = line;
        tracing::info!(modules = module_tasks.len(), "fleet-agent ready");
        shared.refresh(false, true);
        // Expired command records go at start, after each command and at each network
        // heartbeat (not on a timer of their own).
        if let Err(e) = shared.store.journal_prune(unix_now()) {
            tracing::warn!(error = %e, "cannot prune command journal");
        }

        // Timers: the liveness check (half systemd's service watchdog interval, when it
        // asks), a network plane's heartbeat, and a health poll only while a module is not
        // settled. Everything else is an event (`changed`): a probe answered, a supervisor
        // transition, a module's health, detail or deployment status. The pings themselves
        // come from the pinger thread (ping.rs), which follows this loop's ticks.
        let systemd_watchdog = notify::watchdog_interval();
        let timing = ping::PingTiming {
            period: systemd_watchdog.map_or(UNARMED_CHECK, |w| w / 2),
            systemd: systemd_watchdog.is_some(),
            abort_grace: self.abort_grace,
        };
        let watchdog = Some(timing.period);
        shared.loop_progress.tick();
        let pinger = match ping::start(Arc::downgrade(&shared), timing) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the watchdog pinger thread; systemd restarts the agent");
                None
            }
        };
        let beat_every = self
            .plane
            .publishes_heartbeats()
            .then(|| Duration::from_secs(self.config.heartbeat_interval_secs));
        let now = tokio::time::Instant::now();
        let mut next_pet = watchdog.map(|w| now + w);
        let mut next_beat = beat_every.map(|b| now + b);
        let mut next_poll = None;
        loop {
            let wake = [next_pet, next_beat, next_poll].into_iter().flatten().min();
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.agent_self.restart.cancelled() => break,
                () = sleep_until_some(wake) => {}
                () = shared.sink.changed.notified() => {}
            }
            let now = tokio::time::Instant::now();
            let beat = next_beat.is_some_and(|t| t <= now);
            if beat {
                next_beat = beat_every.map(|b| now + b);
                if let Err(e) = shared.store.journal_prune(unix_now()) {
                    tracing::warn!(error = %e, "cannot prune command journal");
                }
            }
            // Computing health asks every module: the tick proves the whole loop is alive.
            shared.refresh(false, beat);
            shared.loop_progress.tick();
            if next_pet.is_some_and(|t| t <= now) {
                next_pet = watchdog.map(|w| now + w);
            }
            next_poll = match (shared.unsettled(), next_poll) {
                (false, _) => None,
                (true, Some(t)) if t > now => Some(t),
                (true, _) => Some(now + UNSETTLED_POLL),
            };
        }

        tracing::info!("shutting down");
        drop(pinger);
        notify::stopping();
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (name, task) in module_tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::error!(module = name, "module did not stop in time; abandoned");
                abort.abort();
            }
        }
        for task in [plane_task, desired_task, command_task] {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        shared.refresh(true, true);
        tracing::info!("fleet-agent stopped");
        let restart = self
            .agent_self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match restart {
            Some(reason) => Err(AgentError::Restart(reason)),
            None => Ok(()),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs one module's probe, asking again with the next budget of `timeouts` when it does
/// not answer in time; logs the result.
async fn probe_module(slot: &Slot, ctx: &Context, timeouts: &[Duration]) -> Probe {
    let mut budgets = timeouts.iter().enumerate().peekable();
    let probe = loop {
        let Some((attempt, budget)) = budgets.next() else {
            break Probe::unavailable("no probe budget configured");
        };
        if let Ok(p) = tokio::time::timeout(*budget, slot.module.probe(ctx)).await {
            break p;
        }
        let secs = budget.as_secs_f32();
        match budgets.peek() {
            Some((_, next)) => tracing::warn!(
                module = slot.name(),
                "probe did not answer within {secs} s; asking again with {} s",
                next.as_secs_f32()
            ),
            None => {
                break Probe::unavailable(format!(
                    "probe did not answer within {secs} s ({} attempt{})",
                    attempt + 1,
                    if attempt == 0 { "" } else { "s" }
                ))
            }
        }
    };
    match &probe {
        Probe::Available { detail } => {
            tracing::info!(module = slot.name(), %detail, "module available")
        }
        Probe::Unavailable { reason } => {
            tracing::warn!(module = slot.name(), %reason, "module unavailable")
        }
    }
    probe
}
