//! Health probes against real podman: `exec`, `http` (busybox httpd) and `tcp` probes gate
//! `Running`; a probe that never passes keeps the deployment `Starting` and fails it at its
//! threshold naming the probe; one that fails later turns it `Unhealthy` and the container
//! is restarted by its restart policy; the status carries the probe's result.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use fleet_contract::{DeploymentStatus, Phase, Probe, RestartPolicy};
use fleet_testkit::{busybox_image, podman, require, PodmanScope};

use common::*;

/// A probe from its manifest form (camelCase JSON).
fn probe(v: serde_json::Value) -> Probe {
    serde_json::from_value(v).unwrap()
}

/// Serves `/www` on port 8080 with `/www/health` present; recreated on every start.
const HTTPD: &[&str] = &[
    "sh",
    "-c",
    "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8080 -h /www",
];

/// Makes `/tmp/ok` on every start, then waits; exits 0 on SIGTERM.
const OK_FILE: &[&str] = &[
    "sh",
    "-c",
    "mkdir -p /tmp && touch /tmp/ok; trap 'exit 0' TERM; sleep 3600 & wait",
];

impl Run {
    /// The statuses of `name` so far.
    fn of(&self, name: &str) -> Vec<DeploymentStatus> {
        self.sink
            .statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// Waits for a status of `name` after its first `skip` ones that satisfies `pred`;
    /// returns it and its index among `name`'s statuses.
    async fn wait_after(
        &self,
        name: &str,
        skip: usize,
        what: &str,
        pred: impl Fn(&DeploymentStatus) -> bool,
    ) -> (usize, DeploymentStatus) {
        let found = tokio::time::timeout(LONG, async {
            loop {
                if let Some(hit) = self
                    .of(name)
                    .into_iter()
                    .enumerate()
                    .skip(skip)
                    .find(|(_, s)| pred(s))
                {
                    return hit;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "{name}: no status {what} within {LONG:?}; got {:#?}",
                self.of(name)
            )
        })
    }
}

fn passing(s: &DeploymentStatus) -> bool {
    s.probe.as_ref().is_some_and(|p| p.passing)
}

#[tokio::test]
async fn an_exec_probe_gates_running_and_a_later_failure_restarts_an_on_failure_container() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("probe-exec").unwrap();
    let container = naming(&scope).container("ex");
    let mut d = deployment("ex", &image, &[], OK_FILE);
    // SIGTERM makes it exit 0: `on-failure` must restart it anyway, the probe failed.
    d.lifecycle.stop_signal = "SIGTERM".into();
    d.container.restart = RestartPolicy::OnFailure;
    d.container.probes = vec![probe(serde_json::json!({
        "name": "ok",
        "exec": { "command": ["sh", "-c", "test -e /tmp/ok"] },
        "periodSecs": 1,
        "failureThreshold": 2,
    }))];
    // No resync: every status after Running comes from the probe task or an exit.
    let run = start(
        &quiet_section(&scope, ""),
        Arc::default(),
        state(true, &[&d]),
    );

    let (at, running) = run
        .wait_after("ex", 0, "Running with its probe passing", |s| {
            s.phase == Phase::Running && passing(s)
        })
        .await;
    let p = running.probe.clone().unwrap();
    assert_eq!((p.name.as_str(), p.result.as_str()), ("ok", "exit 0"));
    assert_eq!(p.consecutive_failures, 0);
    assert!(p.checked_at > 0);
    assert!(
        running.message.contains("probe ok: passing: exit 0"),
        "{}",
        running.message
    );
    let before = &run.of("ex")[..at];
    assert!(
        before
            .iter()
            .any(|s| s.phase == Phase::Starting && s.message.contains("waiting for probe ok")),
        "Starting, waiting for the probe, came first: {before:#?}"
    );
    assert!(
        before.iter().all(|s| s.phase != Phase::Running),
        "not Running before the probe passed: {before:#?}"
    );

    // Passing checks every second publish nothing new.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        run.of("ex").len(),
        at + 1,
        "a status per check: {:#?}",
        &run.of("ex")[at..]
    );

    podman(&["exec", "--", &container, "busybox", "rm", "/tmp/ok"]).unwrap();
    let (at, unhealthy) = run
        .wait_after("ex", at + 1, "Unhealthy", |s| s.phase == Phase::Unhealthy)
        .await;
    let p = unhealthy.probe.clone().unwrap();
    assert_eq!(p.name, "ok");
    assert!(!p.passing);
    assert_eq!(p.consecutive_failures, 2, "{p:?}");
    assert_eq!(p.result, "exit 1");
    assert!(
        unhealthy
            .message
            .contains("probe ok failing 2x: exit 1; restarting"),
        "{}",
        unhealthy.message
    );
    let (_, again) = run
        .wait_after("ex", at, "Running again after a restart", |s| {
            s.phase == Phase::Running && passing(s) && s.restarts >= 1
        })
        .await;
    assert_eq!(again.restarts, 1, "one restart: {again:?}");
    assert_eq!(again.last_exit_code, Some(0), "stopped gracefully: exit 0");
    assert_eq!(state_of(&container).as_deref(), Some("running"));
    run.stop().await;
}

