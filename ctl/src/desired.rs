//! Desired-state verbs: `apply`, `delete`, `system-upgrade` (as desired state or a signed
//! command), `validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use fleet_contract::{Deployment, SystemUpgrade};

use crate::command::send_command;
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

/// `fleetctl delete`: removes a deployment from a device's desired state.
pub(crate) async fn delete(conn: &Conn, name: String, device: String) -> Result<ExitCode> {
    let t = transport(conn).await?;
    t.delete(&device, &name).await?;
    println!("deleted {name} from {device}");
    Ok(ExitCode::SUCCESS)
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
