//! Health probes as the engine runs them: one task per running main container with probes,
//! started by the pass that reports the container running (so it knows the container start it
//! probes: id and host pid), stopped when a job takes the deployment, when a pass sees the
//! container no longer running, and at shutdown.
//!
//! The task runs outside the reconcile loop (it never holds the loop up, and every check is
//! bounded by its timeout) and publishes only on change: phase, the reported probe, whether it
//! passes, or its failure count. A probe past its threshold stops the container, gracefully by
//! its lifecycle; the exit then goes the way of every exit (pidfd, pass, the restart policy with
//! crash-loop backoff, restart counted), with the probe named in the status on the way. A
//! container stopped for a failed probe counts as failed, so `on-failure` restarts it whatever
//! its exit code.

use std::sync::Arc;
use std::time::Duration;

use fleet_contract::{Deployment, Phase, RestartPolicy};
use fleet_module_api::DesiredDeployment;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::Engine;
use crate::podman::PsEntry;
use crate::probe::state::{Machine, Verdict};
use crate::probe::Target;
use crate::reconcile::{spec_hash, Action, Observed};

/// The probes of one container start, running.
pub(super) struct ProbeRun {
    /// The container's id and host pid when the run began.
    id: String,
    pid: i64,
    task: AbortHandle,
}

/// Stops every probe run of the engine when dropped.
pub(super) struct StopAll<'a>(pub(super) &'a Engine);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        self.0.retain_probes(|_| false);
    }
}

