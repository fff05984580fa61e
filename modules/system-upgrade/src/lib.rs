//! Module `system-upgrade`: OS upgrade with an LVM thin snapshot, a one-shot trial boot and
//! automatic rollback (ARCHITECTURE §7; the boot-partition contract is
//! `initramfs/CONTRACT.md`).
//!
//! A request (desired-state key `<device>.system`, or the signed `system-upgrade` verb) runs
//! Checking → Snapshotting → SavingBootSet → Upgrading → Rebooting; the trial boot is
//! Probation, which ends Committed (after the agent checked in with healthy modules),
//! RolledBack (by the initramfs, after a boot limit or the deadline) or Failed. Every phase
//! is recorded in the module store (agent-state LV) before it acts, so a restart resumes or
//! fails cleanly and never runs the upgrade command twice.
//!
//! The upgrade command runs in its own transient systemd unit, `fleet-os-upgrade-<id>.service`
//! (`units` has the argv), not as a child of the agent: an `apt-get full-upgrade` that
//! upgrades the agent's own package restarts only the agent, and the restarted agent follows
//! the unit to its result (output tail from the journal into the phase history). A unit gone
//! without a result fails the upgrade (rollback), it is never run again; the command timeout
//! stops the unit.

pub mod board;
pub mod bootset;
pub mod bootstate;
mod config;
pub mod decide;
pub mod engine;
#[cfg(feature = "fake-lvm")]
pub mod fake_lvm;
#[cfg(feature = "fake-systemd")]
pub mod fake_units;
pub mod firmware;
pub mod lvm;
pub mod probe;
pub mod record;
pub mod selector;
mod tool;
pub mod units;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_contract::SystemUpgrade;
use fleet_module_api::{
    async_trait, Capability, Command, CommandError, ConfigError, Context, Descriptor, DesiredState,
    DesiredSystem, Health, ModuleError, Probe, Reply,
};
use tokio::sync::mpsc;

pub use config::{Config, SelectorKind};
use engine::{Begin, Engine, Refusal, Resume};
use lvm::{Lvm, LvmCli};
use record::Record;
use selector::{BootSelector, RpiTryboot, VmSelector};
use units::{SystemdUnits, Units};

/// The module's name, cargo feature and config section.
pub const NAME: &str = "system-upgrade";
/// The command verb.
pub const VERB: &str = "system-upgrade";
/// How often Probation re-checks the check-in without a change.
const PROBATION_TICK: Duration = Duration::from_secs(5);

/// Registration entry for the agent's module list.
pub const DESCRIPTOR: Descriptor = Descriptor { name: NAME, build };

fn build(section: Option<&toml::Value>) -> Result<Arc<dyn Capability>, ConfigError> {
    let config: Config = fleet_module_api::parse_section(NAME, section)?;
    config.validate().map_err(|message| ConfigError {
        module: NAME,
        message,
    })?;
    Ok(Arc::new(SystemUpgradeModule::new(config)))
}

/// The last `max` bytes of `s` (on a char boundary), for error messages.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The module.
pub struct SystemUpgradeModule {
    config: Config,
    lvm: Arc<dyn Lvm>,
    selector: Arc<dyn BootSelector>,
    units: Arc<dyn Units>,
    engine: Mutex<Option<Arc<Engine>>>,
    health: Mutex<Health>,
    starts: mpsc::UnboundedSender<Record>,
    start_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Record>>,
    /// Test hook: replaces the engine's boot id and uptime sources.
    proc_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    device_tree: Option<std::path::PathBuf>,
}

impl SystemUpgradeModule {
    /// The module with the real `lvm` CLI and the configured boot selector.
    pub fn new(config: Config) -> Self {
        let lvm: Arc<dyn Lvm> = Arc::new(LvmCli::new(&config.lvm));
        let selector: Arc<dyn BootSelector> = match config.selector {
            SelectorKind::Vm => Arc::new(VmSelector::new(&config.boot_dir)),
            SelectorKind::RpiTryboot => {
                Arc::new(RpiTryboot::new(&config.boot_dir, &config.vcio_device))
            }
        };
        Self::with_parts(config, lvm, selector)
    }

    /// The module over explicit parts (tests use the LVM fake here), with the real
    /// `systemd-run` unless [`SystemUpgradeModule::with_units`] replaces it.
    pub fn with_parts(config: Config, lvm: Arc<dyn Lvm>, selector: Arc<dyn BootSelector>) -> Self {
        let (starts, rx) = mpsc::unbounded_channel();
        Self {
            config,
            lvm,
            selector,
            units: Arc::new(SystemdUnits::default()),
            engine: Mutex::new(None),
            health: Mutex::new(Health::Starting),
            starts,
            start_rx: tokio::sync::Mutex::new(rx),
            proc_files: None,
            device_tree: None,
        }
    }

