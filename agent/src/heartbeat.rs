//! The heartbeat: who this agent is and how every module is doing. Written to the store for
//! `fleet-agent status`, and (with the network control planes) published.

use fleet_module_api::{Health, Probe};
use serde::{Deserialize, Serialize};

/// One module's line in the heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleReport {
    /// Module name.
    pub name: String,
    /// Probe result (`state` = available | unavailable, with detail or reason).
    pub probe: serde_json::Value,
    /// Health (`state` = starting | healthy | unhealthy | stopped, with reason).
    pub health: serde_json::Value,
    /// Restarts by the supervisor since the agent started.
    pub restarts: u32,
}

impl ModuleReport {
    pub(crate) fn new(name: &str, probe: Option<&Probe>, health: &Health, restarts: u32) -> Self {
        let probe = match probe {
            Some(p) => serde_json::to_value(p),
            None => Ok(serde_json::json!({ "state": "pending" })),
        };
        Self {
            name: name.to_owned(),
            probe: probe.unwrap_or(serde_json::Value::Null),
            health: serde_json::to_value(health).unwrap_or(serde_json::Value::Null),
            restarts,
        }
    }

    /// True when the module is available and healthy.
    pub fn is_healthy(&self) -> bool {
        self.health.get("state").and_then(|s| s.as_str()) == Some("healthy")
    }
}

/// The agent's heartbeat document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Device id.
    pub device: String,
    /// Agent version.
    pub version: String,
    /// Agent process id.
    pub pid: u32,
    /// Kernel boot id when the agent started (tells a reboot from a restart).
    pub boot_id: String,
    /// Unix seconds the agent started.
    pub started_at: u64,
    /// Unix seconds of this heartbeat.
    pub at: u64,
    /// Seconds the agent has been running.
    pub agent_uptime_secs: u64,
    /// Control plane in use.
    pub control_plane: String,
    /// True once the agent shut down cleanly (the last heartbeat it wrote).
    pub stopped: bool,
    /// Every compiled-in (or test-added) module, in start order.
    pub modules: Vec<ModuleReport>,
    /// Module-specific detail documents.
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The kernel's boot id, or "" off Linux.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
