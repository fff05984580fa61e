//! Semantic checks of the main container's spec that serde cannot express. Each returns
//! `(field path, message)`; the path is the manifest's camelCase, e.g. `container.ports[1].hostPort`.
//! What the *device* allows (privileged mode, host network, bind roots, devices, capabilities,
//! low ports) is not decided here: it is the containers module's policy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::container::{ContainerSpec, NetworkMode};
use super::probe::{Probe, ProbeCheck};
use super::{check_argv, check_image, check_name};
use crate::quote;
use crate::text::{argv_problem, MAX_ARG_BYTES};

type Checked = Result<(), (String, String)>;

/// Most entries in each list of the container spec (ports, volumes, binds, devices, tmpfs,
/// capabilities, labels, probes).
pub const MAX_LIST_ENTRIES: usize = 64;

/// Every Linux capability podman knows (without the `CAP_` prefix).
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// A capability name as written (`NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`) in the canonical
/// form without prefix, or `None` when Linux has no such capability. `ALL` is kept as is.
pub fn canonical_capability(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    (bare == "ALL" || CAPABILITIES.contains(&bare)).then(|| bare.to_owned())
}

pub(super) fn check_container(c: &ContainerSpec) -> Checked {
    check_image("container.image", &c.image)?;
    check_argv("container.command", &c.command)?;
    check_env(&c.env)?;
    if let Some(dir) = &c.working_dir {
        check_abs_path("container.workingDir", dir)?;
    }
    if let Some(user) = &c.user {
        check_account("container.user", user)?;
    }
    if let Some(group) = &c.group {
        if c.user.is_none() {
            return Err((
                "container.group".into(),
                "needs `user` as well (podman takes user:group)".into(),
            ));
        }
        check_account("container.group", group)?;
    }
    for (field, len) in [
        ("container.ports", c.ports.len()),
        ("container.volumes", c.volumes.len()),
        ("container.binds", c.binds.len()),
        ("container.devices", c.devices.len()),
        ("container.tmpfs", c.tmpfs.len()),
        ("container.capAdd", c.cap_add.len()),
        ("container.capDrop", c.cap_drop.len()),
        ("container.labels", c.labels.len()),
        ("container.probes", c.probes.len()),
    ] {
        if len > MAX_LIST_ENTRIES {
            return Err((
                field.into(),
                format!("{len} entries; at most {MAX_LIST_ENTRIES}"),
            ));
        }
    }
    check_ports(c)?;
    check_mounts(c)?;
    check_devices(c)?;
    for (field, caps) in [
        ("container.capAdd", &c.cap_add),
        ("container.capDrop", &c.cap_drop),
    ] {
        for (i, cap) in caps.iter().enumerate() {
            if canonical_capability(cap).is_none() {
                return Err((
                    format!("{field}[{i}]"),
                    format!(
                        "{} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME, or ALL)",
                        quote(cap)
                    ),
                ));
            }
        }
    }
    check_labels(&c.labels)?;
    let r = &c.resources;
    check_range("container.resources.memoryMib", r.memory_mib, 6, 1_048_576)?;
    check_range("container.resources.cpuMillis", r.cpu_millis, 10, 1_024_000)?;
    check_range("container.resources.pids", r.pids, 1, 4_194_304)?;
    check_range("container.logs.maxSizeMib", c.logs.max_size_mib, 1, 1024)?;
    check_probes(c)?;
    Ok(())
}