    /// Runs the upgrade command through these units instead of systemd's (tests).
    pub fn with_units(mut self, units: Arc<dyn Units>) -> Self {
        self.units = units;
        self
    }

    /// Reads the kernel boot id and uptime from these files instead of `/proc` (tests).
    pub fn with_proc_files(
        mut self,
        boot_id: impl Into<std::path::PathBuf>,
        uptime: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.proc_files = Some((boot_id.into(), uptime.into()));
        self
    }

    /// Reads the board from this directory instead of `/proc/device-tree` (tests): where
    /// the saved firmware may be pinned during an upgrade ([`board`]).
    pub fn with_device_tree(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.device_tree = Some(dir.into());
        self
    }

    /// The engine bound to this module's store and status sink.
    pub fn engine(&self, ctx: &Context) -> Arc<Engine> {
        let mut slot = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| {
            let mut e = Engine::new(
                self.config.clone(),
                self.lvm.clone(),
                self.selector.clone(),
                self.units.clone(),
                ctx.store.clone(),
                ctx.status.clone(),
                ctx.clock.clone(),
            );
            if let Some((boot_id, uptime)) = &self.proc_files {
                e.boot_id_file = boot_id.clone();
                e.uptime_file = uptime.clone();
            }
            if let Some(dir) = &self.device_tree {
                e.device_tree_dir = dir.clone();
            }
            Arc::new(e)
        })
        .clone()
    }

    fn set_health(&self, ctx: &Context, h: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
        ctx.status.health_changed(NAME);
    }

    /// Starts the desired upgrade unless it is known or another one runs.
    fn apply_desired(&self, engine: &Engine, state: &DesiredState) -> Option<Record> {
        match &state.system {
            None => {
                engine.set_rejected(None);
                None
            }
            Some(DesiredSystem::Invalid { error, .. }) => {
                engine.set_rejected(Some(error.to_string()));
                None
            }
            Some(DesiredSystem::Valid(req)) => match engine.begin(req, "desired") {
                Ok(Begin::Started(rec)) => {
                    engine.set_rejected(None);
                    Some(rec)
                }
                Ok(Begin::Known(_)) => {
                    engine.set_rejected(None);
                    None
                }
                Err(e) => {
                    engine.set_rejected(Some(format!("request {}: {e}", req.id)));
                    None
                }
            },
        }
    }
}

#[async_trait]
impl Capability for SystemUpgradeModule {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn probe(&self, _ctx: &Context) -> Probe {
        // While an upgrade is in flight the snapshot uses pool space; headroom only matters
        // for starting one (Checking enforces it again).
        let in_flight =
            bootstate::StateFiles::new(bootset::BootDir::new(&self.config.boot_dir).fleet())
                .current()
                .ok()
                .flatten()
                .is_some_and(|b| {
                    use bootstate::State as S;
                    matches!(
                        b.state,
                        S::Upgrading | S::Trial | S::Committing | S::Committed | S::Rollback
                    )
                });
        let mut cfg = self.config.clone();
        if in_flight {
            cfg.min_pool_free_percent = 0;
            cfg.min_pool_free_bytes = 0;
        }
        let probe = probe::probe(&cfg, self.lvm.as_ref()).await;
        match self.units.unavailable() {
            Some(reason) if probe.is_available() => Probe::unavailable(reason),
            _ => probe,
        }
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let engine = self.engine(&ctx);
        let mut starts = self.start_rx.lock().await;
        // Requests accepted while `run` was not running are in the store as Checking too:
        // recover() returns the current one; the channel's copies are stale then.
        while starts.try_recv().is_ok() {}
        let mut probation = false;
        // Every engine step below is awaited (child processes, waits on systemd units):
        // waiting on it is progress.
        let progress = &ctx.progress;
        match progress.during(engine.recover()).await {
            Resume::Nothing => {}
            Resume::Probation => probation = true,
            Resume::Execute(rec) => {
                self.set_health(&ctx, Health::Healthy);
                progress.during(engine.execute(*rec, &ctx.shutdown)).await;
            }
            Resume::Follow(rec) => {
                // Healthy while following: a new agent version started by the upgrade's own
                // package postinst must be able to check in.
                self.set_health(&ctx, Health::Healthy);
                progress.during(engine.follow(*rec, &ctx.shutdown)).await;
            }
        }
        self.set_health(&ctx, Health::Healthy);
        let mut desired = ctx.desired.clone();
        let mut checkin = ctx.checkin.clone();
        let mut desired_open = true;
        let mut checkin_open = true;
        let mut desired_dirty = true;
        let mut was_done = true;
        loop {
            progress.tick();
            if probation {
                let c = checkin.borrow_and_update().clone();
                probation = !progress.during(engine.try_commit(&c)).await;
            }
            // An upgrade just ended: a desired request refused while it ran gets its turn.
            let done = engine.current().is_none_or(|c| c.phase.is_terminal());
            desired_dirty |= done && !was_done;
            was_done = done;
            if desired_dirty {
                desired_dirty = false;
                let state = desired.borrow_and_update().clone();
                if let Some(rec) = self.apply_desired(&engine, &state) {
                    progress.during(engine.execute(rec, &ctx.shutdown)).await;
                    continue;
                }
            }
            tokio::select! {
                () = ctx.shutdown.cancelled() => return Ok(()),
                changed = desired.changed(), if desired_open => {
                    desired_open = changed.is_ok();
                    desired_dirty = desired_open;
                }
                changed = checkin.changed(), if checkin_open => checkin_open = changed.is_ok(),
                Some(rec) = starts.recv() => {
                    // Only what is still the current, untouched request (never twice).
                    let fresh = engine
                        .current()
                        .is_some_and(|c| c.id == rec.id && c.phase == record::Phase::Checking);
                    if fresh {
                        progress.during(engine.execute(rec, &ctx.shutdown)).await;
                    }
                }
                () = tokio::time::sleep(PROBATION_TICK), if probation => {}
                () = progress.pulse() => {}
            }
        }
    }

