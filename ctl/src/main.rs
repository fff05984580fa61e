//! `fleetctl`: the operator's CLI, over NATS (`--nats URL`) or MQTT 5 (`--mqtt HOST:PORT`).

mod release;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine;
use clap::{Args, CommandFactory, Parser, Subcommand};
use fleet_contract::{
    CommandEnvelope, CommandReply, Deployment, SignedCommand, SystemUpgrade, COMMAND_API_VERSION,
};
use transport::{DeviceView, Transport};

/// fleetctl drives a fleet of fleet-agent devices.
///
/// Exit codes: 0 success, 1 failure (refused, denied, invalid input, unreachable), 2 usage.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Args)]
struct Conn {
    /// NATS server URL.
    #[arg(long, global = true, env = "FLEETCTL_NATS", conflicts_with = "mqtt")]
    nats: Option<String>,
    /// MQTT 5 broker as host:port.
    #[arg(long, global = true, env = "FLEETCTL_MQTT")]
    mqtt: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Create the KV buckets, object store and audit stream (NATS; run once per fleet).
    Init,
    /// Generate an operator (or release) Ed25519 key: writes the private key (mode 0600) and
    /// prints the public key to put in devices' `[[trust.operators]]`.
    Keygen {
        /// Where to write the private key (base64 PKCS#8).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a deployment manifest into a device's desired state.
    Apply {
        /// Manifest file (TOML, as in deployments.d).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Target device id.
        #[arg(long)]
        device: String,
        /// Compare-and-set: only if the stored document is at this KV revision (0 = new).
        #[arg(long)]
        expect_revision: Option<u64>,
    },
    /// Remove a deployment from a device's desired state.
    Delete {
        /// Deployment name.
        name: String,
        /// Target device id.
        #[arg(long)]
        device: String,
    },
    /// Show devices' reported status.
    Status {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Repeat every 2 s until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// List devices with online/offline from their heartbeats.
    Devices {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Seconds without a heartbeat after which a device counts as offline.
        #[arg(long, default_value_t = 60)]
        offline_after: u64,
    },
    /// Send a signed command and print the device's reply.
    Cmd {
        /// Target device id.
        device: String,
        /// Verb, e.g. ping, status, reconcile-now.
        verb: String,
        /// Arguments as a JSON document.
        #[arg(default_value = "null")]
        args: String,
        /// Operator private key (from `fleetctl keygen`).
        #[arg(long, env = "FLEETCTL_KEY")]
        key: PathBuf,
        /// Actor name recorded in the audit log.
        #[arg(long, default_value = "operator")]
        actor: String,
        /// Command id (idempotency key); random when absent.
        #[arg(long)]
        id: Option<String>,
        /// Seconds the command stays valid.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
    },
    /// Upgrade a device's OS (snapshot, upgrade command, trial boot, commit or rollback).
    /// Without --key the request goes into the device's desired state (`<device>.system`,
    /// applied when the device is next online); with --key it is sent as the signed
    /// `system-upgrade` command (admin role) and the device's reply is printed.
    SystemUpgrade {
        /// Target device id.
        device: String,
        /// Upgrade id (idempotency key; `[A-Za-z0-9._-]{1,64}`); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Upgrade command (run with /bin/sh -c on the device); the device's default
        /// (`apt-get full-upgrade -y`) when absent.
        #[arg(long)]
        command: Option<String>,
        /// Per-boot check-in deadline of the trial, e.g. 600, 600s, 10m, 1h.
        #[arg(long, value_parser = parse_duration_secs)]
        deadline: Option<u64>,
        /// Trial boots that may fail to reach userspace before rollback (1..=10).
        #[arg(long)]
        max_boots: Option<u32>,
        /// Operator private key: send the signed command instead of desired state.
        #[arg(long, env = "FLEETCTL_KEY")]
        key: Option<PathBuf>,
        /// Actor name recorded in the audit log (with --key).
        #[arg(long, default_value = "operator")]
        actor: String,
    },
    /// Agent releases: sign a binary with a release key.
    #[command(subcommand)]
    Release(release::ReleaseCmd),
    /// Release artifacts in the fleet's object store.
    #[command(subcommand)]
    Artifacts(release::ArtifactsCmd),
    /// Upgrade a device's agent to a signed release (signed `agent-upgrade` command, admin);
    /// follow the phases with `fleetctl status`.
    #[command(disable_version_flag = true)]
    AgentUpgrade {
        /// Target device id.
        device: String,
        /// Version to install (must match the signature document).
        #[arg(long)]
        version: String,
        /// Where the device fetches it: nats-object://<name> or file:///<path>.
        #[arg(long)]
        artifact: String,
        /// Signature document printed by `fleetctl release sign`.
        #[arg(long)]
        signature: PathBuf,
        /// Operator private key (role admin on the device); not needed with --desired.
        #[arg(long, env = "FLEETCTL_KEY", required_unless_present = "desired")]
        key: Option<PathBuf>,
        /// Instead of a command, put the release into the device's desired state
        /// (`<device>.agent` in KV fleet-desired); the agent converges to it.
        #[arg(long)]
        desired: bool,
        /// Actor name recorded in the audit log.
        #[arg(long, default_value = "operator")]
        actor: String,
        /// Seconds the command stays valid.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
    },
    /// Validate deployment manifests (TOML) exactly as the agent will decode them.
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// Target shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleetctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn transport(conn: &Conn) -> Result<Transport> {
    match (&conn.nats, &conn.mqtt) {
        (Some(url), _) => Transport::nats(url).await,
        (None, Some(addr)) => Transport::mqtt(addr),
        (None, None) => bail!("say where the fleet is: --nats URL or --mqtt HOST:PORT (or FLEETCTL_NATS / FLEETCTL_MQTT)"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Verb::Validate { files } => Ok(validate(&files)),
        Verb::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fleetctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Keygen { out } => {
            let der = fleet_contract::generate_key_pkcs8().map_err(|e| anyhow!(e))?;
            let text = base64::engine::general_purpose::STANDARD.encode(&der);
            write_private(&out, &text)?;
            let kp = fleet_contract::key_pair_from_b64(&text).map_err(|e| anyhow!(e))?;
            println!("{}", fleet_contract::public_key_b64(&kp));
            eprintln!(
                "private key written to {} (mode 0600); the line above is the public key",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Release(release::ReleaseCmd::Sign {
            file,
            version,
            key,
            key_name,
        }) => {
            let sig = release::sign(&file, &version, &key, &key_name)?;
            println!("{}", serde_json::to_string_pretty(&sig)?);
            Ok(ExitCode::SUCCESS)
        }
        Verb::Artifacts(release::ArtifactsCmd::Put { file, name }) => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow!("{}: no file name; pass --name", file.display()))?,
            };
            let t = transport(&cli.conn).await?;
            let size = release::put_artifact(&t, &file, &name).await?;
            println!("nats-object://{name} ({size} bytes)");
            Ok(ExitCode::SUCCESS)
        }
        Verb::AgentUpgrade {
            device,
            version,
            artifact,
            signature,
            key,
            desired,
            actor,
            ttl,
            timeout,
        } => {
            let text = std::fs::read_to_string(&signature)
                .with_context(|| format!("read {}", signature.display()))?;
            let sig: fleet_contract::release::ReleaseSignature = serde_json::from_str(&text)
                .with_context(|| {
                    format!("{}: not a release signature document", signature.display())
                })?;
            let args = release::upgrade_args(&sig, &version, &artifact)?;
            if desired {
                let t = transport(&cli.conn).await?;
                let rev = release::put_desired(&t, &device, &args).await?;
                println!("desired agent release of {device}: {version} (revision {rev})");
                return Ok(ExitCode::SUCCESS);
            }
            let key = key.ok_or_else(|| anyhow!("--key is required without --desired"))?;
            send_command(
                &cli.conn,
                &device,
                "agent-upgrade".into(),
                args,
                &key,
                actor,
                None,
                ttl,
                timeout,
            )
            .await
        }
        Verb::Init => {
            let t = transport(&cli.conn).await?;
            for what in t.init().await? {
                println!("created {what}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Apply {
            file,
            device,
            expect_revision,
        } => {
            fleet_contract::DeviceId::parse(&device).map_err(|e| anyhow!("--device: {e}"))?;
            let src = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let d = Deployment::from_toml_str(&src)
                .map_err(|e| anyhow!("{}", e.with_source(file.display().to_string())))?;
            let t = transport(&cli.conn).await?;
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
        Verb::SystemUpgrade {
            device,
            id,
            command,
            deadline,
            max_boots,
            key,
            actor,
        } => {
            fleet_contract::DeviceId::parse(&device).map_err(|e| anyhow!("--device: {e}"))?;
            let id = id.unwrap_or_else(|| {
                let r: [u8; 4] = rand::random();
                let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
                format!("os-{}-{hex}", now())
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
                    let t = transport(&cli.conn).await?;
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
                        &cli.conn,
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
        Verb::Delete { name, device } => {
            let t = transport(&cli.conn).await?;
            t.delete(&device, &name).await?;
            println!("deleted {name} from {device}");
            Ok(ExitCode::SUCCESS)
        }
        Verb::Status {
            device,
            json,
            watch,
        } => {
            let t = transport(&cli.conn).await?;
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
        Verb::Devices {
            json,
            offline_after,
        } => {
            let t = transport(&cli.conn).await?;
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
        Verb::Cmd {
            device,
            verb,
            args,
            key,
            actor,
            id,
            ttl,
            timeout,
        } => {
            let args: serde_json::Value =
                serde_json::from_str(&args).context("args must be a JSON document")?;
            send_command(
                &cli.conn, &device, verb, args, &key, actor, id, ttl, timeout,
            )
            .await
        }
    }
}

/// Signs a command with the operator key, sends it and prints the device's reply.
#[allow(clippy::too_many_arguments)]
async fn send_command(
    conn: &Conn,
    device: &str,
    verb: String,
    args: serde_json::Value,
    key: &std::path::Path,
    actor: String,
    id: Option<String>,
    ttl: u64,
    timeout: u64,
) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(key).with_context(|| format!("read key {}", key.display()))?;
    let kp =
        fleet_contract::key_pair_from_b64(&text).map_err(|e| anyhow!("{}: {e}", key.display()))?;
    let issued = now();
    let env = CommandEnvelope {
        api_version: COMMAND_API_VERSION.into(),
        id: id.unwrap_or_else(|| {
            let r: [u8; 12] = rand::random();
            r.iter().map(|b| format!("{b:02x}")).collect()
        }),
        device: device.to_owned(),
        verb,
        args,
        actor,
        issued_at: issued,
        expires_at: issued + ttl.max(1),
    };
    let signed = SignedCommand::sign(&env, &kp).encode();
    let t = transport(conn).await?;
    let bytes = t
        .command(device, signed, Duration::from_secs(timeout))
        .await?;
    let reply: CommandReply = serde_json::from_slice(&bytes).context("decode reply")?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `600`, `600s`, `10m`, `1h` -> seconds.
fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration like 600, 600s, 10m or 1h"))
}

fn write_private(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "create {} (refusing to overwrite an existing key)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

fn validate(files: &[PathBuf]) -> ExitCode {
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

fn render_status(views: &std::collections::BTreeMap<String, DeviceView>) -> String {
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
        }
    }
    out
}

/// One status line for the device's OS upgrade (`details["system-upgrade"]` of the
/// heartbeat), e.g. `os-upgrade u-1 RolledBack (2 boots): deadline: not committed within 600 s`.
fn os_upgrade_line(d: &serde_json::Value) -> Option<String> {
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
    use super::*;

    #[test]
    fn durations_and_os_upgrade_lines() {
        assert_eq!(parse_duration_secs("600"), Ok(600));
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert_eq!(parse_duration_secs("45s"), Ok(45));
        assert!(parse_duration_secs("ten").is_err());
        assert!(parse_duration_secs("m").is_err());
        let d = serde_json::json!({
            "id": "u-1", "phase": "RolledBack", "boots": 3,
            "reason": "3 boots without reaching userspace", "message": "rolled back"
        });
        assert_eq!(
            os_upgrade_line(&d).unwrap(),
            "os-upgrade u-1 RolledBack (3 boots): 3 boots without reaching userspace"
        );
        let d = serde_json::json!({ "id": "u-2", "phase": "Probation", "message": "waiting for check-in" });
        assert_eq!(
            os_upgrade_line(&d).unwrap(),
            "os-upgrade u-2 Probation: waiting for check-in"
        );
        assert_eq!(os_upgrade_line(&serde_json::json!({ "phase": null })), None);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
