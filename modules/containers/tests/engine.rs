//! The reconcile engine against real podman, without the agent: what hostile values, a
//! failing podman, an interrupted podman and a partial desired state do to the device.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleet_contract::{Deployment, DeploymentStatus, Phase};
use fleet_mod_containers::{CreateSpec, Naming, Podman, PodmanRuntime, DESCRIPTOR};
use fleet_module_api::{
    CancellationToken, ContainerRuntime, Context, DesiredDeployment, DesiredState,
    ExtensionsBuilder, ModuleError, ModuleStore, Paths, RunSpec, StatusSink, StoreError,
    SystemClock,
};
use fleet_testkit::{
    busybox_image, container_exists, external_names, kill_when_running, podman, require,
    storage_only_container, PodmanScope,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(90);

/// Every log line of this test binary (all levels), for "no secret in any log line".
fn logs() -> &'static Mutex<Vec<u8>> {
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

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        logs().lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

#[derive(Default)]
struct MemStore(Mutex<BTreeMap<String, Vec<u8>>>);

impl ModuleStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.lock().unwrap().insert(key.into(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

#[derive(Default)]
struct Sink {
    statuses: Mutex<Vec<DeploymentStatus>>,
    details: Mutex<Vec<serde_json::Value>>,
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
    fn all_text(&self) -> String {
        let s = self.statuses.lock().unwrap();
        let d = self.details.lock().unwrap();
        format!("{s:?} {d:?}")
    }
}

/// One run of the module.
struct Run {
    sink: Arc<Sink>,
    desired: watch::Sender<Arc<DesiredState>>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ModuleError>>,
}

fn section(scope: &PodmanScope, extra: &str) -> toml::Value {
    toml::from_str(&format!(
        "instance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 2\nresync_secs = 2\n{extra}",
        id = scope.id()
    ))
    .unwrap()
}

fn start(section: &toml::Value, store: Arc<MemStore>, state: DesiredState) -> Run {
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
            run_dir: PathBuf::from("/nonexistent"),
        },
        shutdown: shutdown.clone(),
        ext: ext.build(),
        checkin: watch::channel(Default::default()).1,
    };
    let task = tokio::spawn(module.clone().run(ctx));
    Run {
        sink,
        desired,
        shutdown,
        task,
    }
}

impl Run {
    async fn wait_status(
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

    async fn wait_running(&self, name: &str) -> DeploymentStatus {
        self.wait_status(&format!("{name} Running"), |s| {
            s.name == name && s.phase == Phase::Running
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the module stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

fn deployment(name: &str, image: &str, env: &[(&str, &str)], command: &[&str]) -> Deployment {
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

fn state(complete: bool, deps: &[&Deployment]) -> DesiredState {
    let mut s = DesiredState {
        complete,
        ..DesiredState::default()
    };
    for d in deps {
        s.deployments
            .insert(d.name.clone(), DesiredDeployment::Valid((*d).clone()));
    }
    s
}

fn naming(scope: &PodmanScope) -> Naming {
    Naming::new(
        scope.id(),
        [("fleet.test.scope".to_owned(), scope.id().to_owned())].into(),
    )
}

fn state_of(container: &str) -> Option<String> {
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

fn volume_exists(volume: &str) -> bool {
    podman(&["volume", "exists", "--", volume]).is_ok()
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let ok = tokio::time::timeout(LONG, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "{what} within {LONG:?}");
}

// ---- Class 3: nothing reaches podman's argv as an option ----

#[tokio::test]
async fn an_image_that_looks_like_a_flag_is_refused_before_podman_runs() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("flagimg").unwrap();
    let p = Podman::new(Path::new("podman"), None, None);
    // Without `--` and the refusal, this creates a privileged busybox container.
    let name = scope.name("inj");
    let spec = CreateSpec {
        name: name.clone(),
        image: "--privileged".into(),
        command: vec![image.clone(), "sleep".into(), "100".into()],
        env: BTreeMap::new(),
        labels: [("fleet.test.scope".to_owned(), scope.id().to_owned())].into(),
        volumes: Vec::new(),
        stop_signal: "SIGKILL".into(),
        stop_timeout: 0,
    };
    let err = p.create(&spec).await.unwrap_err().to_string();
    assert!(err.starts_with("container.image \"--privileged\""), "{err}");
    assert!(!container_exists(&name).unwrap(), "nothing was created");
    // `podman image exists -h` prints help and exits 0: an image "-h" must not be "present".
    let err = p.image_exists("-h").await.unwrap_err().to_string();
    assert!(err.starts_with("container.image \"-h\""), "{err}");

    // The same through the runtime other modules use, and through a deployment.
    let rt = PodmanRuntime {
        podman: p.clone(),
        naming: naming(&scope),
        data_mount: "/data".into(),
    };
    let err = rt
        .run_to_completion(&RunSpec {
            name: "i".into(),
            image: "-h".into(),
            command: vec!["true".into()],
            labels: Vec::new(),
            timeout: LONG,
            deployment: Some("job".into()),
        })
        .await
        .unwrap_err();
    assert!(err.0.contains("container.image \"-h\""), "{err}");

    let d = deployment("web", "--privileged", &[("NUL", "a\0b")], &[]);
    let run = start(&section(&scope, ""), Arc::default(), state(true, &[&d]));
    let failed = run
        .wait_status("web Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        failed.message.contains("container.image \"--privileged\""),
        "{}",
        failed.message
    );
    run.stop().await;
    assert!(scope.containers().unwrap().is_empty(), "nothing created");
}

#[tokio::test]
async fn a_nul_byte_in_an_env_value_is_refused_naming_the_key_not_the_value() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("nulenv").unwrap();
    let d = deployment(
        "web",
        &image,
        &[("TOKEN", "nul-planted-9f3a\0tail")],
        &["sleep", "100"],
    );
    let run = start(&section(&scope, ""), Arc::default(), state(true, &[&d]));
    let failed = run
        .wait_status("web Failed", |s| s.phase == Phase::Failed)
        .await;
    assert!(
        failed.message.contains("container.env.\"TOKEN\""),
        "{}",
        failed.message
    );
    let sink = run.sink.clone();
    run.stop().await;
    assert!(!sink.all_text().contains("nul-planted-9f3a"));
    assert!(!log_text().contains("nul-planted-9f3a"));
    assert!(scope.containers().unwrap().is_empty(), "nothing created");
}

// ---- Class 5: no secret in a failure message ----

#[tokio::test]
async fn a_failing_create_puts_no_env_value_or_argument_in_status_or_log() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("secret").unwrap();
    let container = naming(&scope).container("web");
    // A stranger (no fleet labels) holds the name: `podman create` fails.
    podman(&[
        "create",
        "--name",
        &container,
        "--label",
        &scope.label(),
        "--",
        &image,
        "true",
    ])
    .unwrap();
    let secret = "planted-secret-5c1d7e";
    let arg = "argument-secret-77aa01";
    let d = deployment(
        "web",
        &image,
        &[("TOKEN", secret)],
        &["sh", "-c", &format!("echo {arg}; sleep 100")],
    );
    let run = start(&section(&scope, ""), Arc::default(), state(true, &[&d]));
    let failed = run
        .wait_status("web Failed", |s| s.phase == Phase::Failed)
        .await;
    let m = &failed.message;
    assert!(m.contains(&format!("podman create {container}")), "{m}");
    assert!(m.contains("exit code 125"), "{m}");
    assert!(m.contains("already in use"), "{m}");
    // Let it retry a few times, so every path (retry, log, status) has run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sink = run.sink.clone();
    run.stop().await;
    let sink_text = sink.all_text();
    assert!(sink.statuses.lock().unwrap().len() >= 2, "{sink_text}");
    for s in [secret, arg] {
        assert!(!sink_text.contains(s), "{s} in {sink_text}");
        assert!(!log_text().contains(s), "{s} in the log");
    }
    // The stranger was not removed (it is in podman's database: not ours).
    assert!(container_exists(&container).unwrap());
}

// ---- Class 10: an interrupted podman never leaves a deployment stuck ----

#[tokio::test]
async fn a_storage_only_container_holding_the_name_is_removed_and_the_deployment_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("storonly").unwrap();
    let names = naming(&scope);
    let container = names.container("web");
    let attempts = storage_only_container(&container, &image, &scope.label(), 80).unwrap();
    eprintln!("storage-only state after {attempts} killed creates");
    assert!(!container_exists(&container).unwrap());
    assert!(external_names().unwrap().contains(&container));

    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    assert_eq!(state_of(&container).as_deref(), Some("running"));

    run.stop().await;

    // Leave a storage-only container again (the agent is down, as after a power cut) and
    // delete the deployment: storage and volume both go.
    podman(&["rm", "-f", "--", &container]).unwrap();
    storage_only_container(&container, &image, &scope.label(), 80).unwrap();
    assert!(volume_exists(&names.volume("web")));
    let run = start(&section(&scope, ""), store, state(true, &[]));
    eventually("the volume is removed", || {
        !volume_exists(&names.volume("web"))
    })
    .await;
    eventually("the storage-only container is removed", || {
        !external_names().unwrap().contains(&container)
    })
    .await;
    run.stop().await;
}

#[tokio::test]
async fn killing_podman_create_or_start_mid_flight_then_a_fresh_run_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("killmid").unwrap();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    for (verb, after_ms) in [
        // Around 80 ms in, podman has written storage but not its database (storage-only).
        ("create", 0),
        ("create", 40),
        ("create", 70),
        ("create", 90),
        ("create", 110),
        ("create", 140),
        ("start", 0),
        ("start", 60),
        ("start", 150),
    ] {
        podman(&["rm", "-f", "--ignore", "--", &container]).unwrap();
        let target = match verb {
            "create" => format!("--name={container}"),
            _ => container.clone(),
        };
        let killer = kill_when_running(
            vec![verb.to_owned(), target],
            Duration::from_millis(after_ms),
            LONG,
        );
        let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
        let killed = tokio::task::spawn_blocking(move || killer.join().unwrap())
            .await
            .unwrap();
        assert!(killed.is_some(), "podman {verb} was seen and killed");
        // The agent dies with its child: the job is dropped, not finished.
        run.task.abort();
        let _ = run.task.await;
        let left = state_of(&container);
        let storage_only = external_names().unwrap().contains(&container) && left.is_none();
        eprintln!(
            "killed podman {verb} after {after_ms} ms: left {left:?}, storage-only {storage_only}"
        );

        let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
        run.wait_running("web").await;
        assert_eq!(
            state_of(&container).as_deref(),
            Some("running"),
            "{verb} {after_ms}"
        );
        run.stop().await;
    }
}

#[tokio::test]
async fn a_shutdown_during_create_lets_podman_finish_and_the_next_start_converges() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("stopcreate").unwrap();
    let dir = tempfile_dir(&scope);
    // A podman whose create takes 2 s more after the real one, and says when it is done.
    let wrapper = dir.join("podman");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = create ] && {{\n  touch {d}/begun\n  \
             podman \"$@\"; rc=$?; sleep 2; touch {d}/finished; exit $rc\n}}; break; done\n\
             exec podman \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(
        &section(&scope, &format!("podman = \"{}\"\n", wrapper.display())),
        store.clone(),
        state(true, &[&d]),
    );
    eventually("the create began", || dir.join("begun").exists()).await;
    let stopping = std::time::Instant::now();
    run.stop().await;
    eprintln!(
        "module stopped {:?} after shutdown during a create",
        stopping.elapsed()
    );
    assert!(
        dir.join("finished").exists(),
        "the podman create in flight ran to its end before the module stopped"
    );
    let container = naming(&scope).container("web");
    assert!(container_exists(&container).unwrap());

    let run = start(&section(&scope, ""), store, state(true, &[&d]));
    run.wait_running("web").await;
    assert_eq!(state_of(&container).as_deref(), Some("running"));
    run.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir(scope: &PodmanScope) -> PathBuf {
    let dir = std::env::temp_dir().join(scope.name("wrap"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- Class 1: never remove for an absence ----

#[tokio::test]
async fn a_partial_desired_state_removes_nothing_and_a_complete_one_removes_both() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("absence").unwrap();
    let names = naming(&scope);
    let (container, volume) = (names.container("web"), names.volume("web"));
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    run.stop().await;

    // Rebuilt from a cache that lacks it: an absence, not a deletion.
    let run = start(&section(&scope, ""), store.clone(), state(false, &[]));
    // Several passes (resync every 2 s): still there.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(state_of(&container).as_deref(), Some("running"));
    assert!(volume_exists(&volume));
    eventually("the held deployment is reported", || {
        run.sink.all_text().contains("confirms its deletion")
    })
    .await;
    let detail = run.sink.details.lock().unwrap().last().cloned().unwrap();
    assert_eq!(detail["held"][0]["deployment"], "web", "{detail}");
    assert_eq!(detail["held"][0]["volume"], volume.as_str(), "{detail}");

    // The control plane's complete set, without it: now it is a deletion.
    run.desired.send(Arc::new(state(true, &[]))).unwrap();
    eventually("container and volume are removed", || {
        state_of(&container).is_none() && !volume_exists(&volume)
    })
    .await;
    run.stop().await;

    // A deletion recorded in the cache counts as received too.
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    let mut cached = state(false, &[]);
    cached.deleted.insert("web".into());
    run.desired.send(Arc::new(cached)).unwrap();
    eventually("container and volume are removed", || {
        state_of(&container).is_none() && !volume_exists(&volume)
    })
    .await;
    run.stop().await;
}

/// The state a podman killed between `runc start` and its database write leaves: podman says
/// `initialized`, runc runs the process, and every `podman start` fails ("cannot start an
/// already running container"). Made deterministic with `podman init` + `runc start`.
#[tokio::test]
async fn a_container_podman_calls_initialized_while_runc_runs_it_is_replaced_and_runs() {
    if !require("podman") || !require("runc") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("initrunc").unwrap();
    let container = naming(&scope).container("web");
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    run.stop().await;
    let old_id = podman(&[
        "container",
        "inspect",
        "--format",
        "{{.Id}}",
        "--",
        &container,
    ])
    .unwrap()
    .trim()
    .to_owned();
    podman(&["stop", "-t", "0", "--", &container]).unwrap();
    podman(&["init", "--", &container]).unwrap();
    let runc = std::process::Command::new("runc")
        .args(["--root", "/run/runc", "start", &old_id])
        .status()
        .unwrap();
    assert!(runc.success(), "runc start");
    assert_eq!(state_of(&container).as_deref(), Some("initialized"));
    assert!(
        podman(&["start", "--", &container]).is_err(),
        "podman start fails in this state"
    );

    let run = start(&section(&scope, ""), store, state(true, &[&d]));
    eventually("a new container runs", || {
        state_of(&container).as_deref() == Some("running")
            && podman(&[
                "container",
                "inspect",
                "--format",
                "{{.Id}}",
                "--",
                &container,
            ])
            .is_ok_and(|id| id.trim() != old_id)
    })
    .await;
    run.wait_running("web").await;
    run.stop().await;
}
