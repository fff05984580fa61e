//! Shared helpers for tests that run the real `fleet-agent` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use fleet_testkit::{wait_until, NotifySocket, TempRoot};

pub const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

/// Writes a config pointing every path into `root`.
///
/// Unless `extra` configures `[modules.containers]` itself, the containers module is turned
/// off, so tests about manifests, the store or the control plane never start containers
/// (the containers tests give each test its own podman namespace instead). The time guard is
/// turned off the same way (no outside NTP queries), unless `extra` configures it.
pub fn write_config(root: &TempRoot, extra: &str) -> PathBuf {
    let containers_off = if extra.contains("[modules.containers]") {
        ""
    } else {
        "[modules.containers]\nenabled = false\n"
    };
    // Likewise the time guard (no servers = off), unless the test is about it.
    let clock_off = if extra.contains("[modules.time-guard]") {
        ""
    } else {
        "[modules.time-guard]\nservers = []\n"
    };
    let extra = format!("{extra}\n{containers_off}{clock_off}");
    root.write_config(&format!(
        "device_id = \"test-dev\"\nstate_dir = {:?}\nrun_dir = {:?}\nheartbeat_interval_secs = 1\n{extra}\n[control]\ndeployments_dir = {:?}\n",
        root.state(),
        root.run(),
        root.deployments()
    ))
}

pub fn manifest(name: &str, revision: u64) -> String {
    format!(
        "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = {revision}\n\n[container]\nimage = \"localhost/fleet-test/busybox:1\"\ncommand = [\"sleep\", \"3600\"]\n"
    )
}

/// A running agent process; killed on drop if still running.
pub struct AgentProc {
    pub child: Child,
}

impl AgentProc {
    pub fn spawn(config: &Path, notify: Option<&NotifySocket>) -> Self {
        Self::spawn_with_env(config, notify, &[])
    }

    pub fn spawn_with_env(
        config: &Path,
        notify: Option<&NotifySocket>,
        env: &[(&str, &str)],
    ) -> Self {
        // The agent's log goes next to its config (kept with FLEET_KEEP_TEMP=1).
        let log_path = config.with_file_name("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open agent log");
        // systemd sets WATCHDOG_PID to the service's pid; `sh -c 'exec'` keeps the pid, so
        // the shell can name it before the agent starts.
        let watchdog = env.iter().any(|(k, _)| *k == "WATCHDOG_USEC");
        let mut cmd = if watchdog {
            let mut c = Command::new("sh");
            c.args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\"", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        cmd.stderr(log)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n.path());
        } else {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        cmd.env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn fleet-agent");
        Self { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
        while started.elapsed() < timeout {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return Some((st, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fleet-agent <args>` to completion.
pub fn agent(args: &[&str]) -> Output {
    fleet_testkit::output_within(
        Command::new(BIN).args(args).env_remove("NOTIFY_SOCKET"),
        fleet_testkit::COMMAND_LIMIT,
    )
    .expect("run fleet-agent")
}

/// `fleet-agent status --json`, parsed; `None` while the store does not exist yet.
pub fn status(config: &Path) -> Option<serde_json::Value> {
    let out = agent(&[
        "--config",
        config.to_str().expect("utf-8 path"),
        "status",
        "--json",
    ]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls status until `pred` holds (10 s), returning the matching document.
pub fn wait_status(
    config: &Path,
    what: &str,
    mut pred: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(Duration::from_secs(10), what, || {
        status(config).filter(|s| pred(s))
    })
    .unwrap_or_else(|e| panic!("{e}; last status: {:#?}", status(config)))
}

/// The status entry of deployment `name`, if present.
pub fn deployment<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
}

/// The KV buckets as `fleetctl init` creates them.
pub async fn init_buckets(
    client: &async_nats::Client,
) -> (
    async_nats::jetstream::kv::Store,
    async_nats::jetstream::kv::Store,
) {
    let js = async_nats::jetstream::new(client.clone());
    for (bucket, history) in [
        (fleet_contract::names::DESIRED_BUCKET, 10),
        (fleet_contract::names::STATUS_BUCKET, 1),
    ] {
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    (
        js.get_key_value(fleet_contract::names::DESIRED_BUCKET)
            .await
            .unwrap(),
        js.get_key_value(fleet_contract::names::STATUS_BUCKET)
            .await
            .unwrap(),
    )
}
