//! Put -> agent-observed latency of a desired-state update, NATS vs MQTT 5.
//!
//! For each transport a real broker is spawned (fleet-testkit), the agent runs in-process
//! with one recording module, and a publisher in this process makes N sequential updates of
//! one deployment (revisions 1..=N): a KV put on NATS, a retained QoS 1 publish on MQTT. Each
//! update waits until the module saw that revision through `ctx.desired`, and the time from
//! just before the publish to the module's wake-up is recorded. The raw broker round trip
//! (and, for NATS, a bare KV put -> watch) is measured in the same run as a baseline, so the
//! agent's own share is visible as a ratio. Nothing here asserts on timings.
//!
//! Run: `cargo bench -p fleetctl --bench plane_latency`
//! (`PLANE_LATENCY_UPDATES=200` for a shorter run).
#![allow(clippy::unwrap_used)] // benchmark harness: a failed unwrap is a failed run, like a test

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_contract::{names, ContainerSpec, Deployment, Lifecycle, RestartPolicy, API_VERSION};
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Context, DesiredDeployment, Health, ModuleError,
    Probe,
};
use fleet_testkit::{require, Mosquitto, NatsServer, TempRoot};
use futures::StreamExt;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, watch};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");
const DEV: &str = "bench-1";
const DEPLOYMENT: &str = "bench";
/// How long one update may take before the run is given up (a hang, not a slow run).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// The last revision of [`DEPLOYMENT`] the module saw, and when it woke up to it.
type Seen = Option<(u64, Instant)>;

/// Records, for every desired-state change, when the module observed each revision.
struct Recorder {
    seen: watch::Sender<Seen>,
}

#[async_trait]
impl Capability for Recorder {
    fn name(&self) -> &'static str {
        "latency-recorder"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("benchmark module")
    }
    async fn run(self: Arc<Self>, mut ctx: Context) -> Result<(), ModuleError> {
        loop {
            let state = ctx.desired.borrow_and_update().clone();
            let now = Instant::now();
            if let Some(DesiredDeployment::Valid(d)) = state.deployments.get(DEPLOYMENT) {
                self.seen.send_if_modified(|cur| {
                    let new = cur.is_none_or(|(rev, _)| rev != d.revision);
                    if new {
                        *cur = Some((d.revision, now));
                    }
                    new
                });
            }
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                changed = ctx.desired.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

fn manifest(revision: u64) -> Vec<u8> {
    Deployment {
        api_version: API_VERSION.into(),
        name: DEPLOYMENT.into(),
        revision,
        container: ContainerSpec {
            image: format!("localhost/bench:{revision}"),
            command: vec!["sleep".into(), "infinity".into()],
            env: [("REVISION".to_owned(), revision.to_string())].into(),
            restart: RestartPolicy::Always,
            ..ContainerSpec::default()
        },
        lifecycle: Lifecycle::default(),
        init: Vec::new(),
    }
    .to_json()
}

/// The agent, running in this process with the recording module.
struct RunningAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), fleet_agent::AgentError>>,
    seen: watch::Receiver<Seen>,
    _root: TempRoot,
}

fn start_agent(plane: &str) -> RunningAgent {
    let root = TempRoot::new().unwrap();
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 60\n\
         [control]\n{plane}\n",
        root.state(),
        root.run(),
    ));
    let cfg = Config::load(&path).unwrap();
    let (tx, seen) = watch::channel(None);
    let agent = Agent::builder(cfg)
        .without_compiled_in()
        .module(Arc::new(Recorder { seen: tx }))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    RunningAgent {
        stop,
        task,
        seen,
        _root: root,
    }
}

impl RunningAgent {
    /// Waits until the module observed `revision`; returns when it did.
    async fn observed(&mut self, revision: u64, timeout: Duration) -> Result<Instant, String> {
        let r = tokio::time::timeout(
            timeout,
            self.seen
                .wait_for(|s| matches!(s, Some((rev, _)) if *rev == revision)),
        )
        .await;
        match r {
            Ok(Ok(seen)) => Ok(seen.map(|(_, at)| at).unwrap()),
            Ok(Err(_)) => Err("the agent stopped".into()),
            Err(_) => Err(format!(
                "revision {revision} not observed within {timeout:?}"
            )),
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => eprintln!("agent did not stop cleanly: {other:?}"),
        }
    }
}

