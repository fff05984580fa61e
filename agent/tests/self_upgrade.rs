//! Agent self-upgrade end to end (ARCHITECTURE §6): two builds of the real agent that differ
//! in version (v1 = this build, v2 = `FLEET_AGENT_VERSION=2.0.0-test` + `test-faults`), a
//! real nats-server, fleetctl, and the agent run under `SystemdRestartLoop` with the unit's
//! `ExecStartPre` guard from the confirmed path. The first run builds v2 once
//! (`target/self-upgrade-v2`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "common/upgrade.rs"]
mod upgrade;

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_testkit::require;
use upgrade::{Device, Scenario, V1, V2};

const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

fn reason(d: &serde_json::Value) -> String {
    d["last"]["reason"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn good_v2_is_confirmed() {
    if !require("nats-server") {
        return;
    }
    let dev = Device::start(&Scenario::default());
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let started = Instant::now();
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "{reply:#}");
    let d = dev.wait_detail("v2 confirmed", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Confirmed" && d["version"] == V2
    });
    eprintln!(
        "command -> Confirmed: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(d["confirmed"], V2, "{d:#}");
    assert_eq!(d["last"]["outcome"], "confirmed", "{d:#}");
    assert_eq!(dev.link_version(&dev.current).as_deref(), Some(V2));
    assert_eq!(
        dev.link_version(&dev.install_root.join("confirmed"))
            .as_deref(),
        Some(V2)
    );
    assert!(!dev
        .root
        .state()
        .join("self-upgrade/probation.json")
        .exists());
    // v1 stays installed (keep the last 3) and the v2 binary is the signed one.
    assert!(dev.version_dir(V1).join("fleet-agent").exists());
    assert_eq!(
        upgrade::sha256_file(&dev.version_dir(V2).join("fleet-agent")),
        dev.v2_sha
    );
    assert_eq!(dev.v2_starts(), 1, "v2 started once and confirmed");
    dev.assert_consistent();
    // The operator sees it in `fleetctl status` (the published heartbeat).
    fleet_testkit::wait_until(Duration::from_secs(15), "fleetctl status", || {
        let out = upgrade::ctl(&[
            "--nats",
            &dev.nats.url(),
            "status",
            "--device",
            upgrade::DEV,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(&format!("agent upgrade: Confirmed ({V2})"))
            .then_some(())
    })
    .unwrap();
}

/// The desired-state path: `<device>.agent` in KV fleet-desired (no command) converges the
/// device to v2; a signed older release named there is refused (only the signed command
/// downgrades); a reverted version is not retried while the desired state still names it.
#[test]
fn desired_state_agent_key_upgrades_and_a_reverted_version_is_not_retried() {
    if !require("nats-server") {
        return;
    }
    let dev = Device::start(&Scenario::default());
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let out = dev.upgrade_desired(&artifact, &sig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.wait_detail("v2 confirmed from desired state", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Confirmed" && d["version"] == V2
    });
    assert_eq!(dev.v2_starts(), 1);

    // v1, properly signed, through the desired state: a downgrade, refused and reported.
    let v1_sig = dev.sign_as(Path::new(upgrade::V1_BIN), V1, &dev.release_key, "release");
    let out = dev.upgrade_desired_as(V1, &format!("file://{}", upgrade::V1_BIN), &v1_sig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dev.wait_detail("downgrade refused", UPGRADE_TIMEOUT, |d| {
        d["message"]
            .as_str()
            .is_some_and(|m| m.contains("is a downgrade"))
    });
    assert_eq!(
        (&d["phase"], &d["version"]),
        (&"Confirmed".into(), &V2.into()),
        "{d:#}"
    );
    assert!(!reason(&d).contains("downgrade"), "not a revert: {d:#}");
    assert_eq!(dev.link_version(&dev.current).as_deref(), Some(V2));

    let crashy = Device::start(&Scenario {
        fault: Some("exit-on-start"),
        max_attempts: 2,
        ..Scenario::default()
    });
    let artifact = crashy.put_v2();
    let sig = crashy.sign(&upgrade::v2().agent, &crashy.release_key, "release");
    let out = crashy.upgrade_desired(&artifact, &sig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = crashy.wait_detail("reverted", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Reverted" && d["version"] == V1
    });
    assert!(reason(&d).contains("crash loop"), "{d:#}");
    // v1 keeps running with the same desired state and does not try v2 again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(crashy.v2_starts(), 2);
    assert_eq!(crashy.detail().unwrap()["phase"], "Reverted");
    crashy.assert_consistent();
}

/// The same over MQTT 5 (retained `fleet/<device>/desired/agent`, a real mosquitto), with
/// the release fetched from a local file (`file://`).
/// Issue #12 class 9: a desired release signed by an unknown key is a refusal shown in
/// status (`refused`), not a revert recorded against the version; the corrected document
/// (same version, the release key) is then acted on and confirmed.
#[test]
fn desired_release_with_an_unknown_key_is_refused_and_the_corrected_one_is_confirmed() {
    if !require("nats-server") {
        return;
    }
    let dev = Device::start(&Scenario::default());
    let artifact = dev.put_v2();
    let stranger = dev.sign(&upgrade::v2().agent, &dev.stranger_key, "stranger");
    let out = dev.upgrade_desired(&artifact, &stranger);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dev.wait_detail("unknown key refused", UPGRADE_TIMEOUT, |d| {
        d["refused"]
            .as_str()
            .is_some_and(|r| r.contains("unknown release key"))
    });
    assert_ne!(d["phase"], "Reverted", "a refusal is no revert: {d:#}");
    assert!(d["last"].is_null(), "nothing recorded: {d:#}");
    assert_eq!(dev.v2_starts(), 0);

    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let out = dev.upgrade_desired(&artifact, &sig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dev.wait_detail("corrected release confirmed", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Confirmed" && d["version"] == V2
    });
    assert!(d.get("refused").is_none(), "{d:#}");
    assert_eq!(dev.v2_starts(), 1);
    dev.assert_consistent();
}

#[test]
fn desired_agent_release_over_mqtt_with_a_file_artifact_is_confirmed() {
    if !require("nats-server") || !require("mosquitto") {
        return;
    }
    let dev = Device::start(&Scenario {
        mqtt: true,
        ..Scenario::default()
    });
    let artifact = format!("file://{}", upgrade::v2().agent.display());
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let out = dev.upgrade_desired(&artifact, &sig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.wait_detail("v2 confirmed over MQTT", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Confirmed" && d["version"] == V2
    });
    assert_eq!(dev.status().unwrap()["control_plane"], "mqtt");
    dev.assert_consistent();
}

#[test]
fn v2_that_exits_on_start_is_reverted_after_max_attempts() {
    if !require("nats-server") {
        return;
    }
    let sc = Scenario {
        fault: Some("exit-on-start"),
        max_attempts: 3,
        ..Scenario::default()
    };
    let dev = Device::start(&sc);
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "{reply:#}");
    let d = dev.wait_detail("v1 back, reverted", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Reverted" && d["version"] == V1
    });
    assert!(reason(&d).contains("crash loop"), "{d:#}");
    assert_eq!(d["last"]["from"], V1);
    assert_eq!(d["last"]["to"], V2);
    assert_eq!(dev.v2_starts(), 3, "exactly max_attempts starts of v2");
    assert_eq!(dev.link_version(&dev.current).as_deref(), Some(V1));
    assert_eq!(
        dev.link_version(&dev.install_root.join("confirmed"))
            .as_deref(),
        Some(V1)
    );
    dev.assert_consistent();
}

#[test]
fn v2_that_fails_self_test_is_never_cut_over() {
    if !require("nats-server") {
        return;
    }
    let sc = Scenario {
        fault: Some("fail-self-test"),
        ..Scenario::default()
    };
    let dev = Device::start(&sc);
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "{reply:#}");
    let d = dev.wait_detail("self-test failure reported", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Reverted"
    });
    assert!(reason(&d).contains("self-test"), "{d:#}");
    assert!(reason(&d).contains("test-fault"), "{d:#}");
    assert_eq!(dev.v2_starts(), 0, "v2 never started");
    assert!(
        !dev.version_dir(V2).exists(),
        "the failed version is removed"
    );
    assert_eq!(dev.link_version(&dev.current).as_deref(), Some(V1));
    dev.assert_consistent();
}

#[test]
fn v2_that_cannot_reach_the_control_plane_is_reverted_at_the_deadline() {
    if !require("nats-server") {
        return;
    }
    let sc = Scenario {
        v2_unreachable: true,
        deadline_secs: 5,
        max_attempts: 5,
        ..Scenario::default()
    };
    let dev = Device::start(&sc);
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "{reply:#}");
    let d = dev.wait_detail("reverted at the deadline", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Reverted" && d["version"] == V1
    });
    assert!(reason(&d).contains("deadline"), "{d:#}");
    assert!(dev.v2_starts() >= 1);
    assert!(
        dev.v2_starts() < 5,
        "reverted by the deadline, not by attempts"
    );
    assert_eq!(dev.link_version(&dev.current).as_deref(), Some(V1));
    dev.assert_consistent();
}