pub(super) fn check_env(env: &BTreeMap<String, String>) -> Checked {
    for (key, value) in env {
        // `KEY=VALUE` is one environment entry; the value is never quoted (it may be secret).
        if let Some(why) = argv_problem(value).or_else(|| {
            (key.len() + 1 + value.len() > MAX_ARG_BYTES)
                .then(|| format!("KEY=VALUE is more than {MAX_ARG_BYTES} bytes"))
        }) {
            return Err((format!("container.env.{key}"), format!("the value {why}")));
        }
    }
    for key in env.keys() {
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err((
                format!("container.env.{key}"),
                "environment variable names use A-Z, a-z, 0-9 and '_' and do not start with a digit"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn check_range(field: &str, v: Option<u32>, min: u32, max: u32) -> Checked {
    match v {
        Some(v) if !(min..=max).contains(&v) => {
            Err((field.into(), format!("{v} is outside {min}..={max}")))
        }
        _ => Ok(()),
    }
}

/// An absolute, normalised path podman can take in `--volume`/`--device`/`--tmpfs`: starts
/// with `/`, no `..` or `.` component, no `:` or `,` (podman's separators), printable, at
/// most 4096 bytes.
pub(super) fn check_abs_path(field: &str, path: &str) -> Checked {
    let bad = |why: &str| Err((field.to_owned(), format!("{} {why}", quote(path))));
    if path.len() > 4096 {
        return bad("is longer than 4096 bytes");
    }
    if !path.starts_with('/') {
        return bad("is not an absolute path");
    }
    if path.chars().any(|c| c.is_control() || c == ':' || c == ',') {
        return bad("holds ':', ',' or a control character, which podman cannot take");
    }
    if path.split('/').any(|part| part == ".." || part == ".") {
        return bad("has a '.' or '..' component; write the path it leads to");
    }
    Ok(())
}

/// A user or group: a numeric id, or a POSIX-style name.
fn check_account(field: &str, v: &str) -> Checked {
    let numeric = !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit());
    let name = !v.is_empty()
        && v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if numeric && v.parse::<u32>().is_err() {
        return Err((field.into(), format!("{} is above 4294967295", quote(v))));
    }
    if !(numeric || name) {
        return Err((
            field.into(),
            format!(
                "{} is neither a numeric id nor a name of a-z, 0-9, '_', '-' (at most 32)",
                quote(v)
            ),
        ));
    }
    Ok(())
}

fn check_ports(c: &ContainerSpec) -> Checked {
    if !c.ports.is_empty() && c.network != NetworkMode::Bridge {
        return Err((
            "container.ports".into(),
            format!(
                "ports are published from the bridge network; with network = {:?} remove them",
                c.network.as_str()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, p) in c.ports.iter().enumerate() {
        let f = |k: &str| format!("container.ports[{i}].{k}");
        if p.host_port == 0 {
            return Err((f("hostPort"), "0 is not a port; use 1..=65535".into()));
        }
        if p.container_port == 0 {
            return Err((f("containerPort"), "0 is not a port; use 1..=65535".into()));
        }
        let ip = match &p.host_ip {
            Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
                (
                    f("hostIp"),
                    format!("{} is not an IPv4 or IPv6 address", quote(ip)),
                )
            })?),
            None => None,
        };
        if !seen.insert((ip, p.host_port, p.protocol)) {
            return Err((
                f("hostPort"),
                format!("{}/{} is published twice", p.host_port, p.protocol.as_str()),
            ));
        }
    }
    Ok(())
}

fn check_mounts(c: &ContainerSpec) -> Checked {
    let mut targets: BTreeSet<String> = BTreeSet::new();
    let mut target = |field: String, path: &str| -> Checked {
        check_abs_path(&field, path)?;
        if path == "/" {
            return Err((field, "cannot mount over the container's root".into()));
        }
        if !targets.insert(path.to_owned()) {
            return Err((field, format!("{} is mounted twice", quote(path))));
        }
        Ok(())
    };
    let mut names = BTreeSet::new();
    for (i, v) in c.volumes.iter().enumerate() {
        check_name(&format!("container.volumes[{i}].name"), &v.name)?;
        if !names.insert(v.name.as_str()) {
            return Err((
                format!("container.volumes[{i}].name"),
                format!("duplicate volume name {}", quote(&v.name)),
            ));
        }
        target(format!("container.volumes[{i}].mountPath"), &v.mount_path)?;
    }
    for (i, b) in c.binds.iter().enumerate() {
        check_abs_path(&format!("container.binds[{i}].hostPath"), &b.host_path)?;
        target(format!("container.binds[{i}].mountPath"), &b.mount_path)?;
    }
    for (i, t) in c.tmpfs.iter().enumerate() {
        target(format!("container.tmpfs[{i}].mountPath"), &t.mount_path)?;
        check_range(
            &format!("container.tmpfs[{i}].sizeMib"),
            t.size_mib,
            1,
            4096,
        )?;
    }
    Ok(())
}

fn check_devices(c: &ContainerSpec) -> Checked {
    let mut seen = BTreeSet::new();
    for (i, d) in c.devices.iter().enumerate() {
        let f = |k: &str| format!("container.devices[{i}].{k}");
        check_abs_path(&f("hostPath"), &d.host_path)?;
        if !d.host_path.starts_with("/dev/") {
            return Err((
                f("hostPath"),
                format!("{} is not under /dev/", quote(&d.host_path)),
            ));
        }
        let inside = d.container_path.as_deref().unwrap_or(&d.host_path);
        if let Some(p) = &d.container_path {
            check_abs_path(&f("containerPath"), p)?;
        }
        if !seen.insert(inside) {
            return Err((
                f("containerPath"),
                format!("{} is passed through twice", quote(inside)),
            ));
        }
        if let Some(perm) = &d.permissions {
            let mut chars: Vec<char> = perm.chars().collect();
            chars.sort_unstable();
            chars.dedup();
            let ok = !perm.is_empty()
                && chars.len() == perm.len()
                && perm.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
            if !ok {
                return Err((
                    f("permissions"),
                    format!(
                        "{} is not a subset of \"rwm\" (read, write, mknod)",
                        quote(perm)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Checked {
    for (k, v) in labels {
        let f = || format!("container.labels.{k}");
        let key_ok = !k.is_empty()
            && k.len() <= 128
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
        if !key_ok {
            return Err((
                f(),
                "label keys use A-Z, a-z, 0-9, '.', '-', '_' and '/' (at most 128)".into(),
            ));
        }
        if k.starts_with("fleet.") {
            return Err((f(), "the `fleet.` label prefix is the agent's own".into()));
        }
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return Err((
                f(),
                "the value is one line of at most 1024 bytes without control characters".into(),
            ));
        }
    }
    Ok(())
}

fn check_probes(c: &ContainerSpec) -> Checked {
    let mut names = BTreeSet::new();
    for (i, p) in c.probes.iter().enumerate() {
        check_probe(i, p, c.network)?;
        if !names.insert(p.display_name()) {
            return Err((
                format!("container.probes[{i}].name"),
                format!(
                    "two probes are named {}; give each a name",
                    quote(p.display_name())
                ),
            ));
        }
    }
    Ok(())
}

fn check_probe(i: usize, p: &Probe, network: NetworkMode) -> Checked {
    let f = |k: &str| format!("container.probes[{i}].{k}");
    if let Some(name) = &p.name {
        check_name(&f("name"), name)?;
    }
    let Some(check) = p.check() else {
        let set = [
            ("http", p.http.is_some()),
            ("tcp", p.tcp.is_some()),
            ("exec", p.exec.is_some()),
        ];
        let named: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        return Err((
            format!("container.probes[{i}]"),
            if named.is_empty() {
                "set one of `http`, `tcp` or `exec`".to_owned()
            } else {
                format!("sets {}; set exactly one", named.join(" and "))
            },
        ));
    };
    let port = match check {
        ProbeCheck::Http(h) => {
            let ok = h.path.starts_with('/')
                && h.path.len() <= 1024
                && h.path.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err((
                    f("http.path"),
                    format!(
                        "{} is not a request path (starts with '/', printable ASCII, no spaces, at most 1024)",
                        quote(&h.path)
                    ),
                ));
            }
            if !(100..=599).contains(&h.status) {
                return Err((
                    f("http.status"),
                    format!("{} is outside 100..=599", h.status),
                ));
            }
            Some(("http.port", h.port))
        }
        ProbeCheck::Tcp(t) => Some(("tcp.port", t.port)),
        ProbeCheck::Exec(e) => {
            if e.command.is_empty() {
                return Err((f("exec.command"), "must not be empty".into()));
            }
            check_argv(&f("exec.command"), &e.command)?;
            None
        }
    };
    if let Some((field, port)) = port {
        if port == 0 {
            return Err((f(field), "0 is not a port; use 1..=65535".into()));
        }
        if network == NetworkMode::None {
            return Err((
                f(field),
                "the agent cannot reach a container with network = \"none\"; use an exec probe"
                    .into(),
            ));
        }
    }
    for (k, v, min, max) in [
        ("initialDelaySecs", p.initial_delay_secs, 0, 3600),
        ("periodSecs", p.period_secs, 1, 3600),
        ("timeoutSecs", p.timeout_secs, 1, 3600),
        ("failureThreshold", p.failure_threshold, 1, 100),
    ] {
        if !(min..=max).contains(&v) {
            return Err((f(k), format!("{v} is outside {min}..={max}")));
        }
    }
    Ok(())
}
