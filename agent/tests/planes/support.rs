//! Shared pieces of the control-plane tests: a module that records the desired state,
//! operator keys and signed pings, agent configs, buckets and an MQTT client.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_contract::{CommandEnvelope, SignedCommand, COMMAND_API_VERSION};
use fleet_module_api::{
    async_trait, Capability, Context, DesiredState, Health, ModuleError, Probe,
};
use fleet_testkit::TempRoot;

pub const DEV: &str = "dev-1";

/// Records every desired state it is handed, and optionally publishes a large detail (so the
/// heartbeat outgrows a broker's limit).
pub struct Watcher {
    pub seen: Mutex<Vec<Arc<DesiredState>>>,
    pub big_detail: usize,
}

impl Watcher {
    pub fn new(big_detail: usize) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            big_detail,
        })
    }
    pub fn first(&self) -> Option<Arc<DesiredState>> {
        self.seen.lock().unwrap().first().cloned()
    }
    pub fn last(&self) -> Option<Arc<DesiredState>> {
        self.seen.lock().unwrap().last().cloned()
    }
}

#[async_trait]
impl Capability for Watcher {
    fn name(&self) -> &'static str {
        "watcher"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        if self.big_detail > 0 {
            ctx.status.detail(
                "watcher",
                serde_json::json!({ "blob": "b".repeat(self.big_detail) }),
            );
        }
        let mut rx = ctx.desired.clone();
        loop {
            self.seen
                .lock()
                .unwrap()
                .push(rx.borrow_and_update().clone());
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                changed = rx.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

pub struct Key {
    pub pair: ring::signature::Ed25519KeyPair,
    pub public: String,
}

pub fn key() -> Key {
    let der = fleet_contract::generate_key_pkcs8().unwrap();
    let text = base64::engine::general_purpose::STANDARD.encode(&der);
    let pair = fleet_contract::key_pair_from_b64(&text).unwrap();
    let public = fleet_contract::public_key_b64(&pair);
    Key { pair, public }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn signed_ping(key: &Key, id: &str) -> Vec<u8> {
    let env = CommandEnvelope {
        api_version: COMMAND_API_VERSION.into(),
        id: id.into(),
        device: DEV.into(),
        verb: "ping".into(),
        args: serde_json::Value::Null,
        actor: "test".into(),
        issued_at: now(),
        expires_at: now() + 300,
    };
    SignedCommand::sign(&env, &key.pair).encode()
}

pub fn config(root: &TempRoot, plane: &str, key: &Key) -> Config {
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
         [control]\n{plane}\n\
         [[trust.operators]]\nname = \"admin\"\npublic_key = \"{}\"\nrole = \"admin\"\n",
        root.state(),
        root.run(),
        key.public,
    ));
    Config::load(&path).unwrap()
}

pub fn nats_plane(url: &str) -> String {
    format!("plane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n")
}

pub fn mqtt_plane(port: u16) -> String {
    format!("plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n")
}

pub struct Running {
    pub stop: fleet_module_api::CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), fleet_agent::AgentError>>,
    pub handle: fleet_agent::AgentHandle,
}

pub fn start(cfg: Config, watcher: Arc<Watcher>) -> Running {
    let agent = Agent::builder(cfg)
        .without_compiled_in()
        .module(watcher)
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = fleet_module_api::CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    Running { stop, task, handle }
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub use crate::common::init_buckets;

pub fn manifest_json(name: &str, revision: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"fleet/v1","name":"{name}","revision":{revision},"container":{{"image":"localhost/x:1"}}}}"#
    )
    .into_bytes()
}

pub async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn cached_keys(root: &TempRoot) -> Vec<String> {
    let store = fleet_agent::store::Store::open_existing(
        &root.state().join("state.db"),
        Duration::from_secs(2),
    )
    .unwrap();
    store
        .desired()
        .unwrap()
        .into_iter()
        .filter(|r| r.refused.is_none())
        .map(|r| r.key)
        .collect()
}

/// Connects a plain MQTT 5 client; returns it and a channel of (topic, payload) messages.
pub async fn mqtt_client(
    port: u16,
    subs: &[String],
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(format!("test-{}", rand_id()), "127.0.0.1", port);
    o.set_max_packet_size(Some(4 << 20));
    let (client, mut ev) = AsyncClient::new(o, 64);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subs = subs.to_vec();
    let c = client.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for s in &subs {
                        let _ = c.subscribe(s.as_str(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if tx.send((topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (client, rx)
}

pub fn rand_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
