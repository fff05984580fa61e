//! The module against real podman, without the agent: the ContainerRuntime extension point
//! and the status of a manifest this build cannot serve.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::{Deployment, DeploymentStatus, Phase};
use fleet_mod_containers::{Naming, Podman, PodmanRuntime, DESCRIPTOR};
use fleet_module_api::{
    CancellationToken, ContainerRuntime, Context, DesiredDeployment, DesiredState,
    ExtensionsBuilder, MemStore, Paths, RunSpec, StatusSink, SystemClock,
};
use fleet_testkit::{busybox_image, require, PodmanScope};

fn runtime(scope: &PodmanScope) -> PodmanRuntime {
    PodmanRuntime {
        podman: Podman::new(Path::new("podman"), None, None),
        naming: Naming::new(
            scope.id(),
            [("fleet.test.scope".to_owned(), scope.id().to_owned())].into(),
        ),
        data_mount: "/data".into(),
        log_max_mib: 10,
    }
}

fn spec(image: &str, name: &str, script: &str, timeout: Duration) -> RunSpec {
    RunSpec {
        name: name.into(),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        labels: Vec::new(),
        timeout,
        deployment: Some("job".into()),
    }
}

#[tokio::test]
async fn run_to_completion_reports_exit_logs_and_timeout_and_shares_the_data_volume() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("rtc").unwrap();
    let rt = runtime(&scope);
    let long = Duration::from_secs(60);

    let out = rt
        .run_to_completion(&spec(
            &image,
            "a",
            "echo one > /data/f; echo hello; exit 3",
            long,
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.last_log_lines, vec!["hello"]);

    // Same deployment, same volume: the file written above is there.
    let out = rt
        .run_to_completion(&spec(&image, "b", "cat /data/f", long))
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.last_log_lines),
        (Some(0), vec!["one".to_owned()])
    );

    let out = rt
        .run_to_completion(&spec(
            &image,
            "c",
            "echo waiting; sleep 3600",
            Duration::from_secs(2),
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, None, "timed out");
    assert_eq!(out.last_log_lines, vec!["waiting"]);
    assert!(
        scope.containers().unwrap().is_empty(),
        "one-shot containers are removed"
    );

    let err = rt
        .run_to_completion(&spec("localhost/fleet-test/none:0", "d", "true", long))
        .await
        .unwrap_err();
    assert!(
        err.0.contains("pull localhost/fleet-test/none:0 failed"),
        "{err}"
    );
}

#[derive(Default)]
struct Sink(Mutex<Vec<DeploymentStatus>>);

impl StatusSink for Sink {
    fn deployment(&self, status: DeploymentStatus) {
        self.0.lock().unwrap().push(status);
    }
    fn deployment_removed(&self, _name: &str) {}
    fn detail(&self, _module: &'static str, _detail: serde_json::Value) {}
}

#[tokio::test]
async fn init_containers_without_the_init_module_fail_saying_so() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("noinit").unwrap();
    let section: toml::Value = toml::from_str(&format!(
        "instance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n",
        id = scope.id()
    ))
    .unwrap();
    let module = (DESCRIPTOR.build)(Some(&section)).unwrap();
    let mut ext = ExtensionsBuilder::new();
    module.provide(&mut ext); // a build without init-containers: no LifecycleHook
    let d = Deployment::from_toml_str(&format!(
        "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 2\n[container]\nimage = \"{image}\"\n\
         [[init]]\nname = \"prepare\"\ncommand = [\"true\"]\n"
    ))
    .unwrap();
    let mut state = DesiredState::default();
    state
        .deployments
        .insert("web".into(), DesiredDeployment::Valid(Box::new(d)));
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(state));
    let sink = Arc::new(Sink::default());
    let shutdown = CancellationToken::new();
    let ctx = Context {
        module: "containers",
        store: Arc::new(MemStore::default()),
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
        checkin: tokio::sync::watch::channel(Default::default()).1,
        progress: Default::default(),
    };
    let task = tokio::spawn(module.clone().run(ctx));
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(s) = sink
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.phase == Phase::Failed)
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a Failed status within 60 s");
    assert_eq!(failed.revision, Some(2));
    assert!(
        failed
            .message
            .contains("built without the init-containers module"),
        "{}",
        failed.message
    );
    assert!(scope.containers().unwrap().is_empty(), "nothing created");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
