//! Module `containers`: keeps the device's containers converged with the desired state,
//! over podman.
//!
//! # What it does
//!
//! - **Reconcile.** Every deployment `<name>` runs as one container `fleet-<name>` (or
//!   `fleet-<instance>-<name>` for a non-default `instance`), labelled
//!   `fleet.managed-by=fleet-agent`, `fleet.instance`, `fleet.deployment`, `fleet.spec-hash`
//!   (hash of container spec, lifecycle and init containers; not the revision),
//!   `fleet.revision` and `fleet.role=main`. Missing containers are created, containers from
//!   another spec replaced, containers of deployments whose deletion was received removed
//!   (with their data volume). Containers without our labels are never touched. Up to
//!   `parallelism` deployments are worked on at once; one deployment never has two
//!   operations in flight.
//! - **Roll forward.** On a spec change the new image is pulled first, while the old
//!   revision still runs. Then `Upgrading`: the old container gets its stop signal, SIGKILL
//!   after its grace period (both set at creation from `[lifecycle]`, so `podman stop` by
//!   anyone honours them), is removed, the init containers run, the new one is created and
//!   started: `Running`. Any failure is `Failed` naming the reason, retried with backoff;
//!   there is no automatic revert (application versions only roll forward). A failed pull
//!   leaves the old revision running.
//! - **Status**: `Pending`, `Pulling`, `Initializing`, `Starting`, `Running`, `Unhealthy`,
//!   `Upgrading`, `Failed`, `Removing`, with message, restart count, last exit code, image
//!   digest, the probe result and the desired revision the status reflects.
//! - **Health probes** (`http`, `tcp`, `exec`; [`probe`], run by `engine/probes.rs`): a
//!   deployment with probes is `Starting` until all passed once, then `Running`; a probe past
//!   its failure threshold makes it `Unhealthy` (`Failed` if it never passed), and the
//!   container is stopped by its lifecycle and restarted by its restart policy.
//! - **Drift repair, event-driven, no resident child.** A pidfd on the main process of each
//!   running container (host pid from the pass's `podman ps`) wakes the loop when it ends:
//!   its own exit or crash, `kill -9` from the host, `podman stop`/`kill`/`rm -f`, `podman
//!   system migrate`. A full resync every `resync_secs` (600 s) is the safety net for what no
//!   exit shows (a stopped container removed by hand); a paused container is left paused.
//!   Restarts follow the manifest's restart policy
//!   (done by the agent, not podman: containers are created with `--restart no`), with
//!   crash-loop backoff (`backoff_initial_secs` doubling to `backoff_max_secs`, reset after a
//!   run of `healthy_after_secs`) shown in the status message and restart count.
//! - **Few podman calls.** A new deployment costs the pass's `podman ps`, one `image
//!   inspect` per image and minute (present? digest?), one `volume create` (and one per
//!   named volume) and one `podman run --detach` (create and start). Volumes are listed
//!   only by the full passes, while a deployment this engine ran may have left one behind,
//!   and once per removal (the named volumes it keeps).
//! - **Never removed for an absence.** A deployment's containers and volume are removed only
//!   when `DesiredState::removal_received` says its deletion was received: the control
//!   plane's complete set lacks it, or the cache recorded its deletion. A deployment merely
//!   absent from a state that may be partial (rebuilt from the cache) is *held*: kept as it
//!   is, logged once and listed in the module's status detail (`held`: deployment,
//!   containers, volume, reason) until a complete state without it arrives.
//! - **Interrupted podman.** podman calls are not killed when the agent drops them: on
//!   shutdown the module takes no new job and lets the one in flight finish (up to 6 s of
//!   the agent's 8 s), and only a call past its own time limit is killed. What a podman
//!   killed anyway (power cut, cgroup-wide kill) leaves is repaired for this instance's own
//!   names: a storage-only container holding the name (`podman rm --storage`, create
//!   again; also on deletion, with the volume), and a created/initialized container that
//!   does not start (looked at again, removed and created anew).
//! - **The podman boundary.** Options always end with `--` before the image, names and
//!   command; an image or name that starts with `-`, and any NUL byte, is refused naming
//!   the field before podman runs. No message or log line carries podman's argv: a failure
//!   names the operation and target, the exit code and podman's error line with the
//!   deployment's env values and container arguments redacted, capped.
//! - **Boot and offline.** The loop starts from whatever desired state the runtime has, which
//!   is the SQLite cache when no control plane answers. A running container whose spec hash
//!   matches is adopted as is: an agent restart recreates nothing. An exited one (after a
//!   reboot) is started again, not recreated, so init containers do not run again.
//! - **Data volume.** Each deployment gets a podman volume `fleet-<name>-data` mounted at
//!   `data_mount` (`/data`) in its main and init containers; it lives as long as the
//!   deployment and is removed with it.
//! - **Named volumes** (`container.volumes`): `fleet-<name>.<volume>`, created labelled
//!   (`fleet.volume`) before the container runs, kept across upgrades and the deployment's
//!   deletion, listed once it is deleted in the status detail (`retained`: deployment,
//!   volume), and removed only by the `purge` verb (admin; see `purge.rs`), which refuses
//!   while the deployment is desired or its container exists.
//! - **Pulls** happen when an image is not present locally (`pullPolicy = "if-not-present"`)
//!   or before every creation of the container (`"always"`: a moving tag is followed; a
//!   restart of the same container pulls nothing), with credentials from `auth_file`
//!   (root-only, containers-auth.json) until the secrets module resolves references; a pull
//!   failure is `Failed` with the image and the registry's error, retried with backoff. An
//!   image pinned by digest reports that digest as `imageDigest`.
//! - **The device's policy** (`[modules.containers.policy]`, see [`Policy`]): privileged
//!   mode, host network, host ports below 1024, bind mounts (under `bind_roots`), devices
//!   (by pattern) and added capabilities are refused unless allowed; a refused manifest is
//!   `Failed` naming the manifest field and the config key before anything of it runs (no
//!   pull, no container), and is checked again only at the resync or when the manifest
//!   changes. The old revision, if any, keeps running.
//! - **Logs cannot fill the card.** Every container (init containers too) logs to a
//!   `k8s-file` capped at `[modules.containers.logs] max_size_mib` (a manifest may ask up to
//!   `ceiling_mib`); conmon truncates it before a write would pass the cap.
//! - **OOM kills** are reported: `exitReason = "oom-killed"` and the message says it (see
//!   `engine/oom.rs` for why the engine reads conmon's marker itself on podman 4.3).
//!
//! # Runtime access: CLI, not the REST API
//!
//! `fleet-bench-containers` measures both ways of talking to podman in the same run: the
//! CLI, and the libpod REST API of `podman system service` on a unix socket. On the 2-core
//! build machine (podman 4.3.1, runc; medians of 10) the REST API lists containers in
//! 2.8 ms against 43.5 ms for `podman ps` (15.7x), and does a create + start + remove cycle
//! in 499 ms against 735 ms (1.47x). **Per call the REST API is faster**: every CLI call
//! pays for starting podman's Go binary, and the more the work is in the container runtime
//! (conmon, runc, network namespace), the smaller the gap.
//!
//! We still use the **CLI by default**, deliberately trading that speed for robustness:
//! the API needs a second long-lived root process (`podman system service`) that the agent
//! must start, supervise and restart, whose crash or hang stalls every container operation
//! at once, and whose socket activation differs between distributions; a failed CLI call
//! fails only itself and the next pass retries it. The CLI also keeps pulls with
//! `--authfile` and every recorded command identical to what an operator
//! types when debugging a device. The cost, measured end to end, is that the agent reaches
//! Running in about 2x the time of a plain `podman run -d` (README, "Containers"), i.e.
//! under half a second per deployment on this machine, which is irrelevant for a device that
//! converges a handful of deployments. Everything that runs podman is in `podman.rs`, so a
//! REST backend can replace it behind the same functions if start-up latency ever matters.

