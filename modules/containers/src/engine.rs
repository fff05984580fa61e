//! The reconcile loop: wakes on desired-state changes, podman events, due retries and a slow
//! periodic resync; lists this instance's containers once per pass, plans with
//! [`crate::reconcile::plan`] and runs the resulting operations as jobs, at most one per
//! deployment and at most `parallelism` at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::{Deployment, DeploymentStatus, Phase};
use fleet_module_api::{Context, DesiredDeployment, DesiredState, Health, LifecycleHook};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::podman::{CreateSpec, PsEntry};
use crate::reconcile::{
    self, next_backoff, restart_delay, spec_hash, Action, Observed, Want, LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY, LABEL_ROLE, LABEL_SPEC_HASH, MANAGER,
};
use crate::runtime::SharedRuntime;

/// Store key of the deployments this module has published a status for.
const PUBLISHED_KEY: &str = "published";
/// Store key prefix of the last manifest applied per deployment (for stop and after_stop).
const APPLIED_PREFIX: &str = "applied/";
/// Store key prefix of the restart count per deployment (survives agent restarts).
const RESTARTS_PREFIX: &str = "restarts/";
/// Quiet time collecting triggers into one pass.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A container between states is looked at again after this.
const SETTLE: Duration = Duration::from_secs(1);
/// Retry after podman itself failed (list, events).
const PODMAN_RETRY: Duration = Duration::from_secs(5);
/// The name of the init-containers hook (checked for manifests with `[[init]]`).
const INIT_HOOK: &str = "init-containers";

/// What the engine remembers per deployment between passes.
#[derive(Debug, Default)]
struct Track {
    restarts: u32,
    last_exit: Option<i32>,
    digest: Option<String>,
    crash_backoff: Duration,
    restart_due: Option<Instant>,
    failure: Option<Failure>,
}

/// The last failed attempt to reach a spec, and when to try again.
#[derive(Debug)]
struct Failure {
    hash: String,
    retry_at: Instant,
    backoff: Duration,
}

/// The reconcile engine of one module instance.
pub struct Engine {
    rt: SharedRuntime,
    cfg: Config,
    ctx: Context,
    tracks: Mutex<BTreeMap<String, Track>>,
    published: Mutex<BTreeSet<String>>,
    health: Arc<Mutex<Health>>,
}

/// A unit of work for one deployment.
enum Job {
    Apply {
        deployment: Deployment,
        hash: String,
        old: Option<String>,
    },
    Restart {
        deployment: Deployment,
        container: String,
        count: bool,
    },
    Remove {
        name: String,
        containers: Vec<String>,
    },
    Clean {
        containers: Vec<String>,
    },
}

