//! Self-upgrade test support shared by `tests/self_upgrade.rs` and `benches/self_upgrade.rs`:
//! the second build of the real agent (v2), a device laid out in a temp dir, the agent run
//! under `SystemdRestartLoop` with the unit's guard, and fleetctl against a real nats-server.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fleet_testkit::{wait_until, Mosquitto, NatsServer, SystemdRestartLoop, TempRoot, Unit};

/// The agent under test as built by this `cargo test` (v1).
pub const V1_BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");
/// v1's version (the build's `fleet-agent version`).
pub const V1: &str = fleet_agent::VERSION;
/// The version the second build reports.
pub const V2: &str = "2.0.0-test";
pub const DEV: &str = "su-dev";

/// The v2 build: the real agent with `FLEET_AGENT_VERSION=2.0.0-test` and the `test-faults`
/// feature, plus fleetctl, in `target/self-upgrade-v2` (built once per test process; cargo's
/// own lock serialises concurrent test binaries, and later runs are incremental).
pub struct V2Build {
    pub agent: PathBuf,
    pub fleetctl: PathBuf,
}

pub fn v2() -> &'static V2Build {
    static BUILD: OnceLock<V2Build> = OnceLock::new();
    BUILD.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = workspace.join("target/self-upgrade-v2");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let started = Instant::now();
        let out = Command::new(cargo)
            .current_dir(workspace)
            .args([
                "build",
                "--locked",
                "-p",
                "fleet-agent",
                "-p",
                "fleetctl",
                "--features",
                "fleet-agent/test-faults",
            ])
            .arg("--target-dir")
            .arg(&target)
            .env("FLEET_AGENT_VERSION", V2)
            // No debug info: a 30 MB artifact instead of 150 MB to upload, hash and copy.
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .env_remove("RUSTFLAGS")
            .output()
            .expect("run cargo build for v2");
        assert!(
            out.status.success(),
            "building v2 failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("v2 build took {:.1} s", started.elapsed().as_secs_f64());
        V2Build {
            agent: target.join("debug/fleet-agent"),
            fleetctl: target.join("debug/fleetctl"),
        }
    })
}

pub fn sha256_file(p: &Path) -> String {
    fleet_contract::release::sha256_hex(&std::fs::read(p).unwrap())
}

/// How the device and its v2 behave in one test.
#[derive(Clone)]
pub struct Scenario {
    /// `FLEET_TEST_FAULT` for every process (only the v2 build reacts to it).
    pub fault: Option<&'static str>,
    pub deadline_secs: u64,
    pub max_attempts: u32,
    /// Give v2 a config whose NATS server is a closed port.
    pub v2_unreachable: bool,
    pub restart_sec: Duration,
    /// Run the device on the MQTT 5 plane (a real mosquitto) instead of NATS.
    pub mqtt: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            fault: None,
            deadline_secs: 60,
            max_attempts: 3,
            v2_unreachable: false,
            restart_sec: Duration::from_millis(200),
            mqtt: false,
        }
    }
}

/// A laid-out device running under the restart loop, with a fleet around it.
pub struct Device {
    pub nats: NatsServer,
    pub mqtt: Option<Mosquitto>,
    pub root: TempRoot,
    pub config: PathBuf,
    pub install_root: PathBuf,
    pub current: PathBuf,
    pub admin_key: PathBuf,
    pub release_key: PathBuf,
    pub stranger_key: PathBuf,
    pub service: SystemdRestartLoop,
    pub v2_sha: String,
    pub v1_sha: String,
}

