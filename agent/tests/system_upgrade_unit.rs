//! The OS upgrade command in its own transient unit (`fleet-os-upgrade-<id>.service`), inside
//! the real runtime: it outlives the agent (a package postinst restarting the agent), the
//! restarted agent follows the same unit and never starts the command again, its output
//! reaches the phase history, a unit gone without a result fails the upgrade, and the
//! command timeout stops the unit. systemd is the fake of `fake_units` (this host runs no
//! systemd; real processes, state in the device's temp root); the real `systemd-run` runs in
//! the VM harness (`os-clean`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod os_device;

use std::time::Duration;

use fleet_mod_system_upgrade::bootstate::State;
use fleet_mod_system_upgrade::units::Units;
use os_device::{wait_file, Device};

const UNIT: &str = "fleet-os-upgrade-u-1.service";

/// Every history message, one per line.
fn history(d: &serde_json::Value) -> String {
    d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}: {}", s["phase"], s["message"].as_str().unwrap()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn device(command: impl FnOnce(&Device) -> String) -> Device {
    let dev = Device::new("");
    Device {
        command: command(&dev),
        ..dev
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_mid_command_follows_the_same_unit_and_never_runs_it_twice() {
    let dev = device(|d| {
        format!(
            "echo ran >> {}; sleep 2; echo new-system-installed; echo done >> {}",
            d.p("ran").display(),
            d.p("done").display()
        )
    });
    let run = dev.start();
    dev.request("u-1");
    wait_file(&dev.p("ran")).await;
    let d = run.wait_phase("Upgrading").await;
    assert_eq!(d["unit"], UNIT, "the unit is in the record: {d:#}");
    // The agent stops (the package's postinst restarts it); the command goes on without it.
    run.stop().await;
    wait_file(&dev.p("done")).await;
    // `done` is written just before the command's shell exits: on a loaded machine the unit
    // can still be running for a moment, so its final state is waited for (bounded).
    let mut st = dev.units.status(UNIT).await.unwrap();
    for _ in 0..200 {
        if st.sub_state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = dev.units.status(UNIT).await.unwrap();
    }
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "exited"),
        "the result stays with the unit"
    );

    let run = dev.start();
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    assert_eq!(dev.state().unwrap().state, State::Trial, "{d:#}");
    let h = history(&d);
    assert!(
        h.contains(&format!("unit {UNIT}: the upgrade command succeeded")),
        "{h}"
    );
    assert!(h.contains("new-system-installed"), "the output's tail: {h}");
    assert_eq!(dev.lines("ran"), 1, "the command ran once");
    assert_eq!(dev.units.started_units(), [UNIT], "one unit was started");
    assert_eq!(
        dev.units.status(UNIT).await.unwrap().load_state,
        "not-found",
        "the unit is released after its result was taken"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_puts_its_output_in_the_history_and_rolls_back() {
    let dev = device(|_| "echo reading lists; echo E: disk full >&2; exit 100".into());
    let run = dev.start();
    dev.request("u-1");
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    let h = history(&d);
    assert!(
        h.contains(&format!(
            "unit {UNIT}: the upgrade command failed: exit status 100"
        )),
        "{h}"
    );
    assert!(
        h.contains("reading lists") && h.contains("E: disk full"),
        "{h}"
    );
    let st = dev.state().unwrap();
    assert_eq!(st.state, State::Rollback);
    assert!(st.reason.contains("exit status 100"), "{}", st.reason);
    assert!(st.reason.contains("disk full"), "{}", st.reason);
    assert_eq!(
        dev.units.status(UNIT).await.unwrap().load_state,
        "not-found",
        "a failed unit is reset after its result was taken"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_gone_without_a_result_fails_clearly_and_is_not_run_again() {
    let dev = device(|d| format!("echo ran >> {}; sleep 30", d.p("ran").display()));
    let run = dev.start();
    dev.request("u-1");
    wait_file(&dev.p("ran")).await;
    run.wait_phase("Upgrading").await;
    run.stop().await;
    // While the agent is away the unit disappears (an operator's `systemctl stop`).
    dev.units.vanish(UNIT).await;

    let run = dev.start();
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("upgrade command failed in unit {UNIT}"))
            && reason.contains("the unit does not exist")
            && reason.contains("never run twice"),
        "{d:#}"
    );
    assert_eq!(dev.state().unwrap().state, State::Rollback);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dev.lines("ran"), 1);
    assert_eq!(dev.units.starts(), 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_timeout_stops_the_unit_and_rolls_back() {
    let dev = device(|d| {
        format!(
            "echo ran >> {}; sleep 20; echo late >> {}",
            d.p("ran").display(),
            d.p("late").display()
        )
    });
    let dev = Device {
        command_timeout_secs: 2,
        ..dev
    };
    let run = dev.start();
    dev.request("u-1");
    wait_file(&dev.p("ran")).await;
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("timed out after 2 s; unit {UNIT} stopped")),
        "{d:#}"
    );
    assert_eq!(dev.state().unwrap().state, State::Rollback);
    assert_eq!(
        dev.units.status(UNIT).await.unwrap().load_state,
        "not-found",
        "the unit was stopped"
    );
    // Its process is gone: the rest of the command never runs.
    let pids = std::process::Command::new("pgrep")
        .args(["-f", &format!("echo late >> {}", dev.p("late").display())])
        .output()
        .unwrap();
    assert!(pids.stdout.is_empty(), "still running: {pids:?}");
    assert!(!dev.p("late").exists());
    run.stop().await;
}
