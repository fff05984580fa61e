//! `fleetctl provision` against a real OpenSSH `sshd` spawned per test on a free loopback
//! port (temp host key, temp authorized key): the failures that must leave a device
//! untouched, and a dry run on this host that must not change it. Nothing is installed
//! here; the real install, the heartbeat and the no-sudo user run against the VM guest.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

use fleet_testkit::{free_port, require, Sshd, SSHD};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");

fn have_ssh() -> bool {
    require("ssh") && require("ssh-keygen") && require(SSHD)
}

fn provision(args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("provision")
        .args(args)
        .env_remove("FLEETCTL_NATS")
        .env_remove("FLEETCTL_MQTT")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A package dir holding a dummy fleet-agent .deb for `arch` (never installed: dry runs
/// and failures stop before the copy).
fn deb_dir(dir: &Path, arch: &str) -> String {
    let d = dir.join("packages");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join(format!("fleet-agent_9.9.9~test_{arch}.deb")),
        b"not a deb",
    )
    .unwrap();
    d.display().to_string()
}

fn host_arch() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn identity(sshd: &Sshd) -> String {
    format!("IdentityFile={}", sshd.client_key().display())
}

#[test]
fn host_key_mismatch_is_named_and_no_command_runs() {
    if !have_ssh() {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("known_hosts");
    sshd.write_wrong_known_hosts(&wrong).unwrap();
    let out = provision(&[
        "--known-hosts",
        wrong.to_str().unwrap(),
        "--ssh-option",
        &identity(&sshd),
        "--deb-dir",
        &deb_dir(tmp.path(), &host_arch()),
        &sshd.target(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("{}: host key mismatch", sshd.target())),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    // The client refused before authenticating: the server never ran a command.
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn unknown_host_key_is_refused_under_strict_checking() {
    if !have_ssh() {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let out = provision(&[
        "--known-hosts",
        empty.to_str().unwrap(),
        "--ssh-option",
        &identity(&sshd),
        "--deb-dir",
        &deb_dir(tmp.path(), &host_arch()),
        &sshd.target(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("host key verification failed"), "{stderr}");
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn unreachable_port_is_named() {
    if !require("ssh") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = format!("root@127.0.0.1:{port}");
    let out = provision(&["--deb-dir", &deb_dir(tmp.path(), "amd64"), &target]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{target}: unreachable: 127.0.0.1:{port}: connection refused"
        )),
        "{stderr}"
    );
}

/// What a dry run must leave exactly as it was on the probed host.
fn host_state() -> (Option<Vec<u8>>, bool, String) {
    let config = std::fs::read("/etc/fleet-agent/config.toml").ok();
    let creds = Path::new("/etc/fleet-agent/creds").exists();
    let pkg = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Version}", "fleet-agent"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (config, creds, pkg)
}

/// These tests log in as root over the test's own sshd; as another user they skip.
fn is_root() -> bool {
    let uid = Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    if !root {
        eprintln!("SKIPPING TEST: logs in as root over the test sshd (run the tests as root)");
    }
    root
}

#[test]
fn dry_run_as_root_prints_the_plan_and_changes_nothing() {
    if !have_ssh() {
        return;
    }
    if !is_root() {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let arch = host_arch();
    let debs = deb_dir(tmp.path(), &arch);
    let creds = tmp.path().join("device.creds");
    std::fs::write(&creds, "SECRET-SEED-DO-NOT-LOG\n").unwrap();
    let before = host_state();
    let kh = sshd.known_hosts();
    let id = identity(&sshd);
    let target = sshd.target();
    let common = [
        "--dry-run",
        "--known-hosts",
        kh.to_str().unwrap(),
        "--ssh-option",
        &id,
        "--deb-dir",
        &debs,
        "--set",
        "device_id=prov-dry-run",
        "--set",
        "control.plane=nats",
        "--set",
        r#"control.nats.servers=["nats://127.0.0.1:4222"]"#,
        "--credentials",
        creds.to_str().unwrap(),
    ];

    let out = provision(&[&common[..], &[target.as_str()]].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        sshd.log()
    );
    assert!(
        stdout.contains(&format!("{target}: plan (dry run; nothing was changed)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("install fleet-agent 9.9.9~test (dpkg -i)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write /etc/fleet-agent/config.toml (0640)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("credentials file under /etc/fleet-agent/creds"),
        "{stdout}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("SECRET-SEED"),
        "secret printed"
    );
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());

    let out = provision(&[&common[..], &["--json", target.as_str()]].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["result"], "planned", "{v}");
    assert_eq!(v["arch"], arch.as_str(), "{v}");
    assert_eq!(v["device"], "prov-dry-run", "{v}");
    assert!(v["heartbeat"].is_null(), "{v}");

    assert_eq!(host_state(), before, "the dry run changed this host");
    assert!(
        std::fs::read(Path::new(&debs).join(format!("fleet-agent_9.9.9~test_{arch}.deb"))).unwrap()
            == b"not a deb"
    );
}

#[test]
fn unsupported_architecture_is_refused_after_the_probe() {
    if !have_ssh() {
        return;
    }
    if !is_root() {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let before = host_state();
    let arch = host_arch();
    let other = if arch == "amd64" { "riscv64" } else { "amd64" };
    let out = provision(&[
        "--known-hosts",
        sshd.known_hosts().to_str().unwrap(),
        "--ssh-option",
        &identity(&sshd),
        "--deb-dir",
        &deb_dir(tmp.path(), other),
        &sshd.target(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: unsupported architecture {arch}: no fleet-agent_*_{arch}.deb",
            sshd.target()
        )),
        "{stderr}"
    );
    assert_eq!(host_state(), before);
}

#[test]
fn fleet_mode_reports_every_host_and_fails_when_one_does() {
    if !have_ssh() {
        return;
    }
    if !is_root() {
        return;
    }
    let a = Sshd::start().unwrap();
    let b = Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let before = host_state();
    // One known_hosts for both servers, as an operator's would be.
    let kh = tmp.path().join("known_hosts");
    let both = format!(
        "{}{}",
        std::fs::read_to_string(a.known_hosts()).unwrap(),
        std::fs::read_to_string(b.known_hosts()).unwrap()
    );
    std::fs::write(&kh, both).unwrap();
    let dead = free_port();
    let hosts = tmp.path().join("fleet.txt");
    std::fs::write(
        &hosts,
        format!(
            "# lab\n{} device_id=pi-a\n{} device_id=pi-b\nroot@127.0.0.1:{dead}\n",
            a.target(),
            b.target()
        ),
    )
    .unwrap();
    // Both servers authorize their own client key; offer both.
    let args = |json: bool| {
        let mut v = vec![
            "--hosts".to_owned(),
            hosts.display().to_string(),
            "--parallel".into(),
            "2".into(),
            "--dry-run".into(),
            "--known-hosts".into(),
            kh.display().to_string(),
            "--ssh-option".into(),
            identity(&a),
            "--ssh-option".into(),
            identity(&b),
            "--deb-dir".into(),
            deb_dir(tmp.path(), &host_arch()),
        ];
        if json {
            v.push("--json".into());
        }
        v
    };
    let a_args = args(true);
    let out = provision(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    assert_eq!(rows[0]["host"], a.target().as_str());
    assert_eq!(rows[0]["result"], "planned", "{v}");
    assert_eq!(rows[0]["device"], "pi-a", "per-host override: {v}");
    assert_eq!(rows[1]["device"], "pi-b", "{v}");
    assert_eq!(rows[2]["result"], "failed", "{v}");
    assert!(
        rows[2]["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{v}"
    );
    // Not a terminal: one progress line per state change, on stderr.
    assert!(
        stderr.contains(&format!("{}: probing", a.target())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}: planned", b.target())),
        "{stderr}"
    );

    let h_args = args(false);
    let out = provision(&h_args.iter().map(String::as_str).collect::<Vec<_>>());
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("HOST") && lines[0].contains("SECONDS"),
        "{stdout}"
    );
    assert!(lines[1].contains("planned"), "{stdout}");
    assert!(stdout.contains("3 host(s): 2 ok, 1 failed"), "{stdout}");
    assert_eq!(host_state(), before);
}
