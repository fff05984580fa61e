//! The agent runtime: wires modules, probes them, runs them under the supervisor, feeds them
//! desired state, routes commands and writes heartbeats, until shutdown.

mod agent_self;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fleet_contract::{Deployment, DeploymentStatus, DeviceId, Phase};
use fleet_module_api::{
    CancellationToken, Capability, CheckIn, Command, CommandError, Context, DesiredDeployment,
    DesiredState, ExtensionKind, ExtensionsBuilder, Health, Paths, Probe, Reply, StatusSink,
    SystemClock,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::commands::CommandGate;
use crate::config::Config;
use crate::control::local::LocalPlane;
use crate::control::mqtt::MqttPlane;
use crate::control::nats::NatsPlane;
use crate::control::{ControlPlane, DesiredUpdate, PlaneIo, StatusSnapshot};
use crate::heartbeat::{boot_id, Heartbeat, ModuleReport};
use crate::router::Router;
use crate::store::{DesiredRecord, OpenReport, ScopedStore, Store, StoreError};
use crate::supervisor::{supervise, RestartPolicy, Slot};
use crate::{modules, notify, VERSION};

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

/// Builds an [`Agent`]: the compiled-in modules plus any added with [`module`](Self::module).
pub struct AgentBuilder {
    config: Config,
    extra: Vec<Arc<dyn Capability>>,
    compiled_in: bool,
    policy: RestartPolicy,
}

impl AgentBuilder {
    /// Adds a module (tests plug in their own this way), after the compiled-in ones.
    pub fn module(mut self, module: Arc<dyn Capability>) -> Self {
        self.extra.push(module);
        self
    }

    /// Leaves out the compiled-in modules (tests that want only their own).
    pub fn without_compiled_in(mut self) -> Self {
        self.compiled_in = false;
        self
    }

    /// Overrides the supervisor's restart policy.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Builds the module instances from config; does not open the store or touch the device.
    pub fn build_modules(&self) -> Result<Vec<Arc<dyn Capability>>, AgentError> {
        let mut out: Vec<Arc<dyn Capability>> = Vec::new();
        if self.compiled_in {
            let descriptors = modules::compiled_in();
            for name in self.config.modules.keys() {
                if !descriptors.iter().any(|d| d.name == name) {
                    tracing::warn!(
                        module = %name,
                        "[modules.{name}] is configured but this agent is built without it; ignored"
                    );
                }
            }
            for d in descriptors {
                let module = (d.build)(self.config.modules.get(d.name))
                    .map_err(|e| AgentError::Config(e.to_string()))?;
                out.push(module);
            }
        }
        out.extend(self.extra.iter().cloned());
        let mut names = BTreeSet::new();
        for m in &out {
            if !names.insert(m.name()) {
                return Err(AgentError::Wiring(format!(
                    "two modules are named {:?}",
                    m.name()
                )));
            }
        }
        Ok(out)
    }

    /// Opens the store and wires everything; the agent is ready to [`Agent::run`].
    pub fn build(self) -> Result<Agent, AgentError> {
        let device = self.config.device_id().map_err(AgentError::Config)?;
        let modules = self.build_modules()?;
        let (store, open_report) = Store::open(
            &self.config.state_db(),
            Duration::from_millis(self.config.store.busy_timeout_ms),
            self.config.store.audit_max_entries,
        )?;
        let store = Arc::new(store);

        let mut ext = ExtensionsBuilder::new();
        let agent_self = Arc::new(agent_self::RuntimeSelf {
            shared: OnceLock::new(),
            nats: self.config.control.nats.clone(),
            restart: CancellationToken::new(),
            reason: Mutex::new(None),
        });
        ext.provide::<dyn fleet_module_api::AgentSelf>(agent_self.clone());
        let mut runtime_providers = Vec::new();
        for m in &modules {
            // Provided alone first, to learn which modules provide the container runtime.
            let mut own = ExtensionsBuilder::new();
            m.provide(&mut own);
            if own.build().has(ExtensionKind::ContainerRuntime) {
                runtime_providers.push(m.name());
            }
            m.provide(&mut ext);
        }
        let ext = ext.build();

        let cached = initial_desired(&store);
        let (desired_tx, desired_rx) = watch::channel(Arc::new(cached));
        let snapshot = StatusSnapshot {
            heartbeat: None,
            deployments: store
                .statuses()
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
        };
        let sink = Arc::new(RuntimeSink {
            store: store.clone(),
            details: Mutex::new(serde_json::Map::new()),
            detail_changed: tokio::sync::Notify::new(),
            published: watch::channel(snapshot).0,
        });
        let shutdown = CancellationToken::new();
        let (checkin_tx, checkin_rx) = watch::channel(CheckIn::default());
        let paths = Paths {
            config_dir: self
                .config
                .control
                .deployments_dir
                .parent()
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
            state_dir: self.config.state_dir.clone(),
            run_dir: self.config.run_dir.clone(),
        };

        // Needs are checked before anything runs; unmet ones are reported, not discovered.
        let mut claimed: BTreeMap<&'static str, &'static str> = BTreeMap::new();
        let mut slots = Vec::new();
        for m in modules {
            let slot = Arc::new(Slot::new(m.clone()));
            let needs = m.needs();
            let mut unmet: Option<String> = needs
                .consumes
                .iter()
                .find(|k| !ext.has(**k))
                .map(|k| format!("needs {}, which no built-in module provides", kind_name(*k)));
            for res in &needs.exclusive {
                if unmet.is_none() {
                    if let Some(owner) = claimed.get(res) {
                        unmet = Some(format!("{res} is already owned by module {owner}"));
                    } else {
                        claimed.insert(res, m.name());
                    }
                }
            }
            if let Some(reason) = unmet {
                slot.update(|s| {
                    s.probe = Some(Probe::unavailable(reason.clone()));
                    s.health_override = Some(Health::Stopped { reason });
                });
            }
            let ctx = Context {
                module: m.name(),
                store: Arc::new(ScopedStore::new(store.clone(), m.name())),
                desired: desired_rx.clone(),
                status: sink.clone(),
                clock: Arc::new(SystemClock),
                paths: paths.clone(),
                shutdown: shutdown.child_token(),
                ext: ext.clone(),
                checkin: checkin_rx.clone(),
            };
            slots.push((slot, ctx));
        }
        let router = Router::new(&slots).map_err(AgentError::Wiring)?;
        let plane = plane_for(&self.config, &device);
        let (audit_tx, _) = broadcast::channel(256);
        let gate = CommandGate::new(
            device.clone(),
            &self.config.trust,
            self.config.commands.clone(),
            store.clone(),
            audit_tx.clone(),
        );
        let shared = Arc::new(Shared {
            device,
            gate,
            audit_tx,
            to_modules: desired_tx,
            store,
            slots,
            router,
            sink,
            plane_name: plane.name(),
            started_at: unix_now(),
            started: Instant::now(),
            boot_id: boot_id(),
            deployments_blocked: Mutex::new(runtime_providers.is_empty().then(|| {
                (
                    Phase::Pending,
                    "no container module is built into this agent".to_owned(),
                )
            })),
            runtime_providers,
            checkin: checkin_tx,
        });
        let _ = agent_self.shared.set(Arc::downgrade(&shared));
        Ok(Agent {
            agent_self,
            config: self.config,
            shared,
            plane,
            open_report,
            policy: self.policy,
            shutdown,
        })
    }
}

/// Current Unix time in seconds, from the same clock modules get.
fn unix_now() -> u64 {
    use fleet_module_api::Clock;
    SystemClock.unix_secs()
}

/// The control plane selected by `[control] plane`.
pub fn plane_for(config: &Config, device: &DeviceId) -> Arc<dyn ControlPlane> {
    match config.control.plane.as_str() {
        "nats" => Arc::new(NatsPlane::new(config.control.nats.clone(), device.clone())),
        "mqtt" => Arc::new(MqttPlane::new(config.control.mqtt.clone(), device.clone())),
        _ => Arc::new(LocalPlane::new(config.control.deployments_dir.clone())),
    }
}

fn kind_name(k: ExtensionKind) -> &'static str {
    match k {
        ExtensionKind::ContainerRuntime => "a container runtime",
        ExtensionKind::LifecycleHook => "a lifecycle hook",
        ExtensionKind::AgentSelf => "the agent runtime",
    }
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
}

