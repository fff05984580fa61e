//! The agent against a real `nats-server -js` and a real `mosquitto` fed hostile input: the
//! cache loses nothing, odd keys and topics are shown as ignored inputs, refused documents are
//! kept as key, length and reason only, and a document the broker refuses never takes the
//! device off the plane (it still answers a signed ping and keeps publishing heartbeats).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use base64::Engine;
use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_contract::names::{self, DESIRED_BUCKET, STATUS_BUCKET};
use fleet_contract::{CommandEnvelope, CommandReply, SignedCommand, COMMAND_API_VERSION};
use fleet_module_api::{
    async_trait, Capability, Context, DesiredState, Health, ModuleError, Probe,
};
use fleet_testkit::{Mosquitto, NatsServer, TempRoot};
use futures::StreamExt;

const DEV: &str = "dev-1";

/// Records every desired state it is handed, and optionally publishes a large detail (so the
/// heartbeat outgrows a broker's limit).
struct Watcher {
    seen: Mutex<Vec<Arc<DesiredState>>>,
    big_detail: usize,
}

impl Watcher {
    fn new(big_detail: usize) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            big_detail,
        })
    }
    fn first(&self) -> Option<Arc<DesiredState>> {
        self.seen.lock().unwrap().first().cloned()
    }
    fn last(&self) -> Option<Arc<DesiredState>> {
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

struct Key {
    pair: ring::signature::Ed25519KeyPair,
    public: String,
}

fn key() -> Key {
    let der = fleet_contract::generate_key_pkcs8().unwrap();
    let text = base64::engine::general_purpose::STANDARD.encode(&der);
    let pair = fleet_contract::key_pair_from_b64(&text).unwrap();
    let public = fleet_contract::public_key_b64(&pair);
    Key { pair, public }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed_ping(key: &Key, id: &str) -> Vec<u8> {
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

fn config(root: &TempRoot, plane: &str, key: &Key) -> Config {
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

fn nats_plane(url: &str) -> String {
    format!("plane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n")
}

fn mqtt_plane(port: u16) -> String {
    format!("plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n")
}

struct Running {
    stop: fleet_module_api::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), fleet_agent::AgentError>>,
    handle: fleet_agent::AgentHandle,
}

fn start(cfg: Config, watcher: Arc<Watcher>) -> Running {
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
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The KV buckets as `fleetctl init` creates them.
async fn init_buckets(client: &async_nats::Client) -> (jetstream::kv::Store, jetstream::kv::Store) {
    let js = jetstream::new(client.clone());
    for (bucket, history) in [(DESIRED_BUCKET, 10), (STATUS_BUCKET, 1)] {
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
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
        .unwrap();
    }
    (
        js.get_key_value(DESIRED_BUCKET).await.unwrap(),
        js.get_key_value(STATUS_BUCKET).await.unwrap(),
    )
}

fn manifest_json(name: &str, revision: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"fleet/v1","name":"{name}","revision":{revision},"container":{{"image":"localhost/x:1"}}}}"#
    )
    .into_bytes()
}

async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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

fn cached_keys(root: &TempRoot) -> Vec<String> {
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

/// Class 1: one record SQLite cannot store (revision 2^63) among good ones. The good ones are
/// cached; an offline restart hands the modules every good deployment, says the state is not
/// complete and implies no removal for the bad one. (The old all-or-nothing cache write
/// stored nothing, so the offline restart had no deployment at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_among_good_ones_loses_nothing() {
    let mut nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, _) = init_buckets(&client).await;
    for name in ["alpha", "beta", "gamma"] {
        desired
            .put(
                names::kv_deploy_key(DEV, name),
                manifest_json(name, "1").into(),
            )
            .await
            .unwrap();
    }
    desired
        .put(
            names::kv_deploy_key(DEV, "huge"),
            manifest_json("huge", "9223372036854775808").into(),
        )
        .await
        .unwrap();

    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg.clone(), watcher.clone());
    wait_for(20, "the plane's listing", || {
        watcher
            .last()
            .filter(|s| s.complete && s.deployments.len() == 4)
    })
    .await;
    let keys = wait_for(10, "the good documents cached", || {
        let k = cached_keys(&root);
        ["deploy.alpha", "deploy.beta", "deploy.gamma"]
            .iter()
            .all(|n| k.iter().any(|c| c == n))
            .then_some(k)
    })
    .await;
    assert!(keys.len() >= 3, "{keys:?}");
    agent.stop().await;

    // Offline restart: from the cache alone.
    nats.stop();
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let first = wait_for(10, "the start-up state", || watcher.first()).await;
    agent.stop().await;
    for name in ["alpha", "beta", "gamma"] {
        assert!(
            first.deployments.contains_key(name),
            "{name} missing from the state rebuilt from the cache: {:?}",
            first.deployments.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        !first.complete,
        "a state rebuilt from the cache is never complete"
    );
    assert!(
        !first.removal_received("huge"),
        "no removal may be implied for the record the cache could not store"
    );
}

