//! The podman calls of the hot path, counted through a logging wrapper: a new deployment
//! reaches Running after a volume create and one `podman run`, no listing first.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_contract::Phase;
use fleet_testkit::{busybox_image, require, PodmanScope};

use common::*;

/// `podman`, logging each call's first two words to `log`.
fn logging_podman(dir: &Path, log: &Path) -> String {
    let bin = dir.join("podman");
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> {}\nexec podman \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin.to_string_lossy().into_owned()
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_new_deployment_is_a_volume_create_and_one_podman_run() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("calls").unwrap();
    let dir = std::env::temp_dir().join(scope.name("calls"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.log");
    let bin = logging_podman(&dir, &log);
    let run = start(
        &quiet_section(&scope, &format!("podman = {bin:?}\n")),
        Arc::default(),
        state(true, &[]),
    );
    // The first pass lists containers and volumes.
    eventually("the first pass", || calls(&log).len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = calls(&log).len();
    assert_eq!(calls(&log), ["ps -a", "volume ls"], "the first pass");

    let d = deployment("web", &image, &[], &["sleep", "1000"]);
    run.desired.send(Arc::new(state(true, &[&d]))).unwrap();
    run.wait_status("web Running", |s| s.phase == Phase::Running)
        .await;
    let all = calls(&log);
    let run_at = all
        .iter()
        .position(|c| c.starts_with("run "))
        .expect("a podman run");
    assert_eq!(
        all[before..run_at],
        ["volume create"],
        "calls before `podman run` (all: {all:?})"
    );
    assert_eq!(all[run_at], "run --detach");

    // After the job: one listing (learning the container's pid) and the image's digest
    // (once per image), then nothing while nothing changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<String> = calls(&log)[run_at + 1..].to_vec();
    assert_eq!(after, ["ps -a", "image inspect"], "calls after the run");
    let s = run.sink.statuses.lock().unwrap().last().cloned().unwrap();
    assert_eq!(s.phase, Phase::Running, "{s:?}");
    run.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
