//! The OS upgrade module inside the real runtime (SQLite store, local control plane with
//! `system.toml`, check-in signal), against a temp directory laid out like the VM's boot
//! partition. LVM is the one fake (`fake_lvm`): this host has no device-mapper; the real
//! `lvm` CLI runs in the VM harness. Reboots are simulated between agent runs: a new boot
//! id, the trial's command line, the consumed firmware flag, the initramfs's state writes.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

mod os_device;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_mod_system_upgrade::bootstate::State;
use fleet_mod_system_upgrade::bootstate::StateFiles;
use fleet_module_api::Command;
use os_device::{read, wait_file, Device, Gate, OLD_CONFIG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_upgrade_reboots_into_the_trial_and_commits_after_check_in() {
    // The "upgrade" installs a new kernel at the top level, as a kernel postinst does.
    let dev = Device::new("");
    let dev = Device {
        command: format!(
            "echo ran >> {} && echo new-kernel > {}/vmlinuz",
            dev.p("ran").display(),
            dev.boot().display()
        ),
        ..dev
    };
    let run = dev.start();
    dev.request("u-1");
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    assert_eq!(d["id"], "u-1");
    assert_eq!(
        (d["deadlineSecs"].as_u64(), d["maxBoots"].as_u64()),
        (Some(300), Some(2))
    );
    let phases: Vec<&str> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["phase"].as_str().unwrap())
        .collect();
    for p in [
        "Checking",
        "Snapshotting",
        "SavingBootSet",
        "Upgrading",
        "Rebooting",
    ] {
        assert!(phases.contains(&p), "{p} in {phases:?}");
    }

    // The boot partition, exactly as CONTRACT.md §4/§5 lays it out before the reboot.
    let st = dev.state().unwrap();
    assert_eq!(
        (
            st.state,
            st.upgrade.as_str(),
            st.bootcount,
            st.max_boots,
            (st.trials, st.max_trials),
            st.deadline_secs,
            st.selector.as_str()
        ),
        // max_trials: max_boots + the default spare_trial_boots (2).
        (State::Trial, "u-1", 0, 2, (0, 4), 300, "vm")
    );
    assert!(dev.lvm.exists("vg0", "root_preupgrade"));
    let b = dev.boot();
    assert_eq!(read(b.join("fleet/preupgrade/vmlinuz")), "old-kernel");
    assert_eq!(read(b.join("fleet/preupgrade/config.txt")), OLD_CONFIG);
    assert_eq!(read(b.join("vmlinuz")), "new-kernel\n");
    assert_eq!(
        read(b.join("config.txt")),
        format!(
            "{}\n[all]\nos_prefix=fleet/preupgrade/\n",
            OLD_CONFIG.trim_end()
        )
    );
    assert_eq!(
        read(b.join("tryboot.txt")),
        format!(
            "{}\n[all]\ncmdline=fleet/cmdline.trial\n",
            OLD_CONFIG.trim_end()
        )
    );
    assert_eq!(
        read(b.join("fleet/cmdline.trial")),
        "console=ttyS0 root=/dev/vg0/root fleet.upgrade=u-1\n"
    );
    assert!(b.join("tryboot.flag").exists());
    run.stop().await;

    // Boot 2: the trial. The agent checks in (local plane read, modules healthy): commit.
    dev.reboot_into_trial(2, "u-1");
    let run = dev.start();
    // Checked in, but the boot is not marked good yet: no commit (it would race the unit).
    let d = run.wait_phase("Probation").await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !run.detail()["message"]
            .as_str()
            .unwrap_or("")
            .contains("waiting for the boot to be marked good")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not waiting for the good-boot mark: {d:#}"));
    assert_eq!(dev.state().unwrap().state, State::Trial);
    dev.good_boot();
    let d = run.wait_phase("Committed").await;
    assert!(
        d["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["phase"] == "Probation"
                && s["message"]
                    .as_str()
                    .unwrap()
                    .contains("trial boot 1 of at most 4")),
        "{d:#}"
    );
    let st = dev.state().unwrap();
    assert_eq!((st.state, st.upgrade.as_str()), (State::Committed, "u-1"));
    assert_eq!(d["bootState"]["state"], "committed");
    assert_eq!(
        read(b.join("config.txt")),
        OLD_CONFIG,
        "the new set is the default"
    );
    assert!(!b.join("tryboot.txt").exists());
    assert!(!b.join("tryboot.flag").exists());
    assert!(!b.join("fleet/preupgrade").exists());
    assert!(
        !dev.lvm.exists("vg0", "root_preupgrade"),
        "snapshot removed"
    );
    run.stop().await;

    // `fleet-agent status --json` (the VM scenarios' oracle) shows it, read from the store.
    let st = common::status(&dev.root.config_path()).unwrap();
    assert_eq!(
        st["details"]["system-upgrade"]["phase"], "Committed",
        "{st:#}"
    );
    assert_eq!(
        st["details"]["system-upgrade"]["bootState"]["state"],
        "committed"
    );

    // Boot 3, request still desired: idempotent by id, nothing runs again.
    std::fs::write(dev.p("boot_id"), "boot-3\n").unwrap();
    let run = dev.start();
    let d = run.wait_phase("Committed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d["id"], "u-1");
    assert_eq!(dev.lines("ran"), 1, "the upgrade command ran exactly once");
    assert_eq!(dev.lines("reboots"), 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_before_the_command_leaves_the_system_as_it_was() {
    let dev = Device::new("true");
    dev.lvm.fail_next("create");
    let run = dev.start();
    dev.request("u-snap");
    let d = run.wait_phase("Failed").await;
    assert!(
        d["reason"].as_str().unwrap().contains("failure injected"),
        "{d:#}"
    );
    let st = dev.state().unwrap();
    assert_eq!((st.state, st.upgrade.as_str()), (State::Failed, "u-snap"));
    assert!(st.reason.contains("failure injected"));
    assert_eq!(read(dev.boot().join("config.txt")), OLD_CONFIG);
    assert!(!dev.boot().join("fleet/preupgrade").exists());
    assert!(!dev.lvm.exists("vg0", "root_preupgrade"));
    assert_eq!(dev.lines("reboots"), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_command_requests_a_rollback_and_reports_rolled_back_after_the_initramfs() {
    let dev = Device::new("echo disk full >&2; exit 100");
    let run = dev.start();
    dev.request("u-bad");
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    assert!(
        d["message"].as_str().unwrap().contains("rolling back"),
        "{d:#}"
    );
    let st = dev.state().unwrap();
    assert_eq!(st.state, State::Rollback);
    assert!(
        st.reason.contains("upgrade command failed"),
        "{}",
        st.reason
    );
    assert!(st.reason.contains("disk full"), "{}", st.reason);
    assert!(!dev.boot().join("tryboot.flag").exists(), "never armed");
    run.stop().await;

    dev.initramfs_rolled_back(2, &st.reason, 0);
    let run = dev.start();
    let d = run.wait_phase("RolledBack").await;
    assert!(d["reason"].as_str().unwrap().contains("disk full"), "{d:#}");
    assert_eq!(d["boots"], 0);
    assert_eq!(read(dev.boot().join("vmlinuz")), "old-kernel");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_failed_trial_is_reported_rolled_back_with_its_boot_count() {
    let dev = Device::new("true");
    let run = dev.start();
    dev.request("u-hard");
    wait_file(&dev.p("reboots")).await;
    run.wait_phase("Rebooting").await;
    run.stop().await;
    // The trial kernel never came up twice; the initramfs rolled back (CONTRACT §6).
    dev.initramfs_rolled_back(4, "2 boots without reaching userspace", 3);
    let run = dev.start();
    let d = run.wait_phase("RolledBack").await;
    assert_eq!(d["reason"], "2 boots without reaching userspace");
    assert_eq!(d["boots"], 3);
    assert_eq!(d["bootState"]["state"], "rolled-back");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verb_is_idempotent_by_id_and_refused_while_another_runs() {
    let dev = Device::new("sleep 2");
    let run = dev.start();
    // The module runs (it published its first detail) before commands are sent.
    tokio::time::timeout(Duration::from_secs(20), async {
        while !run.detail().is_object() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    let cmd = |id: &str, args: serde_json::Value| Command {
        id: format!("c-{id}"),
        verb: "system-upgrade".into(),
        args,
        actor: "alice".into(),
    };
    let req = |id: &str| serde_json::json!({ "apiVersion": "fleet/v1", "id": id });
    let r = run.handle.command(cmd("1", req("u-a"))).await.unwrap();
    assert_eq!(r.body["accepted"], true, "{:#}", r.body);
    let r = run.handle.command(cmd("2", req("u-a"))).await.unwrap();
    assert_eq!(
        (r.body["accepted"].clone(), r.body["known"].clone()),
        (false.into(), true.into())
    );
    let e = run.handle.command(cmd("3", req("u-b"))).await.unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
    assert!(e.to_string().contains("u-a is in progress"), "{e}");
    let e = run
        .handle
        .command(cmd(
            "4",
            serde_json::json!({ "apiVersion": "fleet/v1", "id": "u c" }),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "bad-request");
    assert!(e.to_string().contains("field `id`"), "{e}");
    let d = run.wait_phase("Rebooting").await;
    assert_eq!(d["requestedBy"], "command:alice");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probation_waits_for_healthy_modules_and_a_deadline_rollback_wins_over_a_late_commit() {
    let dev = Device::new("true");
    let run = dev.start();
    dev.request("u-late");
    wait_file(&dev.p("reboots")).await;
    run.wait_phase("Rebooting").await;
    run.stop().await;

    dev.reboot_into_trial(2, "u-late");
    let gate = Arc::new(Gate {
        healthy: AtomicBool::new(false),
    });
    let run = dev.start_with(Some(gate.clone()));
    let d = run.wait_phase("Probation").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let d2 = run.detail();
    assert_eq!(
        d2["phase"], "Probation",
        "no commit while a module is unhealthy: {d2:#}"
    );
    assert!(
        d2["message"].as_str().unwrap().contains("unhealthy: gate"),
        "{d:#} {d2:#}"
    );
    // The deadline timer fires first (CONTRACT §5) ...
    let mut st = dev.state().unwrap();
    st.state = State::Rollback;
    st.reason = "deadline: not committed within 300 s".into();
    StateFiles::new(dev.boot().join("fleet"))
        .write(&st)
        .unwrap();
    // ... then the agent checks in: the rollback wins, nothing is committed.
    gate.healthy.store(true, Ordering::SeqCst);
    let d = run.wait_phase("Rebooting").await;
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("rollback requested"),
        "{d:#}"
    );
    assert_eq!(dev.state().unwrap().state, State::Rollback);
    assert!(
        dev.lvm.exists("vg0", "root_preupgrade"),
        "the snapshot is kept for the merge"
    );
    assert!(dev.boot().join("fleet/preupgrade").is_dir());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_is_not_ours_is_never_removed() {
    use fleet_mod_system_upgrade::lvm::Lvm;
    let dev = Device::new("true");
    dev.lvm
        .create_snapshot("vg0", "root", "root_preupgrade")
        .await
        .unwrap();
    let run = dev.start();
    dev.request("u-2");
    let d = run.wait_phase("Failed").await;
    assert!(
        d["reason"].as_str().unwrap().contains("already exists"),
        "{d:#}"
    );
    assert!(dev.lvm.exists("vg0", "root_preupgrade"), "left alone");
    assert_eq!(dev.state(), None, "the boot partition was not touched");
    assert_eq!(read(dev.boot().join("config.txt")), OLD_CONFIG);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_accepted_but_not_started_is_carried_out_once_after_a_restart() {
    use fleet_mod_system_upgrade::record::{Phase, Record};
    let dev = Device::new("");
    let dev = Device {
        command: format!("echo ran >> {}", dev.p("ran").display()),
        ..dev
    };
    // The store as an agent leaves it when it stopped right after accepting `u-q`.
    let path = common::write_config(&dev.root, "");
    let config = Config::load(&path).unwrap();
    let (store, _) = fleet_agent::store::Store::open(
        &config.state_db(),
        Duration::from_secs(5),
        config.store.audit_max_entries,
    )
    .unwrap();
    let mut rec = Record {
        id: "u-q".into(),
        command: dev.command.clone(),
        unit: None,
        command_started_at: None,
        deadline_secs: 300,
        max_boots: 2,
        requested_by: "command:alice".into(),
        phase: Phase::Checking,
        message: String::new(),
        reason: None,
        boots: None,
        boot_id: String::new(),
        started_at: 1,
        updated_at: 1,
        history: Vec::new(),
    };
    rec.enter(Phase::Checking, "accepted", 1, "boot-1");
    store
        .kv_put(
            "system-upgrade",
            "upgrade.u-q",
            &serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    store.kv_put("system-upgrade", "current", b"u-q").unwrap();
    drop(store);

    let run = dev.start();
    wait_file(&dev.p("reboots")).await;
    let d = run.wait_phase("Rebooting").await;
    assert_eq!(
        (d["id"].as_str(), d["requestedBy"].as_str()),
        (Some("u-q"), Some("command:alice"))
    );
    assert_eq!(dev.state().unwrap().state, State::Trial);
    run.stop().await;
    assert_eq!(dev.lines("ran"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_request_refused_during_an_upgrade_starts_when_it_ends() {
    let dev = Device::new("");
    let dev = Device {
        command: format!("echo ran >> {}", dev.p("ran").display()),
        ..dev
    };
    let run = dev.start();
    dev.request("u-a");
    wait_file(&dev.p("reboots")).await;
    run.wait_phase("Rebooting").await;
    run.stop().await;

    dev.reboot_into_trial(2, "u-a");
    let gate = Arc::new(Gate {
        healthy: AtomicBool::new(false),
    });
    let run = dev.start_with(Some(gate.clone()));
    run.wait_phase("Probation").await;
    dev.request("u-b");
    let d = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let d = run.detail();
            if d["rejected"]
                .as_str()
                .is_some_and(|r| r.contains("u-a is in progress"))
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("u-b not refused: {:#}", run.detail()));
    assert_eq!(d["id"], "u-a");
    // u-a commits; then u-b runs without any change to the desired state.
    dev.good_boot();
    gate.healthy.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(run.detail()["id"] == "u-b" && run.detail()["phase"] == "Rebooting") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("u-b did not run: {:#}", run.detail()));
    assert_eq!(dev.lines("ran"), 2, "u-a once, u-b once");
    assert_eq!(run.detail()["rejected"], serde_json::Value::Null);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_cleanup_failed_is_finished_at_the_next_start() {
    let dev = Device::new("true");
    let run = dev.start();
    dev.request("u-c");
    wait_file(&dev.p("reboots")).await;
    run.wait_phase("Rebooting").await;
    run.stop().await;

    dev.reboot_into_trial(2, "u-c");
    dev.good_boot();
    dev.lvm.fail_next("remove");
    let run = dev.start();
    let d = run.wait_phase("Committed").await;
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("cleanup incomplete"),
        "{d:#}"
    );
    assert!(dev.lvm.exists("vg0", "root_preupgrade"));
    assert_eq!(dev.state().unwrap().state, State::Committed);
    run.stop().await;

    std::fs::write(dev.p("boot_id"), "boot-3\n").unwrap();
    let run = dev.start();
    tokio::time::timeout(Duration::from_secs(20), async {
        while dev.lvm.exists("vg0", "root_preupgrade") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the snapshot is removed at the next start");
    let d = run.wait_phase("Committed").await;
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("snapshot and saved boot set removed"),
        "{d:#}"
    );
    assert!(!dev.boot().join("fleet/preupgrade").exists());
    run.stop().await;
}
