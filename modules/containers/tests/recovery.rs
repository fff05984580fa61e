//! An interrupted podman (killed mid-create or mid-start, a shutdown during a create)
//! never leaves a deployment stuck.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_testkit::{
    busybox_image, container_exists, external_names, kill_when_running, podman, require,
    storage_only_container, PodmanScope,
};

use common::*;
// ---- Class 10: an interrupted podman never leaves a deployment stuck ----

#[tokio::test]
async fn a_storage_only_container_holding_the_name_is_removed_and_the_deployment_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("storonly").unwrap();
    let names = naming(&scope);
    let container = names.container("web");
    let attempts = storage_only_container(&container, &image, &scope.label(), 80).unwrap();
    eprintln!("storage-only state after {attempts} killed creates");
    assert!(!container_exists(&container).unwrap());
    assert!(external_names().unwrap().contains(&container));

    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    assert_eq!(state_of(&container).as_deref(), Some("running"));

    run.stop().await;

    // Leave a storage-only container again (the agent is down, as after a power cut) and
    // delete the deployment: storage and volume both go.
    podman(&["rm", "-f", "--", &container]).unwrap();
    storage_only_container(&container, &image, &scope.label(), 80).unwrap();
    assert!(volume_exists(&names.volume("web")));
    let run = start(&section(&scope, ""), store, state(true, &[]));
    eventually("the volume is removed", || {
        !volume_exists(&names.volume("web"))
    })
    .await;
    eventually("the storage-only container is removed", || {
        !external_names().unwrap().contains(&container)
    })
    .await;
    run.stop().await;
}

#[tokio::test]
async fn killing_podman_run_mid_create_or_mid_start_then_a_fresh_run_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("killmid").unwrap();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    // `podman run --detach` creates then starts: around 80 ms in, podman has written storage
    // but not its database (storage-only); later, runc runs the process but podman has not
    // recorded it.
    for after_ms in [0, 40, 70, 90, 110, 140, 200, 300, 400] {
        podman(&["rm", "-f", "--ignore", "--", &container]).unwrap();
        let killer = kill_when_running(
            vec!["run".to_owned(), format!("--name={container}")],
            Duration::from_millis(after_ms),
            LONG,
        );
        let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
        let killed = tokio::task::spawn_blocking(move || killer.join().unwrap())
            .await
            .unwrap();
        assert!(killed.is_some(), "podman run was seen and killed");
        // The agent dies with its child: the job is dropped, not finished.
        run.task.abort();
        let _ = run.task.await;
        let left = state_of(&container);
        let storage_only = external_names().unwrap().contains(&container) && left.is_none();
        eprintln!(
            "killed podman run after {after_ms} ms: left {left:?}, storage-only {storage_only}"
        );

        let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
        run.wait_running("web").await;
        assert_eq!(
            state_of(&container).as_deref(),
            Some("running"),
            "killed after {after_ms} ms"
        );
        run.stop().await;
    }
}

#[tokio::test]
async fn a_shutdown_during_create_lets_podman_finish_and_the_next_start_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("stopcreate").unwrap();
    let dir = tempfile_dir(&scope);
    // A podman whose create (`podman run`) takes 2 s more after the real one, and says when it
    // is done.
    let wrapper = dir.join("podman");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in create|run)\n  touch {d}/begun\n  \
             podman \"$@\"; rc=$?; sleep 2; touch {d}/finished; exit $rc;;\nesac\n\
             exec podman \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(
        &section(&scope, &format!("podman = \"{}\"\n", wrapper.display())),
        store.clone(),
        state(true, &[&d]),
    );
    eventually("the create began", || dir.join("begun").exists()).await;
    let stopping = std::time::Instant::now();
    run.stop().await;
    eprintln!(
        "module stopped {:?} after shutdown during a create",
        stopping.elapsed()
    );
    assert!(
        dir.join("finished").exists(),
        "the podman create in flight ran to its end before the module stopped"
    );
    let container = naming(&scope).container("web");
    assert!(container_exists(&container).unwrap());

    let run = start(&section(&scope, ""), store, state(true, &[&d]));
    run.wait_running("web").await;
    assert_eq!(state_of(&container).as_deref(), Some("running"));
    run.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir(scope: &PodmanScope) -> PathBuf {
    let dir = std::env::temp_dir().join(scope.name("wrap"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The state a podman killed between `runc start` and its database write leaves: podman says
/// `initialized`, runc runs the process, and every `podman start` fails ("cannot start an
/// already running container"). Made deterministic with `podman init` + `runc start`.
#[tokio::test]
async fn a_container_podman_calls_initialized_while_runc_runs_it_is_replaced_and_runs() {
    if !require("podman") || !require("runc") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("initrunc").unwrap();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    run.stop().await;
    let old_id = podman(&[
        "container",
        "inspect",
        "--format",
        "{{.Id}}",
        "--",
        &container,
    ])
    .unwrap()
    .trim()
    .to_owned();
    podman(&["stop", "-t", "0", "--", &container]).unwrap();
    podman(&["init", "--", &container]).unwrap();
    let runc = std::process::Command::new("runc")
        .args(["--root", "/run/runc", "start", &old_id])
        .status()
        .unwrap();
    assert!(runc.success(), "runc start");
    assert_eq!(state_of(&container).as_deref(), Some("initialized"));
    assert!(
        podman(&["start", "--", &container]).is_err(),
        "podman start fails in this state"
    );

    let run = start(&section(&scope, ""), store, state(true, &[&d]));
    eventually("a new container runs", || {
        state_of(&container).as_deref() == Some("running")
            && podman(&[
                "container",
                "inspect",
                "--format",
                "{{.Id}}",
                "--",
                &container,
            ])
            .is_ok_and(|id| id.trim() != old_id)
    })
    .await;
    run.wait_running("web").await;
    run.stop().await;
}
