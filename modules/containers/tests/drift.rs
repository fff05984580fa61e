//! Drift found without the periodic resync (it is set beyond every deadline here): the exit
//! watcher sees a container's process end, however it ended, also after podman's own state
//! was restarted.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Instant;

use fleet_contract::Phase;
use fleet_testkit::{busybox_image, podman, require, PodmanScope};

use common::*;

#[tokio::test]
async fn a_container_process_killed_from_the_host_is_restarted_and_counted() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("killpid").unwrap();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "1000"]);
    let run = start(
        &quiet_section(&scope, ""),
        Arc::default(),
        state(true, &[&d]),
    );
    run.wait_running("web").await;
    let (pid, id) = pid_and_id("podman", &container).unwrap();
    assert!(pid > 0, "{container} runs");

    // Outside podman: a signal to the process itself, as the OOM killer or an operator sends.
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
    let s = run
        .wait_status("web Running again, one restart counted", |s| {
            s.name == "web" && s.phase == Phase::Running && s.restarts >= 1
        })
        .await;
    eprintln!(
        "kill -9 of the container's process -> Running again: {:?}",
        killed.elapsed()
    );
    assert_eq!(s.restarts, 1, "{s:?}");
    assert_eq!(s.last_exit_code, Some(137), "{s:?}");
    let (new_pid, new_id) = pid_and_id("podman", &container).unwrap();
    assert_eq!(new_id, id, "started again, not recreated");
    assert!(new_pid > 0 && new_pid != pid, "a new process: {new_pid}");
    run.stop().await;
}

#[tokio::test]
async fn podman_stop_kill_and_rm_by_hand_are_repaired_without_the_resync() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("handedit").unwrap();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "1000"]);
    let run = start(
        &quiet_section(&scope, ""),
        Arc::default(),
        state(true, &[&d]),
    );
    run.wait_running("web").await;
    let (_, first_id) = pid_and_id("podman", &container).unwrap();

    let mut restarts = 0;
    for edit in [
        vec!["stop", "--time", "1"],
        vec!["kill", "--signal", "KILL"],
    ] {
        let (pid, _) = pid_and_id("podman", &container).unwrap();
        let mut args = edit.clone();
        args.extend(["--", &container]);
        podman(&args).unwrap();
        restarts += 1;
        let s = run
            .wait_status(&format!("web restarted after podman {}", edit[0]), |s| {
                s.phase == Phase::Running && s.restarts >= restarts
            })
            .await;
        assert_eq!(s.restarts, restarts, "{s:?}");
        eventually(
            &format!("{container} runs again after podman {}", edit[0]),
            || {
                pid_and_id("podman", &container)
                    .is_some_and(|(p, id)| p > 0 && p != pid && id == first_id)
            },
        )
        .await;
    }

    podman(&["rm", "--force", "--time", "0", "--", &container]).unwrap();
    eventually(
        &format!("{container} created again after podman rm -f"),
        || pid_and_id("podman", &container).is_some_and(|(p, id)| p > 0 && id != first_id),
    )
    .await;
    run.stop().await;
}

/// `podman system migrate` stops every container podman knows (on a shared host: every
/// container), the way a podman upgrade's migration does; here in a podman of its own.
#[tokio::test]
async fn drift_is_repaired_after_podman_system_migrate_restarted_podmans_state() {
    if !require("podman") || !require("runc") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("migrate").unwrap();
    let iso = IsolatedPodman::new(&scope, &image);
    let bin = iso.bin_str();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "1000"]);
    let section = quiet_section(&scope, &format!("podman = {bin:?}\n"));
    let run = start(&section, Arc::default(), state(true, &[&d]));
    run.wait_running("web").await;
    let (pid, id) = pid_and_id(&bin, &container).unwrap();
    assert!(pid > 0, "{container} runs");

    let out = iso.podman(&["system", "migrate"]).unwrap();
    assert!(out.contains(&id), "migrate stopped {container}: {out}");
    run.wait_status("web Running again after the migrate", |s| {
        s.phase == Phase::Running && s.restarts >= 1
    })
    .await;
    eventually(&format!("{container} runs again"), || {
        pid_and_id(&bin, &container).is_some_and(|(p, i)| p > 0 && p != pid && i == id)
    })
    .await;

    // Still watched afterwards: removed by hand, created again.
    iso.podman(&["rm", "--force", "--time", "0", "--", &container])
        .unwrap();
    eventually(
        &format!("{container} created again after the migrate"),
        || pid_and_id(&bin, &container).is_some_and(|(p, i)| p > 0 && i != id),
    )
    .await;
    run.stop().await;
}

/// A reboot as podman sees it (its runtime state on tmpfs gone, every container process
/// killed, the agent restarted): the containers podman now calls `created` are started
/// again, not recreated, and their exits are watched again.
#[tokio::test]
async fn after_podmans_runtime_state_is_wiped_as_by_a_reboot_containers_start_again_and_are_watched(
) {
    if !require("podman") || !require("runc") || !require("findmnt") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("reboot").unwrap();
    let iso = IsolatedPodman::new(&scope, &image);
    let bin = iso.bin_str();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "1000"]);
    let section = quiet_section(&scope, &format!("podman = {bin:?}\n"));
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section, store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    run.stop().await;
    let (pid, id) = pid_and_id(&bin, &container).unwrap();
    let conmon: i64 = iso
        .podman(&[
            "container",
            "inspect",
            "--format",
            "{{.State.ConmonPid}}",
            "--",
            &container,
        ])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    iso.reboot(&[pid, conmon], std::slice::from_ref(&id));
    let after = iso
        .podman(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            "--",
            &container,
        ])
        .unwrap();
    assert!(
        matches!(after.trim(), "created" | "exited" | "stopped"),
        "podman refreshed its state: {after}"
    );

    let run = start(&section, store, state(true, &[&d]));
    run.wait_running("web").await;
    eventually(&format!("{container} runs again"), || {
        pid_and_id(&bin, &container).is_some_and(|(p, i)| p > 0 && i == id)
    })
    .await;
    let (pid, _) = pid_and_id(&bin, &container).unwrap();
    let (seen, restarts) = {
        let s = run.sink.statuses.lock().unwrap();
        (s.len(), s.last().map_or(0, |s| s.restarts))
    };
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(
        "web Running again after kill -9, one more restart counted",
        || {
            run.sink.statuses.lock().unwrap()[seen..]
                .iter()
                .any(|s| s.phase == Phase::Running && s.restarts == restarts + 1)
        },
    )
    .await;
    eventually(&format!("{container} runs again after kill -9"), || {
        pid_and_id(&bin, &container).is_some_and(|(p, i)| p > 0 && p != pid && i == id)
    })
    .await;
    run.stop().await;
}
