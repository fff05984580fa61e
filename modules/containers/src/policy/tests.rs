//! Unit tests of the device policy.

use super::*;

fn manifest(extra: &str) -> Deployment {
    Deployment::from_toml_str(&format!(
        "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 1\n\
         [container]\nimage = \"localhost/web:1\"\n{extra}"
    ))
    .unwrap()
}

fn refusal(d: &Deployment, p: &Policy) -> String {
    check(d, p, &Logs::default(), "/data")
        .unwrap_err()
        .to_string()
}

#[test]
fn globs_match_device_names() {
    for (p, t, ok) in [
        ("/dev/i2c-*", "/dev/i2c-1", true),
        ("/dev/i2c-*", "/dev/i2c-", true),
        ("/dev/i2c-*", "/dev/i2c", false),
        ("/dev/ttyUSB?", "/dev/ttyUSB0", true),
        ("/dev/ttyUSB?", "/dev/ttyUSB10", false),
        ("/dev/tty*", "/dev/ttyUSB0", true),
        ("/dev/*", "/dev/bus/usb/001", false),
        ("/dev/bus/usb/*/*", "/dev/bus/usb/001/002", true),
        ("/dev/*USB*", "/dev/ttyUSB3", true),
        ("/dev/null", "/dev/null", true),
        ("/dev/null", "/dev/nullx", false),
        ("/dev/**", "/dev/a", true),
        ("*", "", true),
        ("/dev/gpiochip*", "/dev/gpiomem", false),
    ] {
        assert_eq!(glob(p, t), ok, "{p} vs {t}");
    }
}

#[test]
fn secure_defaults_refuse_every_extra_naming_field_and_key() {
    let p = Policy::default();
    for (extra, expect) in [
        (
            "privileged = true",
            "container.privileged is true, but modules.containers.policy.privileged is false",
        ),
        (
            "network = \"host\"",
            "container.network is \"host\", but modules.containers.policy.host_network is false",
        ),
        (
            "ports = [{ hostPort = 80, containerPort = 8080 }]",
            "container.ports[0].hostPort 80 is below 1024, but modules.containers.policy.low_ports is false",
        ),
        (
            "binds = [{ hostPath = \"/etc\", mountPath = \"/x\" }]",
            "container.binds[0].hostPath \"/etc\" is outside modules.containers.policy.bind_roots []",
        ),
        (
            "devices = [{ hostPath = \"/dev/null\" }]",
            "container.devices[0].hostPath \"/dev/null\" is not allowed by modules.containers.policy.devices []",
        ),
        (
            "capAdd = [\"net_admin\"]",
            "container.capAdd[0] \"net_admin\" is not allowed by modules.containers.policy.capabilities []",
        ),
    ] {
        assert_eq!(refusal(&manifest(extra), &p), expect, "{extra}");
    }
    // What needs no policy: high ports, network none, dropping capabilities, tmpfs,
    // read-only root, limits.
    let d = manifest(
        "network = \"none\"\ncapDrop = [\"ALL\"]\nreadOnlyRootFilesystem = true\n\
         tmpfs = [{ mountPath = \"/tmp\" }]\nresources = { memoryMib = 32, pids = 10 }\n",
    );
    assert_eq!(check(&d, &p, &Logs::default(), "/data"), Ok(()));
    let d = manifest("ports = [{ hostPort = 8080, containerPort = 80 }]");
    assert_eq!(check(&d, &p, &Logs::default(), "/data"), Ok(()));
}

#[test]
fn an_allowing_policy_lets_them_through() {
    let p = Policy {
        privileged: true,
        host_network: true,
        low_ports: true,
        bind_roots: vec!["/srv/fleet".into()],
        devices: vec!["/dev/nul?".into()],
        capabilities: vec!["CAP_NET_ADMIN".into()],
    };
    let d = manifest(
        "privileged = true\nnetwork = \"host\"\ncapAdd = [\"NET_ADMIN\"]\n\
         devices = [{ hostPath = \"/dev/null\" }]\n\
         binds = [{ hostPath = \"/srv/fleet/app\", mountPath = \"/x\" }]\n",
    );
    assert_eq!(check(&d, &p, &Logs::default(), "/data"), Ok(()));
    let d = manifest("ports = [{ hostPort = 80, containerPort = 80 }]");
    assert_eq!(check(&d, &p, &Logs::default(), "/data"), Ok(()));
    // One capability allowed is not all of them; ALL only when listed.
    let d = manifest("capAdd = [\"NET_ADMIN\", \"SYS_ADMIN\"]");
    assert!(refusal(&d, &p).starts_with("container.capAdd[1] \"SYS_ADMIN\""));
    let d = manifest("capAdd = [\"ALL\"]");
    assert!(refusal(&d, &p).starts_with("container.capAdd[0] \"ALL\""));
    let all = Policy {
        capabilities: vec!["ALL".into()],
        ..Policy::default()
    };
    let d = manifest("capAdd = [\"ALL\", \"SYS_ADMIN\"]");
    assert_eq!(check(&d, &all, &Logs::default(), "/data"), Ok(()));
}