    fn verbs(&self) -> &'static [&'static str] {
        &[VERB]
    }

    async fn handle(&self, cmd: Command, ctx: &Context) -> Result<Reply, CommandError> {
        let req =
            SystemUpgrade::from_json_value(&cmd.args).map_err(|e| CommandError::BadRequest {
                field: e.field.clone().unwrap_or_else(|| "args".into()),
                message: e.message.clone(),
            })?;
        if matches!(self.health(), Health::Starting) {
            return Err(CommandError::Unavailable(
                "the module is still starting".into(),
            ));
        }
        let engine = self.engine(ctx);
        match engine.begin(&req, &format!("command:{}", cmd.actor)) {
            Ok(Begin::Started(rec)) => {
                let body = serde_json::json!({
                    "accepted": true, "id": rec.id, "phase": rec.phase,
                    "command": rec.command, "deadlineSecs": rec.deadline_secs,
                    "maxBoots": rec.max_boots,
                });
                self.starts
                    .send(rec)
                    .map_err(|_| CommandError::Unavailable("the module is not running".into()))?;
                Ok(Reply::json(body))
            }
            Ok(Begin::Known(rec)) => Ok(Reply::json(serde_json::json!({
                "accepted": false, "known": true, "id": rec.id, "phase": rec.phase,
                "reason": rec.reason, "boots": rec.boots, "message": rec.message,
            }))),
            Err(e @ Refusal::Busy { .. }) => Err(CommandError::Unavailable(e.to_string())),
            Err(Refusal::Store(e)) => Err(CommandError::Failed(format!("store: {e}"))),
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
    fn config_rejects_unknown_and_bad_keys_by_name() {
        assert!((DESCRIPTOR.build)(None).is_ok());
        for (src, key) in [
            ("boot_dri = \"/x\"", "boot_dri"),
            ("selector = \"uefi\"", "uefi"),
            ("max_boots = 0", "max_boots"),
            ("spare_trial_boots = 11", "spare_trial_boots"),
            ("deadline_secs = 5", "deadline_secs"),
            ("min_pool_free_percent = 100", "min_pool_free_percent"),
            ("vg = \"-x\"", "vg"),
            ("reboot_command = \" \"", "reboot_command"),
        ] {
            let v: toml::Value = toml::from_str(src).unwrap();
            let e = (DESCRIPTOR.build)(Some(&v)).err().unwrap();
            assert!(e.to_string().contains("[modules.system-upgrade]"), "{e}");
            assert!(e.to_string().contains(key), "{src}: {e}");
        }
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("aéb", 2), "b");
    }
}

#[cfg(test)]
mod example_config {
    use super::*;

    /// `agent/config.example.toml` documents every key of `[modules.system-upgrade]` with
    /// its default: the commented section, uncommented, parses to `Config::default()`.
    #[test]
    fn example_section_documents_every_key_with_its_default() {
        let src = include_str!("../../../agent/config.example.toml");
        let start = src
            .find("# [modules.system-upgrade]")
            .expect("config.example.toml has a [modules.system-upgrade] section");
        let mut section = String::new();
        for line in src[start..].lines().skip(1) {
            let Some(rest) = line.strip_prefix("# ") else {
                break;
            };
            if rest.starts_with('[') {
                break;
            }
            if !rest.starts_with('#') {
                section.push_str(rest);
                section.push('\n');
            }
        }
        let v: toml::Value = toml::from_str(&section).unwrap();
        let keys = v.as_table().unwrap().len();
        let parsed: Config = fleet_module_api::parse_section(NAME, Some(&v)).unwrap();
        assert_eq!(parsed, Config::default());
        let all = toml::Value::try_from(Config::default()).unwrap();
        assert_eq!(
            keys,
            all.as_table().unwrap().len(),
            "every key is documented"
        );
    }
}
