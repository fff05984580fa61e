//! Named volumes against real podman: created labelled, kept across an upgrade and the
//! deployment's deletion (and every resync after it), listed as retained, and removed only
//! by the `purge` verb, which refuses while the deployment is desired or its containers
//! exist, and is idempotent.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_contract::{Deployment, Phase, VolumeMount};
use fleet_module_api::{Capability, Command, CommandError, Context, Reply};
use fleet_testkit::{busybox_image, podman, require, PodmanScope};

use common::*;

fn with_state_volume(mut d: Deployment, revision: u64) -> Deployment {
    d.revision = revision;
    d.container.volumes = vec![VolumeMount {
        name: "state".into(),
        mount_path: "/state".into(),
        read_only: false,
    }];
    d
}

async fn purge(
    module: &Arc<dyn Capability>,
    ctx: &Context,
    deployment: &str,
) -> Result<Reply, CommandError> {
    let cmd = Command {
        id: format!("t-{deployment}"),
        verb: "purge".into(),
        args: serde_json::json!({ "deployment": deployment }),
        actor: "test".into(),
    };
    module.handle(cmd, ctx).await
}

fn unavailable(r: Result<Reply, CommandError>) -> String {
    match r {
        Err(CommandError::Unavailable(m)) => m,
        other => panic!("expected a refusal (unavailable), got {other:?}"),
    }
}

fn removed(r: Result<Reply, CommandError>) -> Vec<String> {
    let body = r.unwrap().body;
    assert_eq!(body["deployment"], "app", "{body}");
    serde_json::from_value(body["removed"].clone()).unwrap()
}

/// `cat` of `path` inside the running `container`, once it exists.
async fn read_in(container: &str, path: &str) -> String {
    let got = std::sync::Mutex::new(String::new());
    eventually(&format!("{path} in {container}"), || {
        podman(&["exec", container, "cat", path])
            .map(|s| *got.lock().unwrap() = s)
            .is_ok()
    })
    .await;
    got.into_inner().unwrap()
}

