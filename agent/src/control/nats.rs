//! The NATS control plane (async-nats): desired state from KV `fleet-desired` (watched with
//! history, so every (re)connect replays everything), status into KV `fleet-status`,
//! heartbeats on `fleet.<device>.hb`, signed commands as request/reply on
//! `fleet.<device>.cmd`, audit on `fleet.audit.<device>`. The buckets are created by
//! `fleetctl init`, never by the agent. While disconnected the agent keeps running from its
//! SQLite cache; after a reconnect it re-publishes the latest status.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use fleet_contract::names::{self, DESIRED_BUCKET, STATUS_BUCKET};
use fleet_contract::{quote, DeviceId};
use fleet_module_api::CancellationToken;
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{
    caps, fit_document, publish_changes, Backoff, CommandRequest, ControlError, ControlPlane,
    DesiredUpdate, Doc, Docs, IgnoredInput, PlaneIo, PublishFailures, StatusOut, StatusSnapshot,
};
use crate::config::NatsConfig;

/// NATS adapter.
pub struct NatsPlane {
    cfg: NatsConfig,
    device: DeviceId,
}

/// Connects with the configured servers, credentials and TLS.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if let Some(creds) = &cfg.creds_file {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| format!("credentials {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = cfg
        .servers
        .iter()
        .map(|s| s.parse().map_err(|e| format!("server URL {s:?}: {e}")))
        .collect::<Result<_, String>>()?;
    opts.connect(servers)
        .await
        .map_err(|e| format!("connect to {}: {e}", cfg.servers.join(", ")))
}

