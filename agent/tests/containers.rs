//! The real agent binary against real podman (and a real docker-registry on loopback):
//! roll-forward, graceful stop, init containers, drift repair, adoption, offline boot, scale.
//!
//! Every test runs its agent in its own podman namespace (`[modules.containers] instance` =
//! a `PodmanScope` id, whose label is put on everything), so parallel tests never see each
//! other's containers and the scope's drop removes whatever a failed test left behind.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use fleet_testkit::{
    busybox_image, free_port, podman, require, wait_until, PodmanScope, Registry, TempRoot,
};
use serde_json::Value;

/// Generous: podman on a loaded 2-core CI machine takes seconds per container.
const CONVERGE: Duration = Duration::from_secs(90);

/// A command that exits promptly on SIGTERM (PID 1 ignores signals it has no handler for).
const SERVE: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"];

struct Env {
    root: TempRoot,
    scope: PodmanScope,
    config: PathBuf,
    image: String,
}

impl Env {
    /// A temp root, a podman scope and a config for an agent in that scope; `None` (skip)
    /// without podman.
    fn new(extra: &str) -> Option<Env> {
        if !require("podman") {
            return None;
        }
        let image = busybox_image("testkit").unwrap();
        let root = TempRoot::new().unwrap();
        let scope = PodmanScope::new("ct").unwrap();
        let config = write_config(&root, &containers_section(&scope, extra));
        Some(Env {
            root,
            scope,
            config,
            image,
        })
    }