fn last_detail(sink: &Sink) -> serde_json::Value {
    sink.details
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_named_volume_keeps_its_data_across_upgrade_and_deletion_until_purged() {
    if !require("podman") {
        return;
    }
    let t0 = Instant::now();
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("vols").unwrap();
    let names = naming(&scope);
    let (container, data) = (names.container("app"), names.volume("app"));
    let volume = names.named_volume("app", "state");
    let store: Arc<MemStore> = Arc::default();

    // v1 writes into the volume.
    let v1 = with_state_volume(
        deployment(
            "app",
            &image,
            &[],
            &[
                "sh",
                "-c",
                "echo written-by-v1 > /state/greeting; exec sleep 1000",
            ],
        ),
        1,
    );
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&v1]));
    run.wait_running("app").await;
    assert_eq!(
        read_in(&container, "/state/greeting").await,
        "written-by-v1\n"
    );
    // Created by the agent with its labels, not auto-created by `podman run`.
    let labels = podman(&[
        "volume",
        "inspect",
        "--format",
        "{{json .Labels}}",
        "--",
        &volume,
    ])
    .unwrap();
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["fleet.managed-by"], "fleet-agent", "{labels}");
    assert_eq!(labels["fleet.instance"], scope.id(), "{labels}");
    assert_eq!(labels["fleet.deployment"], "app", "{labels}");
    assert_eq!(labels["fleet.volume"], "state", "{labels}");

    // Refused while desired; nothing removed.
    let m = unavailable(purge(&run.module, &run.ctx, "app").await);
    assert!(
        m.contains("still desired") && m.contains("delete it first"),
        "{m}"
    );
    assert!(volume_exists(&volume));

    // v2 (a new container) reads what v1 wrote.
    let v2 = with_state_volume(
        deployment(
            "app",
            &image,
            &[],
            &[
                "sh",
                "-c",
                "cat /state/greeting > /state/seen-by-v2; exec sleep 1000",
            ],
        ),
        2,
    );
    run.desired.send(Arc::new(state(true, &[&v2]))).unwrap();
    run.wait_status("app Running at revision 2", |s| {
        s.name == "app" && s.phase == Phase::Running && s.revision == Some(2)
    })
    .await;
    assert_eq!(
        read_in(&container, "/state/seen-by-v2").await,
        "written-by-v1\n"
    );

    // Deleted: container and data volume go, the named volume and its data stay.
    run.desired.send(Arc::new(state(true, &[]))).unwrap();
    eventually("container and data volume are removed", || {
        state_of(&container).is_none() && !volume_exists(&data)
    })
    .await;
    assert!(
        volume_exists(&volume),
        "the named volume survives the deletion"
    );
    eventually("the retained volume is reported", || {
        last_detail(&run.sink)["retained"]
            == serde_json::json!([{ "deployment": "app", "volume": volume }])
    })
    .await;
    // Several full passes (resync every 2 s) remove nothing and keep reporting it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(volume_exists(&volume), "a resync leaves the named volume");
    let detail = last_detail(&run.sink);
    assert_eq!(detail["retained"][0]["volume"], volume.as_str(), "{detail}");
    let seen = podman(&[
        "run",
        "--rm",
        &format!("--label=fleet.test.scope={}", scope.id()),
        &format!("--volume={volume}:/v"),
        "--",
        &image,
        "cat",
        "/v/seen-by-v2",
    ])
    .unwrap();
    assert_eq!(seen, "written-by-v1\n", "the data survives the deletion");

    // A container of the deployment still exists (a removal in flight, here one made by
    // hand with the engine stopped; the verb needs only podman and the last desired state):
    // refused, nothing removed.
    let (module, ctx) = (run.module.clone(), run.ctx.clone());
    let sink = run.sink.clone();
    run.stop().await;
    podman(&[
        "create",
        "--name",
        &container,
        "--label=fleet.managed-by=fleet-agent",
        &format!("--label=fleet.instance={}", scope.id()),
        &format!("--label=fleet.test.scope={}", scope.id()),
        "--label=fleet.deployment=app",
        "--",
        &image,
        "true",
    ])
    .unwrap();
    let m = unavailable(purge(&module, &ctx, "app").await);
    assert!(
        m.contains("still being removed") && m.contains(&container) && m.contains("try again"),
        "{m}"
    );
    assert!(volume_exists(&volume));
    podman(&["rm", "--", &container]).unwrap();

    // Some other container uses the volume: not removed (no `-f`), the reply names it.
    let user = format!("{container}-user");
    podman(&[
        "create",
        "--name",
        &user,
        &format!("--label=fleet.test.scope={}", scope.id()),
        &format!("--volume={volume}:/v"),
        "--",
        &image,
        "true",
    ])
    .unwrap();
    match purge(&module, &ctx, "app").await {
        Err(CommandError::Failed(m)) => {
            assert!(m.contains(&volume) && m.contains("being used"), "{m}")
        }
        other => panic!("expected a failure naming the volume in use, got {other:?}"),
    }
    assert!(volume_exists(&volume));
    assert_eq!(
        last_detail(&sink)["retained"][0]["volume"],
        volume.as_str(),
        "still retained"
    );
    podman(&["rm", "--", &user]).unwrap();

    // Purged: gone, reported gone; purging again removes nothing and succeeds.
    assert_eq!(
        removed(purge(&module, &ctx, "app").await),
        vec![volume.clone()]
    );
    assert!(!volume_exists(&volume));
    assert_eq!(last_detail(&sink)["retained"], serde_json::json!([]));
    assert_eq!(
        removed(purge(&module, &ctx, "app").await),
        Vec::<String>::new()
    );

    // A state rebuilt from the cache (maybe partial): an absence is not a deletion.
    let run = start(&section(&scope, ""), store.clone(), state(false, &[]));
    let m = unavailable(purge(&run.module, &run.ctx, "app").await);
    assert!(m.contains("not confirmed"), "{m}");
    run.stop().await;
    eprintln!(
        "named volume lifecycle: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
