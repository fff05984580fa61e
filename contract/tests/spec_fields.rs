//! The container fields of issue 17: a full manifest decodes, an old one encodes as before,
//! and each bad value is refused naming its field.

use fleet_contract::{Deployment, NetworkMode, ProbeCheck, Protocol, PullPolicy};

const FULL: &str = r#"
apiVersion = "fleet/v1"
name = "sensor"
revision = 2

[container]
image = "registry.local:5000/sensor@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
pullPolicy = "always"
workingDir = "/app"
user = "1000"
group = "dialout"
readOnlyRootFilesystem = true
capAdd = ["NET_BIND_SERVICE"]
capDrop = ["ALL"]
labels = { "com.example.team" = "plant-3" }
resources = { memoryMib = 32, cpuMillis = 500, pids = 64 }
logs = { maxSizeMib = 5 }

[[container.ports]]
hostIp = "127.0.0.1"
hostPort = 8080
containerPort = 80

[[container.ports]]
hostPort = 5683
containerPort = 5683
protocol = "udp"

[[container.volumes]]
name = "db"
mountPath = "/var/lib/sensor"

[[container.binds]]
hostPath = "/srv/fleet/sensor"
mountPath = "/etc/sensor"
readOnly = true

[[container.devices]]
hostPath = "/dev/i2c-1"
permissions = "rw"

[[container.tmpfs]]
mountPath = "/tmp"
sizeMib = 16

[[container.probes]]
name = "web"
http = { port = 80, path = "/healthz" }
periodSecs = 5
failureThreshold = 2

[[container.probes]]
exec = { command = ["test", "-e", "/tmp/ready"] }
"#;

#[test]
fn a_full_manifest_decodes_and_round_trips() {
    let d = Deployment::from_toml_str(FULL).unwrap();
    let c = &d.container;
    assert_eq!(c.pull_policy, PullPolicy::Always);
    assert_eq!(c.network, NetworkMode::Bridge);
    assert_eq!(c.ports[1].protocol, Protocol::Udp);
    assert_eq!(c.resources.memory_mib, Some(32));
    assert_eq!(c.devices[0].permissions.as_deref(), Some("rw"));
    assert_eq!(c.probes[0].timeout_secs, 1);
    assert_eq!(c.probes[1].display_name(), "exec");
    assert!(matches!(c.probes[0].check(), Some(ProbeCheck::Http(h)) if h.status == 200));
    let back = Deployment::from_json_slice(&d.to_json()).unwrap();
    assert_eq!(d, back);
}

#[test]
fn an_old_manifest_encodes_exactly_as_before() {
    // The spec hash is taken over this encoding: an agent upgrade must not recreate
    // containers whose manifest did not change.
    let d = Deployment::from_toml_str(
        "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 1\n[container]\nimage = \"localhost/web:1\"\n",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(d.to_json()).unwrap(),
        r#"{"apiVersion":"fleet/v1","name":"web","revision":1,"container":{"image":"localhost/web:1","restart":"always"},"lifecycle":{"stopSignal":"SIGTERM","gracePeriodSecs":10}}"#
    );
}

#[test]
fn bad_values_name_their_field() {
    for (from, to, field) in [
        (
            "hostPort = 8080",
            "hostPort = 0",
            "container.ports[0].hostPort",
        ),
        (
            "hostPort = 8080",
            "hostPort = 70000",
            "container.ports[0].hostPort",
        ),
        (
            "hostIp = \"127.0.0.1\"",
            "hostIp = \"localhost\"",
            "container.ports[0].hostIp",
        ),
        (
            "name = \"db\"",
            "name = \"DB\"",
            "container.volumes[0].name",
        ),
        (
            "mountPath = \"/var/lib/sensor\"",
            "mountPath = \"var\"",
            "container.volumes[0].mountPath",
        ),
        (
            "mountPath = \"/etc/sensor\"",
            "mountPath = \"/tmp\"",
            "container.tmpfs[0].mountPath",
        ),
        (
            "hostPath = \"/srv/fleet/sensor\"",
            "hostPath = \"/srv/../etc\"",
            "container.binds[0].hostPath",
        ),
        (
            "hostPath = \"/dev/i2c-1\"",
            "hostPath = \"/etc/passwd\"",
            "container.devices[0].hostPath",
        ),
        (
            "permissions = \"rw\"",
            "permissions = \"rwx\"",
            "container.devices[0].permissions",
        ),
        (
            "capAdd = [\"NET_BIND_SERVICE\"]",
            "capAdd = [\"NET_BIND\"]",
            "container.capAdd[0]",
        ),
        (
            "memoryMib = 32",
            "memoryMib = 1",
            "container.resources.memoryMib",
        ),
        (
            "maxSizeMib = 5",
            "maxSizeMib = 0",
            "container.logs.maxSizeMib",
        ),
        (
            "\"com.example.team\"",
            "\"fleet.deployment\"",
            "container.labels.fleet.deployment",
        ),
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
        ("user = \"1000\"", "user = \"Root User\"", "container.user"),
        (
            "path = \"/healthz\"",
            "path = \"healthz\"",
            "container.probes[0].http.path",
        ),
        (
            "failureThreshold = 2",
            "failureThreshold = 0",
            "container.probes[0].failureThreshold",
        ),
        (
            "exec = { command = [\"test\", \"-e\", \"/tmp/ready\"] }",
            "exec = { command = [] }",
            "container.probes[1].exec.command",
        ),
        (
            "exec = { command = [\"test\", \"-e\", \"/tmp/ready\"] }",
            "name = \"web\"\ntcp = { port = 80 }",
            "container.probes[1].name",
        ),
        (
            "exec = { command = [\"test\", \"-e\", \"/tmp/ready\"] }",
            "tcp = { port = 80 }\nexec = { command = [\"true\"] }",
            "container.probes[1]",
        ),
        (
            "pullPolicy = \"always\"",
            "network = \"host\"",
            "container.ports",
        ),
    ] {
        let src = FULL.replace(from, to);
        assert_ne!(src, FULL, "{from}");
        let e = Deployment::from_toml_str(&src).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{from} -> {to}: {e}");
        assert!(e.line.is_some() || field.contains('.'), "{e}");
    }
}