impl Shared {
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

/// Desired state cached in the store, for converging before the control plane answers.
fn initial_desired(store: &Store) -> DesiredState {
    let records = match store.desired() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read cached desired state; starting empty");
            return DesiredState::default();
        }
    };
    let mut state = DesiredState::default();
    for rec in records {
        if rec.key == crate::control::SYSTEM_RECORD_KEY {
            state.system = Some(crate::control::decode_system(&rec.source, &rec.body));
            continue;
        }
        let Some(name) = rec.key.strip_prefix("deploy.") else {
            continue;
        };
        state
            .deployments
            .insert(name.to_owned(), decode_cached(&rec));
    }
    state
}

fn decode_cached(rec: &DesiredRecord) -> DesiredDeployment {
    let decoded = if rec.source.ends_with(".toml") {
        Deployment::from_toml_bytes(&rec.body)
    } else {
        Deployment::from_json_slice(&rec.body)
    };
    match decoded {
        Ok(d) => DesiredDeployment::Valid(d),
        Err(error) => DesiredDeployment::Invalid {
            source_name: rec.source.clone(),
            error: error.with_source(&rec.source),
        },
    }
}

/// Applies each desired-state update: caches it, reports what only the runtime can (invalid
/// documents; valid ones when no module handles deployments), and hands it to the modules.
async fn apply_desired(
    shared: Arc<Shared>,
    mut rx: watch::Receiver<DesiredUpdate>,
    shutdown: CancellationToken,
) {
    // Statuses the runtime reported; after a restart without a deployment module, that is
    // every stored one (so deployments deleted while the agent was down are cleaned up).
    let blocked = shared
        .deployments_blocked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut owned: BTreeSet<String> = if blocked.is_none() {
        BTreeSet::new()
    } else {
        shared
            .store
            .statuses()
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let update = rx.borrow_and_update().clone();
        shared
            .checkin
            .send_if_modified(|c| !std::mem::replace(&mut c.plane_reached, true));
        if let Err(e) = shared.store.replace_desired(&update.records) {
            tracing::error!(error = %e, "cannot cache desired state");
        }
        let now = unix_now();
        let mut now_owned = BTreeSet::new();
        for (name, d) in &update.state.deployments {
            let status = match d {
                DesiredDeployment::Invalid { error, .. } => Some(DeploymentStatus {
                    name: name.clone(),
                    revision: None,
                    phase: Phase::Failed,
                    message: error.to_string(),
                    restarts: 0,
                    last_exit_code: None,
                    image_digest: None,
                    updated_at: now,
                }),
                DesiredDeployment::Valid(dep) if blocked.is_some() => {
                    let (phase, why) = blocked.clone().unwrap_or((Phase::Pending, String::new()));
                    Some(DeploymentStatus {
                        name: name.clone(),
                        revision: Some(dep.revision),
                        phase,
                        message: format!("accepted revision {}; {why}", dep.revision),
                        restarts: 0,
                        last_exit_code: None,
                        image_digest: None,
                        updated_at: now,
                    })
                }
                DesiredDeployment::Valid(_) => None,
            };
            if let Some(st) = status {
                now_owned.insert(name.clone());
                shared.sink.deployment(st);
            }
        }
        // Remove what the runtime reported for deployments that are no longer desired.
        for name in owned
            .iter()
            .filter(|n| !update.state.deployments.contains_key(*n))
        {
            shared.sink.deployment_removed(name);
        }
        owned = now_owned;
        shared.to_modules.send_replace(update.state.clone());
    }
}

