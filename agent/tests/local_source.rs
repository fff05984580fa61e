//! The real binary against a real manifest directory: add, edit, delete, garbage.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use fleet_testkit::{NotifySocket, TempRoot};

#[test]
fn manifest_lifecycle_is_reflected_in_status() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    let notify = NotifySocket::new().unwrap();
    let _agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();

    // Add.
    std::fs::write(root.deployments().join("web.toml"), manifest("web", 1)).unwrap();
    let st = wait_status(&config, "web at revision 1", |s| {
        deployment(s, "web").is_some_and(|d| d["revision"] == 1)
    });
    assert_eq!(deployment(&st, "web").unwrap()["phase"], "Pending");
    assert_eq!(st["running"], true);
    assert_eq!(st["device"], "test-dev");

    // Edit.
    std::fs::write(root.deployments().join("web.toml"), manifest("web", 2)).unwrap();
    wait_status(&config, "web at revision 2", |s| {
        deployment(s, "web").is_some_and(|d| d["revision"] == 2)
    });

    // Garbage in another file fails only that deployment, naming the line.
    std::fs::write(
        root.deployments().join("broken.toml"),
        "apiVersion = \"fleet/v1\"\nname = \"broken\"\nrevision = \"two\"\n",
    )
    .unwrap();
    let st = wait_status(&config, "broken failed", |s| {
        deployment(s, "broken").is_some_and(|d| d["phase"] == "Failed")
    });
    let msg = deployment(&st, "broken").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("broken.toml: line 3"), "{msg}");
    assert!(msg.contains("field `revision`"), "{msg}");
    assert_eq!(
        deployment(&st, "web").unwrap()["revision"],
        2,
        "web unaffected"
    );

    // Delete.
    std::fs::remove_file(root.deployments().join("web.toml")).unwrap();
    std::fs::remove_file(root.deployments().join("broken.toml")).unwrap();
    wait_status(&config, "both removed", |s| {
        s["deployments"].as_array().is_some_and(|a| a.is_empty())
    });
}

#[test]
fn compiled_in_modules_report_probe_and_health() {
    let root = TempRoot::new().unwrap();
    // A directory laid out like /sys/class/watchdog with one armed device.
    let sysfs = root.path().join("sys-class-watchdog");
    let dev = sysfs.join("watchdog0");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("identity"), "i6300ESB timer\n").unwrap();
    std::fs::write(dev.join("state"), "active\n").unwrap();
    std::fs::write(dev.join("timeout"), "10\n").unwrap();
    let config = write_config(
        &root,
        &format!("[modules.watchdog]\nsysfs = {sysfs:?}\nrequire_armed = true\n"),
    );
    let notify = NotifySocket::new().unwrap();
    let _agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    let st = wait_status(&config, "watchdog healthy", |s| {
        s["modules"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "watchdog"))
            .is_some_and(|m| m["health"]["state"] == "healthy")
    });
    let m = st["modules"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "watchdog"))
        .unwrap();
    assert_eq!(m["probe"]["state"], "available", "{m}");
    assert!(
        m["probe"]["detail"]
            .as_str()
            .unwrap()
            .contains("i6300ESB timer"),
        "{m}"
    );
}

#[test]
fn deletion_while_stopped_is_noticed_on_restart() {
    let root = TempRoot::new().unwrap();
    let config = write_config(&root, "");
    std::fs::write(root.deployments().join("a.toml"), manifest("a", 1)).unwrap();
    std::fs::write(root.deployments().join("b.toml"), manifest("b", 4)).unwrap();
    let notify = NotifySocket::new().unwrap();
    let mut agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    wait_status(&config, "a and b", |s| {
        deployment(s, "a").is_some() && deployment(s, "b").is_some()
    });
    agent.terminate(Duration::from_secs(10)).expect("exits");

    std::fs::remove_file(root.deployments().join("a.toml")).unwrap();
    let _agent = AgentProc::spawn(&config, None);
    let st = wait_status(&config, "a gone after restart", |s| {
        s["running"] == true && deployment(s, "a").is_none()
    });
    assert_eq!(deployment(&st, "b").unwrap()["revision"], 4);
}

/// Odd entries in `deployments.d` (a FIFO, a symlink loop, a directory named like a
/// manifest, a non-UTF-8 name) never block the agent and each appear in `fleet-agent status`,
/// JSON and text, as an ignored input with its reason; an oversized file is refused with its
/// real size. (Before, all of them were skipped without a word, and the size named the cap.)
#[test]
fn odd_files_appear_in_status_as_ignored_inputs() {
    use std::os::unix::ffi::OsStrExt;
    let root = TempRoot::new().unwrap();
    let d = root.deployments();
    std::fs::create_dir_all(&d).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(d.join("pipe.toml"))
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("b.toml", d.join("a.toml")).unwrap();
    std::os::unix::fs::symlink("a.toml", d.join("b.toml")).unwrap();
    std::fs::create_dir(d.join("x.toml")).unwrap();
    std::fs::write(
        d.join(std::ffi::OsStr::from_bytes(b"n\xff.toml")),
        manifest("n", 1),
    )
    .unwrap();
    let size = fleet_contract::MAX_MANIFEST_BYTES + 4321;
    std::fs::write(d.join("big.toml"), vec![b'#'; size]).unwrap();
    std::fs::write(d.join("web.toml"), manifest("web", 1)).unwrap();

    let config = write_config(&root, "");
    let notify = NotifySocket::new().unwrap();
    let _agent = AgentProc::spawn(&config, Some(&notify));
    notify.wait_for("READY=1", Duration::from_secs(15)).unwrap();
    let st = wait_status(&config, "five ignored inputs, big and web reported", |s| {
        s["ignored_inputs"]["listed"]
            .as_array()
            .is_some_and(|a| a.len() >= 5)
            && deployment(s, "big").is_some()
            && deployment(s, "web").is_some()
    });
    let listed = st["ignored_inputs"]["listed"].as_array().unwrap();
    let reason = |needle: &str| {
        listed
            .iter()
            .find(|i| i["input"].as_str().unwrap().contains(needle))
            .map(|i| i["reason"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{needle} not among {listed:#?}"))
    };
    assert!(reason("pipe.toml").contains("FIFO"));
    assert!(reason("a.toml").contains("loop"));
    assert!(reason("x.toml").contains("directory"));
    assert!(reason("n\u{fffd}.toml").contains("UTF-8"));
    let big = deployment(&st, "big").unwrap();
    assert_eq!(big["phase"], "Failed");
    assert!(
        big["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{size} bytes")),
        "{big}"
    );
    assert_eq!(deployment(&st, "web").unwrap()["revision"], 1);

    let out = agent(&["--config", config.to_str().unwrap(), "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("IGNORED INPUTS"), "{text}");
    assert!(text.contains("pipe.toml"), "{text}");
}
