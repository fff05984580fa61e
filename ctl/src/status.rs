//! Read-back verbs: `status` and `devices`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::transport::DeviceView;
use crate::{now, transport, Conn};

/// `fleetctl status`: every device's (or one device's) published status.
pub(crate) async fn status(
    conn: &Conn,
    device: Option<String>,
    json: bool,
    watch: bool,
) -> Result<ExitCode> {
    let t = transport(conn).await?;
    loop {
        let views = t.status(device.as_deref()).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&views)?);
        } else {
            print!("{}", render_status(&views));
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!();
    }
}

/// `fleetctl devices`: one line per device, online or not.
pub(crate) async fn devices(conn: &Conn, json: bool, offline_after: u64) -> Result<ExitCode> {
    let t = transport(conn).await?;
    let views = t.status(None).await?;
    let now = now();
    let rows: Vec<serde_json::Value> = views
        .iter()
        .map(|(dev, v)| {
            let at = v.info.as_ref().and_then(|i| i["at"].as_u64());
            let stopped = v
                .info
                .as_ref()
                .and_then(|i| i["stopped"].as_bool())
                .unwrap_or(false);
            let online = v.online.unwrap_or(true)
                && !stopped
                && at.is_some_and(|a| now.saturating_sub(a) <= offline_after);
            serde_json::json!({
                "device": dev,
                "online": online,
                "last_heartbeat": at,
                "version": v.info.as_ref().and_then(|i| i["version"].as_str()),
                "deployments": v.deployments.len(),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<24} {:<8} {:<10} {:<12} DEPLOYMENTS",
            "DEVICE", "STATE", "VERSION", "LAST SEEN"
        );
        for r in &rows {
            let seen = r["last_heartbeat"].as_u64().map_or("never".into(), |a| {
                format!("{} s ago", now.saturating_sub(a))
            });
            println!(
                "{:<24} {:<8} {:<10} {:<12} {}",
                r["device"].as_str().unwrap_or(""),
                if r["online"] == true {
                    "online"
                } else {
                    "offline"
                },
                r["version"].as_str().unwrap_or("?"),
                seen,
                r["deployments"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn render_status(views: &std::collections::BTreeMap<String, DeviceView>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if views.is_empty() {
        out.push_str("(no devices have reported)\n");
    }
    for (dev, v) in views {
        let version = v
            .info
            .as_ref()
            .and_then(|i| i["version"].as_str())
            .unwrap_or("?");
        let _ = writeln!(out, "{dev}  fleet-agent {version}");
        if let Some(line) = v.info.as_ref().and_then(|i| clock_line(&i["clock"])) {
            let _ = writeln!(out, "  {line}");
        }
        if let Some(su) = v.info.as_ref().map(|i| &i["details"]["self-upgrade"]) {
            if let Some(phase) = su["phase"].as_str() {
                let _ = writeln!(
                    out,
                    "  agent upgrade: {phase}{}{}",
                    su["target"]
                        .as_str()
                        .map_or(String::new(), |t| format!(" ({t})")),
                    su["message"]
                        .as_str()
                        .map_or(String::new(), |m| format!(": {m}"))
                );
            }
        }
        if let Some(mods) = v.info.as_ref().and_then(|i| i["modules"].as_array()) {
            for m in mods {
                let _ = writeln!(
                    out,
                    "  module {:<16} {:<12} {}",
                    m["name"].as_str().unwrap_or("?"),
                    m["probe"]["state"].as_str().unwrap_or("?"),
                    m["health"]["state"].as_str().unwrap_or("?")
                );
            }
        }
        if let Some(line) = v
            .info
            .as_ref()
            .and_then(|i| os_upgrade_line(&i["details"]["system-upgrade"]))
        {
            let _ = writeln!(out, "  {line}");
        }
        for (name, d) in &v.deployments {
            let _ = writeln!(
                out,
                "  {:<20} rev {:<5} {:<12} {}",
                name,
                d["revision"].as_u64().map_or("-".into(), |r| r.to_string()),
                d["phase"].as_str().unwrap_or("?"),
                d["message"].as_str().unwrap_or("")
            );
            if let Some(line) = probe_line(&d["probe"]) {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

/// A deployment's health probe result: `probe web: failing 3x: HTTP 503`, `probe web:
/// passing: HTTP 200`; `None` for a deployment without probes.
pub(crate) fn probe_line(p: &serde_json::Value) -> Option<String> {
    let name = p["name"].as_str()?;
    let result = p["result"].as_str().unwrap_or("?");
    Some(if p["passing"].as_bool() == Some(true) {
        format!("probe {name}: passing: {result}")
    } else {
        let n = p["consecutiveFailures"].as_u64().unwrap_or(0);
        format!("probe {name}: failing {n}x: {result}")
    })
}

/// The device's clock when it is not simply trusted: `clock SKEWED -300 s (limit 30 s):
/// time-bound commands refused` or `clock unverified (no time server answered)`.
pub(crate) fn clock_line(c: &serde_json::Value) -> Option<String> {
    match c["state"].as_str()? {
        "skewed" => Some(format!(
            "clock SKEWED {:+} s (limit {} s): time-bound commands refused",
            c["offset_ms"].as_i64()? / 1000,
            c["limit_ms"].as_i64()? / 1000
        )),
        "unverified" => Some("clock unverified (no time server answered)".to_owned()),
        _ => None,
    }
}

/// One status line for the device's OS upgrade (`details["system-upgrade"]` of the
/// heartbeat), e.g. `os-upgrade u-1 RolledBack (2 boots): deadline: not committed within 600 s`.
pub(crate) fn os_upgrade_line(d: &serde_json::Value) -> Option<String> {
    let phase = d["phase"].as_str()?;
    let id = d["id"].as_str().unwrap_or("?");
    let boots = d["boots"]
        .as_u64()
        .map(|b| format!(" ({b} boot{})", if b == 1 { "" } else { "s" }))
        .unwrap_or_default();
    let why = d["reason"]
        .as_str()
        .filter(|r| !r.is_empty() && matches!(phase, "RolledBack" | "Failed"))
        .or_else(|| d["message"].as_str())
        .unwrap_or("");
    Some(format!("os-upgrade {id} {phase}{boots}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::{clock_line, probe_line};

    #[test]
    fn the_probe_line_says_which_probe_and_how_it_fails() {
        let failing = serde_json::json!({ "name": "web", "passing": false, "result": "HTTP 503",
            "consecutiveFailures": 3, "checkedAt": 1 });
        assert_eq!(
            probe_line(&failing).as_deref(),
            Some("probe web: failing 3x: HTTP 503")
        );
        let ok = serde_json::json!({ "name": "db", "passing": true, "result": "connected to port 5432",
            "consecutiveFailures": 0, "checkedAt": 1 });
        assert_eq!(
            probe_line(&ok).as_deref(),
            Some("probe db: passing: connected to port 5432")
        );
        assert_eq!(probe_line(&serde_json::Value::Null), None);
    }

    #[test]
    fn the_clock_shows_only_when_it_is_not_simply_trusted() {
        let skewed =
            serde_json::json!({ "state": "skewed", "offset_ms": -300_400, "limit_ms": 30_000 });
        assert_eq!(
            clock_line(&skewed).as_deref(),
            Some("clock SKEWED -300 s (limit 30 s): time-bound commands refused")
        );
        let unverified = serde_json::json!({ "state": "unverified", "reason": "x" });
        assert!(clock_line(&unverified)
            .unwrap()
            .starts_with("clock unverified"));
        assert_eq!(
            clock_line(&serde_json::json!({ "state": "trusted", "offset_ms": 3 })),
            None
        );
        assert_eq!(clock_line(&serde_json::Value::Null), None);
    }
}
