//! [`ContainerRuntime`] over podman: what other modules (init-containers, logs-exec) may do
//! with containers. Shares naming, labels and the data volume with the reconcile engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_module_api::{async_trait, ContainerRuntime, RunOutcome, RunSpec, RuntimeError};

use crate::error::Error;
use crate::podman::{CreateSpec, Podman};
use crate::reconcile::Naming;

/// Log lines kept from a one-shot container.
const RUN_LOG_LINES: usize = 10;

/// podman plus this instance's naming: the one object every podman-using path shares.
#[derive(Debug)]
pub struct PodmanRuntime {
    /// The CLI.
    pub podman: Podman,
    /// Names and labels of this agent instance.
    pub naming: Naming,
    /// Where the deployment's data volume is mounted.
    pub data_mount: String,
    /// Log cap of the one-shot (init) containers, MiB (`[modules.containers.logs]`).
    pub log_max_mib: u32,
}

impl PodmanRuntime {
    /// Pulls `image` unless it is present; `on_pull` runs first when a pull is needed.
    /// Returns the image's repo digest, when it has one. One podman call when present.
    pub async fn ensure_image(
        &self,
        image: &str,
        on_pull: impl FnOnce(),
    ) -> Result<Option<String>, Error> {
        match self.podman.image_digest(image).await {
            Ok(digest) => return Ok(digest),
            Err(Error::Command { .. }) => {} // not present (podman says "no such image")
            Err(e) => return Err(e),
        }
        on_pull();
        self.podman.pull(image).await?;
        self.podman.image_digest(image).await
    }

    /// The deployment's data volume, created if missing; `(volume, mount point)`.
    pub async fn data_volume(&self, deployment: &str) -> Result<(String, String), Error> {
        let volume = self.naming.volume(deployment);
        let mut labels = self.naming.base_labels();
        labels.insert(
            crate::reconcile::LABEL_DEPLOYMENT.into(),
            deployment.to_owned(),
        );
        self.podman.volume_ensure(&volume, &labels).await?;
        Ok((volume, self.data_mount.clone()))
    }

    /// `podman create`, repairing one state a killed podman leaves: a storage-only container
    /// holding the name (in containers/storage, unknown to podman's database, so no label
    /// listing shows it; only `podman ps --external` does). The name is this instance's own
    /// (prefix and deployment), so the leftover is ours: `podman rm --storage`, create again.
    /// A container in podman's database holding the name is left alone (create fails,
    /// naming it).
    pub async fn create(&self, spec: &CreateSpec) -> Result<String, Error> {
        match self.podman.create(spec).await {
            Err(e) if self.freed_storage_only(&e, &spec.name).await? => {
                self.podman.create(spec).await
            }
            other => other,
        }
    }

    /// `podman run --detach`: create and start in one call, with the repair of [`Self::create`].
    pub async fn run_detached(&self, spec: &CreateSpec) -> Result<String, Error> {
        match self.podman.run_detached(spec).await {
            Err(e) if self.freed_storage_only(&e, &spec.name).await? => {
                self.podman.run_detached(spec).await
            }
            other => other,
        }
    }

    /// After a create failed with `error`: was the name held by a storage-only container, now
    /// removed?
    async fn freed_storage_only(&self, error: &Error, name: &str) -> Result<bool, Error> {
        if !error.name_in_use() || !self.podman.storage_only(name).await? {
            return Ok(false);
        }
        tracing::warn!(container = %name,
            "a storage-only container left by an interrupted create holds the name; removing it");
        self.podman.rm_storage(name).await?;
        Ok(true)
    }

    async fn run_once(&self, spec: &RunSpec) -> Result<RunOutcome, Error> {
        let _digest = self.ensure_image(&spec.image, || {}).await?;
        let (name, mut labels, volumes) = match &spec.deployment {
            Some(d) => (
                self.naming.run_container(d, &spec.name),
                self.naming.labels(d, "init"),
                vec![self.data_volume(d).await?],
            ),
            None => (
                self.naming.run_container("run", &spec.name),
                self.naming.base_labels(),
                Vec::new(),
            ),
        };
        labels.extend(spec.labels.iter().cloned());
        // A left-over from an interrupted earlier run would block the name (a storage-only
        // one is handled by `create`).
        self.podman.rm(&name).await?;
        let create = CreateSpec {
            name: name.clone(),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: BTreeMap::new(),
            labels,
            volumes,
            stop_signal: "SIGKILL".into(),
            stop_timeout: 0,
            log_max_mib: Some(self.log_max_mib),
            ..CreateSpec::default()
        };
        self.create(&create).await?;
        let result = async {
            let secrets: Vec<String> = crate::podman::command_secrets(&spec.command).collect();
            self.podman.start(&name, &secrets).await?;
            let code = self.podman.wait(&name, spec.timeout).await?;
            let logs = self
                .podman
                .logs(&name, RUN_LOG_LINES)
                .await
                .unwrap_or_else(|e| vec![format!("(logs unavailable: {e})")]);
            Ok(RunOutcome {
                exit_code: code,
                last_log_lines: logs,
            })
        }
        .await;
        let removed = self.podman.rm(&name).await;
        let outcome = result?;
        removed?;
        Ok(outcome)
    }
}

#[async_trait]
impl ContainerRuntime for PodmanRuntime {
    async fn run_to_completion(&self, spec: &RunSpec) -> Result<RunOutcome, RuntimeError> {
        self.run_once(spec)
            .await
            .map_err(|e| RuntimeError(e.to_string()))
    }

    async fn logs(&self, container: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        self.podman
            .logs(container, tail)
            .await
            .map_err(|e| RuntimeError(e.to_string()))
    }
}

/// Shared handle type.
pub type SharedRuntime = Arc<PodmanRuntime>;
