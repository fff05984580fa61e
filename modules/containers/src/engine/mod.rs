//! The reconcile loop: wakes on desired-state changes, container exits (a pidfd per running
//! container, see [`exits`]), finished jobs, due retries and a slow periodic resync; lists
//! this instance's containers once per pass, plans with [`crate::reconcile::plan`] and runs
//! the resulting operations as jobs, at most one per deployment and at most `parallelism` at
//! a time.

mod exits;
mod jobs;
mod oom;
mod pass;
mod probes;
mod status;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::{Deployment, Phase, ProbeStatus};
use fleet_module_api::{Context, DesiredDeployment, DesiredState, Health};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::reconcile::{restart_delay, spec_hash};
use crate::runtime::SharedRuntime;
use crate::volumes::Detail;

/// Store key of the deployments this module has published a status for.
const PUBLISHED_KEY: &str = "published";
/// Store key prefix of the last manifest applied per deployment (for stop and after_stop).
const APPLIED_PREFIX: &str = "applied/";
/// Store key prefix of the restart count per deployment (survives agent restarts).
const RESTARTS_PREFIX: &str = "restarts/";
/// After a container exit, time for podman to record it (conmon writes the exit file within
/// tens of ms) and for the other exits of one operation (`podman stop -a`) to arrive.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A finished job is looked at once the other jobs finished too, or after this.
const COMPLETIONS: Duration = Duration::from_secs(2);
/// An image found present is not looked up again for this long (a burst of deployments of
/// one image costs one `podman image inspect`). One removed meanwhile fails one start,
/// which drops it from here; the retry pulls it.
const IMAGE_FRESH: Duration = Duration::from_secs(60);
/// A container between states is looked at again after this.
const SETTLE: Duration = Duration::from_secs(1);
/// Retry after podman itself failed (list).
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
    /// Why the last exit happened beyond its code (`oom-killed`); set with `last_exit`.
    exit_reason: Option<String>,
    /// The image's repo digest; `None` until looked up (`Some(None)`: it has none).
    digest: Option<Option<String>>,
    crash_backoff: Duration,
    restart_due: Option<Instant>,
    failure: Option<Failure>,
    /// The last check of the probe the status carries (kept across a restart until the new
    /// container's first check).
    probe: Option<ProbeStatus>,
    /// Phase and message the probes of the running container give.
    probe_view: Option<(Phase, String)>,
    /// Set when the agent stopped the container for a failed probe, until it starts again:
    /// the phase (`Unhealthy`, or `Failed` for a probe that never passed) and why.
    probe_stop: Option<(Phase, String)>,
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
    /// Images found present, with their repo digest and when (see [`IMAGE_FRESH`]).
    images: Mutex<HashMap<String, (Instant, Option<String>)>>,
    /// Deployments with a container in the last listing.
    listed: Mutex<BTreeSet<String>>,
    /// The probe runs of running containers, by deployment.
    probes: Mutex<HashMap<String, probes::ProbeRun>>,
    health: Arc<Mutex<Health>>,
    /// The module's status detail (held deployments, retained named volumes).
    detail: Arc<Detail>,
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

/// What a desired-state change asks of the loop (see [`Engine::classify`]).
enum Change {
    /// Nothing this module acts on changed.
    Nothing,
    /// Only deployments new to the device were added: apply them, no listing needed.
    OnlyNew(Vec<Deployment>),
    /// Anything else: a pass.
    Other,
}