pub fn ctl(args: &[&str]) -> Output {
    fleet_testkit::output_within(
        Command::new(&v2().fleetctl).args(args),
        fleet_testkit::COMMAND_LIMIT,
    )
    .unwrap()
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ctl(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        path,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

/// The `ExecStartPre=` line of `systemd/fleet-agent.service` (the real unit file), with this
/// device's install root and config path substituted.
pub fn guard_argv(install_root: &Path, config: &Path) -> Vec<OsString> {
    let unit = include_str!("../../../systemd/fleet-agent.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("the unit has an ExecStartPre guard");
    let script = line
        .strip_prefix("/bin/sh -c '")
        .and_then(|l| l.strip_suffix('\''))
        .expect("ExecStartPre=/bin/sh -c '...'")
        .replace("/usr/lib/fleet-agent", &install_root.to_string_lossy())
        .replace("/etc/fleet-agent/config.toml", &config.to_string_lossy());
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

impl Device {
    pub fn start(sc: &Scenario) -> Self {
        let v2 = v2();
        let nats = NatsServer::start_jetstream().unwrap();
        let out = ctl(&["--nats", &nats.url(), "init"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mqtt = sc.mqtt.then(|| Mosquitto::start().unwrap());
        let plane = match &mqtt {
            Some(m) => format!(
                "plane = \"mqtt\"\n[control.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
                m.port()
            ),
            None => "plane = \"nats\"\n".to_owned(),
        };
        let root = TempRoot::new().unwrap();
        let (admin_key, admin_pub) = keygen(root.path(), "admin.key");
        let (release_key, release_pub) = keygen(root.path(), "release.key");
        let (stranger_key, _) = keygen(root.path(), "stranger.key");
        let install_root = root.path().join("usr-lib-fleet-agent");
        let current = root.path().join("usr-bin/fleet-agent");
        std::fs::create_dir_all(current.parent().unwrap()).unwrap();
        // A fresh install: the current "link" is a plain file until the agent adopts it.
        std::fs::copy(V1_BIN, &current).unwrap();
        std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config_for = |servers: &str, path: PathBuf| {
            let text = format!(
                "device_id = \"{DEV}\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n\
                 [control]\n{plane}[control.nats]\nservers = [\"{servers}\"]\n\
                 [[trust.operators]]\nname = \"admin\"\npublic_key = \"{admin_pub}\"\nrole = \"admin\"\n\
                 [modules.containers]\nenabled = false\n\
                 [modules.self-upgrade]\ninstall_root = {:?}\ncurrent_link = {:?}\nconfig_path = {:?}\n\
                 probation_deadline_secs = {}\nmax_attempts = {}\nself_test_timeout_secs = 30\n\
                 max_artifact_bytes = 268435456\n\
                 [[modules.self-upgrade.release_keys]]\nname = \"release\"\npublic_key = \"{release_pub}\"\n",
                root.state(),
                root.run(),
                install_root,
                current,
                path,
                sc.deadline_secs,
                sc.max_attempts,
            );
            std::fs::write(&path, text).unwrap();
            path
        };
        let config = config_for(&nats.url(), root.path().join("config.toml"));
        let dead_port = fleet_testkit::free_port();
        let v2_config = config_for(
            &format!("nats://127.0.0.1:{dead_port}"),
            root.path().join("config-v2-unreachable.toml"),
        );
        let mut env: Vec<(OsString, OsString)> = vec![("RUST_LOG".into(), "info".into())];
        if let Some(f) = sc.fault {
            env.push(("FLEET_TEST_FAULT".into(), f.into()));
        }
        let (cfg1, unreachable) = (config.clone(), sc.v2_unreachable);
        let unit = Unit {
            exec_start_pre: vec![guard_argv(&install_root, &config)],
            exec_start: current.clone(),
            args: Box::new(move |bin: &Path| {
                let cfg = if unreachable && bin.to_string_lossy().contains(V2) {
                    v2_config.clone()
                } else {
                    cfg1.clone()
                };
                vec!["--config".into(), cfg.into(), "run".into()]
            }),
            env,
            restart_sec: sc.restart_sec,
            log: root.path().join("service.log"),
        };
        let service = SystemdRestartLoop::start(unit);
        let dev = Self {
            v2_sha: sha256_file(&v2.agent),
            v1_sha: sha256_file(Path::new(V1_BIN)),
            nats,
            mqtt,
            root,
            config,
            install_root,
            current,
            admin_key,
            release_key,
            stranger_key,
            service,
        };
        dev.wait_detail("v1 running and laid out", Duration::from_secs(30), |d| {
            d["version"] == V1 && d["confirmed"] == V1
        });
        dev
    }

    /// `fleet-agent status --json`.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = fleet_testkit::output_within(
            Command::new(V1_BIN).args([
                "--config",
                self.config.to_str().unwrap(),
                "status",
                "--json",
            ]),
            fleet_testkit::COMMAND_LIMIT,
        )
        .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `details.self-upgrade` of the last heartbeat.
    pub fn detail(&self) -> Option<serde_json::Value> {
        self.status()
            .map(|s| s["details"]["self-upgrade"].clone())
            .filter(|d| !d.is_null())
    }

    pub fn wait_detail(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(timeout, what, || self.detail().filter(|d| pred(d))).unwrap_or_else(|e| {
            panic!(
                "{e}; last detail: {:#?}\nservice log tail:\n{}",
                self.detail(),
                self.log_tail()
            )
        })
    }

    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.root.path().join("service.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn put_v2(&self) -> String {
        let out = ctl(&[
            "--nats",
            &self.nats.url(),
            "artifacts",
            "put",
            v2().agent.to_str().unwrap(),
            "--name",
            "fleet-agent-v2",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        "nats-object://fleet-agent-v2".into()
    }

    /// `fleetctl release sign` of `file` as v2; returns the signature document's path.
    pub fn sign(&self, file: &Path, key: &Path, key_name: &str) -> PathBuf {
        self.sign_as(file, V2, key, key_name)
    }

    /// `fleetctl release sign` of `file` as `version`.
    pub fn sign_as(&self, file: &Path, version: &str, key: &Path, key_name: &str) -> PathBuf {
        let out = ctl(&[
            "release",
            "sign",
            file.to_str().unwrap(),
            "--version",
            version,
            "--key",
            key.to_str().unwrap(),
            "--key-name",
            key_name,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.root.path().join(format!("sig-{}.json", rand_suffix()));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    /// `fleetctl agent-upgrade`; returns (exit ok, reply JSON).
    pub fn upgrade(&self, artifact: &str, signature: &Path) -> (bool, serde_json::Value) {
        let out = ctl(&[
            "--nats",
            &self.nats.url(),
            "agent-upgrade",
            DEV,
            "--version",
            V2,
            "--artifact",
            artifact,
            "--signature",
            signature.to_str().unwrap(),
            "--key",
            self.admin_key.to_str().unwrap(),
        ]);
        let reply = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "no reply: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            )
        });
        (out.status.success(), reply)
    }

    /// `fleetctl agent-upgrade --desired`: puts `<device>.agent` into the desired state
    /// (over MQTT when the device uses it).
    pub fn upgrade_desired(&self, artifact: &str, signature: &Path) -> Output {
        self.upgrade_desired_as(V2, artifact, signature)
    }

    /// `fleetctl agent-upgrade --desired` naming `version`.
    pub fn upgrade_desired_as(&self, version: &str, artifact: &str, signature: &Path) -> Output {
        let (flag, addr) = match &self.mqtt {
            Some(m) => ("--mqtt", format!("127.0.0.1:{}", m.port())),
            None => ("--nats", self.nats.url()),
        };
        ctl(&[
            flag,
            &addr,
            "agent-upgrade",
            DEV,
            "--desired",
            "--version",
            version,
            "--artifact",
            artifact,
            "--signature",
            signature.to_str().unwrap(),
        ])
    }

    pub fn version_dir(&self, v: &str) -> PathBuf {
        self.install_root.join("versions").join(v)
    }

    /// The version a link into `versions/` points at.
    pub fn link_version(&self, link: &Path) -> Option<String> {
        let t = std::fs::canonicalize(link).ok()?;
        let t = if t.is_dir() { t.join("fleet-agent") } else { t };
        Some(t.parent()?.file_name()?.to_string_lossy().into_owned())
    }

    /// The invariant after any crash: the current link and `confirmed` point at complete,
    /// verified binaries (their SHA-256 is v1's or v2's), no probation names another
    /// version than current.
    pub fn assert_consistent(&self) -> String {
        let cur = std::fs::canonicalize(&self.current).expect("current link resolves");
        let sha = sha256_file(&cur);
        assert!(
            sha == self.v1_sha || sha == self.v2_sha,
            "current {} is not a complete verified binary",
            cur.display()
        );
        let mode = std::fs::metadata(&cur).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "current binary is not executable");
        let conf = self.install_root.join("confirmed/fleet-agent");
        let csha = sha256_file(&conf);
        assert!(csha == self.v1_sha || csha == self.v2_sha);
        let cur_v = self.link_version(&self.current).unwrap();
        let probation = self.root.state().join("self-upgrade/probation.json");
        if let Ok(text) = std::fs::read_to_string(&probation) {
            let p: serde_json::Value = serde_json::from_str(&text).unwrap();
            // A record naming another version is resolved by the guard at the next start.
            assert!(p["to"] == V2, "{p}");
        }
        cur_v
    }

    /// Starts of the v2 binary the restart loop made (guard passed, main ran).
    pub fn v2_starts(&self) -> usize {
        self.service
            .starts()
            .iter()
            .filter(|s| {
                s.pre_ok
                    && s.binary
                        .as_ref()
                        .is_some_and(|b| b.to_string_lossy().contains(V2))
            })
            .count()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
