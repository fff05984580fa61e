//! Signed commands: `fleetctl cmd` and the signing and sending every command verb shares.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use fleet_contract::{CommandEnvelope, CommandReply, SignedCommand, COMMAND_API_VERSION};
use ring::signature::Ed25519KeyPair;

use crate::transport::Transport;
use crate::{now, transport, Conn};

/// `fleetctl cmd`: one signed command with JSON arguments.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn cmd(
    conn: &Conn,
    device: String,
    verb: String,
    args: String,
    key: std::path::PathBuf,
    actor: String,
    id: Option<String>,
    ttl: u64,
    timeout: u64,
) -> Result<ExitCode> {
    let args: serde_json::Value =
        serde_json::from_str(&args).context("args must be a JSON document")?;
    send_command(conn, &device, verb, args, &key, actor, id, ttl, timeout).await
}

/// Signs a command with the operator key, sends it and prints the device's reply.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_command(
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
    let kp = load_key(key)?;
    let t = transport(conn).await?;
    let reply = request(&t, &kp, device, verb, args, actor, id, ttl, timeout).await?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The operator key in `key` (base64 PKCS#8, from `fleetctl keygen`).
pub(crate) fn load_key(key: &std::path::Path) -> Result<Ed25519KeyPair> {
    let text =
        std::fs::read_to_string(key).with_context(|| format!("read key {}", key.display()))?;
    fleet_contract::key_pair_from_b64(&text).map_err(|e| anyhow!("{}: {e}", key.display()))
}

/// Signs one command with `kp` (a random id when `id` is `None`), sends it over `t` and
/// returns the device's reply.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn request(
    t: &Transport,
    kp: &Ed25519KeyPair,
    device: &str,
    verb: String,
    args: serde_json::Value,
    actor: String,
    id: Option<String>,
    ttl: u64,
    timeout: u64,
) -> Result<CommandReply> {
    let issued = now();
    let env = CommandEnvelope {
        api_version: COMMAND_API_VERSION.into(),
        id: id.unwrap_or_else(|| {
            let r: [u8; 12] = rand::random();
            fleet_contract::release::hex(&r)
        }),
        device: device.to_owned(),
        verb,
        args,
        actor,
        issued_at: issued,
        expires_at: issued + ttl.max(1),
    };
    let signed = SignedCommand::sign(&env, kp).encode();
    let bytes = t
        .command(device, signed, Duration::from_secs(timeout))
        .await?;
    serde_json::from_slice(&bytes).context("decode reply")
}

/// `600`, `600s`, `10m`, `1h` -> seconds.
pub(crate) fn parse_duration_secs(s: &str) -> Result<u64, String> {
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
