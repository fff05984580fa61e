//! Self-upgrade wall times: `agent-upgrade` command → Confirmed, and command → Reverted for a
//! v2 that crash-loops on start, beside the raw baseline of a plain restart of the same agent
//! under the same restart loop (SIGTERM → the new process's first heartbeat). Everything runs
//! for real: nats-server, fleetctl, two agent builds, the unit's guard, `RestartSec` as in
//! `systemd/fleet-agent.service` (2 s). Prints figures; asserts nothing about them.
//!
//! Run: `cargo bench -p fleet-agent --bench self_upgrade` (`SELF_UPGRADE_RUNS=N`, default 3).
//! v1 is the bench-profile build, v2 the debug build of the tests (`target/self-upgrade-v2`).
#![allow(clippy::unwrap_used)] // benchmark harness: a failed unwrap is a failed run

#[path = "../tests/common/upgrade.rs"]
mod upgrade;

use std::time::{Duration, Instant};

use upgrade::{Device, Scenario, V1, V2};

const TIMEOUT: Duration = Duration::from_secs(120);
const RESTART_SEC: Duration = Duration::from_secs(2);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn plain_restart(dev: &Device) -> f64 {
    let old = dev.status().unwrap()["pid"].clone();
    let t = Instant::now();
    assert!(dev.service.signal_main("TERM"));
    fleet_testkit::wait_until(TIMEOUT, "restarted", || {
        let st = dev.status()?;
        (st["running"] == true && st["pid"] != old).then_some(())
    })
    .unwrap();
    t.elapsed().as_secs_f64()
}

fn upgrade_run(sc: &Scenario, want_phase: &str, want_version: &str) -> (f64, f64) {
    let dev = Device::start(sc);
    let baseline = plain_restart(&dev);
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let t = Instant::now();
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "{reply:#}");
    dev.wait_detail(want_phase, TIMEOUT, |d| {
        d["phase"] == want_phase && d["version"] == want_version
    });
    (t.elapsed().as_secs_f64(), baseline)
}

fn main() {
    if !fleet_testkit::require("nats-server") {
        return;
    }
    let runs: usize = std::env::var("SELF_UPGRADE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let _ = upgrade::v2();
    let mut confirm = Vec::new();
    let mut revert = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..runs {
        let sc = Scenario {
            restart_sec: RESTART_SEC,
            ..Scenario::default()
        };
        let (t, b) = upgrade_run(&sc, "Confirmed", V2);
        confirm.push(t);
        baseline.push(b);
        let sc = Scenario {
            restart_sec: RESTART_SEC,
            fault: Some("exit-on-start"),
            max_attempts: 3,
            ..Scenario::default()
        };
        let (t, b) = upgrade_run(&sc, "Reverted", V1);
        revert.push(t);
        baseline.push(b);
    }
    let base = median(baseline.clone());
    println!(
        "self-upgrade ({runs} run(s) each, RestartSec {} s, max_attempts 3)",
        RESTART_SEC.as_secs()
    );
    println!("  plain restart (baseline):  median {base:.2} s  {baseline:.2?}");
    let c = median(confirm.clone());
    println!(
        "  command -> Confirmed:      median {c:.2} s  {confirm:.2?}  ({:.1}x baseline)",
        c / base
    );
    let r = median(revert.clone());
    println!(
        "  crash loop -> Reverted:    median {r:.2} s  {revert:.2?}  ({:.1}x baseline; goal <= 30 s)",
        r / base
    );
}
