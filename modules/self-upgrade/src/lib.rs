//! Module `self-upgrade`: the agent upgrades itself to a signed release and reverts by itself
//! when the new version does not prove itself (ARCHITECTURE §5–§6).
//!
//! # Protocol
//!
//! Two ways to ask for an upgrade, with the same fields (`version`, `artifact` as
//! `nats-object://<name>` or `file:///<path>`, `sha256`, `signature`, `key`, as printed by
//! `fleetctl release sign`):
//!
//! - a signed `agent-upgrade` command (role `admin`; `fleetctl agent-upgrade`);
//! - the desired-state document `<device>.agent` in KV `fleet-desired` (NATS) or retained
//!   `fleet/<device>/desired/agent` (MQTT), with `apiVersion`; `fleetctl agent-upgrade
//!   --desired`. Level-triggered: when it names another version than the running one, the
//!   module upgrades; a version that was reverted is not retried until the document names
//!   another one (no revert loops). The local plane has no such document (use the command).
//!
//! Either way the release signature is what authorises the binary: release keys
//! (`release_keys`) are separate from operator keys, so a compromised operator key or broker
//! alone cannot install a binary that was never released. The desired-state document is not
//! signed by an operator, though, so through it the agent only moves forward: a version that
//! is not a semantic version newer than the running one is refused unless
//! `allow_desired_downgrade = true`; a downgrade takes the signed command. A refused document
//! (invalid, a downgrade, an unknown release key, a bad signature) is a refusal, not an
//! outcome of an upgrade: its reason is in `details.self-upgrade.refused` (and `message`),
//! nothing is recorded, and the next version of the document is looked at afresh. The phases, each shown in status under
//! `details.self-upgrade.phase`:
//!
//! 1. **Running** — idle.
//! 2. **Draining** — no other upgrade or probation may be in flight; new requests are refused.
//! 3. **Staging** — the artifact is downloaded into `versions/.staging-<v>/` (mode 0600;
//!    `max_artifact_bytes` caps it; a partial `file://` download left by a crash or an I/O
//!    error is resumed when the same version is requested again, while a `nats-object://`
//!    download starts over because the object store client reads from the start), its SHA-256
//!    compared with the pin and the Ed25519 release signature (over version + SHA-256, by a
//!    key in `release_keys`, which are separate from operator keys) verified; only then is it
//!    made executable and renamed to `versions/<v>/`. An unknown key or a bad signature is
//!    refused by the command itself, before anything is downloaded.
//! 4. **Verifying** — `<new> version --json` must report `<v>`, and `<new> --config <path>
//!    self-test` (config parses, store opens and migrates on a copy, modules probe, control
//!    plane reachable) must pass within `self_test_timeout_secs`.
//! 5. **CutoverReady**, **Stopping** — the probation record (from, to, deadline, attempts)
//!    is written and fsynced on the state volume, the current link is swapped (symlink +
//!    rename + directory fsync), and the agent exits with code 3; systemd starts the link.
//! 6. **Probation** — the new version, finding the record naming it, confirms itself once
//!    the control plane is reachable and every available module is healthy: `confirmed`
//!    moves to it (atomic rename), the outcome is recorded, the record removed → **Confirmed**.
//!    If the deadline passes first it exits, and the guard reverts.
//! 7. **Reverted** `{from, to, reason}` — written by [`Layout::revert`], the one revert path
//!    for every failure: refused artifact, failed self-test, crash loop (the guard counts
//!    start attempts), no check-in before the deadline, interrupted cutover.
//!
//! The guard ([`guard`], `fleet-agent guard`) runs as `ExecStartPre=` from the confirmed
//! binary; see its docs for the deadline's clock handling.
//!
//! # Device layout
//!
//! ```text
//! /usr/lib/fleet-agent/versions/<v>/fleet-agent      install_root; the last keep_versions (3)
//! /usr/lib/fleet-agent/confirmed -> versions/<v>      never pruned
//! /usr/bin/fleet-agent -> /usr/lib/fleet-agent/versions/<v>/fleet-agent   current_link
//! /var/lib/fleet-agent/self-upgrade/probation.json    state volume (survives an OS rollback)
//! /var/lib/fleet-agent/self-upgrade/outcome.json
//! ```
//!
//! The Debian package installs only `versions/<v>/fleet-agent`; its postinst makes the links
//! with `fleet-agent package-cutover`, and an upgrade of the package goes through the same
//! probation as a self-upgrade (see [`package`]).
//!
//! A fresh install may ship `/usr/bin/fleet-agent` as a plain file: on its first run the
//! module adopts it (copies it to `versions/<v>/`, creates `confirmed`, replaces the file by a
//! link). Until then `confirmed` does not exist, so no probation can exist either, and the
//! unit's `ExecStartPre` (see `systemd/fleet-agent.service`) skips the guard only in exactly
//! that case; once `confirmed` exists every guard failure fails the start.

