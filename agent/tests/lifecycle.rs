//! Process-level contract with systemd: READY/STOPPING, SIGTERM, exit codes, corrupt store.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use common::*;
use fleet_testkit::{NotifySocket, TempRoot};

#[test]
fn sigterm_exits_zero_within_ten_seconds_after_ready_then_stopping() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    std::fs::write(root.deployments().join("web.toml"), manifest("web", 1)).unwrap();
    let notify = NotifySocket::new().unwrap();
    let mut agent = AgentProc::spawn(&config, Some(&notify));
    let before = notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    assert!(!before.iter().any(|l| l == "STOPPING=1"), "{before:?}");

    let (exit, took) = agent
        .terminate(Duration::from_secs(10))
        .expect("agent must exit within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_secs(10));
    let after = notify
        .wait_for("STOPPING=1", Duration::from_secs(2))
        .unwrap();
    assert!(after.iter().any(|l| l == "STOPPING=1"), "{after:?}");

    let st = status(&config).expect("status readable after stop");
    assert_eq!(st["running"], false);
    assert_eq!(st["store"]["integrity"], "ok");
}

#[test]
fn service_watchdog_is_petted_when_systemd_asks() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    let notify = NotifySocket::new().unwrap();
    // systemd sets WATCHDOG_USEC and WATCHDOG_PID (AgentProc sets the pid via `sh -c exec`);
    // the agent must pet at least every half interval.
    let _agent = AgentProc::spawn_with_env(&config, Some(&notify), &[("WATCHDOG_USEC", "600000")]);
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    let lines = notify
        .wait_for("WATCHDOG=1", Duration::from_secs(2))
        .unwrap();
    assert!(lines.iter().any(|l| l == "WATCHDOG=1"), "{lines:?}");
    // And keeps petting.
    notify
        .wait_for("WATCHDOG=1", Duration::from_secs(2))
        .unwrap();
}

#[test]
fn no_watchdog_pets_without_watchdog_usec() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    let notify = NotifySocket::new().unwrap();
    let mut agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agent.terminate(Duration::from_secs(10)).expect("exits");
    let lines = notify
        .wait_for("STOPPING=1", Duration::from_secs(2))
        .unwrap();
    assert!(!lines.iter().any(|l| l == "WATCHDOG=1"), "{lines:?}");
}

#[test]
fn corrupt_state_db_is_moved_aside_and_agent_starts() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    std::fs::write(root.deployments().join("web.toml"), manifest("web", 7)).unwrap();
    let notify = NotifySocket::new().unwrap();
    let mut agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    wait_status(&config, "web", |s| deployment(s, "web").is_some());
    agent.terminate(Duration::from_secs(10)).expect("exits");

    let db = root.state().join("state.db");
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"this is not an SQLite header, it is garbage....")
        .unwrap();
    f.seek(SeekFrom::Start(5000)).unwrap();
    f.write_all(&[0xEE; 2000]).unwrap();
    drop(f);

    let notify = NotifySocket::new().unwrap();
    let _agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    // Desired state is re-read from the source: nothing is lost.
    let st = wait_status(&config, "web back at revision 7", |s| {
        deployment(s, "web").is_some_and(|d| d["revision"] == 7)
    });
    let recoveries = st["store"]["recoveries"].as_array().unwrap();
    assert_eq!(recoveries.len(), 1, "{st:#}");
    let aside = std::path::PathBuf::from(recoveries[0].as_str().unwrap());
    assert!(aside.exists(), "corrupt file kept at {}", aside.display());
    assert!(std::fs::read(&aside)
        .unwrap()
        .starts_with(b"this is not an SQLite"));
    assert_eq!(st["store"]["integrity"], "ok");
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let root = TempRoot::new().unwrap();
    let config = root.write_config("device_id = \"ok-1\"\n[store]\naudit_max_entries = 1\n");
    for cmd in ["check-config", "run"] {
        let out = agent(&["--config", config.to_str().unwrap(), cmd]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("config.toml: line 3"), "{cmd}: {err}");
        assert!(err.contains("store.audit_max_entries"), "{cmd}: {err}");
    }
    let config = root.write_config("devce_id = \"x\"\n");
    let out = agent(&["--config", config.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `devce_id`"));

    let missing = root.path().join("nope.toml");
    let out = agent(&["--config", missing.to_str().unwrap(), "run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));

    let out = agent(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn good_config_checks_and_self_test_passes() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    let c = config.to_str().unwrap();
    let out = agent(&["--config", c, "check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (device test-dev"));

    let out = agent(&["--config", c, "self-test", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    let names: Vec<_> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap().to_owned())
        .collect();
    for want in ["config", "device-id", "store", "control-plane"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(
        !root.state().join("state.db").exists(),
        "self-test must work on a copy, never create the live store"
    );

    let out = agent(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("fleet-agent"));
    let out = agent(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}
