//! A module that blocks its thread (a blocking `recv` inside its async `run`) past its
//! progress budget cannot be restarted: tokio cannot cancel a blocked thread. The supervisor
//! says so, and the agent stops pinging systemd's service watchdog (which would restart the
//! whole agent), although the runtime's own loop still runs on its own thread. Once the
//! thread comes back, the module is restarted and the pings resume.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
mod watchdog;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::{Agent, RestartPolicy};
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Context, Health, ModuleError, Probe,
};
use fleet_testkit::TempRoot;
use tokio::sync::Notify;
use watchdog::{eventually, health_text, module, Notified, WATCHDOG};

/// Waits (ticking) until told to block; then blocks its worker thread in a synchronous
/// `recv` until the test drops the sender.
struct Blocker {
    go: Notify,
    release: Mutex<Option<mpsc::Receiver<()>>>,
    runs: AtomicU32,
}

#[async_trait]
impl Capability for Blocker {
    fn name(&self) -> &'static str {
        "blocker"
    }
    fn progress_budget(&self) -> Duration {
        Duration::from_millis(300)
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let release = self.release.lock().unwrap().take();
        if let Some(release) = release {
            ctx.progress.during(self.go.notified()).await;
            let _ = release.recv(); // blocks this worker thread
        }
        ctx.progress.during(ctx.shutdown.cancelled()).await;
        Ok(())
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_thread_stops_the_pings() {
    let root = TempRoot::new().unwrap();
    let config = Config::load(&common::write_config(&root, "")).unwrap();
    let notified = Notified::listen();
    let (unblock, release) = mpsc::channel::<()>();
    let blocker = Arc::new(Blocker {
        go: Notify::new(),
        release: Mutex::new(Some(release)),
        runs: AtomicU32::new(0),
    });
    let agent = Agent::builder(config)
        .without_compiled_in()
        .module(blocker.clone())
        .restart_policy(RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            ..RestartPolicy::default()
        })
        .abort_grace(Duration::from_millis(500))
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = CancellationToken::new();

    let checks = async {
        notified.wait_count("READY=1", 1).await;
        // Waiting for `go` inside `during` is progress: pings go on well past the budget.
        notified.wait_count("WATCHDOG=1", 5).await;
        assert_eq!(
            module(&handle.heartbeat(), "blocker").health["state"],
            "healthy"
        );

        blocker.go.notify_one();
        let reason = eventually("blocker reported stuck", || {
            let hb = handle.heartbeat();
            let text = health_text(module(&hb, "blocker"));
            text.contains("did not stop").then_some(text)
        })
        .await;
        assert!(reason.contains("no progress for"), "{reason}");
        // No ping for five of its periods: systemd would restart the agent now. The
        // runtime loop itself still answers (this heartbeat is computed by it).
        notified.wait_pings_stop(WATCHDOG / 2 * 5).await;
        assert_eq!(blocker.runs.load(Ordering::SeqCst), 1);

        // The thread comes back: the task ends, the module restarts, the pings resume.
        drop(unblock);
        let pings = notified.count("WATCHDOG=1");
        notified.wait_count("WATCHDOG=1", pings + 3).await;
        eventually("blocker restarted and healthy", || {
            let hb = handle.heartbeat();
            let m = module(&hb, "blocker");
            (m.restarts == 1 && m.health["state"] == "healthy").then_some(())
        })
        .await;
        assert_eq!(blocker.runs.load(Ordering::SeqCst), 2);
        stop.cancel();
    };
    let (ran, ()) = tokio::join!(agent.run(stop.clone()), checks);
    ran.unwrap();
}
