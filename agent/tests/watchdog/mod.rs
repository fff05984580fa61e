//! Shared by the `watchdog_*` tests: each is one test in its own binary, since it points
//! this process's `NOTIFY_SOCKET` and `WATCHDOG_USEC` at a test socket (the agent under test
//! runs in this process, with test modules added by `Agent::builder().module(..)`).
#![allow(dead_code)] // each test binary uses a part

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_agent::{Heartbeat, ModuleReport};
use fleet_testkit::NotifySocket;

/// systemd's service watchdog interval the tests arm: the runtime pings every half of it.
pub const WATCHDOG: Duration = Duration::from_millis(600);
/// What "eventually" means here: generous, for a loaded 2-core host.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Every line the agent sent to the notify socket, with when it arrived.
pub struct Notified {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Notified {
    /// Binds a socket, sets `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` for this
    /// process, and collects what arrives on a thread of its own.
    pub fn listen() -> Self {
        let socket = NotifySocket::new().unwrap();
        // Safe in this binary: it holds one test.
        std::env::set_var("NOTIFY_SOCKET", socket.path());
        std::env::set_var("WATCHDOG_USEC", WATCHDOG.as_micros().to_string());
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(msg) = socket.recv_timeout(Duration::from_millis(100)) {
                    let now = Instant::now();
                    let mut l = l.lock().unwrap();
                    for line in msg.split('\n').filter(|x| !x.is_empty()) {
                        l.push((now, line.to_owned()));
                    }
                }
            }
        });
        Self { lines, stop }
    }

    /// How many times `line` arrived so far.
    pub fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l == line)
            .count()
    }

    /// When `line` last arrived.
    pub fn last(&self, line: &str) -> Option<Instant> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, l)| l == line)
            .map(|(t, _)| *t)
    }

    /// Waits until `line` has arrived `n` times in all.
    pub async fn wait_count(&self, line: &str, n: usize) {
        eventually(&format!("{n} x {line}"), || {
            (self.count(line) >= n).then_some(())
        })
        .await
    }

    /// Waits until no `WATCHDOG=1` arrived for `quiet` (pings every half `WATCHDOG`).
    pub async fn wait_pings_stop(&self, quiet: Duration) {
        eventually(&format!("no WATCHDOG=1 for {quiet:?}"), || {
            self.last("WATCHDOG=1")
                .is_some_and(|t| t.elapsed() >= quiet)
                .then_some(())
        })
        .await
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Polls `f` until it answers, within [`EVENTUALLY`].
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(EVENTUALLY, async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The report of module `name`.
pub fn module<'a>(hb: &'a Heartbeat, name: &str) -> &'a ModuleReport {
    hb.modules.iter().find(|m| m.name == name).unwrap()
}

/// The module's health reason, or its state when it has none.
pub fn health_text(m: &ModuleReport) -> String {
    m.health
        .get("reason")
        .or_else(|| m.health.get("state"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}
