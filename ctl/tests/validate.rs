//! `fleetctl validate`: several files, one line each, exit 1 if any is invalid; a bad value
//! in any of the container fields is named with file, line, column and field.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Output;

use fleet_testkit::TempRoot;

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");

fn reference() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/reference/sensor.toml"),
    )
    .unwrap()
}

fn validate(files: &[&Path]) -> Output {
    let mut cmd = std::process::Command::new(CTL);
    cmd.arg("validate").args(files);
    fleet_testkit::output_within(&mut cmd, fleet_testkit::COMMAND_LIMIT).unwrap()
}

/// 1-based line of the first line holding `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    src.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn write(root: &TempRoot, name: &str, text: &str) -> PathBuf {
    let p = root.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn several_files_one_line_each_and_exit_1_on_any_invalid() {
    let root = TempRoot::new().unwrap();
    let good = write(&root, "sensor.toml", &reference());
    let bad = write(
        &root,
        "bad.toml",
        &reference().replace("hostPort = 5683", "hostPort = 0"),
    );
    let missing = root.path().join("missing.toml");
    let out = validate(&[&good, &bad, &missing]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stdout,
        format!("{}: ok (deployment sensor revision 2)\n", good.display())
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0],
        format!(
            "{}: line {}, column 1: field `container.ports[1].hostPort`: 0 is not a port; use 1..=65535",
            bad.display(),
            line_of(&std::fs::read_to_string(&bad).unwrap(), "hostPort = 0"),
        )
    );
    assert!(
        lines[1].starts_with(&format!("{}: ", missing.display())),
        "{stderr}"
    );

    let out = validate(&[&good, &good]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
}

/// Each new container field, broken, is refused naming its field and line.
#[test]
fn every_container_field_is_checked() {
    let root = TempRoot::new().unwrap();
    let mut unlocated = Vec::new();
    for (from, to, field) in [
        (
            "pullPolicy = \"always\"",
            "pullPolicy = \"never\"",
            "container.pullPolicy",
        ),
        (
            "workingDir = \"/app\"",
            "workingDir = \"app\"",
            "container.workingDir",
        ),
        ("user = \"1000\"", "user = \"Root\"", "container.user"),
        (
            "capAdd = [\"NET_BIND_SERVICE\"]",
            "capAdd = [\"NET_BIND\"]",
            "container.capAdd[0]",
        ),
        (
            "memoryMib = 32",
            "memoryMib = 2",
            "container.resources.memoryMib",
        ),
        (
            "maxSizeMib = 5",
            "maxSizeMib = 5000",
            "container.logs.maxSizeMib",
        ),
        (
            "hostIp = \"127.0.0.1\"",
            "hostIp = \"lo\"",
            "container.ports[0].hostIp",
        ),
        (
            "name = \"db\"",
            "name = \"DB\"",
            "container.volumes[0].name",
        ),
        (
            "hostPath = \"/srv/fleet/sensor\"",
            "hostPath = \"srv\"",
            "container.binds[0].hostPath",
        ),
        (
            "permissions = \"rw\"",
            "permissions = \"rx\"",
            "container.devices[0].permissions",
        ),
        ("sizeMib = 16", "sizeMib = 0", "container.tmpfs[0].sizeMib"),
        (
            "failureThreshold = 2",
            "failureThreshold = 0",
            "container.probes[0].failureThreshold",
        ),
        (
            "initialDelaySecs = 3",
            "initialDelaySecs = 9999",
            "container.probes[1].initialDelaySecs",
        ),
    ] {
        let src = reference().replace(from, to);
        assert_ne!(src, reference(), "{from}");
        let line = line_of(&src, to.lines().next().unwrap());
        let f = write(&root, "m.toml", &src);
        let out = validate(&[&f]);
        assert_eq!(out.status.code(), Some(1), "{from}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!("field `{field}`: ")),
            "{from} -> {to}: {stderr}"
        );
        if !stderr.starts_with(&format!("{}: line {line}, column ", f.display())) {
            unlocated.push(stderr);
        }
    }
    assert!(unlocated.is_empty(), "not located:\n{}", unlocated.join(""));
}
