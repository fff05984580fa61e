//! The state file is read and written by Rust (the agent) and POSIX sh (initramfs, units):
//! what one writes the other must read, field for field, with the same "newest valid copy
//! wins, write over the other copy" rule (CONTRACT.md §2). The shell side is
//! `fleet_state_read BOOT` / `fleet_state_write BOOT` (vars `FS_*`; BOOT is the boot
//! partition's mount point, the files are `BOOT/fleet/state.{a,b}`) of
//! `initramfs/lib/fleet-bootstate.sh`; these tests fail, not skip, while it is missing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use fleet_mod_system_upgrade::bootstate::{BootState, State, StateFiles};

fn lib() -> PathBuf {
    let lib =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../initramfs/lib/fleet-bootstate.sh");
    assert!(
        lib.is_file(),
        "{} is missing: the shell reader/writer of the boot-partition state (fleet_state_read, \
         fleet_state_write) is not on this branch yet; this test must fail until it is",
        lib.display()
    );
    lib
}

const VARS: [&str; 11] = [
    "FS_SEQ",
    "FS_UPGRADE",
    "FS_STATE",
    "FS_BOOTCOUNT",
    "FS_MAX_BOOTS",
    "FS_TRIALS",
    "FS_MAX_TRIALS",
    "FS_DEADLINE_SECS",
    "FS_SELECTOR",
    "FS_REASON",
    "FS_BOOTS",
];

/// Runs `body` after sourcing the library; returns (exit code, stdout).
fn sh(body: &str) -> (i32, String) {
    let script = format!(". '{}'\n{body}", lib().display());
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some(),
        "sh killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// What `fleet_state_read BOOT` sets, one `NAME=value` line per var.
fn sh_read(boot: &Path) -> Option<Vec<(String, String)>> {
    let print: String = VARS
        .iter()
        .map(|v| format!("printf '%s=%s\\n' {v} \"${v}\"\n"))
        .collect();
    let (code, out) = sh(&format!(
        "fleet_state_read '{}' || exit 7\n{print}",
        boot.display()
    ));
    match code {
        0 => Some(
            out.lines()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
        ),
        7 => None,
        other => panic!("fleet_state_read exited {other}: {out}"),
    }
}

fn as_vars(s: &BootState) -> Vec<(String, String)> {
    [
        s.seq.to_string(),
        s.upgrade.clone(),
        s.state.as_str().to_owned(),
        s.bootcount.to_string(),
        s.max_boots.to_string(),
        s.trials.to_string(),
        s.max_trials.to_string(),
        s.deadline_secs.to_string(),
        s.selector.clone(),
        s.reason.clone(),
        s.boots.to_string(),
    ]
    .into_iter()
    .zip(VARS)
    .map(|(v, k)| (k.to_owned(), v))
    .collect()
}

fn sample(state: State, reason: &str) -> BootState {
    BootState {
        seq: 0,
        upgrade: "2026-11-23.a_1".into(),
        state,
        bootcount: 2,
        max_boots: 3,
        trials: 4,
        max_trials: 5,
        deadline_secs: 600,
        selector: "rpi-tryboot".into(),
        reason: reason.into(),
        boots: 3,
    }
}

#[test]
fn shell_reads_what_rust_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    assert_eq!(
        sh_read(dir.path()),
        None,
        "no copy: fleet_state_read returns 1"
    );
    let files = StateFiles::new(&fleet);
    for (state, reason) in [
        (State::Upgrading, ""),
        (State::Trial, ""),
        (
            State::RolledBack,
            "deadline: not committed within 600 s; it's = \"quoted\" $HOME `x`",
        ),
        (State::Failed, "snapshot vg0/root_preupgrade is missing"),
    ] {
        let written = files.write(&sample(state, reason)).unwrap();
        assert_eq!(
            sh_read(dir.path()),
            Some(as_vars(&written)),
            "after writing {state}"
        );
    }
    // A corrupted newest copy: the shell falls back to the older one, like Rust.
    let (newest, copy) = files.read().unwrap().unwrap();
    let name = match copy {
        fleet_mod_system_upgrade::bootstate::Copy::A => "state.a",
        fleet_mod_system_upgrade::bootstate::Copy::B => "state.b",
    };
    let mut bytes = std::fs::read(fleet.join(name)).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(fleet.join(name), &bytes).unwrap();
    let older = files.current().unwrap().unwrap();
    assert!(older.seq < newest.seq);
    assert_eq!(sh_read(dir.path()), Some(as_vars(&older)));
}

#[test]
fn rust_reads_what_the_shell_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).unwrap();
    let files = StateFiles::new(&fleet);
    let first = files.write(&sample(State::Trial, "")).unwrap();
    let set = |s: &BootState| -> String {
        as_vars(s)
            .into_iter()
            .filter(|(k, _)| k != "FS_SEQ")
            .map(|(k, v)| format!("{k}='{}'\n", v.replace('\'', "'\\''")))
            .collect()
    };
    let want = sample(State::Rollback, "deadline: not committed within 600 s");
    let (code, out) = sh(&format!(
        "fleet_state_read '{d}' || exit 9\n{}fleet_state_write '{d}'",
        set(&want),
        d = dir.path().display()
    ));
    assert_eq!(code, 0, "fleet_state_write failed: {out}");
    let (got, copy) = files.read().unwrap().expect("Rust reads the shell's copy");
    assert_eq!(got.seq, first.seq + 1, "seq = winner's + 1");
    assert_eq!(
        copy,
        fleet_mod_system_upgrade::bootstate::Copy::B,
        "written over the copy that did not win"
    );
    assert_eq!(BootState { seq: 0, ..got }, want);
    // And the untouched older copy is still valid (a torn write would have left it in force).
    let a = BootState::parse(&std::fs::read(fleet.join("state.a")).unwrap()).unwrap();
    assert_eq!(a, first);
}
