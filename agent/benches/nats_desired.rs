//! NATS KV put -> the agent's module sees it, beside a raw async-nats KV watch on the same
//! key in the same run: p50/p99 of each and their ratio. One nats-server (testkit), the agent
//! in its own two-worker runtime (as `fleet-agent run`) with a module that timestamps every
//! desired-state change, and the raw watch and the writer in another runtime. The cache is
//! the agent's real SQLite store in a temp dir (FULL sync, as on a device). Prints figures;
//! asserts nothing about them.
//!
//! Run: `cargo bench -p fleet-agent --bench nats_desired` (`NATS_DESIRED_PUTS=N`, default 300).
#![allow(clippy::unwrap_used)] // benchmark harness: a failed unwrap is a failed run

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Context, DesiredDeployment, Health, ModuleError,
    Probe,
};
use futures::StreamExt;
use tokio::sync::mpsc;

const DEV: &str = "bench-1";
const KEY: &str = "bench-1.deploy.app";

/// Reports (revision of deployment `app`, when it saw it) on every desired-state change.
struct Stamp {
    tx: mpsc::UnboundedSender<(u64, Instant)>,
}

#[async_trait]
impl Capability for Stamp {
    fn name(&self) -> &'static str {
        "stamp"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("bench module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let mut rx = ctx.desired.clone();
        loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                changed = rx.changed() => if changed.is_err() { return Ok(()) },
            }
            let at = Instant::now();
            let state = rx.borrow_and_update().clone();
            if let Some(DesiredDeployment::Valid(d)) = state.deployments.get("app") {
                let _ = self.tx.send((d.revision, at));
            }
        }
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

fn manifest(revision: u64) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"fleet/v1","name":"app","revision":{revision},"container":{{"image":"localhost/x:1","command":["sleep","3600"]}}}}"#
    )
    .into_bytes()
}

/// When `rx` reports revision `rev`.
async fn seen(rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>, rev: u64) -> Instant {
    loop {
        let (r, at) = rx.recv().await.unwrap();
        if r == rev {
            return at;
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn buckets(client: &async_nats::Client) -> async_nats::jetstream::kv::Store {
    let js = async_nats::jetstream::new(client.clone());
    for (bucket, history) in [
        (fleet_contract::names::DESIRED_BUCKET, 10),
        (fleet_contract::names::STATUS_BUCKET, 1),
    ] {
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    js.get_key_value(fleet_contract::names::DESIRED_BUCKET)
        .await
        .unwrap()
}

fn main() {
    if !fleet_testkit::require("nats-server") {
        return;
    }
    let puts: u64 = std::env::var("NATS_DESIRED_PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let nats = fleet_testkit::NatsServer::start_jetstream().unwrap();
    let root = fleet_testkit::TempRoot::new().unwrap();
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\n\
         [control]\nplane = \"nats\"\n[control.nats]\nservers = [\"{}\"]\n",
        root.state(),
        root.run(),
        nats.url()
    ));
    let cfg = Config::load(&path).unwrap();

    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kv = io.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let kv = buckets(&client).await;
        kv.put(KEY, manifest(0).into()).await.unwrap();
        kv
    });

    // The agent, in its own runtime like `fleet-agent run`.
    let agent_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mod_tx, mut mod_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let agent = Agent::builder(cfg)
        .without_compiled_in()
        .module(Arc::new(Stamp { tx: mod_tx }))
        .build()
        .unwrap();
    let running = agent_rt.spawn(agent.run(stop.clone()));

    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (mod_lat, raw_lat) = io.block_on(async {
        // The raw baseline: a plain KV watch on the same key.
        let mut watch = kv.watch(KEY).await.unwrap();
        tokio::spawn(async move {
            while let Some(Ok(e)) = watch.next().await {
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
                let _ = raw_tx.send((v["revision"].as_u64().unwrap_or(0), at));
            }
        });
        // The agent has caught up when its module saw revision 0.
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some((rev, _)) = mod_rx.recv().await {
                if rev == 0 {
                    break;
                }
            }
        })
        .await
        .expect("the agent's module saw the first document within 20 s");
        let (mut mod_lat, mut raw_lat) = (Vec::new(), Vec::new());
        for rev in 1..=puts {
            // Settle between puts (status publishing of the previous one, heartbeats).
            tokio::time::sleep(Duration::from_millis(20)).await;
            while mod_rx.try_recv().is_ok() {}
            while raw_rx.try_recv().is_ok() {}
            let t0 = Instant::now();
            kv.put(KEY, manifest(rev).into()).await.unwrap();
            let raw_at = tokio::time::timeout(Duration::from_secs(10), seen(&mut raw_rx, rev))
                .await
                .expect("raw watch saw the put");
            let mod_at = tokio::time::timeout(Duration::from_secs(10), seen(&mut mod_rx, rev))
                .await
                .expect("the module saw the put");
            raw_lat.push(raw_at - t0);
            mod_lat.push(mod_at - t0);
        }
        (mod_lat, raw_lat)
    });
    stop.cancel();
    let _ = agent_rt.block_on(running);

    let (mut m, mut r) = (mod_lat, raw_lat);
    m.sort();
    r.sort();
    for (what, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (pct(&m, p), pct(&r, p));
        println!(
            "NATS put -> module {what} | {:.2} ms | raw KV watch {:.2} ms | {:.2}x",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
    println!("({puts} puts, one key, 20 ms apart)");
}
