//! The heartbeat and the check-in: computed from every module's probe and health, written
//! to the store only when their content changed, and the systemd status line.

use fleet_contract::Phase;
use fleet_module_api::{Clock, Health, Probe};

use super::{unix_now, Shared};
use crate::heartbeat::{Heartbeat, ModuleReport};
use crate::{notify, VERSION};

impl Shared {
    pub(super) fn heartbeat(&self, stopped: bool) -> Heartbeat {
        let modules = self
            .slots
            .iter()
            .map(|(slot, _)| {
                let st = slot.state();
                ModuleReport::new(slot.name(), st.probe.as_ref(), &slot.health(), st.restarts)
            })
            .collect();
        Heartbeat {
            device: self.device.to_string(),
            version: VERSION.to_owned(),
            pid: std::process::id(),
            boot_id: self.boot_id.clone(),
            started_at: self.started_at,
            at: unix_now(),
            agent_uptime_secs: self.started.elapsed().as_secs(),
            control_plane: self.plane_name.to_owned(),
            stopped,
            clock: serde_json::to_value(self.clock.status()).unwrap_or_default(),
            modules,
            ignored_inputs: self
                .ignored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            publish_failures: self.publish_failures.list(),
            details: self
                .sink
                .details
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Feeds the modules' check-in signal: every available module healthy (unavailable
    /// ones are not counted). `plane_reached` is set by the desired-state task.
    pub(super) fn update_checkin(&self, hb: &Heartbeat) {
        let unhealthy: Vec<(String, String)> = hb
            .modules
            .iter()
            .filter(|m| m.probe.get("state").and_then(|s| s.as_str()) == Some("available"))
            .filter(|m| !m.is_healthy())
            .map(|m| {
                let state = m
                    .health
                    .get("state")
                    .and_then(|s| s.as_str())
                    .unwrap_or("?");
                (m.name.clone(), state.to_owned())
            })
            .collect();
        let probed = hb
            .modules
            .iter()
            .all(|m| m.probe.get("state").and_then(|s| s.as_str()) != Some("pending"));
        self.checkin.send_if_modified(|c| {
            let changed = c.probed != probed || c.unhealthy != unhealthy;
            c.probed = probed;
            c.unhealthy = unhealthy;
            changed
        });
    }

    /// Recomputes the heartbeat and the check-in; the stored record (and the published
    /// one) is rewritten only when its content changed, or with `beat` (a network plane's
    /// periodic heartbeat: published anew, stored only if changed). Returns whether the
    /// content changed.
    pub(super) fn refresh(&self, stopped: bool, beat: bool) -> bool {
        let hb = self.heartbeat(stopped);
        self.update_checkin(&hb);
        let changed = !self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|w| w.same_content(&hb));
        if changed || beat {
            self.sink
                .published
                .send_modify(|s| s.heartbeat = Some(hb.clone()));
        }
        if !changed {
            return false;
        }
        match serde_json::to_vec(&hb) {
            Ok(body) => match self.store.kv_put("agent", "heartbeat", &body) {
                Ok(()) => {
                    self.notify_status(&hb);
                    *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(hb);
                }
                Err(e) => tracing::error!(error = %e, "cannot record heartbeat"),
            },
            Err(e) => tracing::error!(error = %e, "cannot encode heartbeat"),
        }
        true
    }

    /// Sends systemd the one-line status when it differs from the last one sent (a
    /// datagram per change only: the socket's queue is short, and a send to a full one
    /// blocks).
    pub(super) fn notify_status(&self, hb: &Heartbeat) {
        let line = status_line(hb, self);
        let mut last = self.status_sent.lock().unwrap_or_else(|p| p.into_inner());
        if *last != line {
            notify::status(&line);
            *last = line;
        }
    }

    /// Once every container-runtime provider answered its probe: when none is available,
    /// deployments are blocked with the reason; then desired state may be applied.
    pub(super) fn providers_answered(&self) {
        if self.providers_probed.is_cancelled() {
            return;
        }
        let mut unavailable = Vec::new();
        for (slot, _) in &self.slots {
            if !self.runtime_providers.contains(&slot.name()) {
                continue;
            }
            match slot.state().probe {
                None => return, // still probing
                Some(Probe::Unavailable { reason }) => {
                    unavailable.push(format!("{}: {reason}", slot.name()))
                }
                Some(Probe::Available { .. }) => {}
            }
        }
        if !self.runtime_providers.is_empty() && unavailable.len() == self.runtime_providers.len() {
            *self
                .deployments_blocked
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((
                Phase::Failed,
                format!("cannot run containers: module {}", unavailable.join("; ")),
            ));
        }
        self.providers_probed.cancel();
    }

    /// Is some module not settled: probe pending, or available and not (yet) healthy?
    pub(super) fn unsettled(&self) -> bool {
        self.slots.iter().any(|(slot, _)| {
            let st = slot.state();
            match st.probe {
                None => true,
                Some(Probe::Available { .. }) => {
                    !matches!(slot.health(), Health::Healthy | Health::Stopped { .. })
                }
                Some(Probe::Unavailable { .. }) => false,
            }
        })
    }
}

pub(super) fn status_line(hb: &Heartbeat, shared: &Shared) -> String {
    let healthy = hb.modules.iter().filter(|m| m.is_healthy()).count();
    let deployments = shared
        .store
        .statuses()
        .map(|s| s.len().to_string())
        .unwrap_or_else(|_| "?".into());
    let clock = match shared.clock.status().untrusted_reason() {
        Some(why) => format!(", {why}"),
        None => String::new(),
    };
    format!(
        "{} of {} modules healthy, {deployments} deployment(s), plane {}{clock}",
        healthy,
        hb.modules.len(),
        hb.control_plane
    )
}
