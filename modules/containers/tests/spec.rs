//! The container spec of issue 17 against real podman: the device's policy refuses a
//! manifest asking for more before anything of it runs; what it allows runs as asked
//! (ports, binds, devices, limits, identity, capabilities, read-only root, tmpfs, labels);
//! logs stay under their cap; an OOM kill is reported as one; `pullPolicy = "always"`
//! follows a moving tag, and a pinned digest is the one reported.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_contract::{Deployment, Phase};
use fleet_testkit::{busybox_image, free_port, podman, require, PodmanScope, Registry, TempRoot};

use common::*;

/// A manifest for `image` with `extra` in its `[container]` table.
fn manifest(name: &str, image: &str, extra: &str) -> Deployment {
    Deployment::from_toml_str(&format!(
        "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = 1\n\
         [container]\nimage = \"{image}\"\n{extra}\n\
         [lifecycle]\nstopSignal = \"SIGKILL\"\ngracePeriodSecs = 1\n"
    ))
    .unwrap()
}

fn inspect(container: &str) -> serde_json::Value {
    let out = podman(&["container", "inspect", "--format", "json", "--", container]).unwrap();
    let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    all.remove(0)
}

/// The body of `GET path` on 127.0.0.1:`port` when the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn a_manifest_asking_more_than_the_policy_fails_naming_field_and_key_and_runs_nothing() {
    if !require("podman") {
        return;
    }
    let scope = PodmanScope::new("policy").unwrap();
    let root = TempRoot::new().unwrap();
    let allowed = root.path().join("srv");
    std::fs::create_dir_all(&allowed).unwrap();
    let policy = format!(
        "[policy]\nbind_roots = [{:?}]\ndevices = [\"/dev/null\"]\ncapabilities = [\"NET_ADMIN\"]\n\
         [logs]\nmax_size_mib = 5\nceiling_mib = 50\n",
        allowed.to_string_lossy()
    );
    // Not in local storage and in no registry: a pull would fail saying so.
    let image = "localhost/fleet-test/none:0";
    let cases = [
        (
            "bind",
            "binds = [{ hostPath = \"/etc\", mountPath = \"/host-etc\" }]",
            format!(
                "container.binds[0].hostPath \"/etc\" is outside modules.containers.policy.bind_roots [{:?}]",
                allowed.to_string_lossy()
            ),
        ),
        (
            "dev",
            "devices = [{ hostPath = \"/dev/zero\" }]",
            "container.devices[0].hostPath \"/dev/zero\" is not allowed by modules.containers.policy.devices [\"/dev/null\"]".to_owned(),
        ),
        (
            "priv",
            "privileged = true",
            "container.privileged is true, but modules.containers.policy.privileged is false".to_owned(),
        ),
        (
            "hostnet",
            "network = \"host\"",
            "container.network is \"host\", but modules.containers.policy.host_network is false".to_owned(),
        ),
        (
            "lowport",
            "ports = [{ hostPort = 80, containerPort = 80 }]",
            "container.ports[0].hostPort 80 is below 1024, but modules.containers.policy.low_ports is false".to_owned(),
        ),
        (
            "cap",
            "capAdd = [\"SYS_ADMIN\"]",
            "container.capAdd[0] \"SYS_ADMIN\" is not allowed by modules.containers.policy.capabilities [\"NET_ADMIN\"]".to_owned(),
        ),
        (
            "logs",
            "logs = { maxSizeMib = 51 }",
            "container.logs.maxSizeMib 51 is above modules.containers.logs.ceiling_mib 50".to_owned(),
        ),
        (
            "datamount",
            "tmpfs = [{ mountPath = \"/data\" }]",
            "container.tmpfs[0].mountPath \"/data\" is where the deployment's data volume is mounted (modules.containers.data_mount)".to_owned(),
        ),
    ];
    let deployments: Vec<Deployment> = cases
        .iter()
        .map(|(name, extra, _)| manifest(name, image, extra))
        .collect();
    let refs: Vec<&Deployment> = deployments.iter().collect();
    let run = start(
        &quiet_section(&scope, &policy),
        Arc::default(),
        state(true, &refs),
    );
    for (name, _, expect) in &cases {
        let s = run
            .wait_status(&format!("{name} Failed"), |s| {
                s.name == *name && s.phase == Phase::Failed
            })
            .await;
        assert_eq!(
            s.message,
            format!("refused by the device's policy: {expect}"),
            "{name}"
        );
    }
    // No retry storm: one Failed each, however long it waits (the refusal can change only
    // with the manifest or the config; it is checked again at the resync).
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let statuses = run.sink.statuses.lock().unwrap();
        for (name, _, _) in &cases {
            let mine: Vec<_> = statuses.iter().filter(|s| s.name == *name).collect();
            assert_eq!(mine.len(), 1, "{name}: {mine:#?}");
        }
    }
    // Nothing of them ran: no container, no data volume, no pull (the image is missing).
    assert!(scope.containers().unwrap().is_empty(), "nothing created");
    let names = naming(&scope);
    for (name, _, _) in &cases {
        assert!(!volume_exists(&names.volume(name)), "{name}: no volume");
    }
    assert!(!log_text().contains("pull localhost/fleet-test/none"));
    run.stop().await;
}