impl Engine {
    /// An engine working through `rt`, reporting via `ctx`, with health written to `health`.
    pub fn new(rt: SharedRuntime, cfg: Config, ctx: Context, health: Arc<Mutex<Health>>) -> Self {
        let published = ctx
            .store
            .get(PUBLISHED_KEY)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            rt,
            cfg,
            ctx,
            tracks: Mutex::new(BTreeMap::new()),
            published: Mutex::new(published),
            health,
        }
    }

    fn set_health(&self, h: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    fn tracks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Track>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>) {
        let (trigger, mut triggers) = mpsc::unbounded_channel::<()>();
        let events = tokio::spawn(watch_events(self.clone(), trigger));
        let mut desired = self.ctx.desired.clone();
        let mut jobs: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
        let sem = Arc::new(Semaphore::new(self.cfg.parallelism));
        let resync = Duration::from_secs(self.cfg.resync_secs);
        loop {
            let wake = self.pass(&mut jobs, &mut running, &sem).await;
            let until = Instant::now() + wake.unwrap_or(resync).min(resync);
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => break,
                changed = desired.changed() => if changed.is_err() { break },
                Some(()) = triggers.recv() => {}
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                    finished(&mut running, done);
                }
                () = tokio::time::sleep_until(until) => {}
            }
            // Collect the burst (events of one operation, several edits) into one pass.
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => break,
                () = tokio::time::sleep(DEBOUNCE) => {}
            }
            while triggers.try_recv().is_ok() {}
            while let Some(done) = jobs.try_join_next_with_id() {
                finished(&mut running, done);
            }
        }
        events.abort();
        jobs.abort_all();
    }

    /// One pass: observe, plan, start jobs. Returns how soon the next pass is due, if sooner
    /// than the resync.
    async fn pass(
        self: &Arc<Self>,
        jobs: &mut JoinSet<()>,
        running: &mut HashMap<tokio::task::Id, String>,
        sem: &Arc<Semaphore>,
    ) -> Option<Duration> {
        let state: Arc<DesiredState> = self.ctx.desired.borrow().clone();
        let listed = match self.rt.podman.list(&self.rt.naming.selector()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                self.set_health(Health::unhealthy(format!("podman: {e}")));
                return Some(PODMAN_RETRY);
            }
        };
        self.set_health(Health::Healthy);
        let observed: Vec<Observed> = listed.iter().filter_map(observe).collect();

        let mut desired: BTreeMap<String, Want<'_>> = BTreeMap::new();
        let mut hashes = BTreeMap::new();
        let mut manifests: BTreeMap<&str, &Deployment> = BTreeMap::new();
        for (name, d) in &state.deployments {
            match d {
                DesiredDeployment::Valid(dep) => {
                    hashes.insert(name.clone(), spec_hash(dep));
                    desired.insert(name.clone(), Want::Run(dep));
                    manifests.insert(name.as_str(), dep);
                }
                DesiredDeployment::Invalid { .. } => {
                    desired.insert(name.clone(), Want::Untouched);
                }
            }
        }
        let busy: BTreeSet<String> = running.values().cloned().collect();
        let now = Instant::now();
        let mut wake: Option<Duration> = None;
        let mut soon = |d: Duration| wake = Some(wake.map_or(d, |w: Duration| w.min(d)));

        // A failure recorded for an older spec no longer applies.
        {
            let mut tracks = self.tracks();
            for (name, t) in tracks.iter_mut() {
                if t.failure
                    .as_ref()
                    .is_some_and(|f| hashes.get(name) != Some(&f.hash))
                {
                    t.failure = None;
                }
            }
        }

        for action in reconcile::plan(&desired, &hashes, &observed, &busy) {
            let name = action.deployment().to_owned();
            let job = match action {
                Action::Keep { .. } => {
                    let Some(d) = manifests.get(name.as_str()) else {
                        continue;
                    };
                    self.report_running(d, &listed).await;
                    None
                }
                Action::Settle { .. } => {
                    soon(SETTLE);
                    None
                }
                Action::Exited { exit_code, .. } => {
                    let Some(d) = manifests.get(name.as_str()) else {
                        continue;
                    };
                    self.track(&name, |t| t.last_exit = Some(exit_code));
                    self.publish(
                        d,
                        Phase::Failed,
                        format!(
                            "exited with code {exit_code}; restart policy {:?} keeps it stopped",
                            d.container.restart
                        ),
                    );
                    None
                }
                Action::Restart {
                    container,
                    exit_code,
                    ran_secs,
                    never_started,
                    ..
                } => {
                    let Some(d) = manifests.get(name.as_str()) else {
                        continue;
                    };
                    if never_started {
                        // Created but never started: start it, unless a start just failed.
                        let due = self.tracks().get(&name).and_then(|t| t.restart_due);
                        match due {
                            Some(at) if at > now => {
                                soon(at - now);
                                None
                            }
                            _ => Some(Job::Restart {
                                deployment: (*d).clone(),
                                container,
                                count: false,
                            }),
                        }
                    } else {
                        let due = self.restart_due(&name, exit_code, ran_secs, now);
                        if due > now {
                            let (restarts, wait) = {
                                let t = self.tracks();
                                let r = t.get(&name).map_or(0, |t| t.restarts);
                                (r, due - now)
                            };
                            self.publish(
                                d,
                                Phase::Failed,
                                format!(
                                    "exited with code {exit_code} after {ran_secs} s; restart {} in {} s (crash-loop backoff)",
                                    restarts + 1,
                                    wait.as_secs_f32().ceil()
                                ),
                            );
                            soon(wait);
                            None
                        } else {
                            Some(Job::Restart {
                                deployment: (*d).clone(),
                                container,
                                count: true,
                            })
                        }
                    }
                }
                Action::Create { .. } | Action::Replace { .. } => {
                    let Some(d) = manifests.get(name.as_str()) else {
                        continue;
                    };
                    let retry_at = self
                        .tracks()
                        .get(&name)
                        .and_then(|t| t.failure.as_ref().map(|f| f.retry_at));
                    match retry_at {
                        Some(at) if at > now => {
                            soon(at - now);
                            None
                        }
                        _ => Some(Job::Apply {
                            deployment: (*d).clone(),
                            hash: hashes.get(&name).cloned().unwrap_or_default(),
                            old: match action {
                                Action::Replace { old, .. } => Some(old),
                                _ => None,
                            },
                        }),
                    }
                }
                Action::Remove { containers, .. } => Some(Job::Remove {
                    name: name.clone(),
                    containers,
                }),
                Action::Clean { containers, .. } => Some(Job::Clean { containers }),
            };
            if let Some(job) = job {
                let me = self.clone();
                let sem = sem.clone();
                let handle = jobs.spawn(async move {
                    if let (0, Job::Apply { deployment, .. }) = (sem.available_permits(), &job) {
                        me.publish(
                            deployment,
                            Phase::Pending,
                            format!(
                                "queued: all {} workers are busy with other deployments",
                                me.cfg.parallelism
                            ),
                        );
                    }
                    let Ok(_permit) = sem.acquire_owned().await else {
                        return;
                    };
                    me.job(job).await;
                });
                running.insert(handle.id(), name);
            }
        }

        // Statuses of deployments that are gone from desired state and from the device.
        let gone: Vec<String> = {
            let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            published
                .iter()
                .filter(|n| {
                    !matches!(desired.get(*n), Some(Want::Run(_)))
                        && !busy.contains(*n)
                        && !observed.iter().any(|o| &o.deployment == *n)
                })
                .cloned()
                .collect()
        };
        for name in gone {
            // An invalid document's status belongs to the runtime; a vanished one is ours to drop.
            if !desired.contains_key(&name) {
                self.ctx.status.deployment_removed(&name);
                self.tracks().remove(&name);
                let _ = self.ctx.store.delete(&format!("{RESTARTS_PREFIX}{name}"));
            }
            self.unpublish(&name);
        }
        wake
    }

    /// When an exited container may be restarted (crash-loop backoff), remembering it.
    fn restart_due(&self, name: &str, exit_code: i32, ran_secs: u64, now: Instant) -> Instant {
        let s = Duration::from_secs;
        let mut tracks = self.tracks();
        let t = self.entry(&mut tracks, name);
        t.last_exit = Some(exit_code);
        if let Some(due) = t.restart_due {
            return due;
        }
        let (delay, next) = restart_delay(
            s(ran_secs),
            t.crash_backoff,
            s(self.cfg.backoff_initial_secs),
            s(self.cfg.backoff_max_secs),
            s(self.cfg.healthy_after_secs),
        );
        t.crash_backoff = next;
        let due = now + delay;
        t.restart_due = Some(due);
        due
    }

    fn track(&self, name: &str, f: impl FnOnce(&mut Track)) {
        let mut tracks = self.tracks();
        f(self.entry(&mut tracks, name));
    }

    /// The deployment's track, created with the restart count recorded in the store.
    fn entry<'a>(&self, tracks: &'a mut BTreeMap<String, Track>, name: &str) -> &'a mut Track {
        tracks.entry(name.to_owned()).or_insert_with(|| Track {
            restarts: self
                .ctx
                .store
                .get(&format!("{RESTARTS_PREFIX}{name}"))
                .ok()
                .flatten()
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                .unwrap_or(0),
            ..Track::default()
        })
    }

    /// Counts one restart of the deployment's container, durably.
    fn count_restart(&self, name: &str) {
        let n = {
            let mut tracks = self.tracks();
            let t = self.entry(&mut tracks, name);
            t.restarts += 1;
            t.restarts
        };
        if let Err(e) = self.ctx.store.put(
            &format!("{RESTARTS_PREFIX}{name}"),
            n.to_string().as_bytes(),
        ) {
            tracing::warn!(deployment = %name, error = %e, "cannot record restart count");
        }
    }

    /// Reports a running, matching container (adopted or just started).
    async fn report_running(&self, d: &Deployment, listed: &[PsEntry]) {
        let needs_digest = self
            .tracks()
            .get(&d.name)
            .is_none_or(|t| t.digest.is_none());
        if needs_digest {
            let image_id = listed
                .iter()
                .find(|p| p.label(LABEL_DEPLOYMENT) == Some(d.name.as_str()))
                .map(|p| p.image_id.clone())
                .unwrap_or_else(|| d.container.image.clone());
            if let Ok(Some(digest)) = self.rt.podman.image_digest(&image_id).await {
                self.track(&d.name, |t| t.digest = Some(digest));
            }
        }
        self.track(&d.name, |t| {
            t.failure = None;
            t.restart_due = None;
        });
        self.publish(
            d,
            Phase::Running,
            format!(
                "{} runs {}",
                self.rt.naming.container(&d.name),
                d.container.image
            ),
        );
    }

    async fn job(self: Arc<Self>, job: Job) {
        match job {
            Job::Apply {
                deployment,
                hash,
                old,
            } => {
                let result = self.apply(&deployment, old.as_deref()).await;
                match result {
                    Ok(()) => {
                        self.track(&deployment.name, |t| {
                            t.failure = None;
                            t.restart_due = None;
                            t.last_exit = None;
                            t.crash_backoff = Duration::ZERO;
                        });
                        self.publish(
                            &deployment,
                            Phase::Running,
                            format!(
                                "{} runs {}",
                                self.rt.naming.container(&deployment.name),
                                deployment.container.image
                            ),
                        );
                    }
                    Err(message) => self.fail(&deployment, &hash, message),
                }
            }
            Job::Restart {
                deployment,
                container,
                count,
            } => match self.rt.podman.start(&container).await {
                Ok(()) => {
                    self.track(&deployment.name, |t| t.restart_due = None);
                    if count {
                        self.count_restart(&deployment.name);
                    }
                    self.publish(
                        &deployment,
                        Phase::Running,
                        format!("{container} runs {}", deployment.container.image),
                    );
                }
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
        // Pull everything first, while the old revision still runs.
        let mut images = vec![d.container.image.as_str()];
        for i in &d.init {
            if let Some(img) = &i.image {
                if !images.contains(&img.as_str()) {
                    images.push(img);
                }
            }
        }
        let mut digest = None;
        for image in images {
            let got = self
                .rt
                .ensure_image(image, || {
                    self.publish(d, Phase::Pulling, format!("pulling {image}"));
                })
                .await
                .map_err(|e| e.to_string())?;
            if image == d.container.image {
                digest = got;
            }
        }
        self.track(&d.name, |t| t.digest = digest);

        if let Some(old) = old {
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
        self.publish(d, Phase::Starting, format!("creating {name}"));
        let spec = CreateSpec {
            name: name.clone(),
            image: d.container.image.clone(),
            command: d.container.command.clone(),
            env: d.container.env.clone(),
            labels: self.rt.naming.main_labels(d, &spec_hash(d)),
            volumes: vec![volume],
            stop_signal: d.lifecycle.stop_signal.clone(),
            stop_timeout: d.lifecycle.grace_period_secs,
        };
        // No forced removal first: the plan creates only when none of our containers exists,
        // and a stranger holding the name is not ours to remove (create fails, naming it).
        self.rt
            .podman
            .create(&spec)
            .await
            .map_err(|e| e.to_string())?;
        self.remember_applied(d);
        if let Err(e) = self.rt.podman.start(&name).await {
            return Err(format!("starting {name}: {e}"));
        }
        Ok(())
    }

    /// Stops and removes a deployment that is no longer desired, with its volume.
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
        }
        if let Err(e) = self.rt.podman.volume_rm(&self.rt.naming.volume(name)).await {
            tracing::warn!(deployment = %name, error = %e, "cannot remove data volume");
        }
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

    /// Publishes a status for `d`, unless its desired document turned invalid meanwhile.
    fn publish(&self, d: &Deployment, phase: Phase, message: String) {
        let still_valid = matches!(
            self.ctx.desired.borrow().deployments.get(&d.name),
            Some(DesiredDeployment::Valid(_))
        );
        if !still_valid && phase != Phase::Removing {
            return;
        }
        let (restarts, last_exit_code, image_digest) = {
            let mut tracks = self.tracks();
            let t = self.entry(&mut tracks, &d.name);
            (t.restarts, t.last_exit, t.digest.clone())
        };
        self.ctx.status.deployment(DeploymentStatus {
            name: d.name.clone(),
            revision: Some(d.revision),
            phase,
            message,
            restarts,
            last_exit_code,
            image_digest,
            updated_at: self.ctx.clock.unix_secs(),
        });
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.insert(d.name.clone()) {
            self.save_published(&published);
        }
    }

    fn unpublish(&self, name: &str) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.remove(name) {
            self.save_published(&published);
        }
    }

    fn save_published(&self, published: &BTreeSet<String>) {
        let body = serde_json::to_vec(published).unwrap_or_default();
        if let Err(e) = self.ctx.store.put(PUBLISHED_KEY, &body) {
            tracing::warn!(error = %e, "cannot record published deployments");
        }
    }
}

