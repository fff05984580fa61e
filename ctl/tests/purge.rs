//! `fleetctl delete --purge` end to end, over NATS (`nats-server -js`) and MQTT 5
//! (`mosquitto`): the agent in process with the real containers module over real podman,
//! and the `fleetctl` binary. A deployment's named volume survives `delete` (listed as
//! retained in the heartbeat's detail), the signed `purge` is refused while the deployment
//! is desired and to a non-admin key, and `delete --purge` removes it, idempotently.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_module_api::CancellationToken;
use fleet_testkit::{busybox_image, podman, require, Mosquitto, NatsServer, PodmanScope, TempRoot};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");
const DEV: &str = "dev-p";

async fn ctl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        fleet_testkit::output_within(
            std::process::Command::new(CTL)
                .env_remove("FLEETCTL_KEY")
                .args(&args),
            fleet_testkit::COMMAND_LIMIT,
        )
        .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ctl(vec![
        "keygen".into(),
        "--out".into(),
        path.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    (path, public)
}

fn volume_exists(v: &str) -> bool {
    podman(&["volume", "exists", "--", v]).is_ok()
}

/// Polls `fleetctl status --json` until `pred` holds on the device's view.
async fn wait_view(
    conn: &[String],
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let mut args = conn.to_vec();
        args.extend(["status", "--json", "--device", DEV].map(String::from));
        let out = ctl(args).await;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if pred(&v[DEV]) {
                return v[DEV].clone();
            }
            last = v[DEV].clone();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("timed out waiting for {what}; last view: {last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_delete_keeps_named_volumes_and_delete_purge_removes_them() {
    if !require("nats-server") || !require("podman") {
        return;
    }
    let nats = NatsServer::start_jetstream().unwrap();
    let url = nats.url();
    let conn = vec!["--nats".to_owned(), url.clone()];
    let mut init = conn.clone();
    init.push("init".into());
    let out = ctl(init).await;
    assert!(out.status.success(), "{}", text(&out));
    let plane = format!("plane = \"nats\"\n[control.nats]\nservers = [\"{url}\"]\n");
    scenario(conn, &plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_delete_keeps_named_volumes_and_delete_purge_removes_them() {
    if !require("mosquitto") || !require("podman") {
        return;
    }
    let mq = Mosquitto::start().unwrap();
    let conn = vec!["--mqtt".to_owned(), format!("127.0.0.1:{}", mq.port())];
    let plane = format!(
        "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        mq.port()
    );
    scenario(conn, &plane).await;
}

/// The scenario over either plane: `conn` are fleetctl's connection arguments, `plane`
/// the agent's `[control]` body.
async fn scenario(conn: Vec<String>, plane: &str) {
    let t0 = Instant::now();
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("purge").unwrap();
    let root = TempRoot::new().unwrap();
    let (admin, admin_pub) = keygen(root.path(), "admin.key").await;
    let (operator, operator_pub) = keygen(root.path(), "operator.key").await;
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
         [control]\n{plane}\
         [[trust.operators]]\nname = \"admin\"\npublic_key = \"{admin_pub}\"\nrole = \"admin\"\n\
         [[trust.operators]]\nname = \"op\"\npublic_key = \"{operator_pub}\"\nrole = \"operator\"\n",
        root.state(),
        root.run(),
    ));
    let cfg = Config::load(&path).unwrap();
    let section: toml::Value = toml::from_str(&format!(
        "instance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 2\nresync_secs = 2\n",
        id = scope.id()
    ))
    .unwrap();
    let containers = (fleet_mod_containers::DESCRIPTOR.build)(Some(&section)).unwrap();
    let agent = Agent::builder(cfg)
        .without_compiled_in()
        .module(containers)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));

    let names = fleet_mod_containers::Naming::new(scope.id(), Default::default());
    let (container, data) = (names.container("web"), names.volume("web"));
    let volume = names.named_volume("web", "cache");
    let manifest = root.path().join("web.toml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 1\n\
             [container]\nimage = \"{image}\"\ncommand = [\"sleep\", \"1000\"]\n\
             [[container.volumes]]\nname = \"cache\"\nmountPath = \"/cache\"\n\
             [lifecycle]\nstopSignal = \"SIGKILL\"\ngracePeriodSecs = 1\n"
        ),
    )
    .unwrap();
    let mut apply = conn.clone();
    apply.extend(["apply", "-f", manifest.to_str().unwrap(), "--device", DEV].map(String::from));
    let out = ctl(apply.clone()).await;
    assert!(out.status.success(), "{}", text(&out));
    wait_view(&conn, "web Running", |v| {
        v["deployments"]["web"]["phase"] == "Running"
    })
    .await;
    assert!(volume_exists(&volume));

    let purge_cmd = |key: &Path| {
        let mut a = conn.clone();
        a.extend([
            "cmd".to_owned(),
            DEV.to_owned(),
            "purge".to_owned(),
            r#"{"deployment":"web"}"#.to_owned(),
            "--key".to_owned(),
            key.display().to_string(),
        ]);
        a
    };
    // While desired: refused, and the reply says what to do.
    let out = ctl(purge_cmd(&admin)).await;
    assert!(!out.status.success(), "{}", text(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let m = reply["message"].as_str().unwrap();
    assert!(
        m.contains("still desired") && m.contains("delete it first"),
        "{m}"
    );
    // An operator key may not purge (admin only).
    let out = ctl(purge_cmd(&operator)).await;
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["code"], "denied", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("needs admin"),
        "{reply}"
    );
    assert!(volume_exists(&volume));

    // delete: container and data volume go; the named volume stays and the heartbeat lists
    // it as retained.
    let mut delete = conn.clone();
    delete.extend(["delete", "web", "--device", DEV].map(String::from));
    let out = ctl(delete.clone()).await;
    assert!(out.status.success(), "{}", text(&out));
    wait_view(&conn, "web removed, its volume retained", |v| {
        v["deployments"].get("web").is_none()
            && v["info"]["details"]["containers"]["retained"]
                == serde_json::json!([{ "deployment": "web", "volume": volume }])
    })
    .await;
    assert!(podman(&["container", "exists", &container]).is_err());
    assert!(
        !volume_exists(&data),
        "the data volume goes with the deployment"
    );
    assert!(volume_exists(&volume), "the named volume stays");

    // --purge without a key: refused before anything is sent.
    let mut no_key = delete.clone();
    no_key.push("--purge".into());
    let out = ctl(no_key).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--purge needs --key"), "{}", text(&out));

    // Re-applied, then `delete --purge` in one go: waits for the removal, then purges.
    let out = ctl(apply).await;
    assert!(out.status.success(), "{}", text(&out));
    wait_view(&conn, "web Running again", |v| {
        v["deployments"]["web"]["phase"] == "Running"
    })
    .await;
    let mut purge = delete.clone();
    purge.extend(
        [
            "--purge",
            "--key",
            admin.to_str().unwrap(),
            "--actor",
            "alice",
        ]
        .map(String::from),
    );
    let t = Instant::now();
    let out = ctl(purge.clone()).await;
    let took = t.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("fleetctl delete --purge said:\n{stdout}");
    assert!(
        stdout.contains(&format!("purged web on {DEV}: removed {volume}")),
        "{}",
        text(&out)
    );
    assert!(!volume_exists(&volume));
    assert!(podman(&["container", "exists", &container]).is_err());
    // Again: nothing left, still a success.
    let out = ctl(purge).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no named volumes to remove"),
        "{}",
        text(&out)
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eprintln!(
        "{}: delete --purge took {:.1} s; whole scenario {:.1} s",
        conn[0],
        took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
