//! Desired-state verbs: `apply`, `delete` (with `--purge`: then the signed `purge` command),
//! `system-upgrade` (as desired state or a signed command), `validate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use fleet_contract::{Deployment, SystemUpgrade};
use ring::signature::Ed25519KeyPair;
use tokio::time::Instant;

use crate::command::{load_key, request, send_command};
use crate::transport::Transport;
use crate::{now, transport, Conn};

/// `fleetctl apply`: puts a manifest into a device's desired state.
pub(crate) async fn apply(
    conn: &Conn,
    file: PathBuf,
    device: String,
    expect_revision: Option<u64>,
) -> Result<ExitCode> {
    fleet_contract::DeviceId::parse(&device).map_err(|e| anyhow!("--device: {e}"))?;
    let src = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    let d = Deployment::from_toml_str(&src)
        .map_err(|e| anyhow!("{}", e.with_source(file.display().to_string())))?;
    let t = transport(conn).await?;
    let rev = t
        .apply(&device, &d.name, d.to_json(), expect_revision)
        .await?;
    if rev > 0 {
        println!(
            "applied {} revision {} to {device} (KV revision {rev})",
            d.name, d.revision
        );
    } else {
        println!("applied {} revision {} to {device}", d.name, d.revision);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl delete --purge`: what the purge needs.
pub(crate) struct Purge {
    /// Operator key (admin on the device); `None` is refused before anything is deleted.
    pub key: Option<PathBuf>,
    pub actor: String,
    /// How long to wait for the device to remove the deployment's containers.
    pub wait_secs: u64,
}

/// Between two looks at the device's status while waiting for the removal.
const REMOVAL_POLL: Duration = Duration::from_millis(500);
/// Between two `purge` commands the device refused as too early.
const PURGE_RETRY: Duration = Duration::from_secs(2);

/// `fleetctl delete`: removes a deployment from a device's desired state; with `--purge`,
/// then its named volumes on the device (see [`purge_after_delete`]).
pub(crate) async fn delete(
    conn: &Conn,
    name: String,
    device: String,
    purge: Option<Purge>,
) -> Result<ExitCode> {
    // Everything the purge needs is checked before anything is deleted.
    let key = match &purge {
        Some(p) => {
            fleet_contract::DeviceId::parse(&device).map_err(|e| anyhow!("--device: {e}"))?;
            let path = p.key.as_deref().ok_or_else(|| {
                anyhow!("--purge needs --key (or FLEETCTL_KEY): the purge is a signed command")
            })?;
            Some(load_key(path)?)
        }
        None => None,
    };
    let t = transport(conn).await?;
    t.delete(&device, &name).await?;
    println!("deleted {name} from {device}");
    match (purge, key) {
        (Some(p), Some(kp)) => purge_after_delete(&t, &kp, &name, &device, p).await,
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Waits (up to `p.wait_secs`) until `device` no longer reports deployment `name`, i.e. it
/// removed its containers; then sends the signed `purge` command, again every
/// [`PURGE_RETRY`] while the device answers `unavailable` (deletion not seen yet, removal
/// still in flight) and time is left. Each attempt is a new command id: a repeated id would
/// return the recorded refusal.
async fn purge_after_delete(
    t: &Transport,
    kp: &Ed25519KeyPair,
    name: &str,
    device: &str,
    p: Purge,
) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(p.wait_secs);
    let mut said = false;
    while Instant::now() < deadline {
        let reported = match t.status(Some(device)).await {
            Ok(views) => views
                .get(device)
                .is_some_and(|v| v.deployments.contains_key(name)),
            Err(_) => true, // unknown: look again
        };
        if !reported {
            break;
        }
        if !said {
            println!("waiting for {device} to remove {name}'s containers");
            said = true;
        }
        tokio::time::sleep(REMOVAL_POLL).await;
    }
    loop {
        let args = serde_json::json!({ "deployment": name });
        let reply = request(
            t,
            kp,
            device,
            "purge".into(),
            args,
            p.actor.clone(),
            None,
            60,
            15,
        )
        .await?;
        if reply.ok {
            let removed: Vec<&str> = reply.body["removed"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            if removed.is_empty() {
                println!("purged {name} on {device}: no named volumes to remove");
            } else {
                println!("purged {name} on {device}: removed {}", removed.join(", "));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if reply.code == "unavailable" && Instant::now() + PURGE_RETRY < deadline {
            println!("waiting: {}", reply.message);
            tokio::time::sleep(PURGE_RETRY).await;
            continue;
        }
        eprintln!(
            "fleetctl: {name} is deleted, but {device} did not purge its named volumes ({}: {}); \
             retry with `fleetctl cmd {device} purge '{{\"deployment\":\"{name}\"}}' --key ...`",
            reply.code, reply.message
        );
        return Ok(ExitCode::FAILURE);
    }
}

/// `fleetctl system-upgrade`: requests an OS upgrade (desired state, or a signed command with `--key`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn system_upgrade(
    conn: &Conn,
    device: String,
    id: Option<String>,
    command: Option<String>,
    deadline: Option<u64>,
    max_boots: Option<u32>,
    key: Option<PathBuf>,
    actor: String,
) -> Result<ExitCode> {
    fleet_contract::DeviceId::parse(&device).map_err(|e| anyhow!("--device: {e}"))?;
    let id = id.unwrap_or_else(|| {
        let r: [u8; 4] = rand::random();
        format!("os-{}-{}", now(), fleet_contract::release::hex(&r))
    });
    let req = SystemUpgrade {
        command,
        deadline_secs: deadline,
        max_boots,
        ..SystemUpgrade::new(id)
    };
    // Validate exactly as the device will, before anything is sent.
    let req = SystemUpgrade::from_json_slice(&req.to_json())
        .map_err(|e| anyhow!("invalid request: {e}"))?;
    match key {
        None => {
            let t = transport(conn).await?;
            t.put_system(&device, req.to_json()).await?;
            println!(
                "OS upgrade {} requested for {device} (desired state {}); follow it with `fleetctl status --device {device}`",
                req.id,
                fleet_contract::names::kv_system_key(&device)
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(key) => {
            let args = serde_json::to_value(&req)?;
            send_command(
                conn,
                &device,
                "system-upgrade".into(),
                args,
                &key,
                actor,
                Some(format!("system-upgrade-{}", req.id)),
                300,
                15,
            )
            .await
        }
    }
}

pub(crate) fn validate(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for f in files {
        let result = std::fs::read_to_string(f)
            .map_err(|e| format!("{}: {e}", f.display()))
            .and_then(|src| {
                Deployment::from_toml_str(&src)
                    .map_err(|e| e.with_source(f.display().to_string()).to_string())
            });
        match result {
            Ok(d) => println!(
                "{}: ok (deployment {} revision {})",
                f.display(),
                d.name,
                d.revision
            ),
            Err(e) => {
                bad += 1;
                eprintln!("{e}");
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