#[test]
fn bad_artifacts_are_refused_before_install() {
    if !require("nats-server") {
        return;
    }
    let dev = Device::start(&Scenario::default());
    let artifact = dev.put_v2();
    let not_installed = |dev: &Device| {
        assert!(!dev.version_dir(V2).exists());
        assert_eq!(dev.link_version(&dev.current).as_deref(), Some(V1));
        assert_eq!(dev.v2_starts(), 0);
    };

    // Unknown release key: refused by the command, nothing downloaded.
    let sig = dev.sign(&upgrade::v2().agent, &dev.stranger_key, "stranger");
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(!ok);
    assert!(
        reply.to_string().contains("unknown release key"),
        "{reply:#}"
    );
    not_installed(&dev);

    // A known key name with someone else's signature: bad signature.
    let sig = dev.sign(&upgrade::v2().agent, &dev.stranger_key, "release");
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(!ok);
    assert!(reply.to_string().contains("does not verify"), "{reply:#}");
    not_installed(&dev);

    // Correctly signed, but for other bytes: the SHA-256 pin does not match the artifact.
    let sig = dev.sign(
        std::path::Path::new(upgrade::V1_BIN),
        &dev.release_key,
        "release",
    );
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "accepted, then refused in staging: {reply:#}");
    let d = dev.wait_detail("sha mismatch reported", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Reverted"
    });
    assert!(reason(&d).contains("sha256 mismatch"), "{d:#}");
    not_installed(&dev);
    let staging = std::fs::read_dir(dev.install_root.join("versions"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".staging")
        })
        .count();
    assert_eq!(staging, 0, "no partial download left behind");
    dev.assert_consistent();
}

