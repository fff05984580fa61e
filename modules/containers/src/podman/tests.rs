//! Unit tests of `podman`: argv, decoding, redaction.

use super::*;
use crate::podman::containers::{create_call, run_call};

/// Under systemd a podman child that inherits NOTIFY_SOCKET answers for the service
/// (MAINPID, READY) or proxies it into the container and `run --detach` waits for a READY
/// that never comes (seen here: a run holding its container's lock for 120 s).
#[test]
fn podman_children_do_not_inherit_the_services_notify_socket() {
    let podman = Podman::new(Path::new("podman"), None, None);
    let cmd = podman.command(&["ps".to_owned()]);
    let removed = cmd
        .as_std()
        .get_envs()
        .any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_none());
    assert!(
        removed,
        "NOTIFY_SOCKET must be removed from podman's environment"
    );
}

#[test]
fn decodes_ps_json_of_podman_4_3() {
    let out = r#"[{"AutoRemove":false,"Command":["sleep","100"],"CreatedAt":"now",
        "Exited":false,"ExitedAt":-62135596800,"ExitCode":0,"Id":"032d","Image":"i",
        "ImageID":"3949","IsInfra":false,"Labels":{"fleet.deployment":"web"},"Mounts":[],
        "Names":["fleet-web"],"Namespaces":{},"Networks":["podman"],"Pid":20476,"Pod":"",
        "PodName":"","Ports":null,"Size":null,"StartedAt":1795465238,"State":"running",
        "Status":"Up","Created":1795465238}]"#;
    let ps: Vec<PsEntry> = serde_json::from_str(out).unwrap();
    assert_eq!(ps[0].name(), "fleet-web");
    assert_eq!(ps[0].state, "running");
    assert_eq!(ps[0].label("fleet.deployment"), Some("web"));
    assert_eq!(ps[0].exited_at, -62_135_596_800);
    assert_eq!(ps[0].pid, 20476);
    // Labels may be null.
    let ps: Vec<PsEntry> =
        serde_json::from_str(r#"[{"Id":"x","Names":["n"],"Labels":null}]"#).unwrap();
    assert_eq!(ps[0].label("a"), None);
}