    fn write(&self, name: &str, text: &str) {
        let tmp = self.root.deployments().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.root.deployments().join(format!("{name}.toml"))).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.root.deployments().join(format!("{name}.toml"))).unwrap();
    }

    fn container(&self, deployment: &str) -> String {
        format!("fleet-{}-{deployment}", self.scope.id())
    }

    /// `podman inspect` of a deployment's container, if it exists.
    fn inspect(&self, deployment: &str) -> Option<Value> {
        let out = podman(&["container", "inspect", &self.container(deployment)]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v.get(0).cloned()
    }

    fn wait_phase(&self, name: &str, phase: &str, revision: u64) -> Value {
        self.wait_for(&format!("{name} {phase} at revision {revision}"), |d| {
            d["phase"] == phase && d["revision"] == revision
        })
        .1
    }

    /// Waits for the deployment status to satisfy `pred`; returns (whole status, entry).
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> (Value, Value) {
        let name = what.split_whitespace().next().unwrap().to_owned();
        wait_until(CONVERGE, what, || {
            let st = status(&self.config)?;
            let d = deployment(&st, &name)?.clone();
            pred(&d).then_some((st, d))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}; last status: {:#}\nagent log:\n{}",
                status(&self.config).unwrap_or_default(),
                self.log_tail()
            )
        })
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.config.with_file_name("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

fn containers_section(scope: &PodmanScope, extra: &str) -> String {
    format!(
        "[modules.containers]\ninstance = \"{id}\"\nlabels = {{ \"fleet.test.scope\" = \"{id}\" }}\n\
         backoff_initial_secs = 1\nbackoff_max_secs = 4\nresync_secs = 20\n{extra}\n",
        id = scope.id()
    )
}

/// A manifest; `tail` is appended (lifecycle, init tables).
fn manifest(name: &str, revision: u64, image: &str, command: &[&str], tail: &str) -> String {
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = {revision}\n\n[container]\n\
         image = \"{image}\"\ncommand = [{}]\n{tail}",
        command.join(", ")
    )
}

fn started_agent(env: &Env) -> AgentProc {
    AgentProc::spawn(&env.config, None)
}

#[test]
fn roll_forward_v1_missing_v2_then_v3() {
    if !require("docker-registry") {
        return;
    }
    let registry = Registry::start().unwrap();
    let conf = registry.registries_conf().unwrap();
    let Some(env) = Env::new(&format!("registries_conf = {conf:?}\n")) else {
        return;
    };
    let v1 = env
        .scope
        .push_to(&registry, &env.image, "fleet/app:v1")
        .unwrap();
    let v3 = env
        .scope
        .push_to(&registry, &env.image, "fleet/app:v3")
        .unwrap();
    let v2 = format!("{}/fleet/app:v2", registry.addr());
    let lifecycle = "[lifecycle]\ngracePeriodSecs = 5\n";
    let _agent = started_agent(&env);

    env.write("app", &manifest("app", 1, &v1, SERVE, lifecycle));
    let d = env.wait_phase("app", "Running", 1);
    assert!(
        d["imageDigest"].as_str().unwrap().starts_with("sha256:"),
        "{d}"
    );
    let first = env.inspect("app").unwrap();
    assert_eq!(first["Config"]["Labels"]["fleet.revision"], "1");

    // v2 names an image the registry does not have: Failed with the pull error; v1 keeps
    // running (pulls happen before the old revision is stopped).
    env.write("app", &manifest("app", 2, &v2, SERVE, lifecycle));
    let d = env.wait_phase("app", "Failed", 2);
    let msg = d["message"].as_str().unwrap();
    assert!(msg.contains(&format!("pull {v2} failed")), "{msg}");
    assert!(msg.contains("manifest unknown"), "registry's error: {msg}");
    let still = env.inspect("app").unwrap();
    assert_eq!(still["Id"], first["Id"], "v1 untouched by the failed v2");
    assert_eq!(still["State"]["Status"], "running");

    // v3 rolls forward.
    env.write("app", &manifest("app", 3, &v3, SERVE, lifecycle));
    env.wait_phase("app", "Running", 3);
    let third = env.inspect("app").unwrap();
    assert_ne!(third["Id"], first["Id"]);
    assert_eq!(third["Config"]["Labels"]["fleet.revision"], "3");
    assert_eq!(third["ImageName"], v3);
    for image in [&v1, &v3] {
        let _ = podman(&["rmi", "--force", image]);
    }
}

#[test]
fn a_container_ignoring_sigterm_is_killed_after_its_grace_period() {
    let Some(env) = Env::new("") else { return };
    let stubborn = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"];
    let lifecycle = "[lifecycle]\nstopSignal = \"SIGTERM\"\ngracePeriodSecs = 3\n";
    let _agent = started_agent(&env);
    env.write(
        "stub",
        &manifest("stub", 1, &env.image, &stubborn, lifecycle),
    );
    env.wait_phase("stub", "Running", 1);
    let old = env.inspect("stub").unwrap();

    let started = Instant::now();
    env.write("stub", &manifest("stub", 2, &env.image, SERVE, lifecycle));
    let (_, upgrading) = env.wait_for("stub upgrading", |d| d["phase"] == "Upgrading");
    let msg = upgrading["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("SIGTERM, SIGKILL after 3 s"), "{msg}");
    env.wait_phase("stub", "Running", 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "the old container got its 3 s grace period, took {took:?}"
    );
    let new = env.inspect("stub").unwrap();
    assert_ne!(new["Id"], old["Id"]);
    assert_eq!(new["State"]["Status"], "running");
}

#[test]
fn init_containers_run_in_order_and_failures_name_the_init_container() {
    let Some(env) = Env::new("") else { return };
    let _agent = started_agent(&env);
    // Main asserts that both inits ran, in order, on the shared data volume.
    let main = [
        "sh",
        "-c",
        "[ -f /data/init ] && [ \"$(cat /data/order)\" = \"$(echo first; echo second)\" ] || exit 7; \
         trap 'exit 0' TERM; sleep 3600 & wait",
    ];
    let inits = "[lifecycle]\ngracePeriodSecs = 2\n\n\
        [[init]]\nname = \"prepare\"\ncommand = [\"sh\", \"-c\", \"mkdir -p /data && touch /data/init && echo first >> /data/order\"]\n\n\
        [[init]]\nname = \"append\"\ncommand = [\"sh\", \"-c\", \"echo second >> /data/order\"]\n";
    env.write("ordered", &manifest("ordered", 1, &env.image, &main, inits));

    let fails = "[[init]]\nname = \"ok\"\ncommand = [\"true\"]\n\n\
        [[init]]\nname = \"broken\"\ncommand = [\"sh\", \"-c\", \"echo preparing; echo no database >&2; exit 3\"]\n";
    env.write("failing", &manifest("failing", 1, &env.image, SERVE, fails));

    let hangs = "[[init]]\nname = \"stuck\"\ncommand = [\"sleep\", \"3600\"]\ntimeoutSecs = 2\n";
    env.write("hanging", &manifest("hanging", 1, &env.image, SERVE, hangs));

    env.wait_phase("ordered", "Running", 1);
    let (_, failing) = env.wait_for("failing failed", |d| d["phase"] == "Failed");
    let msg = failing["message"].as_str().unwrap();
    assert!(msg.contains("init container \"broken\""), "{msg}");
    assert!(msg.contains("exit 3"), "{msg}");
    assert!(msg.contains("no database"), "last log lines: {msg}");
    assert!(env.inspect("failing").is_none(), "main never created");

    let (_, hanging) = env.wait_for("hanging failed", |d| d["phase"] == "Failed");
    let msg = hanging["message"].as_str().unwrap();
    assert!(msg.contains("init container \"stuck\""), "{msg}");
    assert!(msg.contains("timed out after 2 s"), "{msg}");

    // The main container stays up: its assertion held (else it would exit 7 and crash-loop).
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&env.config).unwrap();
    let d = deployment(&st, "ordered").unwrap();
    assert_eq!(d["phase"], "Running", "{d}");
    assert_eq!(d["restarts"], 0, "{d}");
    assert_eq!(
        env.inspect("ordered").unwrap()["State"]["Status"],
        "running"
    );
    // Init containers are removed once they completed.
    let names = env.scope.containers().unwrap();
    assert!(
        names.iter().all(|n| !n.contains("-ordered-init-")),
        "left-over init containers: {names:?}"
    );
}

#[test]
fn drift_is_repaired_and_an_agent_restart_adopts_without_recreating() {
    let Some(env) = Env::new("") else { return };
    let mut agent = started_agent(&env);
    let lifecycle = "[lifecycle]\ngracePeriodSecs = 2\n";
    env.write("web", &manifest("web", 1, &env.image, SERVE, lifecycle));
    env.wait_phase("web", "Running", 1);
    let first = env.inspect("web").unwrap();

    // Removed by hand: recreated.
    podman(&["rm", "-f", "-t", "0", &env.container("web")]).unwrap();
    let recreated = wait_until(CONVERGE, "web recreated", || {
        env.inspect("web")
            .filter(|c| c["Id"] != first["Id"] && c["State"]["Status"] == "running")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.log_tail()));

    // Stopped by hand: started again (same container), counted as a restart.
    podman(&["stop", "-t", "1", &env.container("web")]).unwrap();
    let (_, d) = env.wait_for("web restarted", |d| {
        d["phase"] == "Running" && d["restarts"].as_u64() >= Some(1)
    });
    assert!(d["lastExitCode"].is_i64(), "{d}");
    let restarted = wait_until(CONVERGE, "web running again", || {
        env.inspect("web")
            .filter(|c| c["State"]["Status"] == "running")
    })
    .unwrap();
    assert_eq!(restarted["Id"], recreated["Id"], "restarted, not recreated");

    // The agent dies hard and comes back: the healthy container is adopted as is.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let _agent = started_agent(&env);
    wait_until(CONVERGE, "new agent running", || {
        status(&env.config).filter(|s| s["running"] == true)
    })
    .unwrap();
    env.wait_phase("web", "Running", 1);
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&env.config).unwrap();
    let d = deployment(&st, "web").unwrap();
    assert!(
        d["restarts"].as_u64() >= Some(1),
        "the restart count survives the agent: {d}"
    );
    let after = env.inspect("web").unwrap();
    assert_eq!(after["Id"], restarted["Id"], "no container recreated");
    assert_eq!(
        after["State"]["StartedAt"], restarted["State"]["StartedAt"],
        "not even restarted"
    );
}

