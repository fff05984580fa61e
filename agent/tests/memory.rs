//! Memory under garbage: 40 documents of 1 MB, each refused by size, must not grow the live
//! agent's RSS by tens of MB, and memory returns near its idle level once the keys are
//! deleted. The state database stays small (a refused document is cached as key, length and
//! reason only). Figures are printed; the bounds are generous leak checks, not timings.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use fleet_contract::names;
use fleet_testkit::{NatsServer, TempRoot};

const DEV: &str = "test-dev";
const KEYS: usize = 40;
const SIZE: usize = 1_000_000;

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn db_bytes(root: &TempRoot) -> u64 {
    ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(root.state().join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn settle_rss(pid: i32) -> u64 {
    // The lowest of a few samples, after the agent has had time to go quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut low = u64::MAX;
    for _ in 0..5 {
        low = low.min(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    low
}

async fn wait_deployments(config: &std::path::Path, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let count = status(config)
            .and_then(|s| s["deployments"].as_array().map(Vec::len))
            .unwrap_or(usize::MAX);
        if count == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {count} deployments"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_megabyte_documents_do_not_hold_memory() {
    let nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, _) = init_buckets(&client).await;

    let root = TempRoot::new().unwrap();
    let config = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
         [modules.containers]\nenabled = false\n\
         [control]\nplane = \"nats\"\ndeployments_dir = {:?}\n[control.nats]\nservers = [\"{}\"]\n",
        root.state(),
        root.run(),
        root.deployments(),
        nats.url(),
    ));
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MALLOC_"))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = AgentProc::spawn_with_env(&config, None, &env);
    let pid = agent.pid();
    wait_deployments(&config, 0, "the agent to start").await;
    let idle = settle_rss(pid).await;
    let db_idle = db_bytes(&root);

    let body = bytes::Bytes::from(vec![b'{'; SIZE]);
    for i in 0..KEYS {
        desired
            .put(names::kv_deploy_key(DEV, &format!("k{i}")), body.clone())
            .await
            .unwrap();
    }
    wait_deployments(&config, KEYS, "every refused document reported").await;
    let loaded = settle_rss(pid).await;
    let db_loaded = db_bytes(&root);

    for i in 0..KEYS {
        desired
            .delete(names::kv_deploy_key(DEV, &format!("k{i}")))
            .await
            .unwrap();
    }
    wait_deployments(&config, 0, "every deployment removed").await;
    let after = settle_rss(pid).await;
    let db_after = db_bytes(&root);

    let mib = |k: u64| k as f64 / 1024.0;
    eprintln!(
        "RSS idle {:.1} MiB, after {KEYS} x {SIZE} B refused {:.1} MiB, after deleting them {:.1} MiB; \
         state.db + WAL {:.2} -> {:.2} -> {:.2} MiB",
        mib(idle),
        mib(loaded),
        mib(after),
        db_idle as f64 / 1048576.0,
        db_loaded as f64 / 1048576.0,
        db_after as f64 / 1048576.0,
    );
    let grown = loaded.saturating_sub(idle);
    assert!(
        grown < 24 * 1024,
        "40 refused 1 MB documents grew RSS by {:.1} MiB",
        mib(grown)
    );
    assert!(
        after.saturating_sub(idle) < 12 * 1024,
        "RSS after deleting the keys is {:.1} MiB over idle",
        mib(after.saturating_sub(idle))
    );
    assert!(
        db_loaded.saturating_sub(db_idle) < 8 << 20,
        "state.db + WAL grew by {} bytes",
        db_loaded.saturating_sub(db_idle)
    );
}
