//! The release agent as a child process on the local plane, its configs and manifests, and
//! the deployment status it writes to its store (what `fleet-agent status --json` prints
//! under `deployments`, read in-process instead of spawning `status` once per poll).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_contract::Phase;
use fleet_testkit::{NotifySocket, PodmanScope, TempRoot};

use crate::BenchError;

/// The command every benchmark container runs: exits at once on SIGTERM.
pub const SERVE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// Label key on every container of one `scripts/bench` run, so its EXIT trap finds them.
pub const RUN_LABEL: &str = "bench.fleet-agent.run";

/// The run's label value (`FLEET_BENCH_RUN`, set by `scripts/bench`; else this pid).
pub fn run_id() -> String {
    std::env::var("FLEET_BENCH_RUN").unwrap_or_else(|_| std::process::id().to_string())
}

/// Agent config on the local plane; the containers module only sees `scope`'s containers.
pub fn local_config(root: &TempRoot, scope: &PodmanScope) -> PathBuf {
    root.write_config(&format!(
        "device_id = \"bench\"\nstate_dir = {:?}\nrun_dir = {:?}\n\
         [modules.containers]\ninstance = \"{id}\"\n\
         labels = {{ \"fleet.test.scope\" = \"{id}\", \"{RUN_LABEL}\" = \"{run}\" }}\n\
         [control]\ndeployments_dir = {:?}\n",
        root.state(),
        root.run(),
        root.deployments(),
        id = scope.id(),
        run = run_id(),
    ))
}

/// A deployment manifest running [`SERVE`] in `image`.
pub fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = 1\n[container]\n\
         image = \"{image}\"\ncommand = [\"sh\", \"-c\", {SERVE:?}]\n\
         [lifecycle]\ngracePeriodSecs = 2\n"
    )
}

/// Writes `<name>.toml` into the local plane's directory.
pub fn write_manifest(root: &TempRoot, name: &str, image: &str) -> Result<(), BenchError> {
    let path = root.deployments().join(format!("{name}.toml"));
    std::fs::write(&path, manifest(name, image)).map_err(|e| BenchError::io(&path, e))
}

/// A running `fleet-agent run`; SIGTERM then SIGKILL on drop.
pub struct AgentProc {
    child: Child,
    log: PathBuf,
    db: PathBuf,
    store: Option<fleet_agent::store::Store>,
}

impl AgentProc {
    /// Spawns `agent --config <config> run`, with `NOTIFY_SOCKET` when given.
    pub fn spawn(
        agent: &Path,
        config: &Path,
        root: &TempRoot,
        notify: Option<&NotifySocket>,
    ) -> Result<AgentProc, BenchError> {
        let log_path = root.path().join("agent.log");
        let log = std::fs::File::create(&log_path).map_err(|e| BenchError::io(&log_path, e))?;
        let mut cmd = Command::new(agent);
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .env(
                "RUST_LOG",
                std::env::var("FLEET_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        match notify {
            Some(n) => cmd.env("NOTIFY_SOCKET", n.path()),
            None => cmd.env_remove("NOTIFY_SOCKET"),
        };
        let child = cmd.spawn().map_err(|e| BenchError::io(agent, e))?;
        Ok(AgentProc {
            child,
            log: log_path,
            db: root.state().join("state.db"),
            store: None,
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the agent has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(BenchError::Failed(format!(
                "the agent exited: {st}; its log ends:\n{}",
                self.log_tail()
            ))),
            Err(e) => Err(BenchError::Failed(format!("waiting for the agent: {e}"))),
        }
    }

    /// Waits for `READY=1` on `notify`; a failure carries the agent's log tail.
    pub fn wait_ready(
        &mut self,
        notify: &NotifySocket,
        within: Duration,
    ) -> Result<(), BenchError> {
        notify.wait_for("READY=1", within).map(|_| ()).map_err(|e| {
            BenchError::Failed(format!("{e}; the agent's log ends:\n{}", self.log_tail()))
        })
    }

    /// The last lines of the agent's stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// (name, phase) of every deployment in the agent's store; empty before it exists.
    pub fn phases(&mut self) -> Result<Vec<(String, Phase)>, BenchError> {
        if self.store.is_none() {
            if !self.db.exists() {
                return Ok(Vec::new());
            }
            let store = fleet_agent::store::Store::open_existing(&self.db, Duration::from_secs(5))
                .map_err(|e| BenchError::Failed(format!("opening the agent's store: {e}")))?;
            self.store = Some(store);
        }
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let st = store
            .statuses()
            .map_err(|e| BenchError::Failed(format!("reading deployment status: {e}")))?;
        Ok(st.into_iter().map(|s| (s.name, s.phase)).collect())
    }

    /// Waits until exactly `names` are deployed and all Running (polls every `every`).
    pub fn wait_running(
        &mut self,
        names: &[String],
        within: Duration,
        every: Duration,
    ) -> Result<Instant, BenchError> {
        self.wait_for(within, every, "all Running", |phases| {
            phases.len() == names.len()
                && names.iter().all(|n| {
                    phases
                        .iter()
                        .any(|(name, p)| name == n && *p == Phase::Running)
                })
        })
    }

    /// Waits until the store lists no deployment.
    pub fn wait_none(&mut self, within: Duration) -> Result<(), BenchError> {
        self.wait_for(within, Duration::from_millis(50), "all removed", |p| {
            p.is_empty()
        })
        .map(|_| ())
    }

    fn wait_for(
        &mut self,
        within: Duration,
        every: Duration,
        what: &str,
        done: impl Fn(&[(String, Phase)]) -> bool,
    ) -> Result<Instant, BenchError> {
        let end = Instant::now() + within;
        loop {
            // The store exists before the agent created its tables: an error is "not yet"
            // (and the store is opened again) until the deadline.
            let (phases, err) = match self.phases() {
                Ok(p) => (p, None),
                Err(e) => {
                    self.store = None;
                    (Vec::new(), Some(e))
                }
            };
            let now = Instant::now();
            if err.is_none() && done(&phases) {
                return Ok(now);
            }
            self.check_alive()?;
            if now > end {
                return Err(err.unwrap_or_else(|| {
                    BenchError::Failed(format!(
                        "{what}: not reached within {within:?}; deployments: {phases:?}; \
                         the agent's log ends:\n{}",
                        self.log_tail()
                    ))
                }));
            }
            std::thread::sleep(every);
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.store = None;
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old bench's "10 manifests" named `localhost/app:<i>`, which no one built, so no
    /// deployment ever ran: every manifest must decode and name an image that exists.
    #[test]
    fn the_manifests_decode_and_name_an_image_that_exists() {
        if !fleet_testkit::require("podman") {
            return;
        }
        let image = fleet_testkit::busybox_image("testkit").unwrap();
        let d = fleet_contract::Deployment::from_toml_str(&manifest("app-0", &image)).unwrap();
        assert_eq!(d.name, "app-0");
        assert_eq!(d.container.command, ["sh", "-c", SERVE]);
        let exists = Command::new("podman")
            .args(["image", "exists", &d.container.image])
            .status()
            .unwrap();
        assert!(exists.success(), "{} does not exist", d.container.image);
    }
}
