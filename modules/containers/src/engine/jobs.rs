//! The job worker: applies, restarts and removes deployments, one job per deployment.

use std::sync::Arc;
use std::time::Duration;

use fleet_contract::{Deployment, Phase, PullPolicy};
use fleet_module_api::LifecycleHook;
use tokio::time::Instant;

use super::{Engine, Failure, Job, APPLIED_PREFIX, IMAGE_FRESH, INIT_HOOK, RESTARTS_PREFIX};
use crate::podman::{CreateSpec, HostOptions};
use crate::policy;
use crate::reconcile::{next_backoff, spec_hash};

impl Engine {
    pub(super) async fn job(self: Arc<Self>, job: Job) {
        match job {
            Job::Apply {
                deployment,
                hash,
                old,
            } => {
                // The device's policy first: a manifest asking for more runs nothing.
                let c = &self.cfg;
                if let Err(refusal) = policy::check(&deployment, &c.policy, &c.logs, &c.data_mount)
                {
                    self.refuse(&deployment, &hash, &refusal);
                    return;
                }
                let result = self.apply(&deployment, old.as_deref()).await;
                match result {
                    Ok(()) => {
                        self.track(&deployment.name, |t| {
                            t.failure = None;
                            t.restart_due = None;
                            t.last_exit = None;
                            t.exit_reason = None;
                            t.crash_backoff = Duration::ZERO;
                        });
                        self.started(&deployment, &self.rt.naming.container(&deployment.name));
                    }
                    // Cut short by shutdown: the next start takes over, nothing failed.
                    Err(_) if self.ctx.shutdown.is_cancelled() => {}
                    Err(message) => self.fail(&deployment, &hash, message),
                }
            }
            Job::Restart {
                deployment,
                container,
                count,
            } => match self
                .rt
                .podman
                .start_in(
                    &container,
                    &secrets(&deployment),
                    self.fresh_conmon_dir(&container).as_deref(),
                )
                .await
            {
                Ok(()) => {
                    self.track(&deployment.name, |t| t.restart_due = None);
                    if count {
                        self.count_restart(&deployment.name);
                    }
                    self.started(&deployment, &container);
                }
                Err(e) if !count => self.repair_unstarted(&deployment, &container, &e).await,
                Err(e) => {
                    tracing::warn!(deployment = %deployment.name, error = %e, "restart failed");
                    let initial = Duration::from_secs(self.cfg.backoff_initial_secs);
                    let max = Duration::from_secs(self.cfg.backoff_max_secs);
                    self.track(&deployment.name, |t| {
                        t.crash_backoff = next_backoff(t.crash_backoff, initial, max);
                        t.restart_due = Some(Instant::now() + t.crash_backoff);
                    });
                    self.publish(
                        &deployment,
                        Phase::Failed,
                        format!("cannot start {container}: {e}"),
                    );
                }
            },
            Job::Remove { name, containers } => self.remove(&name, &containers).await,
            Job::Clean { containers } => {
                for c in containers {
                    if let Err(e) = self.rt.podman.rm(&c).await {
                        tracing::warn!(container = %c, error = %e, "cannot remove stray container");
                    }
                }
            }
        }
    }

    /// A created container that does not start: podman (or the agent with it) was killed
    /// mid-start, and its database says `created`/`initialized`/`configured` while runc may
    /// run it or have forgotten it. Look again; still not running: remove it (its data is in
    /// the volume) so the next pass creates it anew.
    async fn repair_unstarted(&self, d: &Deployment, container: &str, error: &crate::Error) {
        let state = self.rt.podman.state(container).await;
        if let Ok(Some(s)) = &state {
            if s == "running" {
                return; // it did start after all; the next pass reports it
            }
        }
        let state = match state {
            Ok(Some(s)) => s,
            Ok(None) => "gone".to_owned(),
            Err(e) => format!("unknown ({e})"),
        };
        tracing::warn!(deployment = %d.name, %container, %state, %error,
            "a created container does not start; removing it to create it again");
        let removed = match self.rt.podman.rm(container).await {
            Ok(()) => Ok(()),
            Err(_) => self.rt.podman.rm_storage(container).await,
        };
        let message = match removed {
            Ok(()) => format!(
                "cannot start {container} ({error}); podman reports it {state}: removed it to \
                 create it again"
            ),
            Err(e) => format!("cannot start {container} ({error}) nor remove it: {e}"),
        };
        let initial = Duration::from_secs(self.cfg.backoff_initial_secs);
        let max = Duration::from_secs(self.cfg.backoff_max_secs);
        self.track(&d.name, |t| {
            t.crash_backoff = next_backoff(t.crash_backoff, initial, max);
            t.restart_due = Some(Instant::now() + t.crash_backoff);
        });
        self.publish(d, Phase::Failed, message);
    }

