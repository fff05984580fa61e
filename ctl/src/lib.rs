//! `fleetctl`: the operator's CLI, over NATS (`--nats URL`) or MQTT 5 (`--mqtt HOST:PORT`).
//! The library holds the whole CLI; [`command`] is its clap tree (man pages and
//! completions are generated from it by `packaging/clidocs`).

mod command;
mod desired;
mod import;
mod keys;
mod provision;
mod release;
mod schema;
mod status;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use transport::Transport;

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
    /// Remove a deployment from a device's desired state. The device removes its container
    /// and data volume and keeps its named volumes; --purge removes those too.
    Delete {
        /// Deployment name.
        name: String,
        /// Target device id.
        #[arg(long)]
        device: String,
        /// Also remove the deployment's named volumes (its data, for good): waits until the
        /// device removed the containers, then sends the signed `purge` command (admin).
        #[arg(long)]
        purge: bool,
        /// Operator private key (role admin on the device), for --purge.
        #[arg(long, env = "FLEETCTL_KEY")]
        key: Option<PathBuf>,
        /// Actor name recorded in the audit log (with --purge).
        #[arg(long, default_value = "operator")]
        actor: String,
        /// How long --purge waits for the device to remove the containers, e.g. 120, 2m.
        #[arg(long, default_value = "120", value_parser = command::parse_duration_secs)]
        purge_wait: u64,
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
        #[arg(long, value_parser = command::parse_duration_secs)]
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
    ///
    /// One line per file: `ok`, or file, line, column, field and what is wrong. Exit 1 if
    /// any file is invalid.
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Convert docker-compose services into deployment manifests.
    ///
    /// One fleet/v1 TOML manifest per service, each checked by the agent's decoder; every
    /// compose key that is not carried is named on stderr with its line and path. Exit 0
    /// every selected service converted, 1 an error (a bad file, a service that cannot be
    /// converted, or with --strict any key not carried), 2 usage.
    Import(import::ImportArgs),
    /// Print the JSON schema of a deployment manifest.
    ///
    /// Draft 2020-12, with every field's description, enum values and defaults, for
    /// editors (see the README's manifest reference).
    Schema,
    /// Install fleet-agent on a device (or a fleet, --hosts) over SSH: the .deb for its
    /// architecture, /etc/fleet-agent/config.toml, the service; then wait for its first
    /// heartbeat. Idempotent (a second run changes nothing and says so); --dry-run plans only.
    Provision(provision::ProvisionArgs),
    /// Print a shell completion script.
    Completions {
        /// Target shell.
        shell: clap_complete::Shell,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
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

/// The clap tree of `fleetctl` (for the man pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
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
        Verb::Validate { files } => Ok(desired::validate(&files)),
        Verb::Import(args) => import::import(args),
        Verb::Schema => Ok(schema::print()),
        Verb::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fleetctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Keygen { out } => keys::keygen(out),
        Verb::Provision(args) => provision::provision(&cli.conn, args).await,
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
            release::artifacts_put(&cli.conn, file, name).await
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
            release::agent_upgrade(
                &cli.conn, device, version, artifact, signature, key, desired, actor, ttl, timeout,
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
        } => desired::apply(&cli.conn, file, device, expect_revision).await,
        Verb::SystemUpgrade {
            device,
            id,
            command,
            deadline,
            max_boots,
            key,
            actor,
        } => {
            desired::system_upgrade(
                &cli.conn, device, id, command, deadline, max_boots, key, actor,
            )
            .await
        }
        Verb::Delete {
            name,
            device,
            purge,
            key,
            actor,
            purge_wait,
        } => {
            let purge = purge.then_some(desired::Purge {
                key,
                actor,
                wait_secs: purge_wait,
            });
            desired::delete(&cli.conn, name, device, purge).await
        }
        Verb::Status {
            device,
            json,
            watch,
        } => status::status(&cli.conn, device, json, watch).await,
        Verb::Devices {
            json,
            offline_after,
        } => status::devices(&cli.conn, json, offline_after).await,
        Verb::Cmd {
            device,
            verb,
            args,
            key,
            actor,
            id,
            ttl,
            timeout,
        } => command::cmd(&cli.conn, device, verb, args, key, actor, id, ttl, timeout).await,
    }
}

#[cfg(test)]
mod tests {
    use super::command::parse_duration_secs;
    use super::status::os_upgrade_line;
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
