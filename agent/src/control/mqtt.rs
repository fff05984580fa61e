//! The MQTT 5 control plane (rumqttc v5): desired state from retained
//! `fleet/<device>/desired/deploy/<name>` (an empty retained payload deletes), status as
//! retained `fleet/<device>/status/...`, heartbeats on `fleet/<device>/hb`, online flag
//! `fleet/<device>/online` (last will `false`), commands on `fleet/<device>/cmd` answered on
//! the MQTT 5 response topic with the correlation data, audit on `fleet/<device>/audit`.
//! QoS 1 throughout and a persistent session.
//!
//! MQTT has no "end of retained messages" marker: after every (re)subscribe the desired state
//! is rebuilt from scratch and handed to the modules once the broker has been quiet for
//! [`SETTLE`], so a partial replay never removes a deployment.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_contract::names;
use fleet_contract::{quote, DeviceId};
use fleet_module_api::CancellationToken;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    caps, fit_document, publish_changes, Backoff, CommandRequest, ControlError, ControlPlane, Doc,
    Docs, IgnoredInput, PlaneIo, StatusOut, StatusSnapshot,
};
use crate::config::MqttConfig;

/// Quiet time after a subscribe before the retained replay counts as complete.
pub const SETTLE: Duration = Duration::from_millis(700);

/// Largest packet the agent takes, announced to the broker in CONNECT (MQTT 5 Maximum Packet
/// Size): four times the manifest cap, so every document up to the contract's caps and well
/// past them arrives, and one over its cap is refused by size with its topic, length and
/// reason. A broker does not deliver a larger packet at all (MQTT 5 §3.1.2.11.4): such a
/// document is visible only in the broker's log.
pub const MAX_INCOMING_PACKET: u32 = 4 * fleet_contract::MAX_MANIFEST_BYTES as u32;

/// Largest document published when the broker's CONNACK names no maximum packet size.
pub const DEFAULT_OUTGOING_LIMIT: usize = fleet_contract::MAX_MANIFEST_BYTES;

/// Room for the fixed header, topic length, packet id and properties of a PUBLISH.
const PACKET_OVERHEAD: usize = 512;

/// MQTT 5 adapter.
pub struct MqttPlane {
    cfg: MqttConfig,
    device: DeviceId,
}

/// What the event-loop task reports.
enum Incoming {
    /// Connected; the broker's maximum packet size, if its CONNACK names one.
    Connected(Option<u32>),
    Subscribed,
    Disconnected(String),
    Publish {
        topic: String,
        payload: Bytes,
        props: Option<PublishProperties>,
    },
}

impl MqttPlane {
    /// A plane for `device`.
    pub fn new(cfg: MqttConfig, device: DeviceId) -> Self {
        Self { cfg, device }
    }

    fn options(&self) -> Result<MqttOptions, String> {
        let dev = self.device.as_str();
        let id = self
            .cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("fleet-agent-{dev}"));
        let mut o = MqttOptions::new(id, self.cfg.host.clone(), self.cfg.port);
        o.set_keep_alive(Duration::from_secs(self.cfg.keep_alive_secs))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(self.cfg.session_expiry_secs))
            .set_max_packet_size(Some(MAX_INCOMING_PACKET))
            .set_last_will(LastWill::new(
                names::mqtt_online(dev),
                "false",
                QoS::AtLeastOnce,
                true,
                None,
            ));
        if let Some(user) = &self.cfg.username {
            let password = match &self.cfg.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("password file {}: {e}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        Ok(o)
    }
}

