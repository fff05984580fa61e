//! The contract between the fleet-agent runtime and its compiled-in modules.
//!
//! A module is a type implementing [`Capability`], exported from its crate as a [`Descriptor`]
//! that parses the module's own `[modules.<name>]` config section. The runtime probes it, runs
//! it under a supervisor, routes command verbs to it and reports its [`Health`]. A module sees
//! the outside world only through its [`Context`]: a key/value area in the agent's store, the
//! desired state, a status sink, a clock, injected paths, the shutdown token and the
//! [`Extensions`] other modules provide.
//!
//! ```
//! use std::sync::Arc;
//! use fleet_module_api::*;
//!
//! /// A module that is always available and counts `ping`s.
//! struct Pinger(std::sync::atomic::AtomicU64);
//!
//! #[async_trait::async_trait]
//! impl Capability for Pinger {
//!     fn name(&self) -> &'static str { "pinger" }
//!     async fn probe(&self, _ctx: &Context) -> Probe { Probe::available("always") }
//!     async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
//!         ctx.shutdown.cancelled().await;
//!         Ok(())
//!     }
//!     fn verbs(&self) -> &'static [&'static str] { &["ping"] }
//!     async fn handle(&self, _cmd: Command, _ctx: &Context) -> Result<Reply, CommandError> {
//!         let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
//!         Ok(Reply::json(serde_json::json!({ "pong": n })))
//!     }
//!     fn health(&self) -> Health { Health::Healthy }
//! }
//!
//! let _module: Arc<dyn Capability> = Arc::new(Pinger(Default::default()));
//! ```

#![warn(missing_docs)]

mod capability;
mod clock;
mod command;
mod context;
mod error;
mod extensions;
mod mem_store;
mod progress;

pub use async_trait::async_trait;
pub use capability::{BuildFn, Capability, Descriptor, Health, Needs, Probe};
pub use clock::{
    Clock, ClockAuthority, ClockStatus, GateVerdict, GuardedClock, StartGate, SystemClock,
};
pub use command::{Command, Reply};
pub use context::{
    CheckIn, CheckInStream, Context, DesiredAgent, DesiredDeployment, DesiredState, DesiredStream,
    DesiredSystem, ModuleStore, Paths, StatusSink, StoreError,
};
pub use error::{parse_section, CommandError, ConfigError, ModuleError};
pub use extensions::{
    AgentSelf, ContainerRuntime, ExtensionKind, Extensions, ExtensionsBuilder, LifecycleHook,
    RunOutcome, RunSpec, RuntimeError,
};
pub use mem_store::MemStore;
pub use progress::{Liveness, Progress, DEFAULT_PROGRESS_BUDGET};
pub use tokio_util::sync::CancellationToken;
