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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_contract::names;
use fleet_contract::DeviceId;
use fleet_module_api::CancellationToken;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    update_from_docs, Backoff, CommandRequest, ControlError, ControlPlane, PlaneIo, StatusSnapshot,
};
use crate::config::MqttConfig;

/// Quiet time after a subscribe before the retained replay counts as complete.
pub const SETTLE: Duration = Duration::from_millis(700);

/// MQTT 5 adapter.
pub struct MqttPlane {
    cfg: MqttConfig,
    device: DeviceId,
}

/// What the event-loop task reports.
enum Incoming {
    Connected,
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
            .set_max_packet_size(Some(1024 * 1024))
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
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        Incoming::Connected
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
        } = io;
        let mut docs: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
        let mut system: Option<(String, Vec<u8>)> = None;
        let agent_topic = names::mqtt_desired_agent(&dev);
        let mut agent_doc: Option<(String, Vec<u8>)> = None;
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
                    tracing::info!(deployments = docs.len(), "MQTT desired state replayed");
                    desired.send_replace(update_from_docs(&docs, system.as_ref(), agent_doc.as_ref()));
                }
                msg = in_rx.recv() => match msg {
                    None => break Ok(()),
                    Some(Incoming::Connected) => {
                        connected = true;
                        tracing::info!(broker = %format!("{}:{}", self.cfg.host, self.cfg.port), "MQTT connected");
                        let subs = [names::mqtt_desired_filter(&dev), names::mqtt_cmd(&dev)];
                        for topic in subs {
                            if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
                                tracing::warn!(error = %e, "MQTT subscribe failed");
                            }
                        }
                        docs.clear();
                        system = None;
                        agent_doc = None;
                        settling = Some(tokio::time::Instant::now() + SETTLE * 3);
                        let _ = client.publish(names::mqtt_online(&dev), QoS::AtLeastOnce, true, "true").await;
                        // Re-publish everything after every (re)connect.
                        published = StatusSnapshot::default();
                        let snap = status.borrow_and_update().clone();
                        publish(&client, &dev, &published, &snap).await;
                        published = snap;
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
                        // A retained desired-state document; an empty payload deletes it.
                        let doc = || (!payload.is_empty()).then(|| (format!("mqtt:{topic}"), payload.to_vec()));
                        let is_desired = if topic == names::mqtt_desired_system(&dev) {
                            system = doc();
                            true
                        } else if topic == agent_topic {
                            agent_doc = doc();
                            true
                        } else if let Some(name) = names::deploy_name_from_mqtt_topic(&dev, &topic) {
                            if DeviceId::parse(name).is_err() {
                                tracing::warn!(%topic, "ignoring desired-state topic with an invalid deployment name");
                                continue;
                            }
                            match doc() {
                                Some(d) => docs.insert(name.to_owned(), d),
                                None => docs.remove(name),
                            };
                            true
                        } else {
                            false
                        };
                        if is_desired {
                            match settling {
                                Some(_) => settling = Some(tokio::time::Instant::now() + SETTLE),
                                None => { desired.send_replace(update_from_docs(&docs, system.as_ref(), agent_doc.as_ref())); }
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
                        publish(&client, &dev, &published, &snap).await;
                        published = snap;
                    }
                }
                event = audit.recv() => match event {
                    Ok(v) => {
                        let body = serde_json::to_vec(&v).unwrap_or_default();
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

/// Publishes what differs between `old` and `new` (retained status, heartbeat, clears for
/// removed deployments). Failures are logged: the next change or reconnect publishes again.
async fn publish(client: &AsyncClient, dev: &str, old: &StatusSnapshot, new: &StatusSnapshot) {
    if let Some(hb) = &new.heartbeat {
        if old.heartbeat.as_ref() != Some(hb) {
            let body = serde_json::to_vec(hb).unwrap_or_default();
            let _ = client
                .publish(
                    names::mqtt_status_info(dev),
                    QoS::AtLeastOnce,
                    true,
                    body.clone(),
                )
                .await;
            let _ = client
                .publish(names::mqtt_hb(dev), QoS::AtMostOnce, false, body)
                .await;
        }
    }
    for (name, st) in &new.deployments {
        if old.deployments.get(name) != Some(st) {
            let body = serde_json::to_vec(st).unwrap_or_default();
            if let Err(e) = client
                .publish(
                    names::mqtt_status_deploy(dev, name),
                    QoS::AtLeastOnce,
                    true,
                    body,
                )
                .await
            {
                tracing::warn!(error = %e, deployment = %name, "cannot publish status");
            }
        }
    }
    for name in old.deployments.keys() {
        if !new.deployments.contains_key(name) {
            let _ = client
                .publish(
                    names::mqtt_status_deploy(dev, name),
                    QoS::AtLeastOnce,
                    true,
                    Vec::<u8>::new(),
                )
                .await;
        }
    }
}