impl Engine {
    /// An engine working through `rt`, reporting via `ctx`, with health written to `health`
    /// and its status detail to `detail`.
    pub fn new(
        rt: SharedRuntime,
        cfg: Config,
        ctx: Context,
        health: Arc<Mutex<Health>>,
        detail: Arc<Detail>,
    ) -> Self {
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
            images: Mutex::new(HashMap::new()),
            listed: Mutex::new(BTreeSet::new()),
            probes: Mutex::new(HashMap::new()),
            health,
            detail,
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

    fn images(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<String>)>> {
        self.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>) {
        let (trigger, mut triggers) = mpsc::unbounded_channel::<()>();
        let exits = exits::Exits::new(trigger);
        // However the loop ends (shutdown, or a panic the supervisor restarts the module
        // for), no probe of this engine goes on.
        let probes = probes::StopAll(&self);
        let mut desired = self.ctx.desired.clone();
        let mut jobs: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
        let sem = Arc::new(Semaphore::new(self.cfg.parallelism));
        let resync = Duration::from_secs(self.cfg.resync_secs);
        // The first pass and each resync look at everything (volumes included).
        let mut full = true;
        let mut next_full = Instant::now() + resync;
        'passes: loop {
            let mut last: Arc<DesiredState> = desired.borrow_and_update().clone();
            // A pass awaits podman (listings, pulls are jobs of their own): progress.
            let wake = self
                .ctx
                .progress
                .during(self.pass(last.clone(), &mut jobs, &mut running, &sem, &exits, full))
                .await;
            if full {
                next_full = Instant::now() + resync;
                full = false;
            }
            let until = wake.map_or(next_full, |w| (Instant::now() + w).min(next_full));
            let mut completed: Option<Instant> = None;
            loop {
                self.ctx.progress.tick();
                let deadline = completed.map_or(until, |c| (c + COMPLETIONS).min(until));
                tokio::select! {
                    () = self.ctx.shutdown.cancelled() => break 'passes,
                    changed = desired.changed() => {
                        if changed.is_err() {
                            break 'passes;
                        }
                        let new = desired.borrow_and_update().clone();
                        match self.classify(&last, &new, &running) {
                            Change::Nothing => last = new,
                            Change::OnlyNew(added) => {
                                for d in added {
                                    let job = Job::Apply {
                                        hash: spec_hash(&d),
                                        deployment: d.clone(),
                                        old: None,
                                    };
                                    self.spawn_job(&mut jobs, &mut running, &sem, d.name.clone(), job);
                                }
                                last = new;
                            }
                            Change::Other => break,
                        }
                    }
                    Some(()) = triggers.recv() => {
                        tokio::select! {
                            () = self.ctx.shutdown.cancelled() => break 'passes,
                            () = tokio::time::sleep(DEBOUNCE) => {}
                        }
                        while triggers.try_recv().is_ok() {}
                        break;
                    }
                    Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                        finished(&mut running, done);
                        // One look after a burst of jobs, not one per job.
                        if jobs.is_empty() {
                            break;
                        }
                        completed.get_or_insert_with(Instant::now);
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        full = deadline >= next_full;
                        break;
                    }
                    () = self.ctx.progress.pulse() => {}
                }
            }
            while let Some(done) = jobs.try_join_next_with_id() {
                finished(&mut running, done);
            }
        }
        drop(exits);
        drop(probes);
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

    /// Runs `job` for deployment `name` once a worker is free.
    fn spawn_job(
        self: &Arc<Self>,
        jobs: &mut JoinSet<()>,
        running: &mut HashMap<tokio::task::Id, String>,
        sem: &Arc<Semaphore>,
        name: String,
        job: Job,
    ) {
        // A job changes the container: the probes of the one running now stop.
        if !matches!(job, Job::Clean { .. }) {
            self.stop_probes(&name);
        }
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

    /// What a new desired state asks for, against the one the last pass planned with.
    /// Deployments only added, never seen on the device nor by this engine, need no
    /// listing: nothing but this engine makes containers of ours, and the last listing had
    /// none for them. Anything else changed needs a pass.
    fn classify(
        &self,
        last: &DesiredState,
        new: &DesiredState,
        running: &HashMap<tokio::task::Id, String>,
    ) -> Change {
        if last.deployments == new.deployments
            && last.complete == new.complete
            && last.deleted == new.deleted
        {
            return Change::Nothing;
        }
        if last.complete != new.complete || last.deleted != new.deleted {
            return Change::Other;
        }
        if last
            .deployments
            .iter()
            .any(|(n, d)| new.deployments.get(n) != Some(d))
        {
            return Change::Other;
        }
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let tracks = self.tracks();
        let mut added = Vec::new();
        for (name, d) in &new.deployments {
            if last.deployments.contains_key(name) {
                continue;
            }
            let known = listed.contains(name)
                || published.contains(name)
                || held.contains(name)
                || tracks.contains_key(name)
                || running.values().any(|r| r == name);
            match d {
                DesiredDeployment::Valid(dep) if !known => added.push((**dep).clone()),
                _ => return Change::Other,
            }
        }
        Change::OnlyNew(added)
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
