//! NATS KV put -> the agent's module sees it, beside a raw KV watch in the same run.
//!
//! A nats-server with JetStream (fleet-testkit) holds the two buckets. The agent runs in
//! this process (the same runtime and NATS plane as the release binary, built with the same
//! profile) with one recording module instead of the compiled-in ones, so the figure is the
//! plane's share: put -> KV watch inside the agent -> decode, cache in SQLite, hand to the
//! module's `ctx.desired` -> the module wakes up. A compiled-in module would add its own
//! work (podman) to it. The baseline is a bare async-nats KV watch of another key in the
//! same bucket: put -> the watcher receives the entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fleet_contract::names;
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Context, DesiredDeployment, Health, ModuleError,
    Probe,
};
use fleet_testkit::{NatsServer, TempRoot};
use futures::StreamExt;
use tokio::sync::watch;

use crate::report::{ms, Figure};
use crate::BenchError;

const DEV: &str = "bench-1";
const DEPLOYMENT: &str = "bench";
/// One update not seen within this is a hang, not a slow run.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// The last revision of [`DEPLOYMENT`] the module saw, and when it woke up to it.
type Seen = Option<(u64, Instant)>;

struct Recorder {
    seen: watch::Sender<Seen>,
}

#[async_trait]
impl Capability for Recorder {
    fn name(&self) -> &'static str {
        "bench-recorder"
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
    format!(
        r#"{{"apiVersion":"fleet/v1","name":"{DEPLOYMENT}","revision":{revision},"container":{{"image":"localhost/bench:1","command":["sleep","3600"],"env":{{"REVISION":"{revision}"}}}}}}"#
    )
    .into_bytes()
}

/// p50 and p99 (nearest rank).
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort();
    let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn err(what: &str) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError::Failed(format!("{what}: {e}"))
}

async fn buckets(client: &async_nats::Client) -> Result<jetstream::kv::Store, BenchError> {
    let js = jetstream::new(client.clone());
    for (bucket, history) in [(names::DESIRED_BUCKET, 10), (names::STATUS_BUCKET, 1)] {
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
        .map_err(|e| err("creating a KV stream")(e.to_string()))?;
    }
    js.get_key_value(names::DESIRED_BUCKET)
        .await
        .map_err(|e| err("opening the desired bucket")(e.to_string()))
}

async fn raw_watch(kv: &jetstream::kv::Store, puts: usize) -> Result<Vec<Duration>, BenchError> {
    let key = "baseline.watch";
    let mut watcher = kv
        .watch(key)
        .await
        .map_err(|e| err("KV watch")(e.to_string()))?;
    let mut out = Vec::with_capacity(puts);
    for rev in 0..=puts as u64 {
        let body = manifest(rev);
        let t0 = Instant::now();
        kv.put(key, body.clone().into())
            .await
            .map_err(|e| err("KV put")(e.to_string()))?;
        loop {
            let entry = tokio::time::timeout(OBSERVE_TIMEOUT, watcher.next())
                .await
                .map_err(|_| err("KV watch")("timed out".into()))?
                .ok_or_else(|| err("KV watch")("ended".into()))?
                .map_err(|e| err("KV watch")(e.to_string()))?;
            if entry.value == body {
                break;
            }
        }
        if rev > 0 {
            out.push(t0.elapsed());
        }
    }
    Ok(out)
}

async fn through_agent(
    url: &str,
    kv: &jetstream::kv::Store,
    puts: usize,
) -> Result<Vec<Duration>, BenchError> {
    let root = TempRoot::new().map_err(BenchError::kit)?;
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\n\
         [control]\nplane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n",
        root.state(),
        root.run(),
    ));
    let cfg =
        fleet_agent::config::Config::load(&path).map_err(|e| err("agent config")(e.to_string()))?;
    let (tx, mut seen) = watch::channel(None);
    let agent = fleet_agent::Agent::builder(cfg)
        .without_compiled_in()
        .module(Arc::new(Recorder { seen: tx }))
        .build()
        .map_err(|e| err("building the agent")(e.to_string()))?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    let key = names::kv_deploy_key(DEV, DEPLOYMENT);
    let result = async {
        let mut out = Vec::with_capacity(puts);
        // Revision 0 warms up: connecting and the replay are not in the figure.
        for rev in 0..=puts as u64 {
            let t0 = Instant::now();
            kv.put(&key, manifest(rev).into())
                .await
                .map_err(|e| err("KV put")(e.to_string()))?;
            let timeout = if rev == 0 {
                Duration::from_secs(60)
            } else {
                OBSERVE_TIMEOUT
            };
            let at = tokio::time::timeout(
                timeout,
                seen.wait_for(|s| matches!(s, Some((r, _)) if *r == rev)),
            )
            .await
            .map_err(|_| err("the module")(format!("revision {rev} not seen within {timeout:?}")))?
            .map_err(|_| err("the module")("the agent stopped".into()))?
            .map(|(_, at)| at);
            if rev > 0 {
                out.push(at.map_or(Duration::ZERO, |at| at.saturating_duration_since(t0)));
            }
        }
        Ok::<_, BenchError>(out)
    }
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    result
}

pub fn measure(puts: usize) -> Result<Vec<Figure>, BenchError> {
    let nats = NatsServer::start_jetstream().map_err(BenchError::kit)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| err("tokio runtime")(e.to_string()))?;
    let (agent, raw) = rt.block_on(async {
        let client = async_nats::connect(nats.url())
            .await
            .map_err(|e| err("connecting to nats-server")(e.to_string()))?;
        let kv = buckets(&client).await?;
        let raw = raw_watch(&kv, puts).await?;
        let agent = through_agent(&nats.url(), &kv, puts).await?;
        Ok::<_, BenchError>((percentiles(agent), percentiles(raw)))
    })?;
    let fig = |what: &str, a: Duration, b: Duration, target: &'static str| {
        Figure::with_ratio(
            format!("NATS KV put -> module sees it, {what} of {puts}"),
            ms(a),
            format!("raw KV watch {what}: {}", ms(b)),
            (a.as_secs_f64(), b.as_secs_f64()),
            target,
        )
    };
    Ok(vec![
        fig("p50", agent.p50, raw.p50, "-"),
        fig("p99", agent.p99, raw.p99, "<= 4x"),
    ])
}
