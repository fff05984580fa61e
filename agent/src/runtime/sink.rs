//! The status sink modules write to.

use std::sync::{Arc, Mutex};

use fleet_contract::DeploymentStatus;
use fleet_module_api::StatusSink;
use tokio::sync::watch;

use crate::control::StatusSnapshot;
use crate::store::Store;

/// The status sink modules write to: persisted in the store (and later forwarded).
pub(super) struct RuntimeSink {
    pub(super) store: Arc<Store>,
    pub(super) details: Mutex<serde_json::Map<String, serde_json::Value>>,
    /// Wakes the main loop to recompute the heartbeat and the check-in: a detail, a
    /// deployment status, a module's health or its supervision state changed.
    pub(super) changed: Arc<tokio::sync::Notify>,
    /// What the control plane publishes.
    pub(super) published: watch::Sender<StatusSnapshot>,
}

/// What of a deployment's probe result is a change worth publishing: not the time of the
/// check alone.
fn probe_key(s: &DeploymentStatus) -> Option<(&str, bool, &str, u32)> {
    s.probe.as_ref().map(|p| {
        (
            p.name.as_str(),
            p.passing,
            p.result.as_str(),
            p.consecutive_failures,
        )
    })
}

impl StatusSink for RuntimeSink {
    fn deployment(&self, mut status: DeploymentStatus) {
        // Every message that goes into a status is bounded, whatever wrote it.
        status.message = fleet_contract::cap_message(&status.message);
        let unchanged = self
            .store
            .statuses()
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.name == status.name))
            .is_some_and(|old| {
                old.phase == status.phase
                    && old.message == status.message
                    && old.revision == status.revision
                    && old.restarts == status.restarts
                    && probe_key(&old) == probe_key(&status)
            });
        if unchanged {
            return;
        }
        tracing::info!(
            deployment = %status.name,
            phase = status.phase.as_str(),
            revision = ?status.revision,
            message = %status.message,
            "deployment status"
        );
        if let Err(e) = self.store.put_status(&status) {
            tracing::error!(error = %e, "cannot record deployment status");
        }
        self.published.send_modify(|s| {
            s.deployments.insert(status.name.clone(), status);
        });
        self.changed.notify_one();
    }

    fn deployment_removed(&self, name: &str) {
        tracing::info!(deployment = %name, "deployment removed");
        if let Err(e) = self.store.delete_status(name) {
            tracing::error!(error = %e, "cannot delete deployment status");
        }
        self.published.send_modify(|s| {
            s.deployments.remove(name);
        });
        self.changed.notify_one();
    }

    fn detail(&self, module: &'static str, detail: serde_json::Value) {
        let old = self
            .details
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(module.to_owned(), detail.clone());
        if old.as_ref() != Some(&detail) {
            self.changed.notify_one();
        }
    }

    fn health_changed(&self, _module: &'static str) {
        self.changed.notify_one();
    }
}
