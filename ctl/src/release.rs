//! Agent self-upgrade from the operator's side: `release sign`, `artifacts put`,
//! `agent-upgrade` (ARCHITECTURE §6).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Subcommand;
use fleet_contract::release::{sha256_hex, ReleaseSignature};

use crate::command::send_command;
use crate::transport::Transport;

/// `fleetctl release ...`.
#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Sign an agent binary with a release key: prints the signature document (JSON) that
    /// `agent-upgrade --signature` takes. Devices trust release keys in
    /// `[[modules.self-upgrade.release_keys]]`, not their operator keys.
    #[command(disable_version_flag = true)]
    Sign {
        /// The agent binary.
        file: PathBuf,
        /// The version it reports (`fleet-agent version`).
        #[arg(long)]
        version: String,
        /// Release private key (from `fleetctl keygen`).
        #[arg(long, env = "FLEETCTL_RELEASE_KEY")]
        key: PathBuf,
        /// Key name, as in the devices' release_keys.
        #[arg(long)]
        key_name: String,
    },
}

/// `fleetctl artifacts ...`.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCmd {
    /// Upload a file to the fleet's object store (`fleet-artifacts`); devices fetch it as
    /// `nats-object://<name>`.
    Put {
        /// The file.
        file: PathBuf,
        /// Object name (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Signs `file` as release `version`.
pub fn sign(file: &Path, version: &str, key: &Path, key_name: &str) -> Result<ReleaseSignature> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let text =
        std::fs::read_to_string(key).with_context(|| format!("read key {}", key.display()))?;
    let kp =
        fleet_contract::key_pair_from_b64(&text).map_err(|e| anyhow!("{}: {e}", key.display()))?;
    ReleaseSignature::sign(version, &sha256_hex(&bytes), key_name, &kp).map_err(|e| anyhow!(e))
}

/// Uploads `file` to the object store as `name`; returns the size.
pub async fn put_artifact(t: &Transport, file: &Path, name: &str) -> Result<u64> {
    let Transport::Nats(client) = t else {
        bail!("artifacts live in the NATS object store; over MQTT use an HTTPS URL or file://");
    };
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(fleet_contract::names::ARTIFACTS_BUCKET)
        .await
        .with_context(|| {
            format!(
                "object store {} (run `fleetctl init`)",
                fleet_contract::names::ARTIFACTS_BUCKET
            )
        })?;
    let mut f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("open {}", file.display()))?;
    let info = store
        .put(name, &mut f)
        .await
        .map_err(|e| anyhow!("put {name}: {e}"))?;
    Ok(info.size as u64)
}

/// The `agent-upgrade` command arguments from a signature document and a location.
pub fn upgrade_args(
    sig: &ReleaseSignature,
    version: &str,
    artifact: &str,
) -> Result<serde_json::Value> {
    if sig.version != version {
        bail!(
            "--version {version:?} does not match the signature's version {:?}",
            sig.version
        );
    }
    Ok(serde_json::json!({
        "version": sig.version,
        "artifact": artifact,
        "sha256": sig.sha256,
        "signature": sig.signature,
        "key": sig.key,
    }))
}

/// Puts the desired agent release into the device's desired state: `<device>.agent` in KV
/// `fleet-desired` (returns the revision) or retained `fleet/<device>/desired/agent` (0).
pub async fn put_desired(t: &Transport, device: &str, args: &serde_json::Value) -> Result<u64> {
    let mut doc = args.clone();
    doc["apiVersion"] = fleet_contract::API_VERSION.into();
    let body = serde_json::to_vec(&doc)?;
    // The agent decodes exactly this; refuse to publish what it would reject.
    fleet_contract::release::AgentRelease::from_json_slice(&body).map_err(|e| anyhow!(e))?;
    t.put_device_doc(
        fleet_contract::names::kv_agent_key(device),
        &fleet_contract::names::mqtt_desired_agent(device),
        body,
    )
    .await
}

/// `fleetctl artifacts put`: uploads a file to the artifact store.
pub(crate) async fn artifacts_put(
    conn: &crate::Conn,
    file: PathBuf,
    name: Option<String>,
) -> Result<ExitCode> {
    let name = match name {
        Some(n) => n,
        None => file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow!("{}: no file name; pass --name", file.display()))?,
    };
    let t = crate::transport(conn).await?;
    let size = put_artifact(&t, &file, &name).await?;
    println!("nats-object://{name} ({size} bytes)");
    Ok(ExitCode::SUCCESS)
}

/// `fleetctl agent-upgrade`: a signed command, or with `--desired` the device's desired
/// agent release.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn agent_upgrade(
    conn: &crate::Conn,
    device: String,
    version: String,
    artifact: String,
    signature: PathBuf,
    key: Option<PathBuf>,
    desired: bool,
    actor: String,
    ttl: u64,
    timeout: u64,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&signature)
        .with_context(|| format!("read {}", signature.display()))?;
    let sig: fleet_contract::release::ReleaseSignature = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a release signature document", signature.display()))?;
    let args = upgrade_args(&sig, &version, &artifact)?;
    if desired {
        let t = crate::transport(conn).await?;
        let rev = put_desired(&t, &device, &args).await?;
        println!("desired agent release of {device}: {version} (revision {rev})");
        return Ok(ExitCode::SUCCESS);
    }
    let key = key.ok_or_else(|| anyhow!("--key is required without --desired"))?;
    send_command(
        conn,
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
