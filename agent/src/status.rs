//! `fleet-agent status`: the stable machine interface (`--json`) and a human summary, read
//! from the store the running agent writes, so it works whether or not the agent runs.

use std::path::Path;
use std::time::Duration;

use fleet_contract::DeploymentStatus;
use serde::Serialize;

use crate::control::PublishFailure;
use crate::heartbeat::{boot_id, Heartbeat, IgnoredReport, ModuleReport};
use crate::store::{AuditWatermark, Store, StoreError};

/// The `status --json` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Device id from the last heartbeat.
    pub device: Option<String>,
    /// Agent version from the last heartbeat.
    pub version: Option<String>,
    /// True while the agent that wrote the last heartbeat is alive (same boot, pid alive,
    /// not stopped).
    pub running: bool,
    /// The agent's pid when running.
    pub pid: Option<u32>,
    /// The kernel's current boot id.
    pub boot_id: String,
    /// System uptime in seconds.
    pub uptime_secs: u64,
    /// Agent uptime: now while it runs, else at its last heartbeat.
    pub agent_uptime_secs: Option<u64>,
    /// Seconds since the heartbeat record was last written. The agent rewrites it when
    /// anything in it changes (a module's probe, health, restarts or detail, ignored inputs,
    /// publish failures), at start and at a clean stop, not on a timer: an agent with nothing
    /// new to say keeps an old record. Whether it is alive is `running`.
    pub heartbeat_age_secs: Option<u64>,
    /// Control plane in use.
    pub control_plane: Option<String>,
    /// The clock as the time guard last measured it (as in the heartbeat): `state` =
    /// unguarded | trusted | skewed | unverified, `offset_ms`, `limit_ms`, `checked_at`,
    /// `kernel`. `skewed`: time-bound work (command expiry, secret fetch) is refused.
    pub clock: serde_json::Value,
    /// Every module: probe result, health, restarts.
    pub modules: Vec<ModuleReport>,
    /// Every deployment's status.
    pub deployments: Vec<DeploymentStatus>,
    /// Module-specific detail documents from the last heartbeat, by module name (e.g.
    /// `system-upgrade`, `self-upgrade`: the upgrade's phase).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Inputs the control plane received and did not use (odd keys, topics and files,
    /// documents refused unread or not cached), each with why; a bounded list and a count.
    pub ignored_inputs: IgnoredReport,
    /// Status documents the plane could not publish, with why.
    pub publish_failures: Vec<PublishFailure>,
    /// The store itself.
    pub store: StoreReport,
}

/// Store health in the status document.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// The database file.
    pub path: String,
    /// Schema version.
    pub schema_version: u32,
    /// `ok`, or what SQLite's integrity check found.
    pub integrity: String,
    /// What audit retention has trimmed.
    pub audit_trimmed: AuditWatermark,
    /// Recoveries from a corrupt file (moved-aside paths), newest last.
    pub recoveries: Vec<String>,
}

/// Reads the status of the agent whose store is at `db`.
pub fn read(db: &Path, busy: Duration) -> Result<StatusReport, StoreError> {
    if !db.exists() {
        return Err(StoreError::Io {
            path: db.to_owned(),
            op: "open store",
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no state database; has `fleet-agent run` been started with this config?",
            ),
        });
    }
    let store = Store::open_existing(db, busy)?;
    let hb: Option<Heartbeat> = store
        .kv_get("agent", "heartbeat")?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let current_boot = boot_id();
    let running = hb.as_ref().is_some_and(|h| {
        !h.stopped && h.boot_id == current_boot && Path::new(&format!("/proc/{}", h.pid)).exists()
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let recoveries = store
        .audit_recent(1000)?
        .into_iter()
        .filter(|e| e.action == "store-recovered")
        .filter_map(|e| {
            e.detail
                .get("moved_to")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .collect();
    Ok(StatusReport {
        device: hb.as_ref().map(|h| h.device.clone()),
        version: hb.as_ref().map(|h| h.version.clone()),
        running,
        pid: hb.as_ref().filter(|_| running).map(|h| h.pid),
        boot_id: current_boot,
        uptime_secs: system_uptime(),
        agent_uptime_secs: hb.as_ref().map(|h| {
            if running {
                now.saturating_sub(h.started_at)
            } else {
                h.agent_uptime_secs
            }
        }),
        heartbeat_age_secs: hb.as_ref().map(|h| now.saturating_sub(h.at)),
        control_plane: hb.as_ref().map(|h| h.control_plane.clone()),
        details: hb.as_ref().map(|h| h.details.clone()).unwrap_or_default(),
        clock: hb.as_ref().map(|h| h.clock.clone()).unwrap_or_default(),
        ignored_inputs: hb
            .as_ref()
            .map(|h| h.ignored_inputs.clone())
            .unwrap_or_default(),
        publish_failures: hb
            .as_ref()
            .map(|h| h.publish_failures.clone())
            .unwrap_or_default(),
        modules: hb.map(|h| h.modules).unwrap_or_default(),
        deployments: store.statuses()?,
        store: StoreReport {
            path: db.display().to_string(),
            schema_version: store.schema_version()?,
            integrity: store.integrity()?,
            audit_trimmed: store.audit_watermark()?,
            recoveries,
        },
    })
}

fn system_uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|f| f.parse::<f64>().ok())
        })
        .map_or(0, |f| f as u64)
}

