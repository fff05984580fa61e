//! The real agent binary stopped by SIGTERM (`systemctl stop`) while podman creates a
//! container: the create runs to its end instead of being killed with the agent's job, and
//! the next start converges. (A podman killed mid-create leaves a container half in storage,
//! half in its database; see the containers module's recovery tests for the repair.)
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use fleet_testkit::{busybox_image, podman, require, wait_until, PodmanScope, TempRoot};

const CONVERGE: Duration = Duration::from_secs(90);

#[test]
fn a_sigterm_during_a_create_lets_it_finish_and_the_next_start_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let root = TempRoot::new().unwrap();
    let scope = PodmanScope::new("ctstop").unwrap();
    // A podman whose create (`podman run`) takes 2 s more after the real one, and says when it
    // is done.
    let marks = root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let wrapper = root.path().join("podman");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in create|run)\n  touch {m}/begun\n  \
             podman \"$@\"; rc=$?; sleep 2; touch {m}/finished; exit $rc;;\nesac\n\
             exec podman \"$@\"\n",
            m = marks.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let section = |podman_bin: &str| {
        format!(
            "[modules.containers]\ninstance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
             backoff_initial_secs = 1\nbackoff_max_secs = 4\nresync_secs = 20\npodman = {podman_bin:?}\n",
            id = scope.id()
        )
    };
    let config = write_config(&root, &section(&wrapper.display().to_string()));
    std::fs::write(
        root.deployments().join("web.toml"),
        format!(
            "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 1\n\n[container]\n\
             image = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n"
        ),
    )
    .unwrap();
    let container = format!("fleet-{}-web", scope.id());

    let mut agent = AgentProc::spawn(&config, None);
    wait_until(CONVERGE, "the create began", || {
        marks.join("begun").exists().then_some(())
    })
    .unwrap();
    let (exit, took) = agent
        .terminate(Duration::from_secs(15))
        .expect("the agent stops within systemd's 15 s");
    eprintln!("agent stopped {took:?} after SIGTERM during a create ({exit})");
    assert!(
        marks.join("finished").exists(),
        "the podman create in flight ran to its end"
    );
    assert!(podman(&["container", "exists", "--", &container]).is_ok());
    drop(agent);

    let config = write_config(&root, &section("podman"));
    let _agent = AgentProc::spawn(&config, None);
    wait_until(CONVERGE, "web Running", || {
        let st = status(&config)?;
        (deployment(&st, "web")?["phase"] == "Running").then_some(())
    })
    .unwrap();
    let state = podman(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Status}}",
        "--",
        &container,
    ])
    .unwrap();
    assert_eq!(state.trim(), "running");
}