#[test]
fn a_bad_listing_is_named_by_position_not_content() {
    let p = Podman::new(Path::new("podman"), None, None);
    let call = Call::new(&["ps"]);
    let err = p
        .decode::<Vec<PsEntry>>(&call, "not json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("podman ps"), "{err}");
    // Position and length only: a listing carries labels and may carry anything.
    assert!(!err.contains("not json"), "{err}");
    assert!(err.contains("of 8 bytes"), "{err}");
}

fn spec() -> CreateSpec {
    CreateSpec {
        name: "fleet-web".into(),
        image: "img:1".into(),
        command: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: [("A".to_owned(), "b c".to_owned())].into(),
        labels: [("fleet.deployment".to_owned(), "web".to_owned())].into(),
        volumes: vec![("fleet-web-data".into(), "/data".into())],
        stop_signal: "SIGINT".into(),
        stop_timeout: 7,
        ..CreateSpec::default()
    }
}

fn manifest(extra: &str) -> fleet_contract::Deployment {
    fleet_contract::Deployment::from_toml_str(&format!(
        "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 1\n\
         [container]\nimage = \"img:1\"\n{extra}"
    ))
    .unwrap()
}

/// The options between the fixed ones and `--`, for `extra` in `[container]`.
fn host_args(extra: &str) -> Vec<String> {
    let d = manifest(extra);
    let mut s = spec();
    s.host = HostOptions::of(&d.container, |v| format!("fleet-web.{v}"));
    s.env.clear();
    s.labels.clear();
    s.volumes.clear();
    let a = create_args(&s).unwrap();
    let end = a.iter().position(|a| a == "--").unwrap();
    a[5..end].to_vec()
}

#[test]
fn every_spec_field_is_one_flag_value_argument() {
    let a = host_args(
        r#"network = "none"
workingDir = "/work"
user = "1000"
group = "audio"
readOnlyRootFilesystem = true
privileged = true
capAdd = ["net_admin", "CAP_SYS_TIME"]
capDrop = ["ALL"]
resources = { memoryMib = 32, cpuMillis = 1500, pids = 64 }
volumes = [{ name = "db", mountPath = "/var/db" }, { name = "cfg", mountPath = "/etc/app", readOnly = true }]
binds = [{ hostPath = "/srv/fleet/web", mountPath = "/srv", readOnly = true }, { hostPath = "/srv/fleet/tmp", mountPath = "/scratch" }]
devices = [{ hostPath = "/dev/i2c-1" }, { hostPath = "/dev/ttyUSB0", containerPath = "/dev/modem" }, { hostPath = "/dev/gpiomem", permissions = "rw" }, { hostPath = "/dev/video0", containerPath = "/dev/cam", permissions = "r" }]
tmpfs = [{ mountPath = "/run/app" }, { mountPath = "/cache", sizeMib = 16 }]
"#,
    );
    assert_eq!(
        a,
        [
            "--network=none",
            "--volume=fleet-web.db:/var/db",
            "--volume=fleet-web.cfg:/etc/app:ro",
            "--volume=/srv/fleet/web:/srv:ro",
            "--volume=/srv/fleet/tmp:/scratch",
            "--device=/dev/i2c-1",
            "--device=/dev/ttyUSB0:/dev/modem",
            "--device=/dev/gpiomem:/dev/gpiomem:rw",
            "--device=/dev/video0:/dev/cam:r",
            "--tmpfs=/run/app",
            "--tmpfs=/cache:size=16m",
            "--privileged",
            "--read-only",
            "--cap-add=NET_ADMIN",
            "--cap-add=SYS_TIME",
            "--cap-drop=ALL",
            "--user=1000:audio",
            "--workdir=/work",
            "--memory=32m",
            "--memory-swap=32m",
            "--cpus=1.500",
            "--pids-limit=64",
        ]
    );
    let a = host_args(
        r#"ports = [{ hostPort = 8080, containerPort = 80 }, { hostIp = "127.0.0.1", hostPort = 5353, containerPort = 53, protocol = "udp" }, { hostIp = "::1", hostPort = 8443, containerPort = 443 }]
resources = { cpuMillis = 250 }
user = "app"
"#,
    );
    assert_eq!(
        a,
        [
            "--publish=8080:80/tcp",
            "--publish=127.0.0.1:5353:53/udp",
            "--publish=[::1]:8443:443/tcp",
            "--user=app",
            "--cpus=0.250",
        ]
    );
    assert_eq!(host_args("network = \"host\""), ["--network=host"]);
    assert!(
        host_args("network = \"bridge\"").is_empty(),
        "podman's default"
    );
}

#[test]
fn the_log_cap_labels_and_the_conmon_directory_are_set() {
    let d = manifest("labels = { \"app.tier\" = \"front\" }");
    let mut s = spec();
    s.log_max_mib = Some(10);
    s.labels.extend(d.container.labels.clone());
    s.conmon_dir = Some("/run/fleet-agent/containers/conmon/fleet-web".into());
    let call = run_call(&s).unwrap();
    let a = call.argv().unwrap();
    assert!(
        a.windows(2)
            .any(|w| w == ["--log-driver=k8s-file", "--log-opt=max-size=10485760"]),
        "{a:?}"
    );
    assert!(a.contains(&"--label=app.tier=front".to_owned()), "{a:?}");
    assert!(
        a.contains(&"--label=fleet.deployment=web".to_owned()),
        "{a:?}"
    );
    assert_eq!(
        call.cwd.as_deref(),
        Some(Path::new("/run/fleet-agent/containers/conmon/fleet-web"))
    );
    // No cap asked: podman's default driver, no option.
    assert!(!create_args(&spec())
        .unwrap()
        .iter()
        .any(|a| a.starts_with("--log")));
}

#[test]
fn host_values_podman_would_split_or_misread_are_refused_naming_the_field() {
    let d = manifest("");
    let base = || {
        let mut s = spec();
        s.host = HostOptions::of(&d.container, |v| v.to_owned());
        s
    };
    let bind = |host: &str, at: &str| fleet_contract::BindMount {
        host_path: host.into(),
        mount_path: at.into(),
        read_only: false,
    };
    type Change<'a> = Box<dyn Fn(&mut CreateSpec) + 'a>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|s| s.host.binds.push(bind("/srv/a:/etc", "/x"))),
            "container.binds[0].hostPath",
        ),
        (
            Box::new(|s| s.host.binds.push(bind("/srv/a", "/x\0"))),
            "container.binds[0].mountPath",
        ),
        (
            Box::new(|s| s.host.binds.push(bind("etc", "/x"))),
            "container.binds[0].hostPath",
        ),
        (
            Box::new(|s| {
                s.host.tmpfs.push(fleet_contract::TmpfsMount {
                    mount_path: "/t,size=9g".into(),
                    size_mib: None,
                })
            }),
            "container.tmpfs[0].mountPath",
        ),
        (
            Box::new(|s| {
                s.host.devices.push(fleet_contract::DeviceMapping {
                    host_path: "/dev/null".into(),
                    container_path: Some("/dev/x:rwm".into()),
                    permissions: None,
                })
            }),
            "container.devices[0].containerPath",
        ),
        (
            Box::new(|s| s.host.user = Some("0:0".into())),
            "container.user",
        ),
        (
            Box::new(|s| s.host.cap_add.push("NET_ADMIN\0".into())),
            "container.capAdd[0]",
        ),
        (
            Box::new(|s| s.host.volumes.push(("v:/etc".into(), "/x".into(), false))),
            "container.volumes[0].name",
        ),
        (
            Box::new(|s| s.host.working_dir = Some("/w\0".into())),
            "container.workingDir",
        ),
    ];
    for (change, field) in cases {
        let mut s = base();
        change(&mut s);
        let err = create_args(&s).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{field} ")), "{field}: {err}");
        assert!(err.ends_with("podman was not run"), "{err}");
    }
}

