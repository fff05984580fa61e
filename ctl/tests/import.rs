//! `fleetctl import` as an operator runs it: manifests on stdout or in a directory, every
//! key not carried on stderr with its path, the documented exit codes, `--strict`, and a
//! converted manifest that a real agent (local manifest directory, real podman) runs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Output;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::store::Store;
use fleet_agent::Agent;
use fleet_contract::{Deployment, Phase};
use fleet_module_api::CancellationToken;
use fleet_testkit::{busybox_image, podman, require, PodmanScope, TempRoot};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");

fn ctl(args: &[&str]) -> Output {
    fleet_testkit::output_within(
        std::process::Command::new(CTL).args(args),
        fleet_testkit::COMMAND_LIMIT,
    )
    .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const COMPOSE: &str = "\
services:
  web:
    image: localhost/web:1
    command: httpd -f -p 8080
    ports: [\"8080:8080\"]
    restart: always
    depends_on: [cache]
    deploy:
      replicas: 3
  cache:
    image: localhost/cache:1
    environment: [MODE=lru]
";

#[test]
fn prints_writes_and_names_what_is_not_carried() {
    let root = TempRoot::new().unwrap();
    let file = root.path().join("compose.yaml");
    std::fs::write(&file, COMPOSE).unwrap();
    let file = file.to_str().unwrap();

    // stdout: the manifests one after the other; stderr: one line per key not carried.
    let out = ctl(&["import", file]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout.matches("apiVersion = \"fleet/v1\"").count(),
        2,
        "{stdout}"
    );
    assert!(stderr.contains(&format!(
        "{file}: line 7, column 5: services.web.depends_on: not carried: deployments start independently"
    )), "{stderr}");
    assert!(stderr.contains(&format!(
        "{file}: line 9, column 7: services.web.deploy.replicas: not carried: a deployment is one container"
    )), "{stderr}");
    assert!(
        stderr.contains("2 of 2 service(s) converted, 2 key(s) not carried"),
        "{stderr}"
    );

    // --service and --out: one file, which the agent's decoder (and `validate`) accepts.
    let dir = root.path().join("deployments.d");
    let out = ctl(&[
        "import",
        file,
        "--service",
        "cache",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let written: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["cache.toml"]);
    let cache = dir.join("cache.toml");
    let d = Deployment::from_toml_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!((d.name.as_str(), d.revision), ("cache", 1));
    assert_eq!(d.container.env["MODE"], "lru");
    let out = ctl(&["validate", cache.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);

    // --strict: a key not carried fails the run and nothing is written.
    let strict = root.path().join("strict");
    let out = ctl(&[
        "import",
        file,
        "--strict",
        "--out",
        strict.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("nothing converted (--strict)"));
    assert!(!strict.exists());
    let out = ctl(&["import", file, "--strict", "--service", "cache"]);
    assert_eq!(out.status.code(), Some(0), "cache alone carries everything");

    // A service that does not exist, and usage errors.
    let out = ctl(&["import", file, "--service", "db"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out)
        .1
        .contains("no service \"db\"; the file has web, cache"));
    assert_eq!(ctl(&["import"]).status.code(), Some(2));
}

#[test]
fn a_bad_file_or_service_exits_1_and_the_rest_is_still_written() {
    let root = TempRoot::new().unwrap();
    let bad = root.path().join("bad.yaml");
    std::fs::write(&bad, "services:\n  web:\n    image: [localhost/web\n").unwrap();
    let out = ctl(&["import", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = text(&out);
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with(&format!("fleetctl: {}: line 4, column 1: ", bad.display())),
        "{stderr}"
    );

    let mixed = root.path().join("mixed.yaml");
    std::fs::write(&mixed, "services:\n  ok:\n    image: localhost/a:1\n  broken:\n    image: localhost/b:1\n    mem_limit: lots\n").unwrap();
    let dir = root.path().join("out");
    let out = ctl(&[
        "import",
        mixed.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("ok: wrote"), "{stdout}");
    assert!(dir.join("ok.toml").exists() && !dir.join("broken.toml").exists());
    assert!(
        stderr.contains(
            "service broken: line 6, column 16: services.broken.mem_limit: \"lots\" is not a size"
        ),
        "{stderr}"
    );

    let out = ctl(&["import", root.path().join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("missing.yaml"));
}

/// The check: a converted compose service converges on a real agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_service_runs_on_a_real_agent() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("import").unwrap();
    let root = TempRoot::new().unwrap();
    let compose = root.path().join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  hello:\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    environment:\n      GREETING: from compose\n    restart: unless-stopped\n    stop_grace_period: 5s\n"
        ),
    )
    .unwrap();
    let out = ctl(&[
        "import",
        compose.to_str().unwrap(),
        "--out",
        root.deployments().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);

    let id = scope.id();
    let path = root.write_config(&format!(
        "device_id = \"import-dev\"\nstate_dir = {:?}\nrun_dir = {:?}\n\
         [modules.containers]\ninstance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 4\n\
         [modules.time-guard]\nservers = []\n\
         [control]\ndeployments_dir = {:?}\n",
        root.state(),
        root.run(),
        root.deployments(),
    ));
    let agent = Agent::builder(Config::load(&path).unwrap())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));

    let db = root.state().join("state.db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = None;
    let running = loop {
        if let Ok(store) = Store::open_existing(&db, Duration::from_secs(2)) {
            if let Some(st) = store
                .statuses()
                .unwrap()
                .into_iter()
                .find(|s| s.name == "hello")
            {
                if st.phase == Phase::Running {
                    break st;
                }
                last = Some(st);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hello not Running after 90 s; last status: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(running.revision, Some(1));
    let env = podman(&[
        "container",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &format!("fleet-{id}-hello"),
    ])
    .unwrap();
    assert!(env.contains("GREETING=from compose"), "{env}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(scope);
}
