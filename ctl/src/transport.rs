//! The two transports fleetctl speaks: NATS (KV + request/reply) and MQTT 5 (retained +
//! response topic). Names come from `fleet_contract::names`, the same as the agent's.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream;

use fleet_contract::names::{self, DESIRED_BUCKET, STATUS_BUCKET};
use fleet_contract::release::hex;
use futures::StreamExt;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// Largest MQTT packet fleetctl takes (rumqttc's default is 10 KiB): four times the manifest
/// cap, as the agent, so any document within the contract's caps arrives.
const MAX_PACKET: u32 = 4 * fleet_contract::MAX_MANIFEST_BYTES as u32;

/// Everything the operator reads back about one device.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeviceView {
    /// The device's last info/heartbeat document.
    pub info: Option<serde_json::Value>,
    /// Deployment statuses by name.
    pub deployments: BTreeMap<String, serde_json::Value>,
    /// MQTT online flag, when known.
    pub online: Option<bool>,
}

/// Opens a KV bucket `fleetctl init` made; the error says to run it.
async fn kv_bucket(client: &async_nats::Client, name: &str) -> Result<jetstream::kv::Store> {
    jetstream::new(client.clone())
        .get_key_value(name)
        .await
        .with_context(|| format!("KV bucket {name} (run `fleetctl init`)"))
}

/// Upper bound for reading the status of the fleet (or one device).
pub const STATUS_LIMIT: Duration = Duration::from_secs(30);

pub enum Transport {
    Nats(async_nats::Client),
    Mqtt { host: String, port: u16 },
}