#[tokio::test]
async fn http_and_tcp_probes_pass_fail_later_and_never_pass() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("probe-net").unwrap();
    let names = naming(&scope);
    let fast = |v: serde_json::Value| {
        let mut p = probe(v);
        p.period_secs = 1;
        p.failure_threshold = 2;
        p
    };
    // Served over HTTP, with a TCP probe on the same port: both pass; deleting the file
    // fails the http probe (404) later.
    let mut web = deployment("web", &image, &[], HTTPD);
    web.container.probes = vec![
        fast(serde_json::json!({ "name": "web", "http": { "port": 8080, "path": "/health" } })),
        fast(serde_json::json!({ "name": "port", "tcp": { "port": 8080 } })),
    ];
    // Nothing listens: the tcp probe never passes; restart policy never keeps it stopped.
    let mut closed = deployment("closed", &image, &[], OK_FILE);
    closed.container.restart = RestartPolicy::Never;
    closed.container.probes = vec![fast(serde_json::json!({ "tcp": { "port": 8080 } }))];
    // Served, but not the path asked for: the http probe never passes; restarted (always).
    let mut missing = deployment("missing", &image, &[], HTTPD);
    missing.container.probes = vec![fast(serde_json::json!({
        "http": { "port": 8080, "path": "/missing", "status": 200 }
    }))];
    // An exec probe that never passes; restarted (always).
    let mut never = deployment("never", &image, &[], OK_FILE);
    never.container.probes = vec![fast(
        serde_json::json!({ "exec": { "command": ["false"] } }),
    )];
    let run = start(
        &section(&scope, ""),
        Arc::default(),
        state(true, &[&web, &closed, &missing, &never]),
    );

    // `web`: Running once both pass; the status carries the http probe.
    let (at, running) = run
        .wait_after("web", 0, "Running with its probes passing", |s| {
            s.phase == Phase::Running && passing(s)
        })
        .await;
    let p = running.probe.clone().unwrap();
    assert_eq!((p.name.as_str(), p.result.as_str()), ("web", "HTTP 200"));
    podman(&[
        "exec",
        "--",
        &names.container("web"),
        "busybox",
        "rm",
        "/www/health",
    ])
    .unwrap();
    let (at, unhealthy) = run
        .wait_after("web", at, "Unhealthy", |s| s.phase == Phase::Unhealthy)
        .await;
    let p = unhealthy.probe.clone().unwrap();
    assert_eq!(p.name, "web", "the failing probe is named, not the tcp one");
    assert_eq!(p.result, "HTTP 404, expected 200");
    assert_eq!((p.passing, p.consecutive_failures), (false, 2));
    assert!(
        unhealthy
            .message
            .contains("probe web failing 2x: HTTP 404, expected 200; restarting"),
        "{}",
        unhealthy.message
    );
    run.wait_after("web", at, "Running again after a restart", |s| {
        s.phase == Phase::Running && passing(s) && s.restarts >= 1
    })
    .await;

    // The never-passing ones: Starting while they fail, Failed at the threshold, the probe
    // named with its last result.
    for (name, probe_name, result) in [
        ("closed", "tcp", "connection refused"),
        ("missing", "http", "HTTP 404, expected 200"),
        ("never", "exec", "exit 1"),
    ] {
        let (at, failed) = run
            .wait_after(name, 0, "Failed by its probe", |s| {
                s.phase == Phase::Failed && s.message.contains("never passed")
            })
            .await;
        let p = failed.probe.clone().unwrap();
        assert_eq!(
            (p.name.as_str(), p.result.as_str()),
            (probe_name, result),
            "{name}"
        );
        assert_eq!((p.passing, p.consecutive_failures), (false, 2), "{name}");
        assert!(
            failed.message.contains(&format!(
                "probe {probe_name} never passed (failing 2x: {result})"
            )),
            "{name}: {}",
            failed.message
        );
        let before = &run.of(name)[..at];
        assert!(
            before.iter().any(|s| s.phase == Phase::Starting
                && s.probe
                    .as_ref()
                    .is_some_and(|p| p.consecutive_failures == 1)),
            "{name} was Starting with one failure first: {before:#?}"
        );
        assert!(
            before.iter().all(|s| s.phase != Phase::Running),
            "{name} was never Running: {before:#?}"
        );
    }
    // Restart policy never: stopped, and it says why.
    let (_, stopped) = run
        .wait_after("closed", 0, "kept stopped", |s| {
            s.message.contains("restart policy never keeps it stopped")
        })
        .await;
    assert_eq!(stopped.phase, Phase::Failed);
    assert!(
        stopped.message.starts_with("probe tcp never passed"),
        "{}",
        stopped.message
    );
    assert_eq!(stopped.restarts, 0);
    eventually("closed stays exited", || {
        state_of(&names.container("closed")).as_deref() == Some("exited")
    })
    .await;
    // Restart policy always: restarted (counted), and failing again.
    for name in ["missing", "never"] {
        run.wait_after(name, 0, "restarted after its probe failed", |s| {
            s.restarts >= 1
        })
        .await;
    }
    assert_eq!(
        run.of("closed").last().map(|s| s.restarts),
        Some(0),
        "never restarted"
    );
    run.stop().await;
}
