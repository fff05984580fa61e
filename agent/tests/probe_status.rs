//! The real agent on the NATS plane (a real `nats-server -js`) running a deployment with a
//! health probe in real podman: the status it publishes to the `fleet-status` KV bucket
//! carries the probe's result, passing and then failing, so a rollout watching the bucket can
//! stop on it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use fleet_contract::names;
use fleet_testkit::{busybox_image, podman, require, NatsServer, PodmanScope, TempRoot};
use serde_json::Value;

const DEV: &str = "probe-dev";
/// Generous: podman on a loaded 2-core machine takes seconds per container.
const CONVERGE: Duration = Duration::from_secs(90);

/// The deployment's status document in the bucket, once it satisfies `pred`.
async fn wait_kv(
    status: &async_nats::jetstream::kv::Store,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let key = names::kv_deploy_key(DEV, "web");
    let mut last = Value::Null;
    let found = tokio::time::timeout(CONVERGE, async {
        loop {
            if let Ok(Some(bytes)) = status.get(&key).await {
                last = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if pred(&last) {
                    return last.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("no status {what} in the bucket within {CONVERGE:?}; last: {last:#}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_on_nats_carries_the_probe_result() {
    if !require("podman") || !require("nats-server") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, status) = init_buckets(&client).await;
    let root = TempRoot::new().unwrap();
    let scope = PodmanScope::new("probenats").unwrap();
    std::fs::create_dir_all(root.deployments()).unwrap();
    let config = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
         [modules.containers]\ninstance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 2\n\
         [modules.time-guard]\nservers = []\n\
         [control]\ndeployments_dir = {:?}\nplane = \"nats\"\n[control.nats]\nservers = [\"{}\"]\n",
        root.state(),
        root.run(),
        root.deployments(),
        nats.url(),
        id = scope.id(),
    ));
    let manifest = serde_json::json!({
        "apiVersion": "fleet/v1",
        "name": "web",
        "revision": 1,
        "container": {
            "image": image,
            "command": ["sh", "-c", "mkdir -p /tmp && touch /tmp/ok; trap 'exit 0' TERM; sleep 3600 & wait"],
            "probes": [{
                "name": "ok",
                "exec": { "command": ["sh", "-c", "test -e /tmp/ok"] },
                "periodSecs": 1,
                "failureThreshold": 2
            }]
        },
        "lifecycle": { "gracePeriodSecs": 2 }
    });
    desired
        .put(
            names::kv_deploy_key(DEV, "web"),
            serde_json::to_vec(&manifest).unwrap().into(),
        )
        .await
        .unwrap();
    let agent = AgentProc::spawn(&config, None);

    let running = wait_kv(&status, "Running with the probe passing", |s| {
        s["phase"] == "Running" && s["probe"]["passing"] == true
    })
    .await;
    let p = &running["probe"];
    assert_eq!(p["name"], "ok", "{running:#}");
    assert_eq!(p["result"], "exit 0", "{running:#}");
    assert_eq!(p["consecutiveFailures"], 0, "{running:#}");
    assert!(p["checkedAt"].as_u64().unwrap() > 0, "{running:#}");

    let container = format!("fleet-{}-web", scope.id());
    podman(&["exec", "--", &container, "busybox", "rm", "/tmp/ok"]).unwrap();
    let unhealthy = wait_kv(&status, "Unhealthy naming the probe", |s| {
        s["phase"] == "Unhealthy"
    })
    .await;
    let p = &unhealthy["probe"];
    assert_eq!(p["name"], "ok", "{unhealthy:#}");
    assert_eq!(p["passing"], false, "{unhealthy:#}");
    assert_eq!(p["result"], "exit 1", "{unhealthy:#}");
    assert_eq!(p["consecutiveFailures"], 2, "{unhealthy:#}");
    assert!(
        unhealthy["message"]
            .as_str()
            .unwrap()
            .contains("probe ok failing 2x: exit 1"),
        "{unhealthy:#}"
    );
    wait_kv(&status, "Running again after the restart", |s| {
        s["phase"] == "Running" && s["probe"]["passing"] == true && s["restarts"] == 1
    })
    .await;
    drop(agent);
}