/// The phase lines the agent logged so far (ANSI colour codes removed).
fn logged_phases(dev: &Device) -> Vec<String> {
    let text = std::fs::read_to_string(dev.root.path().join("service.log")).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("self-upgrade phase"))
        .filter_map(|l| l.split("phase=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(ToOwned::to_owned)
        .collect()
}

/// SIGKILL of the agent at every phase: for each phase the test watches the agent's log and
/// kills it the moment that phase is logged (phases that last microseconds — draining,
/// cutover-ready, stopping — are killed at or just after them; the cutover's own crash
/// windows are also covered by the guard's unit tests). After each kill the current link and
/// `confirmed` point at complete verified binaries, and the device converges by itself to v2
/// confirmed or v1 running, with no probation left.
#[test]
fn sigkill_at_every_phase_leaves_a_consistent_state() {
    if !require("nats-server") {
        return;
    }
    let mut landed = Vec::new();
    for target in [
        "Draining",
        "Staging",
        "Verifying",
        "CutoverReady",
        "Stopping",
        "Probation",
    ] {
        let dev = Device::start(&Scenario::default());
        let artifact = dev.put_v2();
        let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
        let (ok, reply) = dev.upgrade(&artifact, &sig);
        assert!(ok, "{reply:#}");
        // A tight poll (not wait_until's): some phases last only a few milliseconds.
        let until = Instant::now() + UPGRADE_TIMEOUT;
        while !logged_phases(&dev).iter().any(|p| p == target) {
            assert!(
                Instant::now() < until,
                "{target} never logged\n{}",
                dev.log_tail()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let killed = dev.service.signal_main("KILL");
        let last = logged_phases(&dev).last().cloned().unwrap_or_default();
        let cur = dev.assert_consistent();
        let d = dev.wait_detail("converged", UPGRADE_TIMEOUT, |d| {
            let no_probation = !dev
                .root
                .state()
                .join("self-upgrade/probation.json")
                .exists();
            no_probation
                && ((d["phase"] == "Confirmed" && d["version"] == V2)
                    || (d["version"] == V1 && d["phase"] != "Probation"))
        });
        dev.assert_consistent();
        eprintln!(
            "kill at {target}: signalled {killed}, last logged phase {last}, current link {cur} \
             -> {} {}",
            d["version"], d["phase"]
        );
        landed.push((target, last));
    }
    eprintln!("kills (wanted, landed after): {landed:?}");
}

/// SIGKILL during probation: each kill is a start attempt; the guard reverts when they run
/// out, and every intermediate state is consistent.
#[test]
fn sigkill_during_probation_counts_attempts_and_reverts() {
    if !require("nats-server") {
        return;
    }
    let sc = Scenario {
        v2_unreachable: true,
        deadline_secs: 120,
        max_attempts: 2,
        ..Scenario::default()
    };
    let dev = Device::start(&sc);
    let artifact = dev.put_v2();
    let sig = dev.sign(&upgrade::v2().agent, &dev.release_key, "release");
    let (ok, reply) = dev.upgrade(&artifact, &sig);
    assert!(ok, "{reply:#}");
    for n in 1..=2 {
        // The heartbeat of *this* start (a killed process leaves its last one behind).
        fleet_testkit::wait_until(UPGRADE_TIMEOUT, "v2 on probation", || {
            let st = dev.status()?;
            let d = &st["details"]["self-upgrade"];
            let this_start = dev.service.main_pid().is_some_and(|p| st["pid"] == p);
            (this_start && d["phase"] == "Probation" && d["version"] == V2).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", dev.log_tail()));
        assert_eq!(dev.v2_starts(), n);
        dev.service.signal_main("KILL");
        dev.assert_consistent();
        std::thread::sleep(Duration::from_millis(300));
    }
    let d = dev.wait_detail("reverted after the kills", UPGRADE_TIMEOUT, |d| {
        d["phase"] == "Reverted" && d["version"] == V1
    });
    assert!(reason(&d).contains("crash loop"), "{d:#}");
    dev.assert_consistent();
}

/// `fleet-agent guard` as `ExecStartPre` on a device with no probation: exit 0 quickly,
/// touching nothing; a bad module section fails it (exit 2) instead of being ignored.
#[test]
fn guard_without_probation_is_a_fast_no_op_and_bad_config_fails_it() {
    let root = fleet_testkit::TempRoot::new().unwrap();
    let config = root.write_config(&format!(
        "device_id = \"g\"\nstate_dir = {:?}\nrun_dir = {:?}\n[modules.self-upgrade]\ninstall_root = {:?}\ncurrent_link = {:?}\n",
        root.state(),
        root.run(),
        root.path().join("lib"),
        root.path().join("bin/fleet-agent"),
    ));
    let started = Instant::now();
    let out = std::process::Command::new(upgrade::V1_BIN)
        .args(["--config", config.to_str().unwrap(), "guard"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !root.state().join("self-upgrade").exists(),
        "nothing written"
    );
    assert!(!root.path().join("lib").exists());
    eprintln!(
        "guard without probation: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );

    let bad = root.write_config(&format!(
        "device_id = \"g\"\nstate_dir = {:?}\n[modules.self-upgrade]\nmax_attempts = 0\n",
        root.state()
    ));
    let out = std::process::Command::new(upgrade::V1_BIN)
        .args(["--config", bad.to_str().unwrap(), "guard"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_attempts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
