//! The agent runtime: wires modules, probes them, runs them under the supervisor, feeds them
//! desired state, routes commands and writes heartbeats, until shutdown.

mod agent_self;
mod builder;
mod desired;
mod sink;

pub use builder::{plane_for, AgentBuilder};
use desired::apply_desired;
use sink::RuntimeSink;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_contract::{DeviceId, Phase};
use fleet_module_api::{
    CancellationToken, CheckIn, Command, CommandError, Context, DesiredState, Health, Probe, Reply,
    SystemClock,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::commands::CommandGate;
use crate::config::Config;
use crate::control::{ControlPlane, DesiredUpdate, PlaneIo, PublishFailures};
use crate::heartbeat::{Heartbeat, IgnoredReport, ModuleReport};
use crate::router::Router;
use crate::store::{OpenReport, Store, StoreError};
use crate::supervisor::{supervise, RestartPolicy, Slot};
use crate::{notify, VERSION};

/// How long a module's probe may take before it counts as unavailable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time between two refreshes of the modules' check-in signal.
const CHECKIN_EVERY: Duration = Duration::from_secs(2);
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
}

impl AgentError {
    /// The documented process exit code: 2 for config/usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Restart(_) => 3,
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
            self.sink.detail_changed.notify_one();
        }
    }

    fn heartbeat(&self, stopped: bool) -> Heartbeat {
        let modules = self
            .slots
            .iter()
            .map(|(slot, _)| {
                let st = slot.state();
                ModuleReport::new(slot.name(), st.probe.as_ref(), &slot.health(), st.restarts)
            })
            .collect();
        Heartbeat {
            device: self.device.to_string(),
            version: VERSION.to_owned(),
            pid: std::process::id(),
            boot_id: self.boot_id.clone(),
            started_at: self.started_at,
            at: unix_now(),
            agent_uptime_secs: self.started.elapsed().as_secs(),
            control_plane: self.plane_name.to_owned(),
            stopped,
            modules,
            ignored_inputs: self
                .ignored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            publish_failures: self.publish_failures.list(),
            details: self
                .sink
                .details
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Feeds the modules' check-in signal: every available module healthy (unavailable
    /// ones are not counted). `plane_reached` is set by the desired-state task.
    fn update_checkin(&self, hb: &Heartbeat) {
        let unhealthy: Vec<(String, String)> = hb
            .modules
            .iter()
            .filter(|m| m.probe.get("state").and_then(|s| s.as_str()) == Some("available"))
            .filter(|m| !m.is_healthy())
            .map(|m| {
                let state = m
                    .health
                    .get("state")
                    .and_then(|s| s.as_str())
                    .unwrap_or("?");
                (m.name.clone(), state.to_owned())
            })
            .collect();
        let probed = hb
            .modules
            .iter()
            .all(|m| m.probe.get("state").and_then(|s| s.as_str()) != Some("pending"));
        self.checkin.send_if_modified(|c| {
            let changed = c.probed != probed || c.unhealthy != unhealthy;
            c.probed = probed;
            c.unhealthy = unhealthy;
            changed
        });
    }

    fn write_heartbeat(&self, stopped: bool) -> Heartbeat {
        let hb = self.heartbeat(stopped);
        self.sink
            .published
            .send_modify(|s| s.heartbeat = Some(hb.clone()));
        match serde_json::to_vec(&hb) {
            Ok(body) => {
                if let Err(e) = self.store.kv_put("agent", "heartbeat", &body) {
                    tracing::error!(error = %e, "cannot record heartbeat");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
        }
        hb
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
            .process(
                bytes,
                unix_now(),
                |cmd| async move { shared.command(cmd).await },
            )
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
                None => probe_module(slot, ctx).await,
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

        // Probe, then run every available module under the supervisor.
        let mut module_tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
        for (slot, ctx) in &shared.slots {
            if slot.state().probe.is_some() {
                continue; // unmet needs, already reported
            }
            let probe = probe_module(slot, ctx).await;
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
            if available {
                module_tasks.push((
                    slot.name(),
                    tokio::spawn(supervise(slot.clone(), ctx.clone(), self.policy)),
                ));
            }
        }
        // Deployments need an available container runtime; say so when there is none.
        let unavailable: Vec<String> = shared
            .slots
            .iter()
            .filter(|(slot, _)| shared.runtime_providers.contains(&slot.name()))
            .filter_map(|(slot, _)| match slot.state().probe {
                Some(Probe::Unavailable { reason }) => Some(format!("{}: {reason}", slot.name())),
                _ => None,
            })
            .collect();
        if !shared.runtime_providers.is_empty()
            && unavailable.len() == shared.runtime_providers.len()
        {
            *shared
                .deployments_blocked
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((
                Phase::Failed,
                format!("cannot run containers: module {}", unavailable.join("; ")),
            ));
        }

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
                }
            })
        };

        let hb = shared.write_heartbeat(false);
        shared.update_checkin(&hb);
        notify::ready(&status_line(&hb, &shared));
        tracing::info!(running = module_tasks.len(), "fleet-agent ready");

        let interval = Duration::from_secs(self.config.heartbeat_interval_secs);
        let watchdog = notify::watchdog_interval();
        // The check-in signal (module health) is refreshed every tick, so at least every
        // CHECKIN_EVERY whatever the heartbeat interval: upgrade commits wait on it.
        let tick = watchdog
            .map_or(interval, |w| (w / 2).min(interval))
            .min(CHECKIN_EVERY);
        let mut next_heartbeat = Instant::now() + interval;
        let mut next_tick = tokio::time::Instant::now() + tick;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.agent_self.restart.cancelled() => break,
                () = tokio::time::sleep_until(next_tick) => {}
                // A module's detail changed (e.g. an upgrade phase): publish it now, not at
                // the next interval. The tick keeps its own schedule (watchdog pets).
                () = shared.sink.detail_changed.notified() => {
                    let _ = shared.write_heartbeat(false);
                    continue;
                }
            }
            next_tick = tokio::time::Instant::now() + tick;
            // Computing health polls every module: the pet proves the whole loop is alive.
            let hb = shared.heartbeat(false);
            shared.update_checkin(&hb);
            if watchdog.is_some() {
                notify::watchdog();
            }
            if Instant::now() >= next_heartbeat {
                next_heartbeat = Instant::now() + interval;
                let _ = shared.write_heartbeat(false);
                notify::status(&status_line(&hb, &shared));
                if let Err(e) = shared.store.journal_prune(unix_now()) {
                    tracing::warn!(error = %e, "cannot prune command journal");
                }
            }
        }

        tracing::info!("shutting down");
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
        let _ = shared.write_heartbeat(true);
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

/// Runs one module's probe with a timeout, logging the result.
async fn probe_module(slot: &Slot, ctx: &Context) -> Probe {
    let probe = match tokio::time::timeout(PROBE_TIMEOUT, slot.module.probe(ctx)).await {
        Ok(p) => p,
        Err(_) => Probe::unavailable(format!(
            "probe did not answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
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

fn status_line(hb: &Heartbeat, shared: &Shared) -> String {
    let healthy = hb.modules.iter().filter(|m| m.is_healthy()).count();
    let deployments = shared
        .store
        .statuses()
        .map(|s| s.len().to_string())
        .unwrap_or_else(|_| "?".into());
    format!(
        "{} of {} modules healthy, {deployments} deployment(s), plane {}",
        healthy,
        hb.modules.len(),
        hb.control_plane
    )
}
