//! The fake of systemd's transient units keeps a unit's state the way systemd documents it
//! for `Type=exec`, `RemainAfterExit=yes` (`systemd.service(5)`, `systemctl show`), with real
//! processes, and a second instance over the same directory (an agent restart) sees the same
//! units. The engine's tests rely on this; the real `systemd-run` runs in the VM harness.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use fleet_mod_system_upgrade::fake_units::FakeUnits;
use fleet_mod_system_upgrade::units::{Outcome, UnitStatus, Units};

async fn until_done(u: &FakeUnits, unit: &str) -> UnitStatus {
    for _ in 0..200 {
        let st = u.status(unit).await.unwrap();
        if st.outcome() != Outcome::Running {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{unit} still running");
}

fn states(st: &UnitStatus) -> (&str, &str, &str, &str, i32, i32) {
    (
        st.load_state.as_str(),
        st.active_state.as_str(),
        st.sub_state.as_str(),
        st.result.as_str(),
        st.exec_main_code,
        st.exec_main_status,
    )
}

#[tokio::test]
async fn states_follow_systemd_and_survive_a_new_instance() {
    let dir = tempfile::tempdir().unwrap();
    let u = FakeUnits::new(dir.path());
    u.start("ok.service", "ok", "echo hello; echo err >&2")
        .await
        .unwrap();
    u.start("bad.service", "bad", "exit 7").await.unwrap();
    u.start("slow.service", "slow", "sleep 30").await.unwrap();
    assert!(
        u.start("ok.service", "ok", "true").await.is_err(),
        "a name in use is refused"
    );
    // An agent restart: a new instance over the same directory.
    let u = FakeUnits::new(dir.path());
    assert_eq!(
        states(&until_done(&u, "ok.service").await),
        ("loaded", "active", "exited", "success", 1, 0)
    );
    assert_eq!(
        states(&until_done(&u, "bad.service").await),
        ("loaded", "failed", "failed", "exit-code", 1, 7)
    );
    assert_eq!(
        states(&u.status("slow.service").await.unwrap()),
        ("loaded", "active", "running", "success", 0, 0)
    );
    assert_eq!(
        u.journal_tail("ok.service", 20).await.unwrap(),
        "hello\nerr"
    );
    // Stopped: collected (not-found); the journal stays.
    u.stop("slow.service").await.unwrap();
    assert_eq!(
        u.status("slow.service").await.unwrap().load_state,
        "not-found"
    );
    u.stop("ok.service").await.unwrap();
    assert_eq!(
        u.status("ok.service").await.unwrap().load_state,
        "not-found"
    );
    assert_eq!(u.journal_tail("ok.service", 1).await.unwrap(), "err");
    // A failed unit stays failed through stop, until it is released (reset-failed).
    u.stop("bad.service").await.unwrap();
    assert_eq!(
        u.status("bad.service").await.unwrap().active_state,
        "failed"
    );
    u.release("bad.service").await.unwrap();
    assert_eq!(
        u.status("bad.service").await.unwrap().load_state,
        "not-found"
    );
    assert_eq!(u.starts(), 3);
}

#[tokio::test]
async fn a_main_process_killed_from_outside_is_failed_with_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let u = FakeUnits::new(dir.path());
    u.start("k.service", "k", "sleep 30").await.unwrap();
    let pid = std::fs::read_to_string(dir.path().join("k.service/pid")).unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert_eq!(
        states(&until_done(&u, "k.service").await),
        ("loaded", "failed", "failed", "signal", 2, 9)
    );
    u.release("k.service").await.unwrap();
}