#[test]
fn create_args_end_options_with_a_double_dash_before_the_image() {
    let a = create_args(&spec()).unwrap().join(" ");
    assert_eq!(
        a,
        "create --name=fleet-web --stop-signal=SIGINT --stop-timeout=7 --restart=no \
         --label=fleet.deployment=web --env=A=b c --volume=fleet-web-data:/data -- img:1 sh -c echo hi"
    );
    let r = run_args(&spec()).unwrap().join(" ");
    assert_eq!(
        r,
        "run --detach --pull=never --name=fleet-web --stop-signal=SIGINT --stop-timeout=7 \
         --restart=no --label=fleet.deployment=web --env=A=b c --volume=fleet-web-data:/data \
         -- img:1 sh -c echo hi"
    );
    // A command that starts with '-' is the container's, after the image: fine.
    let mut s = spec();
    s.command = vec!["--privileged".into()];
    let a = create_args(&s).unwrap();
    assert_eq!(a[a.len() - 3..], ["--", "img:1", "--privileged"]);
}

#[test]
fn values_podman_would_misread_are_refused_naming_the_field() {
    for image in ["--privileged", "-h", ""] {
        let mut s = spec();
        s.image = image.into();
        let err = create_args(&s).unwrap_err().to_string();
        assert!(err.starts_with("container.image "), "{err}");
    }
    let mut s = spec();
    s.env.insert("TOKEN".into(), "s3cr3t\0".into());
    let err = create_args(&s).unwrap_err().to_string();
    assert!(err.contains("container.env.\"TOKEN\""), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    let mut s = spec();
    s.command = vec!["sh".into(), "a\0b".into()];
    let err = create_args(&s).unwrap_err().to_string();
    assert!(err.contains("container.command[1]"), "{err}");
    let call = Call::new(&["start"]).name("container", "-h");
    assert!(call
        .argv()
        .unwrap_err()
        .to_string()
        .starts_with("container "));
    assert_eq!(
        Call::new(&["rm"])
            .opts(["--force"])
            .name("container", "x")
            .argv()
            .unwrap(),
        ["rm", "--force", "--", "x"]
    );
}

#[test]
fn a_long_or_odd_target_is_quoted_short() {
    let long = "r/".repeat(300);
    let what = Call::new(&["pull"]).name("container.image", &long).what;
    assert!(what.len() < 120, "{what}");
    assert!(what.contains("(600 bytes)"), "{what}");
    assert_eq!(
        Call::new(&["start"]).name("container", "fleet-web").what,
        "podman start fleet-web"
    );
    assert_eq!(short("a\nb"), "\"a\\nb\"");
}

#[test]
fn stderr_is_one_redacted_capped_line() {
    let call = create_call(&spec()).unwrap().secrets(["s3cr3t".to_owned()]);
    let stderr =
        "time=\"x\" level=warning msg=\"w\"\nError: bad value A=b c in s3cr3t-ish: echo hi\nmore";
    assert_eq!(
        call.error_line(stderr),
        "Error: bad value A=<redacted> in <redacted>-ish: <redacted>"
    );
    assert_eq!(call.error_line("only line\n"), "only line");
    let long = format!("Error: {}", "x".repeat(5000));
    assert!(call.error_line(&long).len() <= STDERR_LINE);
    assert_eq!(
        redact("abcabc", &["abc".into(), "abcabc".into(), String::new()]),
        "<redacted>"
    );
}

#[tokio::test]
async fn a_missing_binary_is_named() {
    let p = Podman::new(Path::new("/nonexistent/podman"), None, None);
    let err = p.version().await.unwrap_err().to_string();
    assert!(err.contains("cannot run `podman version`"), "{err}");
}

#[test]
fn auth_file_must_be_root_only() {
    let dir = std::env::temp_dir().join(format!("fleet-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("auth.json");
    std::fs::write(&f, "{}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = check_auth_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("chmod 600") || err.contains("not root"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn output_past_the_cap_is_drained_unkept() {
    let big = vec![b'x'; usize::try_from(MAX_OUTPUT).unwrap() + 4096];
    let mut from: &[u8] = &big;
    let mut kept = Vec::new();
    keep(&mut from, &mut kept).await;
    assert_eq!(kept.len() as u64, MAX_OUTPUT);
    assert!(
        from.is_empty(),
        "the rest was read (drained), not left in the pipe"
    );
}