/// Publish -> observed latencies for revisions 1..=n, after a warm-up revision 0 that covers
/// connecting, the replay and (MQTT) the settle delay.
async fn measure_agent<F, Fut>(
    agent: &mut RunningAgent,
    n: u64,
    mut publish: F,
) -> Result<Vec<Duration>, String>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    publish(manifest(0)).await?;
    agent.observed(0, Duration::from_secs(60)).await?;
    let mut out = Vec::with_capacity(n as usize);
    for rev in 1..=n {
        let body = manifest(rev);
        let t0 = Instant::now();
        publish(body).await?;
        let at = agent.observed(rev, OBSERVE_TIMEOUT).await?;
        out.push(at.saturating_duration_since(t0));
    }
    Ok(out)
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    // Nearest-rank percentile.
    let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        p50: pct(0.50),
        p99: pct(0.99),
        max: v[v.len() - 1],
        n: v.len(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(label: &str, s: &Stats) {
    println!(
        "{label:<36} p50 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms  (n={})",
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        s.n
    );
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

struct NatsResults {
    agent: Stats,
    kv_watch: Stats,
    req_reply: Stats,
}

async fn bench_nats(n: u64) -> Result<NatsResults, String> {
    let nats = NatsServer::start_jetstream().map_err(|e| e.to_string())?;
    let url = nats.url();
    let out = std::process::Command::new(CTL)
        .args(["--nats", &url, "init"])
        .output()
        .map_err(|e| format!("{CTL}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fleetctl init: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let kv = js
        .get_key_value(names::DESIRED_BUCKET)
        .await
        .map_err(|e| e.to_string())?;

    // Baseline 1: core request/reply to a responder on its own connection.
    let responder = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
    let mut sub = responder
        .subscribe("bench.echo")
        .await
        .map_err(|e| e.to_string())?;
    // The subscription must reach the server before the first request ("no responders").
    responder.flush().await.map_err(|e| e.to_string())?;
    let echo = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let body = bytes::Bytes::from(manifest(1));
    let mut req_reply = Vec::new();
    for i in 0..=n {
        let t0 = Instant::now();
        client
            .request("bench.echo", body.clone())
            .await
            .map_err(|e| format!("request: {e}"))?;
        if i > 0 {
            req_reply.push(t0.elapsed());
        }
    }
    echo.abort();

    // Baseline 2: KV put -> a bare KV watcher, no agent (JetStream's own share).
    let key = "baseline.watch";
    let mut watcher = kv.watch(key).await.map_err(|e| e.to_string())?;
    let mut kv_watch = Vec::new();
    for rev in 0..=n {
        let body = manifest(rev);
        let t0 = Instant::now();
        kv.put(key, body.clone().into())
            .await
            .map_err(|e| format!("put: {e}"))?;
        loop {
            let entry = tokio::time::timeout(OBSERVE_TIMEOUT, watcher.next())
                .await
                .map_err(|_| "KV watch timed out".to_owned())?
                .ok_or("KV watch ended")?
                .map_err(|e| e.to_string())?;
            if entry.value == body {
                break;
            }
        }
        if rev > 0 {
            kv_watch.push(t0.elapsed());
        }
    }
    drop(watcher);

    let mut agent = start_agent(&format!(
        "plane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n"
    ));
    let key = names::kv_deploy_key(DEV, DEPLOYMENT);
    let result = measure_agent(&mut agent, n, |body| {
        let kv = kv.clone();
        let key = key.clone();
        async move {
            kv.put(key, body.into())
                .await
                .map(|_| ())
                .map_err(|e| format!("put: {e}"))
        }
    })
    .await;
    agent.stop().await;
    drop(nats);
    Ok(NatsResults {
        agent: stats(result?),
        kv_watch: stats(kv_watch),
        req_reply: stats(req_reply),
    })
}

/// An MQTT 5 client whose event loop runs in a task; incoming publishes go to `incoming`.
struct MqttClient {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<(String, Instant)>,
    subacks: mpsc::UnboundedReceiver<()>,
    poller: tokio::task::JoinHandle<()>,
}

fn mqtt_client(id: &str, port: u16) -> MqttClient {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, eventloop) = AsyncClient::new(opts, 64);
    let (tx, incoming) = mpsc::unbounded_channel();
    let (sub_tx, subacks) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll(eventloop, tx, sub_tx));
    MqttClient {
        client,
        incoming,
        subacks,
        poller,
    }
}

async fn poll(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<(String, Instant)>,
    sub_tx: mpsc::UnboundedSender<()>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let at = Instant::now();
                let _ = tx.send((String::from_utf8_lossy(&p.payload).into_owned(), at));
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = sub_tx.send(());
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("bench MQTT client: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

struct MqttResults {
    agent: Stats,
    pub_sub: Stats,
}

async fn bench_mqtt(n: u64) -> Result<MqttResults, String> {
    let mq = Mosquitto::start().map_err(|e| e.to_string())?;
    let port = mq.port();

    // Baseline: retained QoS 1 publish to a topic the same client subscribes to.
    let mut echo = mqtt_client("bench-echo", port);
    let topic = "bench/echo";
    echo.client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), echo.subacks.recv())
        .await
        .map_err(|_| "no SUBACK".to_owned())?;
    let mut pub_sub = Vec::new();
    for i in 0..=n {
        let body = manifest(i);
        let want = String::from_utf8_lossy(&body).into_owned();
        let t0 = Instant::now();
        echo.client
            .publish(topic, QoS::AtLeastOnce, true, body)
            .await
            .map_err(|e| e.to_string())?;
        let at = loop {
            let (payload, at) = tokio::time::timeout(OBSERVE_TIMEOUT, echo.incoming.recv())
                .await
                .map_err(|_| "MQTT echo timed out".to_owned())?
                .ok_or("MQTT client stopped")?;
            if payload == want {
                break at;
            }
        };
        if i > 0 {
            pub_sub.push(at.saturating_duration_since(t0));
        }
    }
    echo.poller.abort();

    let publisher = mqtt_client("bench-publisher", port);
    let mut agent = start_agent(&format!(
        "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n"
    ));
    let topic = names::mqtt_desired_deploy(DEV, DEPLOYMENT);
    let result = measure_agent(&mut agent, n, |body| {
        let client = publisher.client.clone();
        let topic = topic.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, true, body)
                .await
                .map_err(|e| format!("publish: {e}"))
        }
    })
    .await;
    agent.stop().await;
    publisher.poller.abort();
    drop(mq);
    Ok(MqttResults {
        agent: stats(result?),
        pub_sub: stats(pub_sub),
    })
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let n: u64 = std::env::var("PLANE_LATENCY_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1000);
    if !require("nats-server") || !require("mosquitto") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "plane_latency: {n} sequential updates of one deployment per transport; \
         publish -> observed by a module in the in-process agent"
    );
    let nats = rt.block_on(bench_nats(n));
    let mqtt = rt.block_on(bench_mqtt(n));
    match &nats {
        Ok(r) => {
            line("nats  agent (KV put -> module)", &r.agent);
            line("nats  baseline KV put -> watch", &r.kv_watch);
            line("nats  baseline core request/reply", &r.req_reply);
        }
        Err(e) => println!("nats  failed: {e}"),
    }
    match &mqtt {
        Ok(r) => {
            line("mqtt  agent (retained pub -> module)", &r.agent);
            line("mqtt  baseline pub -> own sub", &r.pub_sub);
        }
        Err(e) => println!("mqtt  failed: {e}"),
    }
    if let Ok(r) = &nats {
        println!(
            "nats  agent / baseline KV watch      p50 {:.1}x  p99 {:.1}x",
            ratio(r.agent.p50, r.kv_watch.p50),
            ratio(r.agent.p99, r.kv_watch.p99)
        );
        println!(
            "nats  agent / baseline request-reply p50 {:.1}x  p99 {:.1}x",
            ratio(r.agent.p50, r.req_reply.p50),
            ratio(r.agent.p99, r.req_reply.p99)
        );
    }
    if let Ok(r) = &mqtt {
        println!(
            "mqtt  agent / baseline pub-sub       p50 {:.1}x  p99 {:.1}x",
            ratio(r.agent.p50, r.pub_sub.p50),
            ratio(r.agent.p99, r.pub_sub.p99)
        );
    }
    if let (Ok(a), Ok(b)) = (&nats, &mqtt) {
        println!(
            "ratio mqtt/nats (agent)              p50 {:.1}x  p99 {:.1}x  max {:.1}x",
            ratio(b.agent.p50, a.agent.p50),
            ratio(b.agent.p99, a.agent.p99),
            ratio(b.agent.max, a.agent.max)
        );
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    if nats.is_err() || mqtt.is_err() {
        std::process::exit(1);
    }
}
