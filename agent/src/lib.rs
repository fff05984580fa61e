//! fleet-agent: the runtime that hosts the compiled-in modules, its config, store and
//! control-plane adapters. `main.rs` is a thin shell over [`cli::main`]; tests drive
//! [`Agent::builder`] directly to plug in their own modules.

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
mod heartbeat;
pub mod logging;
pub mod memory;
pub mod modules;
pub mod notify;
pub mod packaging;
mod router;
mod runtime;
pub mod status;
pub mod store;
mod supervisor;

pub use heartbeat::{Heartbeat, IgnoredReport, ModuleReport, MAX_IGNORED_LISTED};
pub use runtime::{plane_for, Agent, AgentBuilder, AgentError, AgentHandle, PROBE_TIMEOUTS};
pub use supervisor::RestartPolicy;

/// The agent's version, as reported in heartbeats and `fleet-agent version`:
/// `FLEET_AGENT_VERSION` at build time (release pipelines, the self-upgrade tests' v2),
/// else the crate version.
pub const VERSION: &str = match option_env!("FLEET_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[cfg(panic = "abort")]
compile_error!(
    "fleet-agent must be built with panic = \"unwind\": the supervisor contains a module's panic"
);
