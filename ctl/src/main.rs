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
    CommandEnvelope, CommandReply, Deployment, SignedCommand, COMMAND_API_VERSION,
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
            let t = transport(&cli.conn).await?;
            if desired {
                let rev = release::put_desired(&t, &device, &args).await?;
                println!("desired agent release of {device}: {version} (revision {rev})");
                return Ok(ExitCode::SUCCESS);
            }
            let key = key.ok_or_else(|| anyhow!("--key is required without --desired"))?;
            release::send(
                &t,
                &device,
                "agent-upgrade",
                args,
                &key,
                &actor,
                ttl,
                timeout,
                now(),
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
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("read key {}", key.display()))?;
            let kp = fleet_contract::key_pair_from_b64(&text)
                .map_err(|e| anyhow!("{}: {e}", key.display()))?;
            let issued = now();
            let env = CommandEnvelope {
                api_version: COMMAND_API_VERSION.into(),
                id: id.unwrap_or_else(|| {
                    let r: [u8; 12] = rand::random();
                    r.iter().map(|b| format!("{b:02x}")).collect()
                }),
                device: device.clone(),
                verb,
                args,
                actor,
                issued_at: issued,
                expires_at: issued + ttl.max(1),
            };
            let signed = SignedCommand::sign(&env, &kp).encode();
            let t = transport(&cli.conn).await?;
            let bytes = t
                .command(&device, signed, Duration::from_secs(timeout))
                .await?;
            let reply: CommandReply = serde_json::from_slice(&bytes).context("decode reply")?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
            Ok(if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