#[test]
fn an_offline_boot_converges_from_the_cached_desired_state() {
    let Some(env) = Env::new("") else { return };
    let mut agent = started_agent(&env);
    env.write(
        "cached",
        &manifest(
            "cached",
            4,
            &env.image,
            SERVE,
            "[lifecycle]\ngracePeriodSecs = 2\n",
        ),
    );
    env.wait_phase("cached", "Running", 4);
    agent
        .terminate(Duration::from_secs(10))
        .expect("agent exits");
    // While the agent is down the device loses the container (think: a reboot that wiped
    // the container store), and the agent comes back configured for a broker that does not
    // answer: it must converge from the desired state cached in its SQLite store.
    podman(&["rm", "-f", "-t", "0", &env.container("cached")]).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let control = text.find("[control]").unwrap();
    let offline = format!(
        "{}[control]\nplane = \"nats\"\n\n[control.nats]\nservers = [\"nats://127.0.0.1:{}\"]\n",
        &text[..control],
        free_port()
    );
    std::fs::write(&env.config, offline).unwrap();

    let _agent = started_agent(&env);
    let c = wait_until(CONVERGE, "cached container back", || {
        env.inspect("cached")
            .filter(|c| c["State"]["Status"] == "running")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.log_tail()));
    assert_eq!(c["Config"]["Labels"]["fleet.revision"], "4");
    env.wait_phase("cached", "Running", 4);
}

