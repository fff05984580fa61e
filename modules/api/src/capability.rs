use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::{Command, CommandError, ConfigError, Context, ExtensionKind, ExtensionsBuilder};
use crate::{ModuleError, Reply};

/// One compiled-in module of the agent.
///
/// The runtime calls, in order: [`needs`](Self::needs) and [`provide`](Self::provide) while
/// wiring, [`probe`](Self::probe) once per start, then [`run`](Self::run) under a supervisor.
/// [`handle`](Self::handle) and [`health`](Self::health) may be called at any time while it runs.
#[async_trait]
pub trait Capability: Send + Sync + 'static {
    /// The module's one identifier: directory, cargo feature, `[modules.<name>]`, status key.
    fn name(&self) -> &'static str;

    /// Extension points this module consumes; checked before anything runs, and a module whose
    /// needs are not met is reported as unavailable instead of failing mid-run.
    fn needs(&self) -> Needs {
        Needs::none()
    }

    /// Registers the extension points this module implements, before any module runs.
    fn provide(&self, _ext: &mut ExtensionsBuilder) {}

    /// Can this device run the module? Must be quick and side-effect free; a module that
    /// cannot run says so here (with the reason shown in the heartbeat) rather than in `run`.
    async fn probe(&self, ctx: &Context) -> Probe;

    /// The module's long-running work. Returns `Ok(())` once `ctx.shutdown` fires; an `Err`
    /// (or a panic) makes the supervisor mark it unhealthy and restart it with backoff.
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError>;

    /// How long `run` may go without a [`crate::Progress::tick`] before the supervisor
    /// restarts it (and, if its task cannot be stopped, the agent stops petting systemd's
    /// service watchdog). Tick in every loop iteration and wrap long awaits in
    /// [`crate::Progress::during`].
    fn progress_budget(&self) -> std::time::Duration {
        crate::DEFAULT_PROGRESS_BUDGET
    }

    /// Command verbs this module serves; the router sends each verb to exactly one module.
    fn verbs(&self) -> &'static [&'static str] {
        &[]
    }

    /// Executes one authorised command whose verb is in [`verbs`](Self::verbs).
    async fn handle(&self, cmd: Command, _ctx: &Context) -> Result<Reply, CommandError> {
        Err(CommandError::Unsupported { verb: cmd.verb })
    }

    /// Current health, fed to the heartbeat and the watchdog. Must not block.
    fn health(&self) -> Health;
}

/// Builds a module from its `[modules.<name>]` section (absent = defaults).
pub type BuildFn = fn(section: Option<&toml::Value>) -> Result<Arc<dyn Capability>, ConfigError>;

/// How a module is found and configured: exported by each module crate as `DESCRIPTOR`.
#[derive(Clone, Copy)]
pub struct Descriptor {
    /// Same as [`Capability::name`].
    pub name: &'static str,
    /// Builds the module from its `[modules.<name>]` section (absent = defaults). Parse with
    /// `deny_unknown_fields` so a typo is an error naming the key.
    pub build: BuildFn,
}

impl std::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Descriptor")
            .field("name", &self.name)
            .finish()
    }
}

/// What a module needs from others before it can run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Extension points that some other module must provide.
    pub consumes: Vec<ExtensionKind>,
    /// Host resources only one module may own (e.g. `/dev/watchdog`).
    pub exclusive: Vec<&'static str>,
}

impl Needs {
    /// No needs at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a consumed extension point.
    pub fn consumes(mut self, kind: ExtensionKind) -> Self {
        self.consumes.push(kind);
        self
    }

    /// Adds an exclusively owned host resource.
    pub fn exclusive(mut self, resource: &'static str) -> Self {
        self.exclusive.push(resource);
        self
    }
}

/// Result of [`Capability::probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Probe {
    /// The module can run; `detail` says what it found (e.g. "podman 4.3.1").
    Available {
        /// What the probe found.
        detail: String,
    },
    /// The module cannot run here; `reason` is shown to the operator as is.
    Unavailable {
        /// Why not, e.g. "root is not on LVM".
        reason: String,
    },
}

impl Probe {
    /// Shorthand for [`Probe::Available`].
    pub fn available(detail: impl Into<String>) -> Self {
        Probe::Available {
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Probe::Unavailable`].
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Probe::Unavailable {
            reason: reason.into(),
        }
    }

    /// True for [`Probe::Available`].
    pub fn is_available(&self) -> bool {
        matches!(self, Probe::Available { .. })
    }
}

/// Health of a running module, as reported by [`Capability::health`] or the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Health {
    /// Started, not yet done with its first unit of work.
    Starting,
    /// Doing its job.
    Healthy,
    /// Running or restarting, but not doing its job; `reason` says why.
    Unhealthy {
        /// Why, in one line.
        reason: String,
    },
    /// Not running (unavailable, shut down, or given up after too many restarts).
    Stopped {
        /// Why, in one line.
        reason: String,
    },
}

impl Health {
    /// Shorthand for [`Health::Unhealthy`].
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Health::Unhealthy {
            reason: reason.into(),
        }
    }

    /// True only for [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}
