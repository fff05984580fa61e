//! fleetctl and the agent against a real `nats-server -js` and a real `mosquitto`, each
//! spawned per test: desired state, status read-back, restarts, broker outages, compare-and-
//! set, and the command gate (signatures, roles, expiry, idempotency, audit).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use fleet_agent::config::Config;
use fleet_agent::store::Store;
use fleet_agent::Agent;
use fleet_contract::{CommandEnvelope, CommandReply, SignedCommand, COMMAND_API_VERSION};
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Command, CommandError, Context, Health,
    ModuleError, Probe, Reply,
};
use fleet_testkit::{require, Mosquitto, NatsServer, TempRoot};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");
const DEV: &str = "dev-1";

/// Serves `count`: increments and returns a counter (proves execute-once).
struct Counter(AtomicU32);

#[async_trait]
impl Capability for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        ctx.shutdown.cancelled().await;
        Ok(())
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["count"]
    }
    async fn handle(&self, _cmd: Command, _ctx: &Context) -> Result<Reply, CommandError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Reply::json(serde_json::json!({ "count": n })))
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

struct Keys {
    dir: TempRoot,
    admin: PathBuf,
    viewer: PathBuf,
    stranger: PathBuf,
    admin_pub: String,
    viewer_pub: String,
}

fn ctl(args: &[&str]) -> Output {
    fleet_testkit::output_within(
        std::process::Command::new(CTL).args(args),
        fleet_testkit::COMMAND_LIMIT,
    )
    .unwrap()
}

async fn ctl_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        fleet_testkit::output_within(
            std::process::Command::new(CTL).args(&args),
            fleet_testkit::COMMAND_LIMIT,
        )
        .unwrap()
    })
    .await
    .unwrap()
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ctl(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        path,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

fn keys() -> Keys {
    let dir = TempRoot::new().unwrap();
    let (admin, admin_pub) = keygen(dir.path(), "admin.key");
    let (viewer, viewer_pub) = keygen(dir.path(), "viewer.key");
    let (stranger, _) = keygen(dir.path(), "stranger.key");
    Keys {
        dir,
        admin,
        viewer,
        stranger,
        admin_pub,
        viewer_pub,
    }
}

fn config(root: &TempRoot, plane: &str, keys: &Keys) -> Config {
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
         [control]\n{plane}\n\
         [[trust.operators]]\nname = \"admin\"\npublic_key = \"{}\"\nrole = \"admin\"\n\
         [[trust.operators]]\nname = \"viewer\"\npublic_key = \"{}\"\nrole = \"viewer\"\n",
        root.state(),
        root.run(),
        keys.admin_pub,
        keys.viewer_pub,
    ));
    Config::load(&path).unwrap()
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), fleet_agent::AgentError>>,
    handle: fleet_agent::AgentHandle,
}

