//! READY=1 does not wait for module probes: a module whose probe has not answered shows
//! `starting` (probe `pending`) in the heartbeat and in `fleet-agent status`, the check-in
//! does not count it, and it starts as usual once its probe answers.
//!
//! One test in its own binary: it points this process's `NOTIFY_SOCKET` at a test socket.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_module_api::{
    async_trait, CancellationToken, Capability, CheckIn, Context, Health, ModuleError, Probe,
};
use fleet_testkit::{NotifySocket, TempRoot};
use tokio::sync::Notify;

/// Its probe answers only when the test says so.
struct Hanging {
    release: Notify,
    ran: Mutex<bool>,
}

#[async_trait]
impl Capability for Hanging {
    fn name(&self) -> &'static str {
        "hanging"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        self.release.notified().await;
        Probe::available("released by the test")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        *self.ran.lock().unwrap() = true;
        ctx.shutdown.cancelled().await;
        Ok(())
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

/// Probes at once; keeps the check-in stream it was given for the test to read.
struct Quick {
    checkin: Mutex<Option<tokio::sync::watch::Receiver<CheckIn>>>,
}

#[async_trait]
impl Capability for Quick {
    fn name(&self) -> &'static str {
        "quick"
    }
    async fn probe(&self, _ctx: &Context) -> Probe {
        Probe::available("test module")
    }
    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        *self.checkin.lock().unwrap() = Some(ctx.checkin.clone());
        ctx.shutdown.cancelled().await;
        Ok(())
    }
    fn health(&self) -> Health {
        Health::Healthy
    }
}

fn module<'a>(hb: &'a fleet_agent::Heartbeat, name: &str) -> &'a fleet_agent::ModuleReport {
    hb.modules.iter().find(|m| m.name == name).unwrap()
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_before_a_hanging_probe_which_shows_starting() {
    let root = TempRoot::new().unwrap();
    let config = Config::load(&common::write_config(&root, "")).unwrap();
    let notify = NotifySocket::new().unwrap();
    // Safe in this binary: it holds this one test.
    std::env::set_var("NOTIFY_SOCKET", notify.path());
    std::env::remove_var("WATCHDOG_USEC");

    let hanging = Arc::new(Hanging {
        release: Notify::new(),
        ran: Mutex::new(false),
    });
    let quick = Arc::new(Quick {
        checkin: Mutex::new(None),
    });
    let agent = Agent::builder(config)
        .without_compiled_in()
        .module(hanging.clone())
        .module(quick.clone())
        .build()
        .unwrap();
    let handle = agent.handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));

    // READY arrives while the probe is still blocked (the old runtime sent it only after
    // every probe answered: here after the 10 s probe timeout, as unavailable).
    let lines = tokio::task::spawn_blocking(move || {
        let lines = notify.wait_for("READY=1", Duration::from_secs(30));
        (notify, lines)
    });
    let (_notify, lines) = lines.await.unwrap();
    lines.unwrap();
    let hb = handle.heartbeat();
    let h = module(&hb, "hanging");
    assert_eq!(h.probe["state"], "pending", "{h:?}");
    assert_eq!(h.health["state"], "starting", "{h:?}");
    assert!(
        !*hanging.ran.lock().unwrap(),
        "run before its probe answered"
    );

    // The other module runs meanwhile, and the check-in does not count the probing one.
    let checkin = eventually("quick running", || quick.checkin.lock().unwrap().clone()).await;
    eventually("quick healthy", || {
        (module(&handle.heartbeat(), "quick").health["state"] == "healthy").then_some(())
    })
    .await;
    let c = checkin.borrow().clone();
    assert!(!c.probed, "{c:?}");
    assert!(c.waiting_for("quick").is_some(), "{c:?}");

    // `fleet-agent status` (the store) says the same while the agent runs.
    let db = root.state().join("state.db");
    let st = eventually("status with the probe pending", || {
        fleet_agent::status::read(&db, Duration::from_secs(2))
            .ok()
            .filter(|s| s.running)
    })
    .await;
    let h = st.modules.iter().find(|m| m.name == "hanging").unwrap();
    assert_eq!(h.probe["state"], "pending", "{h:?}");
    assert_eq!(h.health["state"], "starting", "{h:?}");

    // Once the probe answers, the module starts as usual and the check-in counts it.
    hanging.release.notify_one();
    eventually("hanging available and healthy", || {
        let hb = handle.heartbeat();
        let h = module(&hb, "hanging");
        (h.probe["state"] == "available" && h.health["state"] == "healthy").then_some(())
    })
    .await;
    assert!(*hanging.ran.lock().unwrap());
    let mut checkin = checkin;
    eventually("check-in probed", || {
        let c = checkin.borrow_and_update().clone();
        c.probed.then_some(())
    })
    .await;
    let st = eventually("status with the probe answered", || {
        fleet_agent::status::read(&db, Duration::from_secs(2))
            .ok()
            .filter(|s| {
                s.modules
                    .iter()
                    .any(|m| m.name == "hanging" && m.health["state"] == "healthy")
            })
    })
    .await;
    assert!(st.running);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("shutdown within 10 s")
        .unwrap()
        .unwrap();
}