/// Downloads object `name` from the `fleet-artifacts` object store into `dest`, at most
/// `max_bytes` (for self-upgrade staging).
pub async fn download_artifact(
    client: &async_nats::Client,
    name: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, String> {
    use tokio::io::AsyncWriteExt;
    let js = jetstream::new(client.clone());
    let store = js
        .get_object_store(names::ARTIFACTS_BUCKET)
        .await
        .map_err(|e| format!("object store {}: {e}", names::ARTIFACTS_BUCKET))?;
    let mut obj = store
        .get(name)
        .await
        .map_err(|e| format!("artifact {name}: {e}"))?;
    if obj.info().size as u64 > max_bytes {
        return Err(format!(
            "artifact {name} is {} bytes; the limit is {max_bytes}",
            obj.info().size
        ));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut written = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut obj, &mut buf)
            .await
            .map_err(|e| format!("artifact {name}: {e}"))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > max_bytes {
            return Err(format!("artifact {name} exceeds {max_bytes} bytes"));
        }
        file.write_all(&buf[..n])
            .await
            .map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(written)
}

impl NatsPlane {
    /// A plane for `device`.
    pub fn new(cfg: NatsConfig, device: DeviceId) -> Self {
        Self { cfg, device }
    }

    /// One connected session; `Ok` only on shutdown.
    async fn session(
        &self,
        io: &mut SessionIo<'_>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let dev = self.device.as_str();
        let client = connect(&self.cfg, &format!("fleet-agent {dev}")).await?;
        let js = jetstream::new(client.clone());
        let desired_kv = js.get_key_value(DESIRED_BUCKET).await.map_err(|e| {
            format!("KV bucket {DESIRED_BUCKET}: {e} (buckets are created by `fleetctl init`)")
        })?;
        let status_kv = js
            .get_key_value(STATUS_BUCKET)
            .await
            .map_err(|e| format!("KV bucket {STATUS_BUCKET}: {e}"))?;
        let mut cmds = client
            .subscribe(names::nats_cmd_subject(dev))
            .await
            .map_err(|e| format!("subscribe to commands: {e}"))?;

        // Replay: count this device's subjects first, so an empty set is known to be
        // complete and a partial replay is never handed to the modules.
        let filter = names::kv_device_filter(dev);
        let mut subjects = desired_kv
            .stream
            .info_with_subjects(format!("{}{filter}", desired_kv.prefix))
            .await
            .map_err(|e| format!("desired-state info: {e}"))?;
        let mut n_subjects = 0usize;
        while let Some(s) = subjects.next().await {
            s.map_err(|e| format!("desired-state info: {e}"))?;
            n_subjects += 1;
        }
        let mut watch = desired_kv
            .watch_with_history(&filter)
            .await
            .map_err(|e| format!("watch desired state: {e}"))?;
        tracing::info!(servers = %self.cfg.servers.join(","), keys = n_subjects, "NATS control plane connected");
        backoff.reset();

        let mut docs = Docs::default();
        let system_key = names::kv_system_key(dev);
        let agent_key = names::kv_agent_key(dev);
        // Until the replay has caught up, nothing is handed on: a partial listing must never
        // count as complete (an absent deployment would be taken for deleted).
        let mut caught_up = n_subjects == 0;
        if caught_up {
            io.desired.send_replace(docs.update());
        }
        // Documents are cut to fit the server's max payload (less room for the headers).
        let limit = client
            .server_info()
            .max_payload
            .saturating_sub(PAYLOAD_HEADROOM)
            .max(MIN_DOCUMENT_LIMIT);
        let out = Out {
            client: &client,
            kv: &status_kv,
            dev,
        };
        let SessionIo {
            desired,
            failures,
            status,
            commands,
            audit,
        } = io;
        // Status goes out beside the inbound loop, never in its way: a KV put of a status
        // (a server round trip and its store write) must not delay the next desired entry.
        // Everything is published after every (re)connect. A document that cannot be
        // published is logged and reported; the session goes on.
        let publisher = async {
            let mut published = StatusSnapshot::default();
            loop {
                let snap = status.borrow_and_update().clone();
                publish_changes(&out, limit, failures, &mut published, &snap).await;
                if status.changed().await.is_err() {
                    return Ok::<(), String>(());
                }
            }
        };
        let inbound = async {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    entry = watch.next() => {
                        let entry = match entry {
                            None => return Err("desired-state watch ended".into()),
                            Some(Err(e)) => return Err(format!("desired-state watch: {e}")),
                            Some(Ok(e)) => e,
                        };
                        let put = matches!(entry.operation, kv::Operation::Put);
                        let source = format!("nats:{DESIRED_BUCKET}/{}@{}", entry.key, entry.revision);
                        // The size is checked before the body is copied.
                        let doc = |cap| {
                            put.then(|| Doc::checked(source.clone(), entry.value.len(), cap, || entry.value.to_vec()))
                        };
                        if entry.key == system_key {
                            docs.system = doc(caps::SYSTEM);
                        } else if entry.key == agent_key {
                            docs.agent = doc(caps::AGENT);
                        } else {
                            match classify_key(dev, &entry.key) {
                                Ok(name) => {
                                    match doc(caps::DEPLOYMENT) {
                                        Some(d) => {
                                            docs.deployments.insert(name.to_owned(), d);
                                        }
                                        None => {
                                            docs.deployments.remove(name);
                                        }
                                    }
                                }
                                Err(reason) if put => {
                                    let input = format!("nats:{DESIRED_BUCKET}/{}", quote(&entry.key));
                                    tracing::warn!(key = %quote(&entry.key), %reason, "ignoring desired-state key");
                                    docs.ignored.insert(&entry.key, IgnoredInput::new(input, &reason));
                                }
                                Err(_) => docs.ignored.remove(&entry.key),
                            }
                        }
                        if !caught_up && entry.delta == 0 {
                            caught_up = true;
                        }
                        if caught_up {
                            desired.send_replace(docs.update());
                        }
                    }
                    msg = cmds.next() => {
                        let Some(msg) = msg else {
                            return Err("command subscription ended".into());
                        };
                        let Some(reply_to) = msg.reply.clone() else {
                            tracing::warn!("command without a reply subject ignored");
                            continue;
                        };
                        let (tx, rx) = oneshot::channel();
                        if commands.send(CommandRequest { bytes: msg.payload.to_vec(), reply: tx }).await.is_err() {
                            return Ok(());
                        }
                        let client = client.clone();
                        tokio::spawn(async move {
                            if let Ok(bytes) = rx.await {
                                let bytes = fit_document(bytes, limit, "command reply");
                                if let Err(e) = client.publish(reply_to, bytes.into()).await {
                                    tracing::warn!(error = %e, "cannot send command reply");
                                }
                            }
                        });
                    }
                    event = audit.recv() => match event {
                        Ok(v) => {
                            let body = fit_document(serde_json::to_vec(&v).unwrap_or_default(), limit, "audit record");
                            if let Err(e) = client.publish(names::nats_audit_subject(dev), body.into()).await {
                                tracing::warn!(error = %e, "cannot publish audit record (kept in the store)");
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "audit stream lagged; records remain in the store");
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },

                }
            }
        };
        tokio::select! {
            r = publisher => r,
            r = inbound => r,
        }
    }
}

