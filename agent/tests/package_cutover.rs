//! `fleet-agent package-cutover`, as the Debian postinst runs it from the newly unpacked
//! binary: with `--restart` it self-tests that binary (a real process), writes the
//! probation record and swaps the current link; a failing self-test moves nothing.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");
const NEW: &str = fleet_agent::VERSION;
const OLD: &str = "0.0.1-old";

struct Device {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Device {
    /// Version OLD installed (confirmed and current) and NEW unpacked beside it.
    fn new(control: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        for v in [OLD, NEW] {
            std::fs::create_dir_all(root.join("lib/versions").join(v)).unwrap();
        }
        std::fs::write(
            root.join("lib/versions").join(OLD).join("fleet-agent"),
            "old",
        )
        .unwrap();
        std::fs::copy(BIN, root.join("lib/versions").join(NEW).join("fleet-agent")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        symlink(Path::new("versions").join(OLD), root.join("lib/confirmed")).unwrap();
        symlink(
            root.join("lib/versions").join(OLD).join("fleet-agent"),
            root.join("bin/fleet-agent"),
        )
        .unwrap();
        for d in ["state", "run", "deployments.d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "device_id = \"pkg\"\nstate_dir = {:?}\nrun_dir = {:?}\n\n[modules.self-upgrade]\ninstall_root = {:?}\ncurrent_link = {:?}\nconfig_path = {:?}\n\n[control]\ndeployments_dir = {:?}\n{control}\n",
                root.join("state"),
                root.join("run"),
                root.join("lib"),
                root.join("bin/fleet-agent"),
                config,
                root.join("deployments.d"),
            ),
        )
        .unwrap();
        Self { _tmp: tmp, root }
    }

    fn cutover(&self, extra: &[&str]) -> std::process::Output {
        let new_bin = self.root.join("lib/versions").join(NEW).join("fleet-agent");
        let config = self.root.join("config.toml");
        // The copy was written by this process: a child forked meanwhile by a test on
        // another thread holds its write descriptor until that child execs, and exec of
        // the copy then fails with ETXTBSY. Only that error is retried, briefly.
        let mut tries = 0;
        loop {
            match Command::new(&new_bin)
                .args(["--config", config.to_str().unwrap(), "package-cutover"])
                .args(extra)
                .output()
            {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    fn current(&self) -> PathBuf {
        std::fs::read_link(self.root.join("bin/fleet-agent")).unwrap()
    }

    fn record(&self, name: &str) -> Option<serde_json::Value> {
        let p = self.root.join("state/self-upgrade").join(name);
        std::fs::read(p)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }
}

#[test]
fn with_the_service_running_the_new_version_is_self_tested_and_put_on_probation() {
    let d = Device::new("plane = \"local\"");
    let out = d.cutover(&["--from", OLD, "--restart"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("on probation"), "{stdout}");
    assert_eq!(
        d.current(),
        d.root.join("lib/versions").join(NEW).join("fleet-agent")
    );
    assert_eq!(
        std::fs::read_link(d.root.join("lib/confirmed")).unwrap(),
        Path::new("versions").join(OLD)
    );
    let p = d.record("probation.json").expect("probation record");
    assert_eq!(p["from"], OLD);
    assert_eq!(p["to"], NEW);
}

#[test]
fn a_failing_self_test_exits_1_and_leaves_the_old_version_current() {
    // Nothing listens on port 1: the new binary's control-plane check fails.
    let d = Device::new("plane = \"nats\"\n\n[control.nats]\nservers = [\"nats://127.0.0.1:1\"]");
    let out = d.cutover(&["--from", OLD, "--restart"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("self-test"), "{stderr}");
    assert_eq!(
        d.current(),
        d.root.join("lib/versions").join(OLD).join("fleet-agent")
    );
    assert!(d.record("probation.json").is_none());
    assert_eq!(d.record("outcome.json").unwrap()["outcome"], "reverted");
}