fn finished(
    running: &mut HashMap<tokio::task::Id, String>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let id = match done {
        Ok((id, ())) => id,
        Err(e) => {
            if e.is_panic() {
                tracing::error!(error = %e, "a container job panicked");
            }
            e.id()
        }
    };
    running.remove(&id);
}

/// A listed container as the planner sees it; `None` for what is not a managed container of
/// a deployment.
fn observe(p: &PsEntry) -> Option<Observed> {
    if p.label(LABEL_MANAGED_BY) != Some(MANAGER) {
        return None;
    }
    let deployment = p.label(LABEL_DEPLOYMENT)?.to_owned();
    let ran_secs = if p.exited_at > p.started_at && p.started_at > 0 {
        u64::try_from(p.exited_at - p.started_at).unwrap_or(0)
    } else {
        0
    };
    Some(Observed {
        name: p.name().to_owned(),
        deployment,
        role: p.label(LABEL_ROLE).unwrap_or("main").to_owned(),
        spec_hash: p.label(LABEL_SPEC_HASH).unwrap_or_default().to_owned(),
        state: p.state.clone(),
        exit_code: p.exit_code,
        ran_secs,
    })
}

/// Follows `podman events` for this instance and triggers a pass on every container change;
/// restarts the stream (and triggers a pass, since events may have been missed) when it ends.
async fn watch_events(engine: Arc<Engine>, trigger: mpsc::UnboundedSender<()>) {
    let selector = engine.rt.naming.selector();
    loop {
        match engine.rt.podman.events(&selector) {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(ev)) => {
                        let relevant = matches!(
                            ev.status.as_str(),
                            "died" | "remove" | "stop" | "pause" | "unpause" | "kill"
                        );
                        if relevant && ev.label(LABEL_DEPLOYMENT).is_some() {
                            tracing::debug!(container = %ev.name, status = %ev.status, "podman event");
                            if trigger.send(()).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("podman events ended; restarting it");
                        break;
                    }
                    Err(e @ crate::error::Error::Decode { .. }) => {
                        tracing::warn!(error = %e, "skipping an undecodable podman event");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "podman events failed; restarting it");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot follow podman events"),
        }
        if trigger.send(()).is_err() {
            return;
        }
        tokio::time::sleep(PODMAN_RETRY).await;
    }
}
