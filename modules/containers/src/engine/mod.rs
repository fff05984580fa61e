//! The reconcile loop: wakes on desired-state changes, podman events, due retries and a slow
//! periodic resync; lists this instance's containers once per pass, plans with
//! [`crate::reconcile::plan`] and runs the resulting operations as jobs, at most one per
//! deployment and at most `parallelism` at a time.

mod events;
mod jobs;
mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::{Deployment, Phase};
use fleet_module_api::{Context, DesiredDeployment, DesiredState, Health};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::podman::PsEntry;
use crate::reconcile::{
    self, restart_delay, spec_hash, Action, Observed, Want, LABEL_DEPLOYMENT, LABEL_MANAGED_BY,
    LABEL_ROLE, LABEL_SPEC_HASH, MANAGER,
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
/// On shutdown, how long the podman call in flight may take to finish (the agent gives its
/// modules 8 s, systemd 15 s). Past it the job is dropped; its podman child is not killed
/// and runs to its end, so podman is never cut mid-create by the agent.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(6);
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
    /// Deployments whose containers and volume are held (last reported).
    held: Mutex<BTreeSet<String>>,
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
            held: Mutex::new(BTreeSet::new()),
            health,
        }
    }

    fn set_health(&self, h: Health) {
        let changed = {
            let mut cur = self.health.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *cur, h.clone()) != h
        };
        if changed {
            self.ctx.status.health_changed(self.ctx.module);
        }
    }

    fn tracks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Track>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>) {
        let (trigger, mut triggers) = mpsc::unbounded_channel::<()>();
        let events = tokio::spawn(events::watch_events(self.clone(), trigger));
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
        // Take no new job (queued ones find the semaphore closed) and let the ones in flight
        // finish their podman call, within the budget.
        sem.close();
        let drained = tokio::time::timeout(SHUTDOWN_BUDGET, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                jobs = jobs.len(),
                "container jobs still running at shutdown; leaving their podman calls to finish"
            );
            jobs.abort_all();
        }
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

        let removal_received = |n: &str| state.removal_received(n);
        let mut actions = reconcile::plan(&desired, &hashes, &observed, &busy, &removal_received);
        actions.extend(
            self.volume_only(&desired, &observed, &busy, &removal_received)
                .await,
        );
        let mut held = Vec::new();
        for action in actions {
            let name = action.deployment().to_owned();
            let job = match action {
                Action::Hold { containers, .. } => {
                    held.push((name.clone(), containers));
                    None
                }
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

        self.report_held(held);

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

    /// Data volumes of deployments absent from `desired` whose containers are all gone (a
    /// container lost to an interrupted create, one removed by hand): removed with the
    /// deployment when its deletion was received, held otherwise.
    async fn volume_only(
        &self,
        desired: &BTreeMap<String, Want<'_>>,
        observed: &[Observed],
        busy: &BTreeSet<String>,
        removal_received: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Action> {
        let volumes = match self.rt.podman.volumes(&self.rt.naming.selector()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list volumes");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for v in &volumes {
            let Some(d) = v.label(LABEL_DEPLOYMENT) else {
                continue;
            };
            if v.name != self.rt.naming.volume(d)
                || desired.contains_key(d)
                || busy.contains(d)
                || observed.iter().any(|o| o.deployment == d)
                || !seen.insert(d.to_owned())
            {
                continue;
            }
            out.push(if removal_received(d) {
                Action::Remove {
                    deployment: d.to_owned(),
                    containers: Vec::new(),
                }
            } else {
                Action::Hold {
                    deployment: d.to_owned(),
                    containers: Vec::new(),
                }
            });
        }
        out
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
