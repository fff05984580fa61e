//! The heartbeat: who this agent is and how every module is doing. Written to the store for
//! `fleet-agent status`, and (with the network control planes) published.

use fleet_module_api::{Health, Probe};

use crate::control::{IgnoredInput, PublishFailure};
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
        let mut probe = probe.unwrap_or(serde_json::Value::Null);
        let mut health = serde_json::to_value(health).unwrap_or(serde_json::Value::Null);
        cap_strings(&mut probe);
        cap_strings(&mut health);
        Self {
            name: name.to_owned(),
            probe,
            health,
            restarts,
        }
    }

    /// True when the module is available and healthy.
    pub fn is_healthy(&self) -> bool {
        self.health.get("state").and_then(|s| s.as_str()) == Some("healthy")
    }
}

/// Caps every string in a probe or health document (reasons may quote outside input).
fn cap_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.len() > fleet_contract::MAX_MESSAGE_BYTES => {
            *s = fleet_contract::cap_message(s);
        }
        serde_json::Value::Object(map) => map.values_mut().for_each(cap_strings),
        serde_json::Value::Array(items) => items.iter_mut().for_each(cap_strings),
        _ => {}
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
    /// The clock as the time guard last measured it (`state` = unguarded | trusted |
    /// skewed | unverified, with offset_ms, limit_ms, checked_at, kernel): `skewed` is the
    /// health flag under which time-bound work (command expiry, secret fetch) is refused.
    #[serde(default)]
    pub clock: serde_json::Value,
    /// Every compiled-in (or test-added) module, in start order.
    pub modules: Vec<ModuleReport>,
    /// Module-specific detail documents.
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Inputs the control plane received and did not use (odd keys, topics, files;
    /// documents refused unread or not cached), with the reason.
    #[serde(default)]
    pub ignored_inputs: IgnoredReport,
    /// Status documents the plane could not publish, with the reason.
    #[serde(default)]
    pub publish_failures: Vec<PublishFailure>,
}

/// Most ignored inputs listed; the rest are counted in [`IgnoredReport::more`].
pub const MAX_IGNORED_LISTED: usize = 16;

/// A bounded list of ignored inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredReport {
    /// The first [`MAX_IGNORED_LISTED`] ignored inputs.
    pub listed: Vec<IgnoredInput>,
    /// How many more there are.
    pub more: u64,
}

impl IgnoredReport {
    /// The first [`MAX_IGNORED_LISTED`] of `all` and a count of the rest (plus `uncounted`
    /// inputs only counted by the plane).
    pub fn bounded(mut all: Vec<IgnoredInput>, uncounted: u64) -> Self {
        all.sort();
        all.dedup();
        let more = all.len().saturating_sub(MAX_IGNORED_LISTED) as u64 + uncounted;
        all.truncate(MAX_IGNORED_LISTED);
        Self { listed: all, more }
    }

    /// Nothing ignored.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.more == 0
    }
}

impl Heartbeat {
    /// True when `self` says the same as `other` apart from when it was taken (`at`,
    /// `agent_uptime_secs`, the clock's `checked_at` and sub-second offset changes): then the
    /// stored record need not be rewritten.
    pub(crate) fn same_content(&self, other: &Heartbeat) -> bool {
        let mut a = self.clone();
        a.at = other.at;
        a.agent_uptime_secs = other.agent_uptime_secs;
        // A re-check that finds the clock as it was (same state, offset within a second) is
        // not news: an offline device re-checking every minute must not rewrite the record.
        if a.clock["state"] == other.clock["state"] {
            let close = match (
                a.clock["offset_ms"].as_i64(),
                other.clock["offset_ms"].as_i64(),
            ) {
                (Some(x), Some(y)) => (x - y).abs() < 1000,
                (x, y) => x == y,
            };
            if close {
                a.clock = other.clock.clone();
            }
        }
        a == *other
    }

    /// The heartbeat as JSON within `limit` bytes. One too large keeps who and when (so the
    /// device still shows online) and drops the per-module and detail documents, saying so.
    pub fn to_json_within(&self, limit: usize) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        if body.len() <= limit {
            return body;
        }
        let mut cut = self.clone();
        cut.modules.clear();
        cut.details = serde_json::Map::new();
        cut.details.insert(
            "cut".into(),
            serde_json::json!({
                "length": body.len(),
                "limit": limit,
                "message": format!(
                    "heartbeat of {} bytes cut to fit the broker's limit of {limit} bytes; `fleet-agent status` on the device has all of it",
                    body.len()
                ),
            }),
        );
        cut.ignored_inputs = IgnoredReport {
            listed: Vec::new(),
            more: self.ignored_inputs.listed.len() as u64 + self.ignored_inputs.more,
        };
        cut.publish_failures.truncate(1);
        crate::control::fit_document(
            serde_json::to_vec(&cut).unwrap_or_default(),
            limit,
            "heartbeat",
        )
    }
}

/// The kernel's boot id, or "" off Linux.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(clock: serde_json::Value) -> Heartbeat {
        Heartbeat {
            device: "d".into(),
            version: "1".into(),
            pid: 1,
            boot_id: "b".into(),
            started_at: 1,
            at: 2,
            agent_uptime_secs: 1,
            control_plane: "local".into(),
            stopped: false,
            clock,
            modules: Vec::new(),
            details: serde_json::Map::new(),
            ignored_inputs: IgnoredReport::default(),
            publish_failures: Vec::new(),
        }
    }

    #[test]
    fn a_clock_recheck_that_finds_nothing_new_is_not_a_change() {
        let c = |state: &str, offset: Option<i64>, at: u64| {
            let mut v = serde_json::json!({ "state": state, "checked_at": at, "kernel": "k" });
            if let Some(o) = offset {
                v["offset_ms"] = o.into();
            }
            v
        };
        let old = beat(c("unverified", None, 10));
        assert!(beat(c("unverified", None, 70)).same_content(&old));
        let old = beat(c("skewed", Some(45_000), 10));
        assert!(beat(c("skewed", Some(45_400), 40)).same_content(&old));
        assert!(!beat(c("skewed", Some(46_500), 40)).same_content(&old));
        assert!(!beat(c("trusted", Some(45_000), 40)).same_content(&old));
    }
}