#[async_trait]
impl ControlPlane for MqttPlane {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    async fn check(&self) -> Result<String, ControlError> {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| ControlError::Setup {
            plane: "mqtt",
            message: format!("{addr}: timed out"),
        })?
        .map_err(|e| ControlError::Setup {
            plane: "mqtt",
            message: format!("{addr}: {e}"),
        })?;
        Ok(format!("broker {addr} reachable"))
    }

    async fn run(
        self: Arc<Self>,
        io: PlaneIo,
        shutdown: CancellationToken,
    ) -> Result<(), ControlError> {
        let dev = self.device.as_str().to_owned();
        let opts = self.options().map_err(|message| ControlError::Setup {
            plane: "mqtt",
            message,
        })?;
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(1024);

        // The event loop lives in its own task: it must be polled for anything to move, and
        // rumqttc reconnects on the next poll after an error.
        let poll_token = shutdown.child_token();
        let poller = tokio::spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                let ev = tokio::select! {
                    () = poll_token.cancelled() => return,
                    ev = eventloop.poll() => ev,
                };
                let msg = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        Incoming::Connected(ack.properties.and_then(|p| p.max_packet_size))
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => Incoming::Subscribed,
                    Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                        props: p.properties,
                    },
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = in_tx.send(Incoming::Disconnected(e.to_string())).await;
                        let delay = backoff.next_delay();
                        tokio::select! {
                            () = poll_token.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                };
                if in_tx.send(msg).await.is_err() {
                    return;
                }
            }
        });

        let PlaneIo {
            desired,
            mut status,
            commands,
            mut audit,
            failures,
        } = io;
        let mut docs = Docs::default();
        let agent_topic = names::mqtt_desired_agent(&dev);
        let system_topic = names::mqtt_desired_system(&dev);
        let desired_prefix = format!("{}/desired/", names::mqtt_prefix(&dev));
        let mut limit = DEFAULT_OUTGOING_LIMIT;
        // Some(deadline) while a retained replay is settling.
        let mut settling: Option<tokio::time::Instant> = None;
        let mut connected = false;
        let mut published = StatusSnapshot::default();
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);

        let result = loop {
            let settle_at = settling.unwrap_or_else(far);
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep_until(settle_at), if settling.is_some() => {
                    settling = None;
                    tracing::info!(deployments = docs.deployments.len(), "MQTT desired state replayed");
                    desired.send_replace(docs.update());
                }
                msg = in_rx.recv() => match msg {
                    None => break Ok(()),
                    Some(Incoming::Connected(broker_max)) => {
                        connected = true;
                        limit = broker_max
                            .map_or(DEFAULT_OUTGOING_LIMIT, |m| (m as usize).min(DEFAULT_OUTGOING_LIMIT))
                            .saturating_sub(PACKET_OVERHEAD)
                            .max(PACKET_OVERHEAD);
                        tracing::info!(broker = %format!("{}:{}", self.cfg.host, self.cfg.port), "MQTT connected");
                        let subs = [names::mqtt_desired_filter(&dev), names::mqtt_cmd(&dev)];
                        for topic in subs {
                            if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
                                tracing::warn!(error = %e, "MQTT subscribe failed");
                            }
                        }
                        docs = Docs::default();
                        settling = Some(tokio::time::Instant::now() + SETTLE * 3);
                        let _ = client.publish(names::mqtt_online(&dev), QoS::AtLeastOnce, true, "true").await;
                        // Re-publish everything after every (re)connect.
                        published = StatusSnapshot::default();
                        let snap = status.borrow_and_update().clone();
                        publish_changes(&Out { client: &client, dev: &dev }, limit, &failures, &mut published, &snap).await;
                    }
                    Some(Incoming::Subscribed) => {
                        if settling.is_some() {
                            settling = Some(tokio::time::Instant::now() + SETTLE);
                        }
                    }
                    Some(Incoming::Disconnected(e)) => {
                        if connected {
                            tracing::warn!(error = %e, "MQTT disconnected; running from cached state");
                        }
                        connected = false;
                    }
                    Some(Incoming::Publish { topic, payload, props }) => {
                        // A retained desired-state document; an empty payload deletes it. The
                        // size is checked before the body is copied.
                        let source = format!("mqtt:{topic}");
                        let doc = |cap| {
                            (!payload.is_empty()).then(|| Doc::checked(source.clone(), payload.len(), cap, || payload.to_vec()))
                        };
                        let is_desired = if topic == system_topic {
                            docs.system = doc(caps::SYSTEM);
                            true
                        } else if topic == agent_topic {
                            docs.agent = doc(caps::AGENT);
                            true
                        } else if topic.starts_with(&desired_prefix) {
                            match classify_topic(&dev, &topic) {
                                Ok(name) => match doc(caps::DEPLOYMENT) {
                                    Some(d) => {
                                        docs.deployments.insert(name.to_owned(), d);
                                    }
                                    None => {
                                        docs.deployments.remove(name);
                                    }
                                },
                                Err(reason) if !payload.is_empty() => {
                                    tracing::warn!(topic = %quote(&topic), %reason, "ignoring desired-state topic");
                                    docs.ignored.insert(&topic, IgnoredInput::new(format!("mqtt:{}", quote(&topic)), &reason));
                                }
                                Err(_) => docs.ignored.remove(&topic),
                            }
                            true
                        } else {
                            false
                        };
                        if is_desired {
                            match settling {
                                Some(_) => settling = Some(tokio::time::Instant::now() + SETTLE),
                                None => { desired.send_replace(docs.update()); }
                            }
                        } else if topic == names::mqtt_cmd(&dev) {
                            let Some((reply_to, corr)) = props.and_then(|p| p.response_topic.map(|t| (t, p.correlation_data))) else {
                                tracing::warn!("command without a response topic ignored");
                                continue;
                            };
                            let (tx, rx) = oneshot::channel();
                            if commands.send(CommandRequest { bytes: payload.to_vec(), reply: tx }).await.is_err() {
                                break Ok(());
                            }
                            let client = client.clone();
                            tokio::spawn(async move {
                                if let Ok(bytes) = rx.await {
                                    let bytes = fit_document(bytes, limit, "command reply");
                                    let props = PublishProperties { correlation_data: corr, ..Default::default() };
                                    if let Err(e) = client.publish_with_properties(reply_to, QoS::AtLeastOnce, false, bytes, props).await {
                                        tracing::warn!(error = %e, "cannot send command reply");
                                    }
                                }
                            });
                        } else {
                            tracing::debug!(%topic, "ignoring message on an unexpected topic");
                        }
                    }
                },
                changed = status.changed() => {
                    if changed.is_err() {
                        break Ok(());
                    }
                    let snap = status.borrow_and_update().clone();
                    if connected {
                        publish_changes(&Out { client: &client, dev: &dev }, limit, &failures, &mut published, &snap).await;
                    }
                }
                event = audit.recv() => match event {
                    Ok(v) => {
                        let body = fit_document(serde_json::to_vec(&v).unwrap_or_default(), limit, "audit record");
                        let _ = client.publish(names::mqtt_audit(&dev), QoS::AtLeastOnce, false, body).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "audit stream lagged; records remain in the store"),
                    Err(broadcast::error::RecvError::Closed) => break Ok(()),
                },
            }
        };
        // Clean shutdown: say so instead of leaving it to the last will.
        let _ = client
            .publish(names::mqtt_online(&dev), QoS::AtLeastOnce, true, "false")
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), poller).await;
        result
    }
}