fn start(cfg: Config, counter: Arc<Counter>) -> Running {
    let agent = Agent::builder(cfg)
        .without_compiled_in()
        .module(counter)
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    Running { stop, task, handle }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn manifest(dir: &Path, name: &str, revision: u64) -> PathBuf {
    let p = dir.join(format!("{name}-{revision}.toml"));
    std::fs::write(
        &p,
        format!("apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = {revision}\n[container]\nimage = \"localhost/x:{revision}\"\n"),
    )
    .unwrap();
    p
}

/// Polls `fleetctl status --json` until `pred` holds on this device's view.
async fn wait_view(
    conn: &[String],
    what: &str,
    secs: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        let mut args = conn.to_vec();
        args.extend(["status", "--json", "--device", DEV].map(String::from));
        let out = ctl_async(args).await;
        if out.status.success() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                let view = v[DEV].clone();
                if pred(&view) {
                    return view;
                }
                last = view;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {secs} s waiting for {what}; last view: {last:#}");
}

fn rev(view: &serde_json::Value, name: &str) -> Option<u64> {
    view["deployments"][name]["revision"].as_u64()
}

async fn apply(conn: &[String], file: &Path, extra: &[&str]) -> Output {
    let mut args = conn.to_vec();
    args.extend(["apply", "-f", file.to_str().unwrap(), "--device", DEV].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    ctl_async(args).await
}

/// The shared desired-state scenario for both transports.
async fn desired_state_scenario(
    conn: Vec<String>,
    cfg: impl Fn() -> Config,
    mut broker_restart: impl FnMut(),
) {
    let files = TempRoot::new().unwrap();
    let counter = Arc::new(Counter(AtomicU32::new(0)));
    let agent = start(cfg(), counter.clone());

    // apply -> status shows the revision (read back through the broker).
    let out = apply(&conn, &manifest(files.path(), "web", 1), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_view(&conn, "web rev 1", 20, |v| rev(v, "web") == Some(1)).await;

    // delete -> removed.
    let mut del = conn.clone();
    del.extend(["delete", "web", "--device", DEV].map(String::from));
    assert!(ctl_async(del).await.status.success());
    wait_view(&conn, "web removed", 20, |v| {
        v["deployments"].get("web").is_none() && v["info"].is_object()
    })
    .await;

    // agent restart replays desired state (changed while it was down).
    agent.stop().await;
    let out = apply(&conn, &manifest(files.path(), "api", 2), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = start(cfg(), counter.clone());
    wait_view(&conn, "api rev 2 after restart", 20, |v| {
        rev(v, "api") == Some(2)
    })
    .await;

    // broker killed and restarted: the agent reconnects by itself and converges.
    let started_at = agent.handle.heartbeat().started_at;
    broker_restart();
    let out = apply(&conn, &manifest(files.path(), "api", 3), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_view(&conn, "api rev 3 after broker restart", 45, |v| {
        rev(v, "api") == Some(3)
    })
    .await;
    assert_eq!(
        agent.handle.heartbeat().started_at,
        started_at,
        "converged without a restart of its own"
    );
    assert!(!agent.task.is_finished());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_desired_state_status_restart_and_reconnect() {
    if !require("nats-server") {
        return;
    }
    let mut nats = NatsServer::start_jetstream().unwrap();
    let url = nats.url();
    let conn = vec!["--nats".to_owned(), url.clone()];
    let out = ctl(&["--nats", &url, "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = keys();
    let root = TempRoot::new().unwrap();
    let plane = format!("plane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n");
    desired_state_scenario(
        conn,
        || config(&root, &plane, &keys),
        || {
            nats.stop();
            std::thread::sleep(Duration::from_millis(500));
            nats.restart().unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_desired_state_status_restart_and_reconnect() {
    if !require("mosquitto") {
        return;
    }
    let mut mq = Mosquitto::start().unwrap();
    let conn = vec!["--mqtt".to_owned(), format!("127.0.0.1:{}", mq.port())];
    let keys = keys();
    let root = TempRoot::new().unwrap();
    let plane = format!(
        "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        mq.port()
    );
    // mosquitto runs without persistence: a restart loses retained messages, so the
    // scenario re-applies after the restart (which it does) and the agent must converge.
    desired_state_scenario(
        conn,
        || config(&root, &plane, &keys),
        || {
            mq.stop();
            std::thread::sleep(Duration::from_millis(500));
            mq.restart().unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_compare_and_set_has_exactly_one_winner() {
    if !require("nats-server") {
        return;
    }
    let nats = NatsServer::start_jetstream().unwrap();
    let url = nats.url();
    assert!(ctl(&["--nats", &url, "init"]).status.success());
    let conn = vec!["--nats".to_owned(), url.clone()];
    let files = TempRoot::new().unwrap();
    let out = apply(
        &conn,
        &manifest(files.path(), "web", 1),
        &["--expect-revision", "0"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let kv_rev: u64 = stdout
        .rsplit("KV revision ")
        .next()
        .unwrap()
        .trim_end_matches([')', '\n'])
        .parse()
        .unwrap();
    let (m2, m3, r) = (
        manifest(files.path(), "web", 2),
        manifest(files.path(), "web", 3),
        kv_rev.to_string(),
    );
    let extra = ["--expect-revision", r.as_str()];
    let a = apply(&conn, &m2, &extra);
    let b = apply(&conn, &m3, &extra);
    let (a, b) = tokio::join!(a, b);
    let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "a: {a:?}\nb: {b:?}");
    let loser = if a.status.success() { &b } else { &a };
    assert!(
        String::from_utf8_lossy(&loser.stderr).contains("refused"),
        "{loser:?}"
    );
    // A second create is refused too.
    let out = apply(
        &conn,
        &manifest(files.path(), "web", 4),
        &["--expect-revision", "0"],
    )
    .await;
    assert!(!out.status.success());
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn envelope(id: &str, device: &str, verb: &str, issued: u64, expires: u64) -> CommandEnvelope {
    CommandEnvelope {
        api_version: COMMAND_API_VERSION.into(),
        id: id.into(),
        device: device.into(),
        verb: verb.into(),
        args: serde_json::Value::Null,
        actor: "test".into(),
        issued_at: issued,
        expires_at: expires,
    }
}

fn sign(key: &Path, env: &CommandEnvelope) -> Vec<u8> {
    let kp = fleet_contract::key_pair_from_b64(&std::fs::read_to_string(key).unwrap()).unwrap();
    SignedCommand::sign(env, &kp).encode()
}

async fn request(client: &async_nats::Client, bytes: Vec<u8>) -> CommandReply {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(fleet_contract::names::nats_cmd_subject(DEV), bytes.into()),
    )
    .await
    .unwrap()
    .unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_commands_fail_closed_execute_once_and_are_audited() {
    if !require("nats-server") {
        return;
    }
    let nats = NatsServer::start_jetstream().unwrap();
    let url = nats.url();
    assert!(ctl(&["--nats", &url, "init"]).status.success());
    let keys = keys();
    let root = TempRoot::new().unwrap();
    let plane = format!("plane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n");
    let counter = Arc::new(Counter(AtomicU32::new(0)));
    let agent = start(config(&root, &plane, &keys), counter.clone());
    let client = async_nats::connect(&url).await.unwrap();
    let mut audit = client
        .subscribe(fleet_contract::names::nats_audit_subject(DEV))
        .await
        .unwrap();
    // Wait until the agent listens.
    let conn = vec!["--nats".to_owned(), url.clone()];
    wait_view(&conn, "agent online", 20, |v| v["info"].is_object()).await;

    // Heartbeats on the subject, and `fleetctl devices` sees the device online.
    let mut hb = client
        .subscribe(fleet_contract::names::nats_hb_subject(DEV))
        .await
        .unwrap();
    let beat = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut hb))
        .await
        .expect("a heartbeat within 5 s")
        .unwrap();
    let beat: serde_json::Value = serde_json::from_slice(&beat.payload).unwrap();
    assert_eq!(beat["device"], DEV);
    let out = ctl_async(vec![
        "--nats".into(),
        url.clone(),
        "devices".into(),
        "--json".into(),
    ])
    .await;
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(devices[0]["device"], DEV);
    assert_eq!(devices[0]["online"], true, "{devices}");

    // fleetctl cmd: viewer may ping.
    let out = ctl_async(vec![
        "--nats".into(),
        url.clone(),
        "cmd".into(),
        DEV.into(),
        "ping".into(),
        "--key".into(),
        keys.viewer.to_str().unwrap().into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Executed once for one id, even when sent twice.
    let t = now();
    let once = sign(&keys.admin, &envelope("once-1", DEV, "count", t, t + 60));
    let r1 = request(&client, once.clone()).await;
    let r2 = request(&client, once).await;
    assert!(r1.ok && r2.ok, "{r1:?} {r2:?}");
    assert_eq!(
        (r1.body["count"].as_u64(), r2.body["count"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(!r1.replayed && r2.replayed);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);

    // Every way to be refused.
    let mut forged_env = envelope("forged", DEV, "count", t, t + 60);
    let mut forged = SignedCommand::decode(&sign(&keys.admin, &forged_env)).unwrap();
    forged_env.verb = "system-upgrade".into();
    forged.payload =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&forged_env).unwrap());
    let short = sign(&keys.admin, &envelope("short", DEV, "count", t, t + 2));
    assert!(
        request(&client, short.clone()).await.ok,
        "valid while fresh"
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("forged signature", forged.encode(), "bad signature"),
        (
            "unknown key",
            sign(&keys.stranger, &envelope("u", DEV, "ping", t, t + 60)),
            "unknown key",
        ),
        (
            "wrong device",
            sign(&keys.admin, &envelope("w", "dev-2", "ping", t, t + 60)),
            "addressed to device",
        ),
        (
            "expired",
            sign(&keys.admin, &envelope("e", DEV, "ping", t - 100, t - 50)),
            "expired",
        ),
        (
            "future-dated",
            sign(&keys.admin, &envelope("f", DEV, "ping", t + 3600, t + 3700)),
            "in the future",
        ),
        (
            "weak role",
            sign(&keys.viewer, &envelope("r", DEV, "count", t, t + 60)),
            "role viewer may not run",
        ),
        (
            "garbage",
            b"\xff\x00garbage".to_vec(),
            "not a signed command",
        ),
    ];
    for (what, bytes, reason) in &cases {
        let r = request(&client, bytes.clone()).await;
        assert!(!r.ok, "{what}: {r:?}");
        assert!(r.message.contains(reason), "{what}: {r:?}");
    }
    // Replayed after expiry: the same signed bytes, once the command has expired.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = request(&client, short).await;
    assert!(!r.ok && r.message.contains("expired"), "{r:?}");
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        2,
        "only once-1 and short ran"
    );

    // Each denial is in the audit log with its reason, and was published.
    let store =
        Store::open_existing(&root.state().join("state.db"), Duration::from_secs(2)).unwrap();
    let entries = store.audit_recent(100).unwrap();
    let denied: Vec<_> = entries.iter().filter(|e| e.decision == "denied").collect();
    assert_eq!(denied.len(), cases.len() + 1, "{entries:#?}");
    for (what, _, reason) in &cases {
        assert!(
            denied.iter().any(|e| e.reason.contains(reason)),
            "{what} not audited: {denied:#?}"
        );
    }
    let mut published = 0;
    while let Ok(Some(_)) = tokio::time::timeout(
        Duration::from_millis(300),
        futures::StreamExt::next(&mut audit),
    )
    .await
    {
        published += 1;
    }
    assert!(
        published >= entries.len().min(cases.len() + 4),
        "published {published}"
    );

    // Malformed desired state on the KV: only that deployment fails; the agent keeps serving.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("fleet-desired").await.unwrap();
    kv.put(
        format!("{DEV}.deploy.junk"),
        b"\x00\x01 not json".to_vec().into(),
    )
    .await
    .unwrap();
    kv.put(
        format!("{DEV}.deploy.typed"),
        br#"{"apiVersion":"fleet/v1","name":"typed","revision":"x","container":{"image":"a"}}"#
            .to_vec()
            .into(),
    )
    .await
    .unwrap();
    kv.put(format!("{DEV}.deploy.huge"), vec![b' '; 300 * 1024].into())
        .await
        .unwrap();
    kv.put(format!("{DEV}.weird.key"), b"1".to_vec().into())
        .await
        .unwrap();
    let view = wait_view(&conn, "malformed entries failed", 20, |v| {
        ["junk", "typed", "huge"]
            .iter()
            .all(|n| v["deployments"][*n]["phase"] == "Failed")
    })
    .await;
    assert!(
        view["deployments"]["typed"]["message"]
            .as_str()
            .unwrap()
            .contains("revision"),
        "{view:#}"
    );
    assert!(
        view["deployments"]["huge"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{view:#}"
    );
    let t = now();
    let r = request(
        &client,
        sign(&keys.admin, &envelope("after", DEV, "ping", t, t + 60)),
    )
    .await;
    assert!(r.ok, "still serving: {r:?}");
    drop(keys.dir);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_commands_reply_on_response_topic_once_per_id() {
    if !require("mosquitto") {
        return;
    }
    let mq = Mosquitto::start().unwrap();
    let keys = keys();
    let root = TempRoot::new().unwrap();
    let plane = format!(
        "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        mq.port()
    );
    let counter = Arc::new(Counter(AtomicU32::new(0)));
    let agent = start(config(&root, &plane, &keys), counter.clone());
    let conn = vec!["--mqtt".to_owned(), format!("127.0.0.1:{}", mq.port())];
    wait_view(&conn, "agent online", 20, |v| {
        v["info"].is_object() && v["online"] == true
    })
    .await;
    // Garbage on the topics the agent reads: logged and skipped, only that deployment fails.
    {
        use rumqttc::v5::mqttbytes::QoS;
        let mut o = rumqttc::v5::MqttOptions::new("garbage-sender", "127.0.0.1", mq.port());
        o.set_keep_alive(Duration::from_secs(10));
        let (c, mut ev) = rumqttc::v5::AsyncClient::new(o, 16);
        let junk = format!("fleet/{DEV}/desired/deploy/junk");
        c.publish(junk, QoS::AtLeastOnce, true, b"\x00{{not json".to_vec())
            .await
            .unwrap();
        c.publish(
            format!("fleet/{DEV}/cmd"),
            QoS::AtLeastOnce,
            false,
            b"\xffno response topic".to_vec(),
        )
        .await
        .unwrap();
        c.publish(
            format!("fleet/{DEV}/desired/deploy/Bad.Name"),
            QoS::AtLeastOnce,
            true,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
        let mut acks = 0;
        while acks < 3 {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) =
                tokio::time::timeout(Duration::from_secs(5), ev.poll())
                    .await
                    .unwrap()
                    .unwrap()
            {
                acks += 1;
            }
        }
    }
    let view = wait_view(&conn, "junk failed", 20, |v| {
        v["deployments"]["junk"]["phase"] == "Failed"
    })
    .await;
    assert!(view["deployments"].get("Bad.Name").is_none(), "{view:#}");
    let key = keys.admin.to_str().unwrap().to_owned();
    for _ in 0..2 {
        let mut args = conn.clone();
        args.extend(["cmd", DEV, "count", "--key", &key, "--id", "mqtt-once"].map(String::from));
        let out = ctl_async(args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let reply: CommandReply = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply.body["count"], 1);
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    let mut args = conn.clone();
    args.extend(
        [
            "cmd",
            DEV,
            "count",
            "--key",
            keys.stranger.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let out = ctl_async(args).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown key"));
    agent.stop().await;
    // Clean shutdown flips the retained online flag.
    wait_view(&conn, "offline after stop", 10, |v| v["online"] == false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_artifact_download_is_size_capped() {
    if !require("nats-server") {
        return;
    }
    let nats = NatsServer::start_jetstream().unwrap();
    let url = nats.url();
    assert!(ctl(&["--nats", &url, "init"]).status.success());
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let store = js.get_object_store("fleet-artifacts").await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut reader: &[u8] = &payload;
    store.put("fleet-agent-v2", &mut reader).await.unwrap();
    let dir = TempRoot::new().unwrap();
    let dest = dir.path().join("artifact");
    let n =
        fleet_agent::control::nats::download_artifact(&client, "fleet-agent-v2", &dest, 1 << 20)
            .await
            .unwrap();
    assert_eq!(n, payload.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    let e = fleet_agent::control::nats::download_artifact(&client, "fleet-agent-v2", &dest, 1000)
        .await
        .unwrap_err();
    assert!(e.contains("limit"), "{e}");
    let e = fleet_agent::control::nats::download_artifact(&client, "missing", &dest, 1000)
        .await
        .unwrap_err();
    assert!(e.contains("missing"), "{e}");
}

/// `fleetctl --mqtt status` with a retained manifest at the contract's cap (256 KiB) and a
/// status document past rumqttc's 10 KiB default packet limit on the broker: both views work.
/// (Before, the 10 KiB default made the client fail on the first large retained message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_status_works_with_large_retained_documents() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    if !require("mosquitto") {
        return;
    }
    let mq = Mosquitto::start().unwrap();
    let (client, mut ev) = AsyncClient::new(
        MqttOptions::new("ctl-test-publisher", "127.0.0.1", mq.port()),
        16,
    );
    let manifest = format!(
        r#"{{"apiVersion":"fleet/v1","name":"big","revision":1,"container":{{"image":"localhost/x:1"}}}}{}"#,
        " ".repeat(fleet_contract::MAX_MANIFEST_BYTES - 200)
    );
    let info = serde_json::json!({
        "device": DEV, "version": "9.9.9", "at": now(), "stopped": false,
        "modules": [], "details": { "padding": "p".repeat(20_000) },
    });
    let docs = [
        (
            fleet_contract::names::mqtt_desired_deploy(DEV, "big"),
            manifest.into_bytes(),
        ),
        (
            fleet_contract::names::mqtt_status_info(DEV),
            info.to_string().into_bytes(),
        ),
    ];
    for (topic, body) in docs {
        client
            .publish(topic, QoS::AtLeastOnce, true, body)
            .await
            .unwrap();
    }
    // Drive the event loop until both publishes are acknowledged.
    let mut acked = 0;
    while acked < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .unwrap()
            .unwrap();
        if let Event::Incoming(Packet::PubAck(_)) = e {
            acked += 1;
        }
    }
    let conn = ["--mqtt".to_owned(), format!("127.0.0.1:{}", mq.port())];
    for device in [Some(DEV), None] {
        let mut args = conn.to_vec();
        args.extend(["status", "--json"].map(String::from));
        if let Some(d) = device {
            args.extend(["--device".to_owned(), d.to_owned()]);
        }
        let out = ctl_async(args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[DEV]["info"]["version"], "9.9.9", "{v}");
    }
}
