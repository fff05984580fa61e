//! A module that stalls (awaits forever without a progress tick) past its budget is
//! restarted by the supervisor, reported unhealthy "no progress for ...", and the agent
//! keeps pinging systemd's service watchdog throughout: READY=1, then periodic WATCHDOG=1.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
mod watchdog;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::{Agent, RestartPolicy};
use fleet_module_api::{
    async_trait, CancellationToken, Capability, Context, Health, ModuleError, Probe,
};
use fleet_testkit::TempRoot;
use watchdog::{eventually, health_text, module, Notified};

/// Stalls in its first run; runs properly (ticking while it waits) from then on.
struct Staller {
    runs: AtomicU32,
}

#[async_trait]
impl Capability for Staller {
    fn name(&self) -> &'static str {
        "staller"
    }
    fn progress_budget(&self) -> Duration {
        Duration::from_millis(300)
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            // Polled, but never ticks: an await that should have had a timeout.
            std::future::pending::<()>().await;
        }
        ctx.progress.during(ctx.shutdown.cancelled()).await;
        Ok(())
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_module_is_restarted_and_the_pings_go_on() {
    let root = TempRoot::new().unwrap();
    let config = Config::load(&common::write_config(&root, "")).unwrap();
    let notified = Notified::listen();
    let staller = Arc::new(Staller {
        runs: AtomicU32::new(0),
    });
    let agent = Agent::builder(config)
        .without_compiled_in()
        .module(staller.clone())
        .restart_policy(RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            ..RestartPolicy::default()
        })
        .abort_grace(Duration::from_millis(500))
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = CancellationToken::new();

    // The agent's loop runs in this test's main future, as in `fleet-agent run`.
    let checks = async {
        notified.wait_count("READY=1", 1).await;
        notified.wait_count("WATCHDOG=1", 3).await;

        // Past its budget it is aborted and reported, then restarted once.
        let reason = eventually("staller reported without progress", || {
            let hb = handle.heartbeat();
            let text = health_text(module(&hb, "staller"));
            text.contains("no progress for").then_some(text)
        })
        .await;
        assert!(reason.contains("restarting"), "{reason}");
        eventually("staller restarted and healthy", || {
            let hb = handle.heartbeat();
            let m = module(&hb, "staller");
            (m.restarts == 1 && m.health["state"] == "healthy").then_some(())
        })
        .await;
        assert_eq!(staller.runs.load(Ordering::SeqCst), 2);

        // The pings never stopped: they go on after the restart, and the module, which
        // now ticks while it waits, is not restarted again.
        let before = notified.count("WATCHDOG=1");
        notified.wait_count("WATCHDOG=1", before + 5).await;
        assert_eq!(module(&handle.heartbeat(), "staller").restarts, 1);
        stop.cancel();
    };
    let (ran, ()) = tokio::join!(agent.run(stop.clone()), checks);
    ran.unwrap();
    assert_eq!(notified.count("READY=1"), 1);
}
