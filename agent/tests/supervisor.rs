//! The runtime as a library with test modules: panics are contained, verbs are routed,
//! needs are checked before anything runs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::{Agent, RestartPolicy};
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Command, CommandError, Context, ExtensionKind,
    Health, ModuleError, Needs, Probe, Reply,
};
use fleet_testkit::TempRoot;

/// Panics every time it runs (counting the attempts).
struct Panicker {
    runs: AtomicU32,
}

#[async_trait]
impl Capability for Panicker {
    fn name(&self) -> &'static str {
        "panicker"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, _ctx: Context) -> Result<(), ModuleError> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        panic!("deliberate test panic #{n}");
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// Healthy; serves `count`, which increments and returns a counter; `boom` panics in handle.
struct Counter {
    n: AtomicU32,
}

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
        &["count", "boom"]
    }
    async fn handle(&self, cmd: Command, _ctx: &Context) -> Result<Reply, CommandError> {
        if cmd.verb == "boom" {
            panic!("handler panic");
        }
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Reply::json(serde_json::json!({ "count": n })))
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// Needs a container runtime nobody provides.
struct Needy;

#[async_trait]
impl Capability for Needy {
    fn name(&self) -> &'static str {
        "needy"
    }
    fn needs(&self) -> Needs {
        Needs::none().consumes(ExtensionKind::ContainerRuntime)
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        panic!("must not be probed: its needs are unmet");
    }
    async fn run(self: Arc<Self>, _ctx: Context) -> Result<(), ModuleError> {
        panic!("must not run: its needs are unmet");
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

fn config(root: &TempRoot) -> Config {
    let path = common::write_config(root, "");
    Config::load(&path).unwrap()
}

fn cmd(verb: &str) -> Command {
    Command {
        id: format!("t-{verb}"),
        verb: verb.into(),
        args: serde_json::Value::Null,
        actor: "test".into(),
    }
}

fn module<'a>(hb: &'a fleet_agent::Heartbeat, name: &str) -> &'a fleet_agent::ModuleReport {
    hb.modules.iter().find(|m| m.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_module_is_restarted_and_reported_while_agent_serves() {
    let root = TempRoot::new().unwrap();
    let panicker = Arc::new(Panicker {
        runs: AtomicU32::new(0),
    });
    let agent = Agent::builder(config(&root))
        .without_compiled_in()
        .module(panicker.clone())
        .module(Arc::new(Counter {
            n: AtomicU32::new(0),
        }))
        .module(Arc::new(Needy))
        .restart_policy(RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            window: Duration::from_secs(60),
            max_restarts: 4,
        })
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));

    // Restarted with backoff, reported unhealthy with the panic message...
    let hb = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let hb = handle.heartbeat();
            if module(&hb, "panicker").restarts >= 2 {
                return hb;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("panicker restarted twice within 10 s");
    let p = module(&hb, "panicker");
    assert_ne!(p.health["state"], "healthy", "{p:?}");
    assert!(
        p.health["reason"]
            .as_str()
            .unwrap()
            .contains("deliberate test panic"),
        "{p:?}"
    );

    // ...while the rest of the agent keeps serving.
    assert_eq!(module(&hb, "counter").health["state"], "healthy");
    let r = handle.command(cmd("count")).await.unwrap();
    assert_eq!(r.body["count"], 1);
    let r = handle.command(cmd("ping")).await.unwrap();
    assert_eq!(r.body["pong"], true);
    let e = handle.command(cmd("boom")).await.unwrap_err();
    assert!(
        matches!(&e, CommandError::Failed(m) if m.contains("handler panic")),
        "{e}"
    );
    let e = handle.command(cmd("nope")).await.unwrap_err();
    assert_eq!(e.code(), "unsupported");

    // Unmet needs: reported before anything runs, never probed.
    let needy = module(&hb, "needy");
    assert_eq!(needy.probe["state"], "unavailable");
    assert!(needy.probe["reason"]
        .as_str()
        .unwrap()
        .contains("container runtime"));

    // After max_restarts within the window, it stays down and says so.
    let hb = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let hb = handle.heartbeat();
            if module(&hb, "panicker").health["state"] == "stopped" {
                return hb;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("panicker given up");
    let p = module(&hb, "panicker");
    assert!(
        p.health["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 restarts"),
        "{p:?}"
    );
    assert_eq!(
        panicker.runs.load(Ordering::SeqCst),
        5,
        "1 start + 4 restarts"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("shutdown within 10 s")
        .unwrap()
        .unwrap();
}

#[test]
fn duplicate_verbs_are_a_wiring_error() {
    let root = TempRoot::new().unwrap();
    let err = Agent::builder(config(&root))
        .without_compiled_in()
        .module(Arc::new(Counter {
            n: AtomicU32::new(0),
        }))
        .module(Arc::new(Counter {
            n: AtomicU32::new(0),
        }))
        .build()
        .err()
        .expect("two modules named counter");
    assert!(err.to_string().contains("two modules are named"), "{err}");
}

/// Provides a container runtime but cannot run here (like containers without podman).
struct NoPodman;

#[async_trait]
impl fleet_module_api::ContainerRuntime for NoPodman {
    async fn run_to_completion(
        &self,
        _spec: &fleet_module_api::RunSpec,
    ) -> Result<fleet_module_api::RunOutcome, fleet_module_api::RuntimeError> {
        Err(fleet_module_api::RuntimeError("unavailable".into()))
    }
    async fn logs(
        &self,
        _c: &str,
        _tail: usize,
    ) -> Result<Vec<String>, fleet_module_api::RuntimeError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl Capability for NoPodman {
    fn name(&self) -> &'static str {
        "fakeruntime"
    }
    fn provide(&self, ext: &mut fleet_module_api::ExtensionsBuilder) {
        ext.provide::<dyn fleet_module_api::ContainerRuntime>(Arc::new(NoPodman));
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::unavailable("podman not found on PATH")
    }
    async fn run(self: Arc<Self>, _ctx: Context) -> Result<(), ModuleError> {
        panic!("must not run: unavailable");
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_fail_with_the_reason_when_the_runtime_module_is_unavailable() {
    let root = TempRoot::new().unwrap();
    std::fs::write(
        root.deployments().join("web.toml"),
        common::manifest("web", 3),
    )
    .unwrap();
    let agent = Agent::builder(config(&root))
        .without_compiled_in()
        .module(Arc::new(NoPodman))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));
    let db = root.state().join("state.db");
    let st = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(store) = fleet_agent::store::Store::open_existing(&db, Duration::from_secs(1))
            {
                if let Some(s) = store
                    .statuses()
                    .unwrap()
                    .into_iter()
                    .find(|s| s.name == "web")
                {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("web status within 10 s");
    assert_eq!(st.phase, fleet_contract::Phase::Failed, "{st:?}");
    assert_eq!(st.revision, Some(3));
    assert!(
        st.message.contains("fakeruntime: podman not found"),
        "{st:?}"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// Healthy; publishes the detail document the test hands it (a change the heartbeat shows).
struct Detailer {
    next: tokio::sync::watch::Receiver<u32>,
}

#[async_trait]
impl Capability for Detailer {
    fn name(&self) -> &'static str {
        "detailer"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let mut next = self.next.clone();
        loop {
            let n = *next.borrow_and_update();
            ctx.status
                .detail("detailer", serde_json::json!({ "generation": n }));
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                changed = next.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// The stored heartbeat record, as written.
fn stored_heartbeat(root: &TempRoot) -> Option<Vec<u8>> {
    let db = root.state().join("state.db");
    let store = fleet_agent::store::Store::open_existing(&db, Duration::from_secs(2)).ok()?;
    store.kv_get("agent", "heartbeat").ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_does_not_rewrite_its_heartbeat_record() {
    let root = TempRoot::new().unwrap();
    // heartbeat_interval_secs = 1 (common::write_config): the old runtime rewrote the record
    // (new `at`, fsync) every second whether or not anything changed.
    let (gen_tx, gen_rx) = tokio::sync::watch::channel(1u32);
    let agent = Agent::builder(config(&root))
        .without_compiled_in()
        .module(Arc::new(Detailer { next: gen_rx }))
        .module(Arc::new(Counter {
            n: AtomicU32::new(0),
        }))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));

    let settled = |b: &[u8]| {
        let hb: fleet_agent::Heartbeat = serde_json::from_slice(b).unwrap();
        hb.modules.iter().all(|m| m.is_healthy()) && hb.details.contains_key("detailer")
    };
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(b) = stored_heartbeat(&root).filter(|b| settled(b)) {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a settled heartbeat within 10 s");

    // Three heartbeat intervals with nothing changing: the record is the same bytes.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let later = stored_heartbeat(&root).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&later),
        "the heartbeat record was rewritten while nothing changed"
    );

    // A change is written at once (without waiting for any interval).
    gen_tx.send(2).unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(b) = stored_heartbeat(&root).filter(|b| *b != later) {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the changed detail recorded within 10 s");
    let hb: fleet_agent::Heartbeat = serde_json::from_slice(&changed).unwrap();
    assert_eq!(hb.details["detailer"]["generation"], 2, "{hb:?}");
    assert!(!hb.stopped);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("shutdown within 10 s")
        .unwrap()
        .unwrap();
    let last: fleet_agent::Heartbeat =
        serde_json::from_slice(&stored_heartbeat(&root).unwrap()).unwrap();
    assert!(last.stopped, "a clean stop is recorded: {last:?}");
}

/// Its first `slow_calls` probes hang (as `lvs` on a loaded TCG guest did); later ones answer.
struct SlowProbe {
    name: &'static str,
    slow_calls: u32,
    calls: AtomicU32,
}

#[async_trait]
impl Capability for SlowProbe {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.slow_calls {
            std::future::pending::<()>().await;
        }
        Probe::available("answered on a later attempt")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        ctx.shutdown.cancelled().await;
        Ok(())
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_does_not_answer_is_asked_again_before_it_counts_as_unavailable() {
    let root = TempRoot::new().unwrap();
    let late = Arc::new(SlowProbe {
        name: "late",
        slow_calls: 2,
        calls: AtomicU32::new(0),
    });
    let mute = Arc::new(SlowProbe {
        name: "mute",
        slow_calls: u32::MAX,
        calls: AtomicU32::new(0),
    });
    let budgets = [
        Duration::from_millis(100),
        Duration::from_millis(200),
        Duration::from_millis(300),
    ];
    let agent = Agent::builder(config(&root))
        .without_compiled_in()
        .module(late.clone())
        .module(mute.clone())
        .probe_timeouts(&budgets)
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));
    let report = |name: &str| {
        handle
            .heartbeat()
            .modules
            .into_iter()
            .find(|m| m.name == name)
            .unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while report("late").health["state"] != "healthy"
            || report("mute").probe["state"] != "unavailable"
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("late: {:?}; mute: {:?}", report("late"), report("mute")));
    // Answered on its third attempt, within the last budget.
    assert_eq!(late.calls.load(Ordering::SeqCst), 3);
    assert_eq!(report("late").probe["state"], "available");
    // Never answered: asked once per budget, then unavailable with the last budget named.
    assert_eq!(mute.calls.load(Ordering::SeqCst), 3);
    let m = report("mute");
    assert_eq!(
        m.probe["reason"], "probe did not answer within 0.3 s (3 attempts)",
        "{m:?}"
    );
    assert_eq!(m.health["state"], "stopped", "{m:?}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
