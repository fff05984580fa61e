//! One pass: list this instance's containers, plan, start the jobs; and the volumes a
//! deployment may leave behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_contract::{Deployment, Phase};
use fleet_module_api::{DesiredDeployment, DesiredState, Health};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{exits, oom, Engine, Job, APPLIED_PREFIX, PODMAN_RETRY, RESTARTS_PREFIX, SETTLE};
use crate::podman::PsEntry;
use crate::reconcile::{
    self, spec_hash, Action, Observed, Want, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_ROLE,
    LABEL_SPEC_HASH, MANAGER,
};

impl Engine {
    /// One pass: observe, plan, start jobs. Returns how soon the next pass is due, if sooner
    /// than the resync. A `full` pass also lists volumes; the others only when a volume may
    /// be left without its deployment (see [`Engine::volume_candidates`]).
    pub(super) async fn pass(
        self: &Arc<Self>,
        state: Arc<DesiredState>,
        jobs: &mut JoinSet<()>,
        running: &mut HashMap<tokio::task::Id, String>,
        sem: &Arc<Semaphore>,
        exits: &exits::Exits,
        full: bool,
    ) -> Option<Duration> {
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
        *self.listed.lock().unwrap_or_else(|p| p.into_inner()) =
            observed.iter().map(|o| o.deployment.clone()).collect();
        exits.watch(listed.iter().filter_map(|p| {
            let main = observe(p).is_some_and(|o| o.role == "main");
            let alive = matches!(p.state.as_str(), "running" | "paused") && p.pid > 0;
            (main && alive).then_some((p.id.as_str(), p.pid))
        }));

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
        if full || self.volume_candidates(&desired, &observed) {
            actions.extend(
                self.volume_only(&desired, &observed, &busy, &removal_received)
                    .await,
            );
        }
        let mut held = Vec::new();
        // Deployments whose container runs: their probes go on, every other's stop.
        let mut kept = BTreeSet::new();
        for action in actions {
            let action = match manifests.get(action.deployment()).copied() {
                Some(d) => self.probe_restart(action, &observed, d),
                None => action,
            };
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
                    kept.insert(name.clone());
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
                    let container = self.rt.naming.container(&name);
                    let reason = self.exit_reason(&container, exit_code).await;
                    let exit = oom::exit_text(
                        exit_code,
                        reason.as_deref(),
                        d.container.resources.memory_mib,
                    );
                    self.track(&name, |t| {
                        t.last_exit = Some(exit_code);
                        t.exit_reason = reason;
                    });
                    let (phase, message) = self
                        .probe_stop_note(&name, "restart policy never keeps it stopped")
                        .unwrap_or_else(|| {
                            (
                                Phase::Failed,
                                format!(
                                    "exited with {exit}; restart policy {:?} keeps it stopped",
                                    d.container.restart
                                ),
                            )
                        });
                    self.publish(d, phase, message);
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
                        let reason = self.exit_reason(&container, exit_code).await;
                        let exit = oom::exit_text(
                            exit_code,
                            reason.as_deref(),
                            d.container.resources.memory_mib,
                        );
                        self.track(&name, |t| t.exit_reason = reason);
                        let due = self.restart_due(&name, exit_code, ran_secs, now);
                        if due > now {
                            let (restarts, wait) = {
                                let t = self.tracks();
                                let r = t.get(&name).map_or(0, |t| t.restarts);
                                (r, due - now)
                            };
                            let then = format!(
                                "restart {} in {} s (crash-loop backoff)",
                                restarts + 1,
                                wait.as_secs_f32().ceil()
                            );
                            let (phase, message) =
                                self.probe_stop_note(&name, &then).unwrap_or_else(|| {
                                    (
                                        Phase::Failed,
                                        format!("exited with {exit} after {ran_secs} s; {then}"),
                                    )
                                });
                            self.publish(d, phase, message);
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
                self.spawn_job(jobs, running, sem, name, job);
            }
        }

        self.report_held(held);
        self.retain_probes(|n| kept.contains(n));

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

    /// May a deployment have a data volume but neither a container nor a desired document?
    /// Only one this engine applied or published (a volume exists from its first apply on)
    /// whose containers are gone; while there is none, the volume listing is left to the
    /// full passes.
    fn volume_candidates(
        &self,
        desired: &BTreeMap<String, Want<'_>>,
        observed: &[Observed],
    ) -> bool {
        let Ok(applied) = self.ctx.store.keys(APPLIED_PREFIX) else {
            return true;
        };
        let published: Vec<String> = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        applied
            .iter()
            .filter_map(|k| k.strip_prefix(APPLIED_PREFIX))
            .chain(published.iter().map(String::as_str))
            .any(|n| !desired.contains_key(n) && !observed.iter().any(|o| o.deployment == n))
    }

    /// Data volumes of deployments absent from `desired` whose containers are all gone (a
    /// container lost to an interrupted create, one removed by hand): removed with the
    /// deployment when its deletion was received, held otherwise. Named volumes are never
    /// removed here (only the data volume's name is looked at): they are recorded as
    /// retained, for the `purge` verb.
    async fn volume_only(
        &self,
        desired: &BTreeMap<String, Want<'_>>,
        observed: &[Observed],
        busy: &BTreeSet<String>,
        removal_received: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Action> {
        let volumes = {
            let _volumes = self.detail.volumes.lock().await;
            match self.rt.podman.volumes(&self.rt.naming.selector()).await {
                Ok(v) => {
                    self.record_all_retained(&v, desired, observed);
                    v
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list volumes");
                    return Vec::new();
                }
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