mod config;
mod engine;
mod error;
mod podman;
mod policy;
pub mod probe;
mod purge;
mod reconcile;
mod runtime;
mod volumes;

use std::sync::{Arc, Mutex};

use fleet_module_api::{
    async_trait, Capability, Command, CommandError, ConfigError, ContainerRuntime, Context,
    Descriptor, ExtensionsBuilder, Health, ModuleError, Probe, Reply,
};

pub use config::Config;
pub use error::Error;
pub use podman::{create_args, run_args, CreateSpec, HostOptions, Podman, PsEntry};
pub use policy::{Logs, Policy, Refusal};
pub use reconcile::{spec_hash, Naming};
pub use runtime::PodmanRuntime;

/// The module's name, cargo feature and config section.
pub const NAME: &str = "containers";

/// Registration entry for the agent's module list.
pub const DESCRIPTOR: Descriptor = Descriptor { name: NAME, build };

fn build(section: Option<&toml::Value>) -> Result<Arc<dyn Capability>, ConfigError> {
    let config: Config = fleet_module_api::parse_section(NAME, section)?;
    config.validate().map_err(|message| ConfigError {
        module: NAME,
        message,
    })?;
    Ok(Arc::new(Containers::new(config)))
}

/// The containers module.
pub struct Containers {
    config: Config,
    runtime: Arc<PodmanRuntime>,
    health: Arc<Mutex<Health>>,
    /// The status detail (held deployments, retained volumes), shared with the `purge` verb.
    detail: Arc<volumes::Detail>,
}