#![warn(missing_docs)]

pub mod config;
mod desired;
mod error;
pub mod fetch;
pub mod guard;
pub mod layout;
pub mod package;
mod request;
mod stage;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_module_api::{
    AgentSelf, Capability, Command, CommandError, ConfigError, Context, Descriptor, Health,
    ModuleError, Probe, Reply,
};
use serde::Serialize;
use tokio::sync::mpsc;

pub use config::Config;
pub use error::Error;
pub use layout::{Layout, Outcome, Probation};
pub use request::Request;
pub use stage::verify_binary;

/// Module name.
pub const NAME: &str = "self-upgrade";
/// The command verb.
pub const VERB: &str = "agent-upgrade";
/// Exit code of an agent that stops for a cutover or a missed deadline.
pub const EXIT_RESTART: u8 = 3;

/// How the runtime finds this module.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: NAME,
    build: |section| {
        let cfg: Config = fleet_module_api::parse_section(NAME, section)?;
        cfg.validate().map_err(|message| ConfigError {
            module: NAME,
            message,
        })?;
        Ok(Arc::new(SelfUpgrade::new(cfg)))
    },
};

/// Parses the module's section for `fleet-agent guard` (absent = defaults).
pub fn config_from_section(section: Option<&toml::Value>) -> Result<Config, ConfigError> {
    let cfg: Config = fleet_module_api::parse_section(NAME, section)?;
    cfg.validate().map_err(|message| ConfigError {
        module: NAME,
        message,
    })?;
    Ok(cfg)
}

/// The phases of ARCHITECTURE §6, as reported in status (PascalCase, as the OS upgrade's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Idle.
    Running,
    /// Refusing new work before staging.
    Draining,
    /// Downloading and verifying.
    Staging,
    /// Running the new version's self-test.
    Verifying,
    /// Installed and tested; about to cut over.
    CutoverReady,
    /// Link swapped; exiting.
    Stopping,
    /// New version running, not yet confirmed.
    Probation,
    /// The last upgrade was confirmed.
    Confirmed,
    /// The last upgrade was reverted.
    Reverted,
}

