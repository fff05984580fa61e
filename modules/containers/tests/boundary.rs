//! The podman boundary: no value reaches podman's argv as an option, and no env value or
//! container argument reaches a status message or a log line.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_contract::Phase;
use fleet_mod_containers::{CreateSpec, Podman, PodmanRuntime};
use fleet_module_api::{ContainerRuntime, RunSpec};
use fleet_testkit::{busybox_image, container_exists, podman, require, PodmanScope};

use common::*;
// ---- Class 3: nothing reaches podman's argv as an option ----

#[tokio::test]
async fn an_image_that_looks_like_a_flag_is_refused_before_podman_runs() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("flagimg").unwrap();
    let p = Podman::new(Path::new("podman"), None, None);
    // Without `--` and the refusal, this creates a privileged busybox container.
    let name = scope.name("inj");
    let spec = CreateSpec {
        name: name.clone(),
        image: "--privileged".into(),
        command: vec![image.clone(), "sleep".into(), "100".into()],
        env: BTreeMap::new(),
        labels: [("fleet.test.scope".to_owned(), scope.id().to_owned())].into(),
        volumes: Vec::new(),
        stop_signal: "SIGKILL".into(),
        stop_timeout: 0,
        ..CreateSpec::default()
    };
    let err = p.create(&spec).await.unwrap_err().to_string();
    assert!(err.starts_with("container.image \"--privileged\""), "{err}");
    assert!(!container_exists(&name).unwrap(), "nothing was created");
    // `podman image exists -h` prints help and exits 0: an image "-h" must not be "present".
    let err = p.image_exists("-h").await.unwrap_err().to_string();
    assert!(err.starts_with("container.image \"-h\""), "{err}");

    // The same through the runtime other modules use, and through a deployment.
    let rt = PodmanRuntime {
        podman: p.clone(),
        naming: naming(&scope),
        data_mount: "/data".into(),
        log_max_mib: 10,
    };
    let err = rt
        .run_to_completion(&RunSpec {
            name: "i".into(),
            image: "-h".into(),
            command: vec!["true".into()],
            labels: Vec::new(),
            timeout: LONG,
            deployment: Some("job".into()),
        })
        .await
        .unwrap_err();
    assert!(err.0.contains("container.image \"-h\""), "{err}");

    let d = deployment("web", "--privileged", &[("NUL", "a\0b")], &[]);
    let run = start(&section(&scope, ""), Arc::default(), state(true, &[&d]));
    let failed = run
        .wait_status("web Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        failed.message.contains("container.image \"--privileged\""),
        "{}",
        failed.message
    );
    run.stop().await;
    assert!(scope.containers().unwrap().is_empty(), "nothing created");
}

#[tokio::test]
async fn a_nul_byte_in_an_env_value_is_refused_naming_the_key_not_the_value() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("nulenv").unwrap();
    let d = deployment(
        "web",
        &image,
        &[("TOKEN", "nul-planted-9f3a\0tail")],
        &["sleep", "100"],
    );
    let run = start(&section(&scope, ""), Arc::default(), state(true, &[&d]));
    let failed = run
        .wait_status("web Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        failed.message.contains("container.env.\"TOKEN\""),
        "{}",
        failed.message
    );
    let sink = run.sink.clone();
    run.stop().await;
    assert!(!sink.all_text().contains("nul-planted-9f3a"));
    assert!(!log_text().contains("nul-planted-9f3a"));
    assert!(scope.containers().unwrap().is_empty(), "nothing created");
}

// ---- Class 5: no secret in a failure message ----

#[tokio::test]
async fn a_failing_create_puts_no_env_value_or_argument_in_status_or_log() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("secret").unwrap();
    let container = naming(&scope).container("web");
    // A stranger (no fleet labels) holds the name: `podman run` fails.
    podman(&[
        "create",
        "--name",
        &container,
        "--label",
        &scope.label(),
        "--",
        &image,
        "true",
    ])
    .unwrap();
    let secret = "planted-secret-5c1d7e";
    let arg = "argument-secret-77aa01";
    let d = deployment(
        "web",
        &image,
        &[("TOKEN", secret)],
        &["sh", "-c", &format!("echo {arg}; sleep 100")],
    );
    let run = start(&section(&scope, ""), Arc::default(), state(true, &[&d]));
    let failed = run
        .wait_status("web Failed", |s| s.phase == Phase::Failed)
        .await;
    let m = &failed.message;
    assert!(m.contains(&format!("podman run {container}")), "{m}");
    assert!(m.contains("exit code 125"), "{m}");
    assert!(m.contains("already in use"), "{m}");
    // Let it retry a few times, so every path (retry, log, status) has run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sink = run.sink.clone();
    run.stop().await;
    let sink_text = sink.all_text();
    assert!(sink.statuses.lock().unwrap().len() >= 2, "{sink_text}");
    for s in [secret, arg] {
        assert!(!sink_text.contains(s), "{s} in {sink_text}");
        assert!(!log_text().contains(s), "{s} in the log");
    }
    // The stranger was not removed (it is in podman's database: not ours).
    assert!(container_exists(&container).unwrap());
}