impl Containers {
    /// A module with `config`.
    pub fn new(config: Config) -> Self {
        let runtime = Arc::new(PodmanRuntime {
            podman: Podman::new(
                &config.podman,
                config.registries_conf.as_deref(),
                config.auth_file.as_deref(),
            ),
            naming: Naming::new(&config.instance, config.labels.clone()),
            data_mount: config.data_mount.clone(),
            log_max_mib: config.logs.max_size_mib,
        });
        Self {
            config,
            runtime,
            health: Arc::new(Mutex::new(Health::Starting)),
            detail: Arc::default(),
        }
    }
}

#[async_trait]
impl Capability for Containers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn provide(&self, ext: &mut ExtensionsBuilder) {
        if !self.config.enabled {
            return;
        }
        ext.provide::<dyn ContainerRuntime>(self.runtime.clone());
    }

    async fn probe(&self, _ctx: &Context) -> Probe {
        if !self.config.enabled {
            return Probe::unavailable("disabled in config ([modules.containers] enabled = false)");
        }
        match self.runtime.podman.version().await {
            Ok(v) => Probe::available(format!("podman {v}, instance {}", self.config.instance)),
            Err(e) => Probe::unavailable(format!("podman is not usable: {e}")),
        }
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let engine = Arc::new(engine::Engine::new(
            self.runtime.clone(),
            self.config.clone(),
            ctx,
            self.health.clone(),
            self.detail.clone(),
        ));
        engine.run().await;
        Ok(())
    }

    fn verbs(&self) -> &'static [&'static str] {
        &[purge::VERB]
    }

    async fn handle(&self, cmd: Command, ctx: &Context) -> Result<Reply, CommandError> {
        match cmd.verb.as_str() {
            purge::VERB => {
                purge::purge(&self.runtime, &self.detail, ctx, &cmd.args, &cmd.actor).await
            }
            _ => Err(CommandError::Unsupported { verb: cmd.verb }),
        }
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_keys_and_bad_values() {
        let v: toml::Value = toml::from_str("instance = \"t1\"\nparallel = 3\n").unwrap();
        let err = build(Some(&v)).err().unwrap().to_string();
        assert!(err.contains("parallel"), "{err}");
        let v: toml::Value = toml::from_str("instance = \"Bad Name\"\n").unwrap();
        let err = build(Some(&v)).err().unwrap().to_string();
        assert!(err.contains("instance"), "{err}");
        let v: toml::Value =
            toml::from_str("instance = \"t1\"\nlabels = { \"fleet.test.scope\" = \"t1\" }\n")
                .unwrap();
        assert!(build(Some(&v)).is_ok());
        assert!(build(None).is_ok());
    }

    #[test]
    fn policy_and_logs_sections_parse_and_bad_values_name_their_key() {
        let v: toml::Value = toml::from_str(
            "[policy]
bind_roots = [\"/srv/fleet\"]
devices = [\"/dev/i2c-*\"]
             capabilities = [\"NET_ADMIN\"]
low_ports = true
[logs]
max_size_mib = 5
",
        )
        .unwrap();
        assert!(build(Some(&v)).is_ok());
        for (src, key) in [
            (
                "[policy]
bind_root = []
",
                "bind_root",
            ),
            (
                "[policy]
capabilities = [\"FLY\"]
",
                "policy.capabilities[0]",
            ),
            (
                "[logs]
max_size_mib = 0
",
                "logs.max_size_mib",
            ),
        ] {
            let v: toml::Value = toml::from_str(src).unwrap();
            let err = build(Some(&v)).err().unwrap().to_string();
            assert!(err.contains(key), "{src}: {err}");
        }
    }
}