impl Transport {
    pub async fn nats(url: &str) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("fleetctl")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| format!("connect to {url}"))?;
        Ok(Transport::Nats(client))
    }

    pub fn mqtt(addr: &str) -> Result<Self> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--mqtt wants host:port, got {addr:?}"))?;
        let port = port.parse().with_context(|| format!("port in {addr:?}"))?;
        Ok(Transport::Mqtt {
            host: host.to_owned(),
            port,
        })
    }

    /// Creates the KV buckets, object store and audit stream (NATS only).
    pub async fn init(&self) -> Result<Vec<String>> {
        let Transport::Nats(client) = self else {
            bail!("init is for NATS; MQTT needs no setup beyond the broker's ACLs");
        };
        let js = jetstream::new(client.clone());
        let mut done = Vec::new();
        // The KV streams are created directly, in the layout KV clients expect, because the
        // client's create_key_value first queries account info in a form only nats-server
        // >= 2.10 sends (Debian 12 ships 2.9.10).
        for (bucket, history, what) in [
            (DESIRED_BUCKET, 10, "desired state"),
            (STATUS_BUCKET, 1, "status"),
        ] {
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some(format!("fleet {what}")),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: history,
                discard: jetstream::stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .with_context(|| format!("create KV bucket {bucket}"))?;
            done.push(format!("KV bucket {bucket}"));
        }
        js.create_object_store(jetstream::object_store::Config {
            bucket: names::ARTIFACTS_BUCKET.to_owned(),
            description: Some("fleet release artifacts".into()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("create object store {}", names::ARTIFACTS_BUCKET))?;
        done.push(format!("object store {}", names::ARTIFACTS_BUCKET));
        js.get_or_create_stream(jetstream::stream::Config {
            name: "FLEET_AUDIT".into(),
            subjects: vec!["fleet.audit.>".into()],
            max_messages: 1_000_000,
            ..Default::default()
        })
        .await
        .context("create audit stream FLEET_AUDIT")?;
        done.push("stream FLEET_AUDIT (fleet.audit.>)".into());
        Ok(done)
    }

    /// Puts a manifest (JSON) for `device`; with `expect`, only if the key is at that KV
    /// revision (0 = must not exist yet). Returns the new revision (NATS) or 0 (MQTT).
    pub async fn apply(
        &self,
        device: &str,
        name: &str,
        body: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<u64> {
        match self {
            Transport::Nats(client) => {
                let kv = kv_bucket(client, DESIRED_BUCKET).await?;
                let key = names::kv_deploy_key(device, name);
                let rev = match expect {
                    Some(0) => kv.create(&key, body.into()).await.map_err(|e| {
                        anyhow!("refused: {key} already exists (expected it not to): {e}")
                    })?,
                    Some(n) => kv.update(&key, body.into(), n).await.map_err(|e| {
                        anyhow!("refused: {key} is not at revision {n} (someone else changed it; re-read and retry): {e}")
                    })?,
                    None => kv.put(&key, body.into()).await.context("put")?,
                };
                Ok(rev)
            }
            Transport::Mqtt { .. } => {
                if expect.is_some() {
                    bail!("--expect-revision needs NATS: MQTT retained messages have no revisions");
                }
                self.mqtt_publish(&names::mqtt_desired_deploy(device, name), body, true)
                    .await?;
                Ok(0)
            }
        }
    }

    /// Puts an OS upgrade request into `device`'s desired state (`<device>.system`).
    pub async fn put_system(&self, device: &str, body: Vec<u8>) -> Result<u64> {
        self.put_device_doc(
            names::kv_system_key(device),
            &names::mqtt_desired_system(device),
            body,
        )
        .await
    }

    /// Puts a device-level desired document (not a deployment): KV `kv_key` in
    /// `fleet-desired` (returns its revision) or the retained `mqtt_topic` (returns 0).
    pub async fn put_device_doc(
        &self,
        kv_key: String,
        mqtt_topic: &str,
        body: Vec<u8>,
    ) -> Result<u64> {
        match self {
            Transport::Nats(client) => {
                let kv = kv_bucket(client, DESIRED_BUCKET).await?;
                kv.put(kv_key, body.into()).await.context("put")
            }
            Transport::Mqtt { .. } => {
                self.mqtt_publish(mqtt_topic, body, true).await?;
                Ok(0)
            }
        }
    }

    /// Removes a deployment from `device`'s desired state.
    pub async fn delete(&self, device: &str, name: &str) -> Result<()> {
        match self {
            Transport::Nats(client) => {
                let kv = kv_bucket(client, DESIRED_BUCKET).await?;
                kv.delete(names::kv_deploy_key(device, name))
                    .await
                    .context("delete")?;
                Ok(())
            }
            Transport::Mqtt { .. } => {
                self.mqtt_publish(&names::mqtt_desired_deploy(device, name), Vec::new(), true)
                    .await
            }
        }
    }

    /// Status of every device (or one), read back from the status bucket / retained topics.
    /// Gives up after [`STATUS_LIMIT`] rather than hang on a broker that stopped answering.
    pub async fn status(&self, device: Option<&str>) -> Result<BTreeMap<String, DeviceView>> {
        tokio::time::timeout(STATUS_LIMIT, self.read_status(device))
            .await
            .map_err(|_| {
                anyhow!(
                    "no complete status from the broker within {} s",
                    STATUS_LIMIT.as_secs()
                )
            })?
    }

    async fn read_status(&self, device: Option<&str>) -> Result<BTreeMap<String, DeviceView>> {
        let mut out: BTreeMap<String, DeviceView> = BTreeMap::new();
        match self {
            Transport::Nats(client) => {
                let kv = kv_bucket(client, STATUS_BUCKET).await?;
                // The keys come from the stream's per-subject counts (one request), not
                // `kv.keys()`: that ordered consumer can wait forever on nats-server 2.9
                // while the bucket is being written (nats-server#3481).
                let filter = match device {
                    Some(d) => format!("{}{d}.>", kv.prefix),
                    None => format!("{}>", kv.prefix),
                };
                let mut keys = Vec::new();
                let mut subjects = kv
                    .stream
                    .info_with_subjects(filter)
                    .await
                    .context("list status keys")?;
                while let Some(s) = subjects.next().await {
                    let (subject, _count) = s.context("list status keys")?;
                    if let Some(key) = subject.strip_prefix(kv.prefix.as_str()) {
                        keys.push(key.to_owned());
                    }
                }
                for key in keys {
                    let Some((dev, rest)) = key.split_once('.') else {
                        continue;
                    };
                    let Some(value) = kv.get(&key).await? else {
                        continue;
                    };
                    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&value) else {
                        continue;
                    };
                    let view = out.entry(dev.to_owned()).or_default();
                    if rest == "info" {
                        view.info = Some(doc);
                    } else if let Some(name) = rest.strip_prefix("deploy.") {
                        view.deployments.insert(name.to_owned(), doc);
                    }
                }
            }
            Transport::Mqtt { .. } => {
                // Status and online flags only: the desired documents (manifests up to the
                // contract's cap) are not read back here.
                let d = device.unwrap_or("+");
                let filters = [format!("fleet/{d}/status/#"), format!("fleet/{d}/online")];
                for (topic, payload) in self.mqtt_collect_retained(&filters).await? {
                    let parts: Vec<&str> = topic.split('/').collect();
                    let (Some(dev), rest) = (parts.get(1), parts.get(2..).unwrap_or(&[])) else {
                        continue;
                    };
                    let view = out.entry((*dev).to_owned()).or_default();
                    match rest {
                        ["online"] => view.online = Some(payload == b"true"),
                        ["status", "info"] => view.info = serde_json::from_slice(&payload).ok(),
                        ["status", "deploy", name] => {
                            if let Ok(doc) = serde_json::from_slice(&payload) {
                                view.deployments.insert((*name).to_owned(), doc);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sends a signed command and waits for the reply bytes.
    pub async fn command(
        &self,
        device: &str,
        signed: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        match self {
            Transport::Nats(client) => {
                let reply = tokio::time::timeout(
                    timeout,
                    client.request(names::nats_cmd_subject(device), signed.into()),
                )
                .await
                .map_err(|_| anyhow!("no reply from {device} within {} s", timeout.as_secs()))?
                .map_err(|e| anyhow!("request to {device}: {e}"))?;
                Ok(reply.payload.to_vec())
            }
            Transport::Mqtt { .. } => {
                let corr: [u8; 16] = rand::random();
                let reply_topic = format!("fleetctl/{}/reply", hex(&corr));
                let (client, mut ev) = self.mqtt_connect(true)?;
                let mut sent = false;
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let event = tokio::time::timeout_at(deadline, ev.poll())
                        .await
                        .map_err(|_| {
                            anyhow!("no reply from {device} within {} s", timeout.as_secs())
                        })?
                        .map_err(|e| anyhow!("MQTT: {e}"))?;
                    match event {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            client.subscribe(&reply_topic, QoS::AtLeastOnce).await?;
                        }
                        Event::Incoming(Packet::SubAck(_)) if !sent => {
                            let props = PublishProperties {
                                response_topic: Some(reply_topic.clone()),
                                correlation_data: Some(corr.to_vec().into()),
                                ..Default::default()
                            };
                            client
                                .publish_with_properties(
                                    names::mqtt_cmd(device),
                                    QoS::AtLeastOnce,
                                    false,
                                    signed.clone(),
                                    props,
                                )
                                .await?;
                            sent = true;
                        }
                        Event::Incoming(Packet::Publish(p)) => {
                            let matches = p
                                .properties
                                .as_ref()
                                .and_then(|pp| pp.correlation_data.as_ref())
                                .is_some_and(|c| c.as_ref() == corr);
                            if matches {
                                let _ = client.disconnect().await;
                                return Ok(p.payload.to_vec());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn mqtt_connect(&self, clean: bool) -> Result<(AsyncClient, rumqttc::v5::EventLoop)> {
        let Transport::Mqtt { host, port } = self else {
            bail!("not an MQTT transport");
        };
        let id: [u8; 8] = rand::random();
        let mut o = MqttOptions::new(format!("fleetctl-{}", hex(&id)), host.clone(), *port);
        o.set_clean_start(clean)
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(Some(MAX_PACKET));
        Ok(AsyncClient::new(o, 64))
    }

    pub(crate) async fn mqtt_publish(
        &self,
        topic: &str,
        body: Vec<u8>,
        retain: bool,
    ) -> Result<()> {
        let (client, mut ev) = self.mqtt_connect(true)?;
        client
            .publish(topic, QoS::AtLeastOnce, retain, body)
            .await?;
        // Drive the loop until the broker acknowledged the publish.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let e = tokio::time::timeout_at(deadline, ev.poll())
                .await
                .map_err(|_| anyhow!("MQTT broker did not acknowledge within 10 s"))?
                .map_err(|e| anyhow!("MQTT: {e}"))?;
            if let Event::Incoming(Packet::PubAck(_)) = e {
                let _ = client.disconnect().await;
                return Ok(());
            }
        }
    }

    /// Subscribes to `filters` and collects retained messages until the broker is quiet.
    async fn mqtt_collect_retained(&self, filters: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let (client, mut ev) = self.mqtt_connect(true)?;
        let mut out = Vec::new();
        let mut quiet_until: Option<tokio::time::Instant> = None;
        let hard = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let until = quiet_until.unwrap_or(hard).min(hard);
            let e = match tokio::time::timeout_at(until, ev.poll()).await {
                Err(_) => break,
                Ok(e) => e.map_err(|e| anyhow!("MQTT: {e}"))?,
            };
            match e {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for filter in filters {
                        client.subscribe(filter.as_str(), QoS::AtLeastOnce).await?;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    quiet_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if p.retain && !p.payload.is_empty() {
                        out.push((
                            String::from_utf8_lossy(&p.topic).into_owned(),
                            p.payload.to_vec(),
                        ));
                    }
                    quiet_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
                _ => {}
            }
        }
        let _ = client.disconnect().await;
        Ok(out)
    }
}
