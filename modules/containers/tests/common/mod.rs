//! Harness for the engine tests against real podman, without the agent: one module run
//! with an in-memory store, a status sink that keeps everything, and every log line of the
//! test binary captured.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test binary uses part of the harness

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleet_contract::{Deployment, DeploymentStatus, Phase};
use fleet_mod_containers::{Naming, DESCRIPTOR};
pub use fleet_module_api::MemStore;
use fleet_module_api::{
    CancellationToken, Capability, Context, DesiredDeployment, DesiredState, ExtensionsBuilder,
    ModuleError, Paths, StatusSink, SystemClock,
};
use fleet_testkit::{podman, PodmanScope};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod isolated;
#[allow(unused_imports)] // used by the tests that restart podman's state
pub use isolated::IsolatedPodman;

pub const LONG: Duration = Duration::from_secs(90);

/// Every log line of this test binary (all levels), for "no secret in any log line".
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INIT: OnceLock<()> = OnceLock::new();
    let buf = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    INIT.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    buf
}

pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        logs().lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

#[derive(Default)]
pub struct Sink {
    pub statuses: Mutex<Vec<DeploymentStatus>>,
    pub details: Mutex<Vec<serde_json::Value>>,
}

impl StatusSink for Sink {
    fn deployment(&self, status: DeploymentStatus) {
        self.statuses.lock().unwrap().push(status);
    }
    fn deployment_removed(&self, _name: &str) {}
    fn detail(&self, _module: &'static str, detail: serde_json::Value) {
        self.details.lock().unwrap().push(detail);
    }
}

impl Sink {
    pub fn all_text(&self) -> String {
        let s = self.statuses.lock().unwrap();
        let d = self.details.lock().unwrap();
        format!("{s:?} {d:?}")
    }
}

/// One run of the module.
pub struct Run {
    pub sink: Arc<Sink>,
    pub desired: watch::Sender<Arc<DesiredState>>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ModuleError>>,
    /// The module and its context, for its command verbs (`handle`).
    pub module: Arc<dyn Capability>,
    pub ctx: Context,
}

pub fn section(scope: &PodmanScope, extra: &str) -> toml::Value {
    toml::from_str(&format!(
        "instance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 2\nresync_secs = 2\n{extra}",
        id = scope.id()
    ))
    .unwrap()
}

/// As [`section`], with a resync far beyond any test's deadline: whatever the module repairs,
/// it found without the periodic listing.
pub fn quiet_section(scope: &PodmanScope, extra: &str) -> toml::Value {
    toml::from_str(&format!(
        "instance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 2\nresync_secs = 86400\n{extra}",
        id = scope.id()
    ))
    .unwrap()
}

pub fn start(section: &toml::Value, store: Arc<MemStore>, state: DesiredState) -> Run {
    start_in(section, store, state, Path::new("/nonexistent"))
}

/// As [`start`], with the agent's runtime directory at `run_dir` (the module keeps its
/// conmon working directories there, which OOM reporting needs).
pub fn start_in(
    section: &toml::Value,
    store: Arc<MemStore>,
    state: DesiredState,
    run_dir: &Path,
) -> Run {
    logs();
    let module = (DESCRIPTOR.build)(Some(section)).unwrap();
    let mut ext = ExtensionsBuilder::new();
    module.provide(&mut ext);
    let (desired, rx) = watch::channel(Arc::new(state));
    let sink = Arc::new(Sink::default());
    let shutdown = CancellationToken::new();
    let ctx = Context {
        module: "containers",
        store,
        desired: rx,
        status: sink.clone(),
        clock: Arc::new(SystemClock),
        paths: Paths {
            config_dir: PathBuf::from("/nonexistent"),
            state_dir: PathBuf::from("/nonexistent"),
            run_dir: run_dir.to_owned(),
        },
        shutdown: shutdown.clone(),
        ext: ext.build(),
        checkin: watch::channel(Default::default()).1,
        progress: Default::default(),
    };
    let task = tokio::spawn(module.clone().run(ctx.clone()));
    Run {
        sink,
        desired,
        shutdown,
        task,
        module,
        ctx,
    }
}

impl Run {
    pub async fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&DeploymentStatus) -> bool,
    ) -> DeploymentStatus {
        let found = tokio::time::timeout(LONG, async {
            loop {
                if let Some(s) = self.sink.statuses.lock().unwrap().iter().find(|s| pred(s)) {
                    return s.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(s) => s,
            Err(_) => panic!(
                "no status {what} within {LONG:?}; got {:#?}",
                self.sink.statuses.lock().unwrap()
            ),
        }
    }

    pub async fn wait_running(&self, name: &str) -> DeploymentStatus {
        self.wait_status(&format!("{name} Running"), |s| {
            s.name == name && s.phase == Phase::Running
        })
        .await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the module stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

pub fn deployment(name: &str, image: &str, env: &[(&str, &str)], command: &[&str]) -> Deployment {
    let mut d = Deployment::from_toml_str(&format!(
        "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = 1\n\
         [container]\nimage = \"localhost/placeholder:1\"\n\
         [lifecycle]\nstopSignal = \"SIGKILL\"\ngracePeriodSecs = 1\n"
    ))
    .unwrap();
    // Set after decoding: the values under test must reach the module whatever the decoder
    // refuses (the podman boundary must hold on its own).
    d.container.image = image.to_owned();
    for (k, v) in env {
        d.container.env.insert((*k).into(), (*v).into());
    }
    d.container.command = command.iter().map(|s| (*s).to_owned()).collect();
    d
}

pub fn state(complete: bool, deps: &[&Deployment]) -> DesiredState {
    let mut s = DesiredState {
        complete,
        ..DesiredState::default()
    };
    for d in deps {
        s.deployments.insert(
            d.name.clone(),
            DesiredDeployment::Valid(Box::new((*d).clone())),
        );
    }
    s
}

pub fn naming(scope: &PodmanScope) -> Naming {
    Naming::new(
        scope.id(),
        [("fleet.test.scope".to_owned(), scope.id().to_owned())].into(),
    )
}

/// A container's `.State.Pid` and `.Id`, if it exists.
pub fn pid_and_id(podman_bin: &str, container: &str) -> Option<(i64, String)> {
    let out = std::process::Command::new(podman_bin)
        .args([
            "container",
            "inspect",
            "--format",
            "{{.State.Pid}} {{.Id}}",
            "--",
            container,
        ])
        .output()
        .ok()?;
    let out = String::from_utf8(out.stdout).ok()?;
    let (pid, id) = out.trim().split_once(' ')?;
    Some((pid.parse().ok()?, id.to_owned()))
}

pub fn state_of(container: &str) -> Option<String> {
    podman(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Status}}",
        "--",
        container,
    ])
    .ok()
    .map(|s| s.trim().to_owned())
}

pub fn volume_exists(volume: &str) -> bool {
    podman(&["volume", "exists", "--", volume]).is_ok()
}

pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let ok = tokio::time::timeout(LONG, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "{what} within {LONG:?}");
}
