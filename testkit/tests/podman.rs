mod common;

use std::time::Duration;

use common::http_get;
use fleet_testkit::{busybox_image, podman, require, wait_until, PodmanScope, Registry};

#[test]
fn busybox_image_runs_and_is_reused() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    assert_eq!(image, "localhost/fleet-test/busybox:testkit");
    assert_eq!(busybox_image("testkit").unwrap(), image);
    let scope = PodmanScope::new("testkit-run").unwrap();
    let name = scope.name("echo");
    let out = podman(&[
        "run",
        "--rm",
        "--name",
        &name,
        "--label",
        &scope.label(),
        &image,
        "echo",
        "hello",
    ])
    .unwrap();
    assert_eq!(out.trim(), "hello");
    let cmd = podman(&["image", "inspect", "--format", "{{.Config.Cmd}}", &image]).unwrap();
    assert!(cmd.contains("/bin/sh"), "{cmd}");
}

#[test]
fn scope_drop_removes_its_containers_only() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let outsider = PodmanScope::new("testkit-outsider").unwrap();
    let scope = PodmanScope::new("testkit/scope with spaces").unwrap();
    assert!(scope
        .label()
        .starts_with("fleet.test.scope=testkit-scope-with-spaces-"));
    for (s, n) in [(&scope, "a"), (&scope, "b"), (&outsider, "c")] {
        podman(&[
            "run",
            "-d",
            "--name",
            &s.name(n),
            "--label",
            &s.label(),
            &image,
            "sleep",
            "300",
        ])
        .unwrap();
    }
    let mut names = scope.containers().unwrap();
    names.sort();
    assert_eq!(names, [scope.name("a"), scope.name("b")]);
    drop(scope);
    assert_eq!(outsider.containers().unwrap(), [outsider.name("c")]);
    let c = outsider.name("c");
    drop(outsider);
    let left = podman(&["ps", "-a", "--filter", &format!("name={c}"), "-q"]).unwrap();
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn push_to_registry_lists_the_tag() {
    if !require("podman") || !require("docker-registry") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let reg = Registry::start().unwrap();
    let scope = PodmanScope::new("testkit-push").unwrap();
    let pushed = scope.push_to(&reg, &image, "fleet/busybox:v1").unwrap();
    assert_eq!(pushed, format!("{}/fleet/busybox:v1", reg.addr()));
    let body = wait_until(Duration::from_secs(10), "tag list", || {
        let (status, body) = http_get(reg.port(), "/v2/fleet/busybox/tags/list");
        (status == 200).then_some(body)
    })
    .unwrap();
    assert!(body.contains("\"v1\""), "{body}");
    // And it runs back from the registry.
    let name = scope.name("pulled");
    let out = podman(&[
        "run",
        "--rm",
        "--tls-verify=false",
        "--pull=always",
        "--name",
        &name,
        "--label",
        &scope.label(),
        &pushed,
        "echo",
        "pulled",
    ])
    .unwrap();
    assert_eq!(out.trim(), "pulled");
    podman(&["rmi", "-f", &pushed]).unwrap();
}