/// Room left in a message for headers and framing below the server's max payload.
const PAYLOAD_HEADROOM: usize = 1024;
/// Documents are never cut below this, whatever a server announces.
const MIN_DOCUMENT_LIMIT: usize = 1024;

/// The deployment name of a desired-state key, or why the key is not one this agent reads.
fn classify_key<'a>(dev: &str, key: &'a str) -> Result<&'a str, String> {
    super::deployment_name(names::deploy_name_from_kv_key(dev, key), || {
        format!("not a key this agent reads ({dev}.deploy.<name>, {dev}.system, {dev}.agent)")
    })
}

/// Where a session publishes status.
struct Out<'a> {
    client: &'a async_nats::Client,
    kv: &'a kv::Store,
    dev: &'a str,
}

#[async_trait]
impl StatusOut for Out<'_> {
    async fn info(&self, body: Vec<u8>) -> Result<(), String> {
        let body = bytes::Bytes::from(body);
        self.kv
            .put(names::kv_info_key(self.dev), body.clone())
            .await
            .map_err(|e| format!("publish status info: {e}"))?;
        self.client
            .publish(names::nats_hb_subject(self.dev), body)
            .await
            .map_err(|e| format!("publish heartbeat: {e}"))
    }

    async fn deployment(&self, name: &str, body: Vec<u8>) -> Result<(), String> {
        self.kv
            .put(names::kv_deploy_key(self.dev, name), body.into())
            .await
            .map(drop)
            .map_err(|e| format!("publish status of {name}: {e}"))
    }

    async fn deployment_gone(&self, name: &str) -> Result<(), String> {
        self.kv
            .delete(names::kv_deploy_key(self.dev, name))
            .await
            .map_err(|e| format!("delete status of {name}: {e}"))
    }
}

struct SessionIo<'a> {
    desired: &'a watch::Sender<DesiredUpdate>,
    failures: &'a PublishFailures,
    status: &'a mut watch::Receiver<StatusSnapshot>,
    commands: &'a mpsc::Sender<CommandRequest>,
    audit: &'a mut broadcast::Receiver<serde_json::Value>,
}

#[async_trait]
impl ControlPlane for NatsPlane {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn check(&self) -> Result<String, ControlError> {
        let setup = |message: String| ControlError::Setup {
            plane: "nats",
            message,
        };
        let client = connect(&self.cfg, "fleet-agent self-test")
            .await
            .map_err(setup)?;
        let js = jetstream::new(client);
        js.get_key_value(DESIRED_BUCKET)
            .await
            .map_err(|e| setup(format!("KV bucket {DESIRED_BUCKET}: {e}")))?;
        Ok(format!(
            "connected to {}; bucket {DESIRED_BUCKET} present",
            self.cfg.servers.join(", ")
        ))
    }

    async fn run(
        self: Arc<Self>,
        io: PlaneIo,
        shutdown: CancellationToken,
    ) -> Result<(), ControlError> {
        let PlaneIo {
            desired,
            mut status,
            commands,
            mut audit,
            failures,
        } = io;
        let mut sio = SessionIo {
            desired: &desired,
            failures: &failures,
            status: &mut status,
            commands: &commands,
            audit: &mut audit,
        };
        let mut backoff = Backoff::default();
        loop {
            match self.session(&mut sio, &mut backoff, &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "NATS session ended; running from cached state");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