impl Engine {
    fn probe_runs(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, ProbeRun>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the running main container of `d` (`entry` in the listing): makes sure its
    /// probes run and returns the phase and message they give now; `None` when `d` has no
    /// probes or the container is paused (not probed: a paused container is left alone).
    pub(super) fn probed_view(
        self: &Arc<Self>,
        d: &Deployment,
        entry: &PsEntry,
    ) -> Option<(Phase, String)> {
        if d.container.probes.is_empty() || entry.state != "running" || entry.pid <= 0 {
            self.stop_probes(&d.name);
            return None;
        }
        // The same container start as the run's (id and host pid), and has that run ended?
        let (same, ended) = match self.probe_runs().get(&d.name) {
            Some(r) if r.id == entry.id && r.pid == entry.pid => (true, r.task.is_finished()),
            _ => (false, false),
        };
        let (stored, stopping) = {
            let tracks = self.tracks();
            let t = tracks.get(&d.name);
            (
                t.and_then(|t| t.probe_view.clone())
                    .unwrap_or_else(|| waiting(d)),
                t.is_some_and(|t| t.probe_stop.is_some()),
            )
        };
        // Its run goes on; or it ended stopping the container, which this (older) listing
        // still shows running; or the process is gone already: the exit is the next pass's.
        if (same && (!ended || stopping)) || !process_alive(entry.pid) {
            return Some(stored);
        }
        let view = waiting(d);
        self.track(&d.name, |t| {
            t.probe_view = Some(view.clone());
            if !same {
                t.probe_stop = None; // a new start (also one the agent did not make)
            }
        });
        // The initial delay counts from the container's start (an adopted container that
        // ran for a while is checked at once).
        let age = self
            .ctx
            .clock
            .unix_secs()
            .saturating_sub(u64::try_from(entry.started_at).unwrap_or(0));
        let task = tokio::spawn(self.clone().run_probes(
            d.clone(),
            entry.name().to_owned(),
            entry.pid,
            Duration::from_secs(age),
        ));
        let run = ProbeRun {
            id: entry.id.clone(),
            pid: entry.pid,
            task: task.abort_handle(),
        };
        if let Some(old) = self.probe_runs().insert(d.name.clone(), run) {
            old.task.abort();
        }
        Some(view)
    }

    /// Stops the probes of deployment `name` (a job takes it over, or it stopped running).
    pub(super) fn stop_probes(&self, name: &str) {
        if let Some(run) = self.probe_runs().remove(name) {
            run.task.abort();
        }
    }

    /// Stops every probe run whose deployment `keep` rejects; all of them with `|_| false`.
    pub(super) fn retain_probes(&self, keep: impl Fn(&str) -> bool) {
        self.probe_runs().retain(|name, run| {
            let k = keep(name);
            if !k {
                run.task.abort();
            }
            k
        });
    }

    /// The status after a job started `d`'s container: `Running`, or `Starting` until its
    /// probes pass (the pass after the job starts them).
    pub(super) fn started(&self, d: &Deployment, container: &str) {
        if d.container.probes.is_empty() {
            self.publish(
                d,
                Phase::Running,
                format!("{container} runs {}", d.container.image),
            );
            return;
        }
        // The same view the next pass starts the probes with, so the sink publishes it once.
        let (phase, message) = waiting(d);
        self.track(&d.name, |t| {
            t.probe_view = None;
            t.probe_stop = None;
        });
        self.publish(d, phase, message);
    }

    /// The phase and message of an exited container the agent stopped for a failed probe
    /// (`None` for any other exit): the probe named, then `then`.
    pub(super) fn probe_stop_note(&self, name: &str, then: &str) -> Option<(Phase, String)> {
        let tracks = self.tracks();
        let (phase, why) = tracks.get(name)?.probe_stop.clone()?;
        Some((phase, format!("{why}; {then}")))
    }

    /// `on-failure` keeps a container down after exit 0, but one stopped for a failed probe
    /// failed whatever its exit code: its `Exited` becomes a `Restart`.
    pub(super) fn probe_restart(
        &self,
        action: Action,
        observed: &[Observed],
        d: &Deployment,
    ) -> Action {
        let Action::Exited {
            deployment,
            exit_code,
        } = action
        else {
            return action;
        };
        let stopped_by_probe = self
            .tracks()
            .get(&deployment)
            .is_some_and(|t| t.probe_stop.is_some());
        let container = self.rt.naming.container(&deployment);
        match observed.iter().find(|o| o.name == container) {
            Some(o) if stopped_by_probe && d.container.restart == RestartPolicy::OnFailure => {
                Action::Restart {
                    deployment,
                    container,
                    exit_code,
                    ran_secs: o.ran_secs,
                    never_started: false,
                }
            }
            _ => Action::Exited {
                deployment,
                exit_code,
            },
        }
    }

    /// The probes of one container start: each checked every period, the outcomes folded by
    /// the state machine; publishes on change; stops the container when a probe fails past
    /// its threshold. `age`: how long the container has been running. Ends when aborted (a
    /// job takes the deployment, a pass sees the container stopped, the loop ends), when the
    /// container's process is gone (the pass handles that exit) or after stopping it.
    async fn run_probes(
        self: Arc<Self>,
        d: Deployment,
        container: String,
        pid: i64,
        age: Duration,
    ) {
        let probes = &d.container.probes;
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        // Checked one at a time, each when due: a check is bounded by its timeout, so a
        // slow one delays the next by at most that.
        let began = Instant::now();
        let mut due: Vec<Instant> = probes
            .iter()
            .map(|p| began + secs(p.initial_delay_secs).saturating_sub(age))
            .collect();
        let mut target = Target {
            podman: &self.rt.podman,
            container: &container,
            network: d.container.network,
            address: None,
        };
        let mut machine = Machine::new(probes);
        let hash = spec_hash(&d);
        loop {
            let Some((i, at)) = due.iter().copied().enumerate().min_by_key(|(_, at)| *at) else {
                return;
            };
            tokio::time::sleep_until(at).await;
            let started = Instant::now();
            let outcome = target.check(&probes[i]).await;
            due[i] = started + secs(probes[i].period_secs.max(1));
            if !process_alive(pid) {
                return; // it exited by itself: the exit watcher's pass takes it from here
            }
            let changed = machine.record(
                i,
                outcome.passed,
                &outcome.result,
                self.ctx.clock.unix_secs(),
            );
            if let Some(status) = machine.status() {
                self.track(&d.name, |t| t.probe = Some(status));
            }
            if !changed {
                continue;
            }
            let verdict = machine.verdict();
            let (phase, message) = view(&d, &container, &machine, verdict);
            self.track(&d.name, |t| t.probe_view = Some((phase, message.clone())));
            // The deployment as desired now (its revision), while its spec is this container's.
            let Some(now) = self.desired_now(&d.name).filter(|n| spec_hash(n) == hash) else {
                continue;
            };
            self.publish(&now, phase, message);
            if let Some(failed) = verdict.failed() {
                let why = failure(&machine, verdict, failed);
                tracing::warn!(deployment = %d.name, %container, probe = machine.name(failed),
                    %why, "health probe failed; stopping the container");
                self.track(&d.name, |t| t.probe_stop = Some((phase, why)));
                if let Err(e) = self
                    .rt
                    .podman
                    .stop(&container, now.lifecycle.grace_period_secs)
                    .await
                {
                    tracing::warn!(deployment = %d.name, error = %e,
                        "cannot stop the container after its probe failed; probing it again");
                    self.track(&d.name, |t| t.probe_stop = None);
                }
                return;
            }
        }
    }

    fn desired_now(&self, name: &str) -> Option<Deployment> {
        match self.ctx.desired.borrow().deployments.get(name) {
            Some(DesiredDeployment::Valid(d)) => Some((**d).clone()),
            _ => None,
        }
    }
}

/// `Starting`, waiting for the first probe.
fn waiting(d: &Deployment) -> (Phase, String) {
    let name = d.container.probes.first().map_or("?", |p| p.display_name());
    (
        Phase::Starting,
        format!("waiting for probe {name}: not checked yet"),
    )
}

/// Why the container is stopped: `probe web failing 3x: HTTP 503`, or for a probe that never
/// passed `probe web never passed (failing 3x: connection refused)`.
fn failure(m: &Machine, verdict: Verdict, i: usize) -> String {
    match verdict {
        Verdict::NeverPassed(_) => format!("probe {} never passed ({})", m.name(i), m.summary(i)),
        _ => format!("probe {} {}", m.name(i), m.summary(i)),
    }
}

/// The phase and message of `verdict`.
fn view(d: &Deployment, container: &str, m: &Machine, verdict: Verdict) -> (Phase, String) {
    let then = || match d.container.restart {
        RestartPolicy::Never => format!("stopping {container}: restart policy never"),
        policy => format!(
            "restarting {container} (restart policy {})",
            match policy {
                RestartPolicy::OnFailure => "on-failure",
                _ => "always",
            }
        ),
    };
    match verdict {
        Verdict::Starting(i) => (
            Phase::Starting,
            format!("waiting for probe {}: {}", m.name(i), m.summary(i)),
        ),
        Verdict::Running => {
            let probe = m
                .reported()
                .map(|i| format!("; probe {}: {}", m.name(i), m.summary(i)))
                .unwrap_or_default();
            (
                Phase::Running,
                format!("{container} runs {}{probe}", d.container.image),
            )
        }
        Verdict::NeverPassed(i) => (
            Phase::Failed,
            format!("{}; {}", failure(m, verdict, i), then()),
        ),
        Verdict::Unhealthy(i) => (
            Phase::Unhealthy,
            format!("{}; {}", failure(m, verdict, i), then()),
        ),
    }
}

/// Does host process `pid` still exist?
fn process_alive(pid: i64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}