/// How [`SelfUpgrade::upgrade`] ended.
enum Ended {
    /// The link points at the new version; the agent must exit so systemd starts it.
    CutOver,
    /// Refused or failed before the cutover; reverted and reported.
    Reverted,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    phase: Phase,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    confirmed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<Outcome>,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    /// Why the desired document `<device>.agent` is not acted on, while it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

/// The module.
pub struct SelfUpgrade {
    cfg: Config,
    jobs_tx: mpsc::Sender<Request>,
    jobs_rx: Mutex<Option<mpsc::Receiver<Request>>>,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    health: Health,
    target: Option<String>,
    message: String,
    refused: Option<String>,
}

impl SelfUpgrade {
    /// A module with this config.
    pub fn new(cfg: Config) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::channel(1);
        Self {
            cfg,
            jobs_tx,
            jobs_rx: Mutex::new(Some(jobs_rx)),
            state: Mutex::new(State {
                phase: Phase::Running,
                health: Health::Starting,
                target: None,
                message: String::new(),
                refused: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, ctx: &Context, phase: Phase, target: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        {
            let mut s = self.lock();
            s.phase = phase;
            s.target = target.map(ToOwned::to_owned);
            s.message = message.clone();
        }
        tracing::info!(phase = ?phase, target = ?target, %message, "self-upgrade phase");
        self.report(ctx);
    }

    fn report(&self, ctx: &Context) {
        let layout = Layout::new(&self.cfg, &ctx.paths.state_dir);
        let s = self.lock();
        let report = Report {
            phase: s.phase,
            version: agent_version(ctx),
            confirmed: layout.confirmed_version(),
            target: s.target.clone(),
            last: layout.read_outcome().ok().flatten(),
            message: s.message.clone(),
            refused: s.refused.clone(),
        };
        drop(s);
        ctx.status.detail(
            NAME,
            serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
        );
    }
    /// Stages, verifies and cuts over; every failure before the cutover goes through the
    /// revert path.
    async fn upgrade(&self, ctx: &Context, req: Request) -> Result<Ended, Error> {
        let layout = Layout::new(&self.cfg, &ctx.paths.state_dir);
        let v = req.version.as_str();
        let (_, from) = layout.check()?;
        self.set(
            ctx,
            Phase::Draining,
            Some(v),
            format!("upgrade {from} -> {v} accepted"),
        );
        layout.clear_outcome()?;
        match self.stage_and_verify(ctx, &layout, &req).await {
            Ok(()) => {}
            Err(e) => {
                let reason = e.to_string();
                // A broken download is kept (mode 0600, never executable) so the same
                // request resumes it; anything else starts over next time.
                if !matches!(e, Error::Download(_)) {
                    layout.clean_staging(None);
                }
                if layout.current_version().as_deref() != Some(v)
                    && layout.confirmed_version().as_deref() != Some(v)
                {
                    let _ = std::fs::remove_dir_all(layout.version_dir(v));
                }
                layout.revert(&from, v, &reason, ctx.clock.unix_secs())?;
                self.set(ctx, Phase::Reverted, Some(v), reason);
                return Ok(Ended::Reverted);
            }
        }
        self.set(
            ctx,
            Phase::CutoverReady,
            Some(v),
            "installed and self-tested",
        );
        // Record first, then the link: a crash in between leaves a record the guard resolves
        // (current != to -> revert, which is a no-op on the link).
        let now = guard::Now::read(ctx.clock.unix_secs());
        let p = guard::new_probation(
            &from,
            v,
            self.cfg.probation_deadline_secs,
            self.cfg.max_attempts,
            &now,
        );
        self.set(
            ctx,
            Phase::Stopping,
            Some(v),
            "probation recorded; swapping the link",
        );
        layout.write_probation(&p)?;
        layout::swap_link(&layout.current, &layout.binary(v))?;
        let removed = layout.prune(self.cfg.keep_versions);
        if !removed.is_empty() {
            tracing::info!(?removed, "pruned old versions");
        }
        self.set(
            ctx,
            Phase::Stopping,
            Some(v),
            format!("cut over to {v}; restarting"),
        );
        Ok(Ended::CutOver)
    }

    /// Probation of the running version: confirm on check-in, exit at the deadline.
    async fn probation(&self, ctx: &Context, layout: &Layout, p: Probation) -> Result<bool, Error> {
        let Some(agent) = ctx.ext.get::<dyn AgentSelf>() else {
            return Err(Error::Layout("the runtime provides no check-in".into()));
        };
        self.set(
            ctx,
            Phase::Probation,
            Some(&p.to),
            format!(
                "attempt {} of {}; waiting for check-in",
                p.attempts, p.max_attempts
            ),
        );
        loop {
            let now = guard::Now::read(ctx.clock.unix_secs());
            match agent.check_in(NAME).await {
                Ok(summary) => {
                    layout.confirm(&p, now.unix)?;
                    let removed = layout.prune(self.cfg.keep_versions);
                    tracing::info!(version = %p.to, %summary, ?removed, "new version confirmed");
                    self.set(ctx, Phase::Confirmed, Some(&p.to), summary);
                    return Ok(false);
                }
                Err(why) => {
                    if guard::deadline_passed(&p, &now) {
                        let reason = format!(
                            "no check-in within the probation deadline ({} s): {why}",
                            p.deadline_secs
                        );
                        self.set(ctx, Phase::Stopping, Some(&p.to), reason.clone());
                        agent.request_restart(reason);
                        return Ok(true);
                    }
                    let mut s = self.lock();
                    s.message = format!("waiting for check-in: {why}");
                }
            }
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(true),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
fn agent_version(ctx: &Context) -> String {
    ctx.ext
        .get::<dyn AgentSelf>()
        .map_or_else(|| "unknown".to_owned(), |a| a.version().to_owned())
}

#[fleet_module_api::async_trait]
impl Capability for SelfUpgrade {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn probe(&self, ctx: &Context) -> Probe {
        let layout = Layout::new(&self.cfg, &ctx.paths.state_dir);
        // Only an agent started through the current link can be upgraded (a cutover restarts
        // the link), and only such an agent may adopt a plain file into the layout.
        if let Err(reason) = runs_from_current(&layout) {
            return Probe::unavailable(reason);
        }
        match layout.check() {
            Ok((confirmed, current)) => {
                Probe::available(format!("current {current}, confirmed {confirmed}"))
            }
            Err(e) => match std::fs::symlink_metadata(&layout.current) {
                Ok(m) if m.file_type().is_file() => Probe::available(format!(
                    "{} is a plain file; it will be adopted into {}",
                    layout.current.display(),
                    layout.versions.display()
                )),
                _ => Probe::unavailable(e.to_string()),
            },
        }
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let layout = Layout::new(&self.cfg, &ctx.paths.state_dir);
        let version = agent_version(&ctx);
        if layout.check().is_err() {
            runs_from_current(&layout).map_err(ModuleError::Fatal)?;
            match layout.adopt(&version, &layout.current.clone()) {
                Ok(true) => {
                    tracing::info!(%version, "adopted the running binary into the versions layout")
                }
                Ok(false) => {}
                Err(e) => return Err(ModuleError::external("adopting the install", e)),
            }
        }
        let mut last = layout
            .read_outcome()
            .map_err(|e| ModuleError::external("reading the last outcome", e))?;
        if let Some(Outcome::Reverted { to, reason, .. }) = &last {
            // An earlier agent recorded a refused desired document as a revert; it is none.
            if desired::is_refusal_record(reason) {
                tracing::info!(%to, %reason, "dropping a refusal recorded as a revert");
                layout
                    .clear_outcome()
                    .map_err(|e| ModuleError::external("clearing the last outcome", e))?;
                last = None;
            }
        }
        match &last {
            Some(Outcome::Reverted {
                from, to, reason, ..
            }) => {
                tracing::warn!(%from, %to, %reason, "the last agent upgrade was reverted");
                self.set(&ctx, Phase::Reverted, Some(to), reason.clone());
            }
            Some(Outcome::Confirmed { to, .. }) => self.set(&ctx, Phase::Confirmed, Some(to), ""),
            None => self.set(&ctx, Phase::Running, None, ""),
        }
        let probation = layout
            .read_probation()
            .map_err(|e| ModuleError::external("reading the probation record", e))?;
        let mut jobs = self
            .jobs_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| ModuleError::Fatal("run called twice".into()))?;
        {
            self.lock().health = Health::Healthy;
        }
        ctx.status.health_changed(NAME);
        if let Some(p) = probation {
            if p.to == version && layout.current_version().as_deref() == Some(version.as_str()) {
                let stop = ctx
                    .progress
                    .during(self.probation(&ctx, &layout, p))
                    .await
                    .map_err(|e| ModuleError::external("probation", e))?;
                if stop {
                    ctx.progress.during(ctx.shutdown.cancelled()).await;
                    return Ok(());
                }
            } else {
                tracing::warn!(to = %p.to, running = %version, "a probation record names another version; the guard resolves it at the next start");
            }
        }
        let mut desired = ctx.desired.clone();
        let mut desired_changed = true; // look at the current value once at start
        loop {
            ctx.progress.tick();
            let from_desired = if desired_changed {
                desired_changed = false;
                let agent = desired.borrow_and_update().agent.clone();
                self.desired_request(&ctx, &layout, &version, agent.as_ref())
            } else {
                None
            };
            let job = match from_desired {
                Some(req) => Some(req),
                None => tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    changed = desired.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        desired_changed = true;
                        None
                    }
                    job = jobs.recv() => match job {
                        Some(j) => Some(j),
                        None => return Ok(()),
                    },
                    () = ctx.progress.pulse() => None,
                },
            };
            let Some(req) = job else { continue };
            let v = req.version.clone();
            // Download, verify, cutover: awaited, so waiting on it is progress.
            match ctx.progress.during(self.upgrade(&ctx, req)).await {
                Ok(Ended::CutOver) => {
                    if let Some(a) = ctx.ext.get::<dyn AgentSelf>() {
                        a.request_restart(format!("cutover to {v}"));
                    }
                    ctx.progress.during(ctx.shutdown.cancelled()).await;
                    return Ok(());
                }
                Ok(Ended::Reverted) => {}
                Err(e) => {
                    tracing::error!(version = %v, error = %e, "agent upgrade failed");
                    self.set(&ctx, Phase::Reverted, Some(&v), e.to_string());
                }
            }
        }
    }

    fn verbs(&self) -> &'static [&'static str] {
        &[VERB]
    }

    async fn handle(&self, cmd: Command, ctx: &Context) -> Result<Reply, CommandError> {
        let req = self.check_request(&cmd.args)?;
        let layout = Layout::new(&self.cfg, &ctx.paths.state_dir);
        let (confirmed, current) = layout
            .check()
            .map_err(|e| CommandError::Unavailable(e.to_string()))?;
        if let Ok(Some(p)) = layout.read_probation() {
            return Err(CommandError::Unavailable(format!(
                "version {} is on probation",
                p.to
            )));
        }
        if current == req.version {
            return Err(CommandError::BadRequest {
                field: "version".into(),
                message: format!("{} is already running", req.version),
            });
        }
        if !matches!(
            self.lock().phase,
            Phase::Running | Phase::Confirmed | Phase::Reverted
        ) {
            return Err(CommandError::Unavailable(
                "an upgrade is in progress".into(),
            ));
        }
        let body = serde_json::json!({
            "accepted": true, "from": current, "confirmed": confirmed, "to": req.version,
        });
        self.jobs_tx
            .try_send(req)
            .map_err(|_| CommandError::Unavailable("an upgrade is in progress".into()))?;
        Ok(Reply::json(body))
    }

    fn health(&self) -> Health {
        self.lock().health.clone()
    }
}

/// Ok when this process runs the binary the current link names (or the plain file there).
fn runs_from_current(layout: &Layout) -> Result<(), String> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot tell which binary runs: {e}"))?;
    let current = std::fs::canonicalize(&layout.current)
        .map_err(|e| format!("current_link {}: {e}", layout.current.display()))?;
    if exe == current {
        Ok(())
    } else {
        Err(format!(
            "this agent runs from {}, not from current_link {}",
            exe.display(),
            layout.current.display()
        ))
    }
}