#[tokio::test]
async fn what_the_policy_allows_runs_as_the_manifest_asks() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("fullspec").unwrap();
    let root = TempRoot::new().unwrap();
    let allowed = root.path().join("srv");
    let www = allowed.join("web/www");
    let out = allowed.join("web/out");
    for d in [&www, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    chmod(&www, 0o755);
    chmod(&out, 0o777);
    let page = format!("hello from {}\n", scope.id());
    std::fs::write(www.join("index.html"), &page).unwrap();
    chmod(&www.join("index.html"), 0o644);
    let port = free_port();
    let script = "[ -c /dev/fleetnull ] && echo dev > /out/dev; \
        busybox id > /out/id; pwd > /out/pwd; \
        echo x > /rootfile 2>/dev/null || echo ro > /out/ro; \
        echo x > /work/t && echo tmpfs > /out/tmpfs; \
        [ -d /cache ] && echo volume > /out/volume; \
        exec httpd -f -p 8080 -h /www";
    let d = manifest(
        "web",
        &image,
        &format!(
            r#"command = ["sh", "-c", {script:?}]
user = "1000"
group = "1000"
workingDir = "/work"
readOnlyRootFilesystem = true
tmpfs = [{{ mountPath = "/work", sizeMib = 4 }}]
ports = [{{ hostIp = "127.0.0.1", hostPort = {port}, containerPort = 8080 }}]
binds = [{{ hostPath = {www:?}, mountPath = "/www", readOnly = true }}, {{ hostPath = {out:?}, mountPath = "/out" }}]
volumes = [{{ name = "cache", mountPath = "/cache" }}]
devices = [{{ hostPath = "/dev/null", containerPath = "/dev/fleetnull" }}]
capAdd = ["NET_ADMIN"]
capDrop = ["NET_RAW"]
labels = {{ "app.tier" = "front" }}
resources = {{ memoryMib = 64, cpuMillis = 500, pids = 64 }}
logs = {{ maxSizeMib = 1 }}
"#
        ),
    );
    let policy = format!(
        "[policy]\nbind_roots = [{:?}]\ndevices = [\"/dev/nul?\"]\ncapabilities = [\"NET_ADMIN\"]\n",
        allowed.to_string_lossy()
    );
    let run = start(
        &quiet_section(&scope, &policy),
        Arc::default(),
        state(true, &[&d]),
    );
    run.wait_running("web").await;
    let body = tokio::time::timeout(LONG, async {
        loop {
            if let Some(b) = http_get(port, "/index.html") {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the published port answers");
    assert_eq!(body, page);

    // What the process saw, written to the writable bind before httpd started.
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    assert_eq!(read("dev"), "dev\n", "the device is there");
    assert!(
        read("id").starts_with("uid=1000(1000) gid=1000(1000)"),
        "{}",
        read("id")
    );
    assert_eq!(read("pwd"), "/work\n");
    assert_eq!(read("ro"), "ro\n", "the root file system is read-only");
    assert_eq!(read("tmpfs"), "tmpfs\n", "the tmpfs is writable");
    assert_eq!(read("volume"), "volume\n", "the named volume is mounted");

    let names = naming(&scope);
    let container = names.container("web");
    let c = inspect(&container);
    let h = &c["HostConfig"];
    assert_eq!(h["PidsLimit"], 64);
    assert_eq!(h["NanoCpus"], 500_000_000);
    assert_eq!(h["Memory"], 64 * 1024 * 1024);
    assert_eq!(h["MemorySwap"], 64 * 1024 * 1024, "no swap on top");
    assert_eq!(h["ReadonlyRootfs"], true);
    assert_eq!(h["CapAdd"], serde_json::json!(["CAP_NET_ADMIN"]));
    let dropped = h["CapDrop"].as_array().unwrap();
    assert!(dropped.contains(&"CAP_NET_RAW".into()), "{dropped:?}");
    assert_eq!(h["LogConfig"]["Type"], "k8s-file");
    assert_eq!(h["LogConfig"]["Size"], "1.049MB", "1 MiB");
    assert!(h["Tmpfs"]["/work"].as_str().unwrap().starts_with("size=4m"));
    assert_eq!(h["Devices"][0]["PathInContainer"], "/dev/fleetnull");
    assert_eq!(c["Config"]["User"], "1000:1000");
    assert_eq!(c["Config"]["WorkingDir"], "/work");
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["app.tier"], "front");
    assert_eq!(labels["fleet.deployment"], "web", "beside the agent's own");
    let mounts = c["Mounts"].as_array().unwrap();
    let volume = names.named_volume("web", "cache");
    assert!(
        mounts
            .iter()
            .any(|m| m["Name"] == volume.as_str() && m["Destination"] == "/cache"),
        "{mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["Type"] == "bind" && m["Destination"] == "/www" && m["RW"] == false),
        "{mounts:?}"
    );
    run.stop().await;
    scope.cleanup().unwrap();
    // Created by `podman run` here; its lifecycle (labels, keep, purge) is not this test's.
    let _ = podman(&["volume", "rm", "--force", "--", &volume]);
}

#[tokio::test]
async fn an_oom_kill_is_reported_and_logs_stay_under_their_cap() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("oomlog").unwrap();
    let root = TempRoot::new().unwrap();
    // 64 MiB buffer against a 32 MiB limit.
    let oom = manifest(
        "oom",
        &image,
        "command = [\"busybox\", \"dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=64M\", \"count=1\"]\n\
         restart = \"never\"\nresources = { memoryMib = 32 }",
    );
    // 100 MB of 100-byte lines, then a last line, then it stays up.
    let line = "x".repeat(99);
    let chatty = manifest(
        "chatty",
        &image,
        &format!(
            "command = [\"sh\", \"-c\", \"busybox yes {line} | busybox head -c 100000000; echo LAST; exec sleep 1000\"]"
        ),
    );
    let run = start_in(
        &quiet_section(&scope, "[logs]\nmax_size_mib = 2\n"),
        Arc::default(),
        state(true, &[&oom, &chatty]),
        &root.run(),
    );
    let names = naming(&scope);

    // The log: sampled while it is written, it never passes 2 MiB; the last line is there.
    run.wait_running("chatty").await;
    let path = inspect(&names.container("chatty"))["HostConfig"]["LogConfig"]["Path"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let mut largest = 0;
    let mut samples = 0;
    let done = loop {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(size);
        samples += 1;
        if samples % 200 == 0 {
            let tail = podman(&["logs", "--tail", "1", "--", &names.container("chatty")]).unwrap();
            if tail.trim() == "LAST" {
                break true;
            }
        }
        if started.elapsed() > LONG {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(done, "the container wrote its 100 MB within {LONG:?}");
    let cap = 2 * 1024 * 1024;
    eprintln!(
        "100 MB logged in {:?}; log file at most {largest} bytes over {samples} samples",
        started.elapsed()
    );
    assert!(largest <= cap, "{largest} > {cap}");
    assert!(
        largest > cap / 2,
        "the samples saw the log fill up: {largest}"
    );
    let kept = podman(&["logs", "--", &names.container("chatty")]).unwrap();
    assert!(kept.len() < cap as usize && kept.ends_with("LAST\n"));

    // The OOM kill.
    let s = run
        .wait_status("oom Failed", |s| {
            s.name == "oom" && s.phase == Phase::Failed
        })
        .await;
    assert_eq!(s.last_exit_code, Some(137), "{s:?}");
    assert_eq!(s.exit_reason.as_deref(), Some("oom-killed"), "{s:?}");
    assert!(
        s.message
            .contains("exited with code 137 (oom-killed: over its 32 MiB memory limit)"),
        "{}",
        s.message
    );
    run.stop().await;
}

#[tokio::test]
async fn pull_always_follows_a_moving_tag_and_a_pinned_digest_is_reported() {
    if !require("podman") || !require("docker-registry") {
        return;
    }
    let first = busybox_image("testkit").unwrap();
    // A second image (another import: another id) to move the tag to.
    let second = busybox_image("t17-spec-moved").unwrap();
    let second_id = podman(&["image", "inspect", "--format", "{{.Id}}", &second]).unwrap();
    let scope = PodmanScope::new("pullpol").unwrap();
    let registry = Registry::start().unwrap();
    let conf = registry.registries_conf().unwrap();
    let push = |image: &str, dest: &str| -> String {
        let file = registry.dir().join("digest");
        let dest = format!("{}/{dest}", registry.addr());
        podman(&[
            "push",
            "--tls-verify=false",
            "--quiet",
            &format!("--digestfile={}", file.display()),
            image,
            &dest,
        ])
        .unwrap();
        std::fs::read_to_string(&file).unwrap().trim().to_owned()
    };
    let pinned_digest = push(&first, "t17/pinned:1");
    push(&first, "t17/app:1");
    let app = format!("{}/t17/app:1", registry.addr());
    let pinned = format!("{}/t17/pinned@{pinned_digest}", registry.addr());

    let web = manifest(
        "web",
        &app,
        "pullPolicy = \"always\"\ncommand = [\"sleep\", \"1000\"]",
    );
    let fixed = manifest("fixed", &pinned, "command = [\"sleep\", \"1000\"]");
    let run = start(
        &quiet_section(&scope, &format!("registries_conf = {:?}\n", conf)),
        Arc::default(),
        state(true, &[&web, &fixed]),
    );
    run.wait_running("web").await;
    let s = run.wait_running("fixed").await;
    let s = if s.image_digest.is_some() {
        s
    } else {
        run.wait_status("fixed Running with a digest", |s| {
            s.name == "fixed" && s.image_digest.is_some()
        })
        .await
    };
    assert_eq!(s.image_digest.as_deref(), Some(pinned_digest.as_str()));

    // Move the tag; a new creation (the spec changed) pulls it although `app:1` is present.
    push(&second, "t17/app:1");
    let mut web2 = web.clone();
    web2.revision = 2;
    web2.container.env.insert("V".into(), "2".into());
    run.desired
        .send(Arc::new(state(true, &[&web2, &fixed])))
        .unwrap();
    run.wait_status("web revision 2 Running", |s| {
        s.name == "web" && s.revision == Some(2) && s.phase == Phase::Running
    })
    .await;
    let names = naming(&scope);
    let running = inspect(&names.container("web"))["Image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(running, second_id.trim(), "the moved tag runs");
    run.stop().await;
    scope.cleanup().unwrap();
    // The moved tag and `second` name one image of this test's own; the first image is
    // testkit's (shared with other tests: only the registry's names are on it, left).
    let _ = podman(&["rmi", "--force", "--", second_id.trim()]);
}