    /// Records a failed attempt: status Failed with the reason, retry with backoff.
    fn fail(&self, d: &Deployment, hash: &str, message: String) {
        let initial = Duration::from_secs(self.cfg.backoff_initial_secs);
        let max = Duration::from_secs(self.cfg.backoff_max_secs);
        let backoff = {
            let mut tracks = self.tracks();
            let t = self.entry(&mut tracks, &d.name);
            let prev = t
                .failure
                .as_ref()
                .filter(|f| f.hash == hash)
                .map_or(Duration::ZERO, |f| f.backoff);
            let backoff = next_backoff(prev, initial, max);
            t.failure = Some(Failure {
                hash: hash.to_owned(),
                retry_at: Instant::now() + backoff,
                backoff,
            });
            backoff
        };
        tracing::warn!(deployment = %d.name, revision = d.revision, %message, "deployment failed");
        self.publish(
            d,
            Phase::Failed,
            format!("{message} (retry in {} s)", backoff.as_secs()),
        );
    }

    /// Records a policy refusal: status Failed naming the field and the config key. Checked
    /// again only at the full resync: the refusal changes with the manifest (a new spec
    /// hash drops the failure at once) or the config (read at agent start), and the
    /// resync catches what lies between (a bind root's symlink changed on the device). A
    /// fast retry would only repeat the same message.
    fn refuse(&self, d: &Deployment, hash: &str, refusal: &policy::Refusal) {
        let wait = Duration::from_secs(self.cfg.resync_secs);
        self.track(&d.name, |t| {
            t.failure = Some(Failure {
                hash: hash.to_owned(),
                retry_at: Instant::now() + wait,
                backoff: wait,
            });
        });
        tracing::warn!(deployment = %d.name, revision = d.revision, %refusal,
            "refused by the device's policy; nothing of it runs");
        self.publish(
            d,
            Phase::Failed,
            format!("refused by the device's policy: {refusal}"),
        );
    }