/// Class 1: a deletion that was received is recorded, so an offline restart knows it (and
/// only it) was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_deletion_survives_an_offline_restart() {
    let mut nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, _) = init_buckets(&client).await;
    for name in ["keep", "gone"] {
        desired
            .put(
                names::kv_deploy_key(DEV, name),
                manifest_json(name, "1").into(),
            )
            .await
            .unwrap();
    }
    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg.clone(), watcher.clone());
    wait_for(20, "both deployments", || {
        watcher.last().filter(|s| s.deployments.len() == 2)
    })
    .await;
    desired
        .delete(names::kv_deploy_key(DEV, "gone"))
        .await
        .unwrap();
    wait_for(10, "the deletion", || {
        watcher.last().filter(|s| s.deployments.len() == 1)
    })
    .await;
    wait_for(10, "the deletion cached", || {
        (cached_keys(&root) == ["deploy.keep"]).then_some(())
    })
    .await;
    agent.stop().await;

    nats.stop();
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let first = wait_for(10, "the start-up state", || watcher.first()).await;
    agent.stop().await;
    assert!(first.deployments.contains_key("keep"));
    assert!(first.removal_received("gone"), "{:?}", first.deleted);
    assert!(!first.removal_received("never-seen"));
}

/// Class 8 and 6: odd keys appear as ignored inputs (quoted, with the reason) in the
/// heartbeat, `fleet-agent status` (text and JSON) and the published info document; a
/// document over the cap is refused by size and cached as key, length and reason only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_oversized_documents_are_reported() {
    let nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, status) = init_buckets(&client).await;
    let long = format!("{DEV}.deploy.{}", "k".repeat(3000));
    for k in [
        format!("{DEV}.deploy.Web"),
        format!("{DEV}.deploy.web.extra"),
        format!("{DEV}.other"),
        long.clone(),
    ] {
        desired
            .put(k, manifest_json("web", "1").into())
            .await
            .unwrap();
    }
    let big = vec![b' '; fleet_contract::MAX_MANIFEST_BYTES + 1];
    desired
        .put(names::kv_deploy_key(DEV, "big"), big.into())
        .await
        .unwrap();

    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let hb = wait_for(20, "four ignored inputs", || {
        let hb = agent.handle.heartbeat();
        (hb.ignored_inputs.listed.len() >= 4).then_some(hb)
    })
    .await;
    let listed = &hb.ignored_inputs.listed;
    let find = |needle: &str| {
        listed
            .iter()
            .find(|i| i.input.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not among {listed:#?}"))
    };
    assert!(find("deploy.Web").reason.contains("deployment name"));
    assert!(find("deploy.web.extra").reason.contains("deployment name"));
    assert!(find("dev-1.other")
        .reason
        .contains("not a key this agent reads"));
    let long_one = find("(3013 bytes)");
    assert!(
        long_one.input.len() < 200,
        "the long key is quoted, not copied: {long_one:?}"
    );

    // The oversized document: refused by size, naming its length, cached without its body.
    let state = wait_for(10, "big refused", || {
        watcher.last().filter(|s| s.deployments.contains_key("big"))
    })
    .await;
    match &state.deployments["big"] {
        fleet_module_api::DesiredDeployment::Invalid { error, .. } => {
            let m = error.to_string();
            assert!(
                m.contains(&format!("{} bytes", fleet_contract::MAX_MANIFEST_BYTES + 1)),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    wait_for(10, "big cached as a refusal", || {
        let store = fleet_agent::store::Store::open_existing(
            &root.state().join("state.db"),
            Duration::from_secs(2),
        )
        .unwrap();
        store
            .desired()
            .unwrap()
            .into_iter()
            .find(|r| r.key == "deploy.big")
            .filter(|r| r.body.is_empty() && r.refused.is_some())
            .map(|r| assert_eq!(r.length, fleet_contract::MAX_MANIFEST_BYTES as u64 + 1))
    })
    .await;

    // `fleet-agent status`, JSON and text, reads the same from the store.
    let db = root.state().join("state.db");
    let report = wait_for(10, "status lists the ignored inputs", || {
        fleet_agent::status::read(&db, Duration::from_secs(2))
            .ok()
            .filter(|r| r.ignored_inputs.listed.len() >= 4)
    })
    .await;
    let text = fleet_agent::status::render(&report);
    assert!(text.contains("IGNORED INPUTS"), "{text}");
    assert!(text.contains("deploy.Web"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["ignored_inputs"]["listed"].as_array().unwrap().len() >= 4);

    // The published info document carries them too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let doc: Option<serde_json::Value> = status
            .get(names::kv_info_key(DEV))
            .await
            .unwrap()
            .and_then(|v| serde_json::from_slice(&v).ok());
        let n = doc
            .as_ref()
            .and_then(|d| d["ignored_inputs"]["listed"].as_array().map(Vec::len));
        if n.is_some_and(|n| n >= 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "published info: {doc:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A deleted odd key is no longer listed.
    desired.delete(format!("{DEV}.other")).await.unwrap();
    wait_for(10, "the deleted key unlisted", || {
        let hb = agent.handle.heartbeat();
        (!hb.ignored_inputs
            .listed
            .iter()
            .any(|i| i.input.contains("dev-1.other")))
        .then_some(())
    })
    .await;
    agent.stop().await;
}

/// Class 4: a heartbeat larger than the server's max payload. The old plane ended the
/// session on the failed publish and re-published it first after every reconnect, so the
/// device never answered a command again. Now the document is cut to fit, and the device
/// answers a signed ping and keeps publishing heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_servers_max_payload_does_not_take_the_device_off_nats() {
    let nats = NatsServer::start_jetstream_with_config("max_payload: 4096\n").unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 4096);
    let (_desired, status) = init_buckets(&client).await;
    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let mut beats = client.subscribe(names::nats_hb_subject(DEV)).await.unwrap();
    let agent = start(cfg, Watcher::new(10_000));

    // Heartbeats keep coming, each within the limit and saying it was cut.
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(20), beats.next())
            .await
            .expect("a heartbeat within 20 s")
            .unwrap();
        assert!(msg.payload.len() <= 4096);
        let hb: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(hb["device"], DEV);
        assert!(
            hb["details"]["cut"]["length"].as_u64().unwrap() > 10_000,
            "{hb}"
        );
    }
    // A signed ping is answered.
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(
            names::nats_cmd_subject(DEV),
            signed_ping(&key, "p-1").into(),
        ),
    )
    .await
    .expect("ping answered within 20 s")
    .unwrap();
    let reply: CommandReply = serde_json::from_slice(&reply.payload).unwrap();
    assert!(reply.ok, "{reply:?}");
    // The info document is there, cut.
    let info = status.get(names::kv_info_key(DEV)).await.unwrap().unwrap();
    assert!(info.len() <= 4096);
    agent.stop().await;
}

/// Connects a plain MQTT 5 client; returns it and a channel of (topic, payload) messages.
async fn mqtt_client(
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

fn rand_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Class 4 on MQTT: a broker whose CONNACK limits packets to 4 KiB. The old plane handed a
/// larger heartbeat to the client, whose event loop then failed on it at every reconnect; now
/// documents are cut to the broker's limit and the device answers a signed ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_brokers_packet_limit_does_not_take_the_device_off_mqtt() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    let broker = Mosquitto::start_with_config("max_packet_size 4096").unwrap();
    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &mqtt_plane(broker.port()), &key);
    let (client, mut rx) = mqtt_client(
        broker.port(),
        &[names::mqtt_hb(DEV), "test/reply".to_owned()],
    )
    .await;
    let agent = start(cfg, Watcher::new(10_000));

    let mut beats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while beats < 3 {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("three heartbeats within 30 s")
            .unwrap();
        if topic == names::mqtt_hb(DEV) {
            let hb: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert!(hb["details"]["cut"].is_object(), "{hb}");
            beats += 1;
        }
    }
    let props = PublishProperties {
        response_topic: Some("test/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
        ..Default::default()
    };
    client
        .publish_with_properties(
            names::mqtt_cmd(DEV),
            QoS::AtLeastOnce,
            false,
            signed_ping(&key, "p-1"),
            props,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("ping answered within 20 s")
            .unwrap();
        if topic == "test/reply" {
            let reply: CommandReply = serde_json::from_slice(&payload).unwrap();
            assert!(reply.ok, "{reply:?}");
            break;
        }
    }
    agent.stop().await;
}

/// Class 7 and 8 on MQTT: a retained manifest over the contract's cap arrives (the agent's
/// packet limit is above the cap) and is refused by size with its length; an odd desired
/// topic is an ignored input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_cap_retained_manifest_and_odd_topics_are_reported_on_mqtt() {
    use rumqttc::v5::mqttbytes::QoS;
    let broker = Mosquitto::start().unwrap();
    let (client, _rx) = mqtt_client(broker.port(), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = fleet_contract::MAX_MANIFEST_BYTES + 10_000;
    client
        .publish(
            names::mqtt_desired_deploy(DEV, "big"),
            QoS::AtLeastOnce,
            true,
            vec![b' '; over],
        )
        .await
        .unwrap();
    for topic in [
        format!("fleet/{DEV}/desired/deploy/Web"),
        format!("fleet/{DEV}/desired/other"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, true, manifest_json("web", "1"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &mqtt_plane(broker.port()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let state = wait_for(20, "big refused", || {
        watcher.last().filter(|s| s.deployments.contains_key("big"))
    })
    .await;
    match &state.deployments["big"] {
        fleet_module_api::DesiredDeployment::Invalid { error, .. } => {
            let m = error.to_string();
            assert!(m.contains(&format!("{over} bytes")), "{m}");
            assert!(m.contains("deploy/big"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    let hb = wait_for(10, "two ignored topics", || {
        let hb = agent.handle.heartbeat();
        (hb.ignored_inputs.listed.len() >= 2).then_some(hb)
    })
    .await;
    let inputs: Vec<&str> = hb
        .ignored_inputs
        .listed
        .iter()
        .map(|i| i.input.as_str())
        .collect();
    assert!(
        inputs.iter().any(|i| i.contains("deploy/Web")),
        "{inputs:?}"
    );
    assert!(
        inputs.iter().any(|i| i.contains("desired/other")),
        "{inputs:?}"
    );
    agent.stop().await;
}