#[test]
fn twenty_deployments_converge_and_leave_nothing_behind_when_removed() {
    let Some(env) = Env::new("parallelism = 4\n") else {
        return;
    };
    let _agent = started_agent(&env);
    let names: Vec<String> = (0..20).map(|i| format!("svc-{i:02}")).collect();
    for n in &names {
        env.write(
            n,
            &manifest(
                n,
                1,
                &env.image,
                SERVE,
                "[lifecycle]\ngracePeriodSecs = 2\n",
            ),
        );
    }
    wait_until(Duration::from_secs(180), "20 deployments running", || {
        let st = status(&env.config)?;
        names
            .iter()
            .all(|n| deployment(&st, n).is_some_and(|d| d["phase"] == "Running"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; {:#}", status(&env.config).unwrap_or_default()));
    assert_eq!(env.scope.containers().unwrap().len(), 20);

    for n in &names {
        env.remove(n);
    }
    wait_until(Duration::from_secs(180), "everything removed", || {
        let st = status(&env.config)?;
        let empty = st["deployments"].as_array().is_some_and(|a| a.is_empty());
        (empty && env.scope.containers().ok()?.is_empty()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; {:#}", status(&env.config).unwrap_or_default()));
    let filter = format!("label={}", env.scope.label());
    let volumes = podman(&["volume", "ls", "-q", "--filter", &filter]).unwrap();
    assert!(volumes.trim().is_empty(), "volumes left: {volumes}");
    // Unmanaged containers are never touched: the scope label alone is not ours.
    let _ = &env.scope;
}

#[test]
fn unmanaged_containers_and_invalid_documents_are_left_alone() {
    let Some(env) = Env::new("") else { return };
    // A container in our namespace label-wise, but not created by the agent.
    let stranger = env.scope.name("stranger");
    podman(&[
        "run",
        "-d",
        "--name",
        &stranger,
        "--label",
        &env.scope.label(),
        "--label",
        &format!("fleet.instance={}", env.scope.id()),
        &env.image,
        "sleep",
        "3600",
    ])
    .unwrap();
    let _agent = started_agent(&env);
    env.write(
        "keep",
        &manifest(
            "keep",
            1,
            &env.image,
            SERVE,
            "[lifecycle]\ngracePeriodSecs = 2\n",
        ),
    );
    env.wait_phase("keep", "Running", 1);
    let before = env.inspect("keep").unwrap();
    // The document turns invalid: the runtime reports it Failed, the container runs on.
    env.write(
        "keep",
        "apiVersion = \"fleet/v1\"\nname = \"keep\"\nrevision = \"x\"\n",
    );
    env.wait_for("keep invalid", |d| {
        d["phase"] == "Failed"
            && d["message"]
                .as_str()
                .is_some_and(|m| m.contains("revision"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let after = env.inspect("keep").unwrap();
    assert_eq!(after["Id"], before["Id"]);
    assert_eq!(after["State"]["Status"], "running");
    let out = podman(&["container", "inspect", &stranger]).unwrap();
    assert!(
        out.contains("\"Status\": \"running\""),
        "stranger untouched"
    );
}

#[test]
fn deleting_a_manifest_file_keeps_its_named_volumes_and_status_lists_them() {
    let Some(env) = Env::new("") else { return };
    let _agent = started_agent(&env);
    let tail = "[[container.volumes]]\nname = \"db\"\nmountPath = \"/db\"\n\n\
                [lifecycle]\nstopSignal = \"SIGKILL\"\ngracePeriodSecs = 1\n";
    let write = ["sh", "-c", "echo kept > /db/file; exec sleep 1000"];
    env.write("keep", &manifest("keep", 1, &env.image, &write, tail));
    env.wait_phase("keep", "Running", 1);
    let volume = format!("fleet-{}-keep.db", env.scope.id());
    let data = format!("fleet-{}-keep-data", env.scope.id());
    wait_until(CONVERGE, "the file written", || {
        podman(&["exec", &env.container("keep"), "cat", "/db/file"]).ok()
    })
    .unwrap();

    env.remove("keep");
    let want = serde_json::json!([{ "deployment": "keep", "volume": volume }]);
    wait_until(CONVERGE, "the named volume listed as retained", || {
        status(&env.config).filter(|st| st["details"]["containers"]["retained"] == want)
    })
    .unwrap_or_else(|e| panic!("{e}; status {:#}", status(&env.config).unwrap_or_default()));
    assert!(env.inspect("keep").is_none(), "the container is removed");
    assert!(
        podman(&["volume", "exists", &data]).is_err(),
        "the data volume too"
    );
    let kept = podman(&[
        "run",
        "--rm",
        &format!("--label=fleet.test.scope={}", env.scope.id()),
        &format!("--volume={volume}:/v"),
        "--",
        &env.image,
        "cat",
        "/v/file",
    ])
    .unwrap();
    assert_eq!(kept, "kept\n", "the named volume keeps its data");
}