    /// Brings `d` up: pull, stop and remove `old`, init, create, start.
    async fn apply(&self, d: &Deployment, old: Option<&str>) -> Result<(), String> {
        let hooks: Vec<Arc<dyn LifecycleHook>> = self.ctx.ext.all::<dyn LifecycleHook>();
        if !d.init.is_empty() && !hooks.iter().any(|h| h.name() == INIT_HOOK) {
            return Err(format!(
                "the manifest has {} init container(s), but this agent is built without the \
                 init-containers module",
                d.init.len()
            ));
        }
        // A new deployment without init containers has nothing to keep running meanwhile:
        // its image is pulled only if `podman run` does not find it, and its digest looked
        // up by the pass after the job (cached per image). Otherwise pull everything first,
        // while the old revision still runs.
        let always = d.container.pull_policy == PullPolicy::Always;
        let lazy = old.is_none() && d.init.is_empty() && !always;
        let mut images = if lazy {
            Vec::new()
        } else {
            vec![d.container.image.as_str()]
        };
        for i in &d.init {
            if let Some(img) = &i.image {
                if !images.contains(&img.as_str()) {
                    images.push(img);
                }
            }
        }
        let mut digest = None;
        for image in images {
            let pulling = || self.publish(d, Phase::Pulling, format!("pulling {image}"));
            let got = if always && image == d.container.image {
                self.pull_image(image, pulling).await
            } else {
                self.ensure_image(image, pulling).await
            }
            .map_err(|e| e.to_string())?;
            if image == d.container.image {
                digest = Some(got);
            }
        }
        if digest.is_some() {
            self.track(&d.name, |t| t.digest = digest);
        }

        if let Some(old) = old {
            self.not_stopping()?;
            let previous = self.applied(&d.name);
            let (signal, grace) = previous.as_ref().map_or_else(
                || {
                    (
                        d.lifecycle.stop_signal.clone(),
                        d.lifecycle.grace_period_secs,
                    )
                },
                |p| {
                    (
                        p.lifecycle.stop_signal.clone(),
                        p.lifecycle.grace_period_secs,
                    )
                },
            );
            self.publish(
                d,
                Phase::Upgrading,
                format!(
                    "stopping {old}{} with {signal}, SIGKILL after {grace} s",
                    previous
                        .as_ref()
                        .map(|p| format!(" (revision {})", p.revision))
                        .unwrap_or_default()
                ),
            );
            self.rt
                .podman
                .stop(old, grace)
                .await
                .map_err(|e| format!("stopping {old}: {e}"))?;
            self.rt
                .podman
                .rm(old)
                .await
                .map_err(|e| format!("removing {old}: {e}"))?;
            if let Some(p) = &previous {
                for h in &hooks {
                    if let Err(e) = h.after_stop(p).await {
                        tracing::warn!(hook = h.name(), error = %e, "after_stop failed");
                    }
                }
            }
            self.publish(
                d,
                Phase::Upgrading,
                format!("{old} stopped; starting revision {}", d.revision),
            );
        }

        let volume = self
            .rt
            .data_volume(&d.name)
            .await
            .map_err(|e| format!("data volume: {e}"))?;
        self.ensure_named_volumes(d).await?;
        if !hooks.is_empty() {
            if !d.init.is_empty() {
                self.publish(
                    d,
                    Phase::Initializing,
                    format!("running {} init container(s)", d.init.len()),
                );
            }
            for h in &hooks {
                h.before_start(d).await.map_err(|e| e.0)?;
            }
        }
        let name = self.rt.naming.container(&d.name);
        self.not_stopping()?;
        self.publish(d, Phase::Starting, format!("creating and starting {name}"));
        let spec = self.main_spec(d, volume);
        // Recorded first: the init containers ran, and a container may exist from here on
        // (the run may be cut after podman created it), so a removal stops it with this
        // manifest's lifecycle and runs its after_stop hooks.
        self.remember_applied(d);
        // One call: create and start. No forced removal first: the plan creates only when
        // none of our containers exists, and a stranger in podman's database holding the
        // name is not ours to remove. A start that fails leaves the container created; the
        // next pass starts it (or replaces it, see `repair_unstarted`).
        let started = match self.rt.run_detached(&spec).await {
            Err(e) if lazy && e.image_unknown() => {
                let image = d.container.image.as_str();
                let digest = self
                    .ensure_image(image, || {
                        self.publish(d, Phase::Pulling, format!("pulling {image}"));
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                self.track(&d.name, |t| t.digest = Some(digest));
                self.not_stopping()?;
                self.publish(d, Phase::Starting, format!("creating and starting {name}"));
                self.rt.run_detached(&spec).await
            }
            other => other,
        };
        if let Err(e) = started {
            self.forget_image(&d.container.image);
            return Err(e.to_string());
        }
        Ok(())
    }

    /// What `podman run` creates for `d`'s main container, with the data volume `volume`.
    fn main_spec(&self, d: &Deployment, volume: (String, String)) -> CreateSpec {
        let name = self.rt.naming.container(&d.name);
        // The manifest's labels beside the agent's own (the `fleet.` prefix is refused in
        // manifests; ours win anyway).
        let mut labels = d.container.labels.clone();
        labels.extend(self.rt.naming.main_labels(d, &spec_hash(d)));
        CreateSpec {
            image: d.container.image.clone(),
            command: d.container.command.clone(),
            env: d.container.env.clone(),
            labels,
            volumes: vec![volume],
            stop_signal: d.lifecycle.stop_signal.clone(),
            stop_timeout: d.lifecycle.grace_period_secs,
            host: HostOptions::of(&d.container, |v| self.rt.naming.named_volume(&d.name, v)),
            log_max_mib: Some(self.cfg.logs.cap_of(&d.container)),
            conmon_dir: self.fresh_conmon_dir(&name),
            name,
        }
    }

    /// Pulls `image` whether or not it is present (`pullPolicy = "always"`: a moving tag is
    /// followed at every creation); returns its repo digest.
    async fn pull_image(
        &self,
        image: &str,
        on_pull: impl FnOnce(),
    ) -> Result<Option<String>, crate::Error> {
        on_pull();
        self.rt.podman.pull(image).await?;
        let digest = self.rt.podman.image_digest(image).await?;
        self.images()
            .insert(image.to_owned(), (Instant::now(), digest.clone()));
        Ok(digest)
    }

    /// [`crate::PodmanRuntime::ensure_image`], skipped for an image found present within
    /// [`IMAGE_FRESH`]; returns its repo digest.
    pub(super) async fn ensure_image(
        &self,
        image: &str,
        on_pull: impl FnOnce(),
    ) -> Result<Option<String>, crate::Error> {
        if let Some(digest) = self.fresh_image(image) {
            return Ok(digest);
        }
        let digest = self.rt.ensure_image(image, on_pull).await?;
        self.images()
            .insert(image.to_owned(), (Instant::now(), digest.clone()));
        Ok(digest)
    }

    /// The digest of `image` if it was found present within [`IMAGE_FRESH`].
    pub(super) fn fresh_image(&self, image: &str) -> Option<Option<String>> {
        let images = self.images();
        let (at, digest) = images.get(image)?;
        (at.elapsed() < IMAGE_FRESH).then(|| digest.clone())
    }

    /// Forgets that `image` is present (a start failed: it may have been removed).
    fn forget_image(&self, image: &str) {
        self.images().remove(image);
    }

    /// Between the steps of a job: the agent is stopping, begin no new podman call.
    fn not_stopping(&self) -> Result<(), String> {
        if self.ctx.shutdown.is_cancelled() {
            Err("the agent is stopping".into())
        } else {
            Ok(())
        }
    }

    /// Stops and removes a deployment that is no longer desired, with its data volume; its
    /// named volumes stay.
    async fn remove(&self, name: &str, containers: &[String]) {
        let previous = self.applied(name);
        let grace = previous
            .as_ref()
            .map_or(10, |p| p.lifecycle.grace_period_secs);
        if let Some(p) = &previous {
            self.publish(
                p,
                Phase::Removing,
                format!("removing {}", containers.join(", ")),
            );
        }
        for c in containers {
            let stopped = self.rt.podman.stop(c, grace).await;
            if let Err(e) = stopped.and(self.rt.podman.rm(c).await) {
                tracing::warn!(container = %c, error = %e, "cannot remove; retrying on the next pass");
                return;
            }
            self.forget_conmon_dir(c);
        }
        // A storage-only container an interrupted create left under the deployment's name.
        let canonical = self.rt.naming.container(name);
        if let Ok(true) = self.rt.podman.storage_only(&canonical).await {
            if let Err(e) = self.rt.podman.rm_storage(&canonical).await {
                tracing::warn!(container = %canonical, error = %e, "cannot remove storage-only container");
            }
        }
        if let Err(e) = self.rt.podman.volume_rm(&self.rt.naming.volume(name)).await {
            tracing::warn!(deployment = %name, error = %e, "cannot remove data volume");
        }
        // Its named volumes stay (only a purge removes them): listed as retained.
        self.record_retained(name).await;
        if let Some(p) = &previous {
            for h in self.ctx.ext.all::<dyn LifecycleHook>() {
                if let Err(e) = h.after_stop(p).await {
                    tracing::warn!(hook = h.name(), error = %e, "after_stop failed");
                }
            }
        }
        let _ = self.ctx.store.delete(&format!("{APPLIED_PREFIX}{name}"));
        let _ = self.ctx.store.delete(&format!("{RESTARTS_PREFIX}{name}"));
        self.tracks().remove(name);
        // Still desired as an invalid document? Then the runtime owns its status now.
        let invalid = self.ctx.desired.borrow().deployments.contains_key(name);
        if !invalid {
            self.ctx.status.deployment_removed(name);
        }
        self.unpublish(name);
        tracing::info!(deployment = %name, "removed from the device");
    }

    fn applied(&self, name: &str) -> Option<Deployment> {
        let bytes = self
            .ctx
            .store
            .get(&format!("{APPLIED_PREFIX}{name}"))
            .ok()??;
        Deployment::from_json_slice(&bytes).ok()
    }

    fn remember_applied(&self, d: &Deployment) {
        if let Err(e) = self
            .ctx
            .store
            .put(&format!("{APPLIED_PREFIX}{}", d.name), &d.to_json())
        {
            tracing::warn!(deployment = %d.name, error = %e, "cannot record applied manifest");
        }
    }
}

/// What must never appear in a message about `d`: its env values and container arguments.
pub(super) fn secrets(d: &Deployment) -> Vec<String> {
    let mut s: Vec<String> = d.container.env.values().cloned().collect();
    s.extend(crate::podman::command_secrets(&d.container.command));
    s
}