/// Human-readable rendering.
pub fn render(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = if r.running { "running" } else { "not running" };
    let _ = writeln!(
        out,
        "fleet-agent {} on {}: {state}{}",
        r.version.as_deref().unwrap_or("?"),
        r.device.as_deref().unwrap_or("?"),
        r.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    );
    if let Some(age) = r.heartbeat_age_secs {
        let _ = writeln!(
            out,
            "last heartbeat {age} s ago, plane {}",
            r.control_plane.as_deref().unwrap_or("?")
        );
    }
    if let Some(line) = clock_line(&r.clock) {
        let _ = writeln!(out, "clock {line}");
    }
    let _ = writeln!(out, "\nMODULES");
    if r.modules.is_empty() {
        let _ = writeln!(out, "  (none built in)");
    }
    for m in &r.modules {
        let probe = field(&m.probe, "state");
        let health = field(&m.health, "state");
        let why = [field(&m.probe, "reason"), field(&m.health, "reason")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<16} {:<12} {:<10} restarts {:<3} {why}",
            m.name, probe, health, m.restarts
        );
    }
    if let Some(u) = r
        .details
        .get("system-upgrade")
        .filter(|u| u["phase"].is_string())
    {
        let _ = writeln!(out, "\nOS UPGRADE");
        let boots = u["boots"]
            .as_u64()
            .map(|b| format!(" after {b} trial boot(s)"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {}{boots}: {}",
            u["id"].as_str().unwrap_or("?"),
            u["phase"].as_str().unwrap_or("?"),
            u["message"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(out, "\nDEPLOYMENTS");
    if r.deployments.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for d in &r.deployments {
        let rev = d.revision.map_or("-".to_owned(), |v| v.to_string());
        let _ = writeln!(
            out,
            "  {:<20} rev {:<5} {:<12} {}",
            d.name,
            rev,
            d.phase.as_str(),
            d.message
        );
    }
    if !r.ignored_inputs.is_empty() {
        let _ = writeln!(out, "\nIGNORED INPUTS");
        for i in &r.ignored_inputs.listed {
            let _ = writeln!(out, "  {}: {}", i.input, i.reason);
        }
        if r.ignored_inputs.more > 0 {
            let _ = writeln!(out, "  ... and {} more", r.ignored_inputs.more);
        }
    }
    if !r.publish_failures.is_empty() {
        let _ = writeln!(out, "\nNOT PUBLISHED");
        for f in &r.publish_failures {
            let _ = writeln!(out, "  {}: {}", f.document, f.reason);
        }
    }
    let _ = writeln!(
        out,
        "\nSTORE {} schema v{}, integrity {}",
        r.store.path, r.store.schema_version, r.store.integrity
    );
    for aside in &r.store.recoveries {
        let _ = writeln!(out, "  recovered from a corrupt database, kept at {aside}");
    }
    out
}

/// `trusted (offset +0.2 s)`, `SKEWED: offset -300.4 s, limit 30 s (time-bound work refused)`,
/// `unverified: <why>`; nothing without a time guard.
fn clock_line(c: &serde_json::Value) -> Option<String> {
    // Tenths of a second by integer arithmetic (float formatting costs the binary ~15 KB).
    let secs = |k: &str| {
        c[k].as_i64().map(|ms| {
            let tenths = (ms.unsigned_abs() + 50) / 100;
            let sign = if ms < 0 { "-" } else { "+" };
            format!("{sign}{}.{}", tenths / 10, tenths % 10)
        })
    };
    let kernel = c["kernel"].as_str().unwrap_or("?");
    match c["state"].as_str()? {
        "trusted" => Some(format!(
            "trusted (offset {} s; kernel: {kernel})",
            secs("offset_ms")?
        )),
        "skewed" => Some(format!(
            "SKEWED: offset {} s, limit {} s; time-bound work refused (kernel: {kernel})",
            secs("offset_ms")?,
            c["limit_ms"].as_i64()? / 1000
        )),
        "unverified" => Some(format!(
            "unverified: no time server answered ({}; kernel: {kernel})",
            c["reason"].as_str().unwrap_or("?")
        )),
        _ => None,
    }
}

fn field(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_owned()
}
