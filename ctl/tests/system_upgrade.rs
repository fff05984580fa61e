//! `fleetctl system-upgrade` and the OS upgrade's progress in `fleetctl status`, over a real
//! `nats-server -js`, against the agent running the system-upgrade module on a temp boot
//! partition. LVM is the one fake (`fake_lvm`): this host has no device-mapper.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::Agent;
use fleet_mod_system_upgrade::fake_lvm::FakeLvm;
use fleet_mod_system_upgrade::fake_units::FakeUnits;
use fleet_mod_system_upgrade::selector::VmSelector;
use fleet_mod_system_upgrade::{Config as ModConfig, SelectorKind, SystemUpgradeModule};
use fleet_module_api::CancellationToken;
use fleet_testkit::{require, Mosquitto, NatsServer, TempRoot};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");
const DEV: &str = "pi-7";

async fn ctl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        fleet_testkit::output_within(
            std::process::Command::new(CTL).args(&args),
            fleet_testkit::COMMAND_LIMIT,
        )
        .unwrap()
    })
    .await
    .unwrap()
}

/// `conn` is `--nats URL` or `--mqtt HOST:PORT`, as one string with a space.
fn args(conn: &str, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = conn.split(' ').map(str::to_owned).collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

async fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let out = ctl(vec![
        "keygen".into(),
        "--out".into(),
        path.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    (
        path,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

fn boot_partition(root: &Path) -> std::path::PathBuf {
    let boot = root.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz"), "k").unwrap();
    std::fs::write(boot.join("initrd.img"), "i").unwrap();
    std::fs::write(boot.join("cmdline.txt"), "root=/dev/vg0/root\n").unwrap();
    std::fs::write(
        boot.join("config.txt"),
        "kernel=vmlinuz\ninitramfs initrd.img followkernel\n",
    )
    .unwrap();
    std::fs::write(root.join("hook"), "").unwrap();
    std::fs::write(root.join("cmdline"), "root=/dev/vg0/root\n").unwrap();
    std::fs::write(
        root.join("mountinfo"),
        format!(
            "1 0 253:1 / / rw - ext4 /dev/mapper/vg0-root rw\n2 1 8:1 / {} rw - vfat /dev/vda1 rw\n",
            boot.display()
        ),
    )
    .unwrap();
    boot
}

async fn wait_status(
    conn: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        let out = ctl(args(conn, &["status", "--json", "--device", DEV])).await;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if pred(&v[DEV]) {
                return v[DEV].clone();
            }
            last = v[DEV].clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}; last view: {last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_requests_an_os_upgrade_and_shows_its_progress_over_nats() {
    if !require("nats-server") {
        return;
    }
    let nats = NatsServer::start_jetstream().unwrap();
    let conn = format!("--nats {}", nats.url());
    assert!(ctl(args(&conn, &["init"])).await.status.success());
    let plane = format!(
        "plane = \"nats\"\n[control.nats]\nservers = [\"{}\"]\n",
        nats.url()
    );
    scenario(&conn, &plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_requests_an_os_upgrade_and_shows_its_progress_over_mqtt() {
    if !require("mosquitto") {
        return;
    }
    let mq = Mosquitto::start().unwrap();
    let conn = format!("--mqtt 127.0.0.1:{}", mq.port());
    let plane = format!(
        "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        mq.port()
    );
    scenario(&conn, &plane).await;
}

async fn scenario(url: &str, plane: &str) {
    let url = url.to_owned();
    let keys = TempRoot::new().unwrap();
    let (admin, admin_pub) = keygen(keys.path(), "admin.key").await;
    let (viewer, viewer_pub) = keygen(keys.path(), "viewer.key").await;

    let root = TempRoot::new().unwrap();
    let boot = boot_partition(root.path());
    let path = root.write_config(&format!(
        "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
         [control]\n{plane}\
         [[trust.operators]]\nname = \"admin\"\npublic_key = \"{admin_pub}\"\nrole = \"admin\"\n\
         [[trust.operators]]\nname = \"viewer\"\npublic_key = \"{viewer_pub}\"\nrole = \"viewer\"\n",
        root.state(),
        root.run(),
    ));
    let ran = root.path().join("ran");
    let module = SystemUpgradeModule::with_parts(
        ModConfig {
            boot_dir: boot.clone(),
            selector: SelectorKind::Vm,
            command: format!("echo ran >> {}", ran.display()),
            reboot_command: "true".into(),
            initramfs_hook_files: vec![root.path().join("hook")],
            cmdline_file: root.path().join("cmdline"),
            mountinfo_file: root.path().join("mountinfo"),
            ..ModConfig::default()
        },
        Arc::new(FakeLvm::default()),
        Arc::new(VmSelector::new(&boot)),
    )
    .with_units(Arc::new(FakeUnits::new(root.path().join("units"))));
    let agent = Agent::builder(Config::load(&path).unwrap())
        .without_compiled_in()
        .module(Arc::new(module))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    wait_status(&url, "the module running", |v| {
        v["info"]["details"]["system-upgrade"].is_object()
    })
    .await;

    // Bad input is refused by fleetctl before anything is sent, naming the field.
    let out = ctl(args(&url, &["system-upgrade", DEV, "--id", "a b"])).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("field `id`"),
        "{out:?}"
    );
    let out = ctl(args(&url, &["system-upgrade", DEV, "--deadline", "soon"])).await;
    assert!(!out.status.success());

    // Desired state: `<device>.system` in KV.
    let out = ctl(args(
        &url,
        &[
            "system-upgrade",
            DEV,
            "--id",
            "u-1",
            "--deadline",
            "5m",
            "--max-boots",
            "2",
            "--command",
            &format!("echo ran >> {}", ran.display()),
        ],
    ))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = wait_status(&url, "phase Rebooting", |v| {
        v["info"]["details"]["system-upgrade"]["phase"] == "Rebooting"
    })
    .await;
    let d = &v["info"]["details"]["system-upgrade"];
    assert_eq!(
        (
            d["id"].as_str(),
            d["deadlineSecs"].as_u64(),
            d["maxBoots"].as_u64()
        ),
        (Some("u-1"), Some(300), Some(2))
    );
    assert_eq!(d["bootState"]["state"], "trial");
    let out = ctl(args(&url, &["status", "--device", DEV])).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("os-upgrade u-1 Rebooting: rebooting into the trial"),
        "{text}"
    );

    // The signed verb: a viewer is denied; another id is refused while u-1 is in flight;
    // u-1 again is known (idempotent), and the command ran once.
    let signed = |key: &Path, id: &str| {
        args(
            &url,
            &[
                "system-upgrade",
                DEV,
                "--id",
                id,
                "--key",
                key.to_str().unwrap(),
            ],
        )
    };
    let out = ctl(signed(&viewer, "u-2")).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("denied"),
        "{out:?}"
    );
    let out = ctl(signed(&admin, "u-2")).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("u-1 is in progress"),
        "{out:?}"
    );
    let out = ctl(signed(&admin, "u-1")).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"known\": true"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&ran).unwrap().lines().count(), 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