#[test]
fn bind_roots_compare_components_and_follow_symlinks() {
    let dir = std::env::temp_dir().join(format!("fleet-policy-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(root.join("app"), dir.join("inside-link")).unwrap();
    let r = |p: &Path| p.to_string_lossy().into_owned();
    let roots = vec![r(&root)];
    assert!(within_roots(&root, &roots), "the root itself");
    assert!(within_roots(&root.join("app"), &roots));
    assert!(
        within_roots(&root.join("app/not/yet"), &roots),
        "not there yet"
    );
    assert!(
        !within_roots(&dir.join("rootx"), &roots),
        "a sibling sharing the prefix"
    );
    assert!(!within_roots(&root.join("escape"), &roots), "a symlink out");
    assert!(
        !within_roots(&root.join("escape/deeper/new"), &roots),
        "below a symlink out, not there yet"
    );
    assert!(
        !within_roots(&dir.join("inside-link"), &roots),
        "written outside the roots: refused even when it leads inside"
    );
    // A root that is itself a symlink: paths through it and to its target are inside.
    let link_root = dir.join("link-root");
    std::os::unix::fs::symlink(&root, &link_root).unwrap();
    assert!(within_roots(&link_root.join("app"), &[r(&link_root)]));

    let p = Policy {
        bind_roots: roots.clone(),
        ..Policy::default()
    };
    let d = manifest(&format!(
        "binds = [{{ hostPath = \"{}\", mountPath = \"/x\" }}, {{ hostPath = \"{}\", mountPath = \"/y\" }}]",
        r(&root.join("app")),
        r(&root.join("escape"))
    ));
    let e = refusal(&d, &p);
    assert!(
        e.starts_with("container.binds[1].hostPath") && e.contains("is outside"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_device_is_matched_as_the_node_it_resolves_to() {
    let dir = std::env::temp_dir().join(format!("fleet-policy-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = Policy {
        devices: vec!["/dev/null".into()],
        ..Policy::default()
    };
    // The contract lets only /dev/ paths through; a symlink there is what a udev rule
    // makes (/dev/serial/by-id/...). Model one outside /dev: it resolves to /dev/zero.
    let link = dir.join("dev-link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let mut d = manifest("devices = [{ hostPath = \"/dev/null\" }]");
    assert_eq!(check(&d, &p, &Logs::default(), "/data"), Ok(()));
    d.container.devices[0].host_path = link.to_string_lossy().into_owned();
    let e = refusal(&d, &p);
    assert!(e.contains("(it is \"/dev/zero\")"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_ceiling_and_data_mount_collisions_are_refused() {
    let logs = Logs {
        max_size_mib: 5,
        ceiling_mib: 20,
    };
    let d = manifest("logs = { maxSizeMib = 21 }");
    assert_eq!(
        check(&d, &Policy::default(), &logs, "/data")
            .unwrap_err()
            .to_string(),
        "container.logs.maxSizeMib 21 is above modules.containers.logs.ceiling_mib 20"
    );
    let d = manifest("logs = { maxSizeMib = 20 }");
    assert_eq!(logs.cap_of(&d.container), 20);
    assert_eq!(logs.cap_of(&manifest("").container), 5);
    for (extra, field) in [
        (
            "volumes = [{ name = \"v\", mountPath = \"/data\" }]",
            "container.volumes[0].mountPath",
        ),
        (
            "tmpfs = [{ mountPath = \"/data/\" }]",
            "container.tmpfs[0].mountPath",
        ),
    ] {
        let e = check(&manifest(extra), &Policy::default(), &logs, "/data").unwrap_err();
        assert_eq!(e.field, field);
        assert!(e.reason.contains("modules.containers.data_mount"), "{e}");
    }
    let d = manifest("volumes = [{ name = \"v\", mountPath = \"/data2\" }]");
    assert_eq!(check(&d, &Policy::default(), &logs, "/data"), Ok(()));
}

#[test]
fn config_values_are_checked() {
    let bad = |p: Policy| p.validate().unwrap_err();
    let e = bad(Policy {
        bind_roots: vec!["srv".into()],
        ..Policy::default()
    });
    assert!(e.starts_with("policy.bind_roots[0]"), "{e}");
    for root in ["/", "/srv/../etc", "/srv/./x"] {
        let e = bad(Policy {
            bind_roots: vec![root.into()],
            ..Policy::default()
        });
        assert!(e.starts_with("policy.bind_roots[0]"), "{root}: {e}");
    }
    let e = bad(Policy {
        devices: vec!["/etc/*".into()],
        ..Policy::default()
    });
    assert!(e.starts_with("policy.devices[0]"), "{e}");
    let e = bad(Policy {
        capabilities: vec!["NET_ADMINS".into()],
        ..Policy::default()
    });
    assert!(e.starts_with("policy.capabilities[0]"), "{e}");
    assert!(Logs::default().validate().is_ok());
    let e = Logs {
        max_size_mib: 200,
        ceiling_mib: 100,
    }
    .validate()
    .unwrap_err();
    assert!(e.starts_with("logs.max_size_mib"), "{e}");
    let e = Logs {
        max_size_mib: 1,
        ceiling_mib: 2000,
    }
    .validate()
    .unwrap_err();
    assert!(e.starts_with("logs.ceiling_mib"), "{e}");
}
