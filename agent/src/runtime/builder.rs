//! Building an [`Agent`]: module instances, the store, extension points, declared needs,
//! the command gate and the control plane, wired before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fleet_contract::{DeviceId, Phase};
use fleet_module_api::{
    CancellationToken, Capability, CheckIn, Context, ExtensionKind, ExtensionsBuilder,
    GuardedClock, Health, Liveness, Paths, Probe, Progress,
};
use tokio::sync::{broadcast, watch};

use super::desired::initial_desired;
use super::sink::RuntimeSink;
use super::{agent_self, clock, unix_now, Agent, AgentError, Shared};
use crate::commands::CommandGate;
use crate::config::Config;
use crate::control::local::LocalPlane;
use crate::control::mqtt::MqttPlane;
use crate::control::nats::NatsPlane;
use crate::control::{ControlPlane, StatusSnapshot};
use crate::heartbeat::boot_id;
use crate::modules;
use crate::router::Router;
use crate::store::{ScopedStore, Store};
use crate::supervisor::{RestartPolicy, Slot};

/// Builds an [`Agent`]: the compiled-in modules plus any added with [`module`](Self::module).
pub struct AgentBuilder {
    pub(super) config: Config,
    pub(super) extra: Vec<Arc<dyn Capability>>,
    pub(super) compiled_in: bool,
    pub(super) policy: RestartPolicy,
    pub(super) probe_timeouts: Vec<Duration>,
    pub(super) abort_grace: Duration,
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

    /// Overrides the per-attempt probe budgets (default [`super::PROBE_TIMEOUTS`]); an empty
    /// list keeps the default.
    pub fn probe_timeouts(mut self, timeouts: &[Duration]) -> Self {
        if !timeouts.is_empty() {
            self.probe_timeouts = timeouts.to_vec();
        }
        self
    }

    /// Overrides how long an aborted module's task may take to stop before it counts as
    /// stuck (default [10 s]).
    pub fn abort_grace(mut self, grace: Duration) -> Self {
        self.abort_grace = grace;
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
        let changed = Arc::new(tokio::sync::Notify::new());
        let clock = GuardedClock::new();
        ext.provide::<dyn fleet_module_api::ClockAuthority>(Arc::new(clock::Authority {
            clock: clock.clone(),
            changed: changed.clone(),
        }));
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
            changed: changed.clone(),
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
        let liveness = Arc::new(Liveness::new());
        let mut claimed: BTreeMap<&'static str, &'static str> = BTreeMap::new();
        let mut slots = Vec::new();
        for m in modules {
            let slot = Arc::new(Slot::new(m.clone(), changed.clone()));
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
                clock: clock.clone(),
                paths: paths.clone(),
                shutdown: shutdown.child_token(),
                ext: ext.clone(),
                checkin: checkin_rx.clone(),
                progress: Progress::new(m.progress_budget(), liveness.clone()),
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
            clock,
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
            ignored: Mutex::new(Default::default()),
            publish_failures: Default::default(),
            written: Mutex::new(None),
            status_sent: Mutex::new(String::new()),
            providers_probed: CancellationToken::new(),
            loop_progress: Progress::new(Duration::MAX, liveness.clone()),
            liveness,
        });
        let _ = agent_self.shared.set(Arc::downgrade(&shared));
        Ok(Agent {
            agent_self,
            config: self.config,
            shared,
            plane,
            open_report,
            policy: self.policy,
            probe_timeouts: self.probe_timeouts,
            abort_grace: self.abort_grace,
            shutdown,
        })
    }
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
        ExtensionKind::AgentSelf | ExtensionKind::ClockAuthority => "the agent runtime",
    }
}