/// The status sink modules write to: persisted in the store (and later forwarded).
struct RuntimeSink {
    store: Arc<Store>,
    details: Mutex<serde_json::Map<String, serde_json::Value>>,
    /// Wakes the main loop to write a heartbeat when a detail changed.
    detail_changed: tokio::sync::Notify,
    /// What the control plane publishes.
    published: watch::Sender<StatusSnapshot>,
}

impl StatusSink for RuntimeSink {
    fn deployment(&self, status: DeploymentStatus) {
        let unchanged = self
            .store
            .statuses()
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.name == status.name))
            .is_some_and(|old| {
                old.phase == status.phase
                    && old.message == status.message
                    && old.revision == status.revision
                    && old.restarts == status.restarts
            });
        if unchanged {
            return;
        }
        tracing::info!(
            deployment = %status.name,
            phase = status.phase.as_str(),
            revision = ?status.revision,
            message = %status.message,
            "deployment status"
        );
        if let Err(e) = self.store.put_status(&status) {
            tracing::error!(error = %e, "cannot record deployment status");
        }
        self.published.send_modify(|s| {
            s.deployments.insert(status.name.clone(), status);
        });
    }

    fn deployment_removed(&self, name: &str) {
        tracing::info!(deployment = %name, "deployment removed");
        if let Err(e) = self.store.delete_status(name) {
            tracing::error!(error = %e, "cannot delete deployment status");
        }
        self.published.send_modify(|s| {
            s.deployments.remove(name);
        });
    }

    fn detail(&self, module: &'static str, detail: serde_json::Value) {
        let old = self
            .details
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(module.to_owned(), detail.clone());
        if old.as_ref() != Some(&detail) {
            self.detail_changed.notify_one();
        }
    }
}