/// The deployment name of a desired-state topic, or why the topic is not one this agent reads.
fn classify_topic<'a>(dev: &str, topic: &'a str) -> Result<&'a str, String> {
    super::deployment_name(names::deploy_name_from_mqtt_topic(dev, topic), || {
        format!("not a topic this agent reads (fleet/{dev}/desired/deploy/<name>, .../desired/system, .../desired/agent)")
    })
}

/// Where an MQTT session publishes status: retained documents, the heartbeat, and an empty
/// retained message for a removed deployment.
struct Out<'a> {
    client: &'a AsyncClient,
    dev: &'a str,
}

#[async_trait]
impl StatusOut for Out<'_> {
    async fn info(&self, body: Vec<u8>) -> Result<(), String> {
        let info = self
            .client
            .publish(
                names::mqtt_status_info(self.dev),
                QoS::AtLeastOnce,
                true,
                body.clone(),
            )
            .await;
        let beat = self
            .client
            .publish(names::mqtt_hb(self.dev), QoS::AtMostOnce, false, body)
            .await;
        info.and(beat)
            .map_err(|e| format!("publish status info: {e}"))
    }

    async fn deployment(&self, name: &str, body: Vec<u8>) -> Result<(), String> {
        self.client
            .publish(
                names::mqtt_status_deploy(self.dev, name),
                QoS::AtLeastOnce,
                true,
                body,
            )
            .await
            .map_err(|e| format!("publish status of {name}: {e}"))
    }

    async fn deployment_gone(&self, name: &str) -> Result<(), String> {
        self.client
            .publish(
                names::mqtt_status_deploy(self.dev, name),
                QoS::AtLeastOnce,
                true,
                Vec::<u8>::new(),
            )
            .await
            .map_err(|e| format!("clear status of {name}: {e}"))
    }
}
