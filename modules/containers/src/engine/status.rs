//! Status reporting: what the engine publishes per deployment, and which it has published.

use std::collections::BTreeSet;
use std::sync::Arc;

use fleet_contract::{Deployment, DeploymentStatus, Phase};
use fleet_module_api::DesiredDeployment;
use tokio::time::Instant;

use super::{Engine, PUBLISHED_KEY};
use crate::podman::PsEntry;
use crate::reconcile::LABEL_DEPLOYMENT;

/// Why a held deployment's containers and volume stay.
pub(super) const HELD_REASON: &str = "absent from a desired state that may be partial (rebuilt \
     from the cache); kept until the control plane confirms its deletion";

impl Engine {
    /// Reports the deployments held this pass (containers and volume kept although absent
    /// from the desired state) in the module's detail, and logs each change.
    pub(super) fn report_held(&self, held: Vec<(String, Vec<String>)>) {
        let names: BTreeSet<String> = held.iter().map(|(n, _)| n.clone()).collect();
        let mut last = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if *last == names {
            return;
        }
        for (name, containers) in &held {
            if !last.contains(name) {
                tracing::info!(deployment = %name, containers = %containers.join(", "),
                    volume = %self.rt.naming.volume(name), "kept: {HELD_REASON}");
            }
        }
        let entries: Vec<serde_json::Value> = held
            .iter()
            .map(|(name, containers)| {
                serde_json::json!({
                    "deployment": name,
                    "containers": containers,
                    "volume": self.rt.naming.volume(name),
                    "reason": HELD_REASON,
                })
            })
            .collect();
        self.detail.set_held(&self.ctx, entries);
        *last = names;
    }

    /// Reports a running, matching container (adopted or just started): `Running`, or what
    /// its probes say (which this starts for a container start not probed yet).
    pub(super) async fn report_running(self: &Arc<Self>, d: &Deployment, listed: &[PsEntry]) {
        let needs_digest = self
            .tracks()
            .get(&d.name)
            .is_none_or(|t| t.digest.is_none());
        if needs_digest {
            // Looked up once per deployment (and image), also for an image without one.
            let image_id = listed
                .iter()
                .find(|p| p.label(LABEL_DEPLOYMENT) == Some(d.name.as_str()))
                .map(|p| p.image_id.clone())
                .unwrap_or_else(|| d.container.image.clone());
            let pinned = crate::podman::pinned_digest(&d.container.image);
            let digest = match self.fresh_image(&image_id) {
                _ if pinned.is_some() => Ok(pinned),
                Some(digest) => Ok(digest),
                None => self
                    .rt
                    .podman
                    .image_digest(&image_id)
                    .await
                    .inspect(|digest| {
                        self.images()
                            .insert(image_id.clone(), (Instant::now(), digest.clone()));
                    }),
            };
            if let Ok(digest) = digest {
                self.track(&d.name, |t| t.digest = Some(digest));
            }
        }
        self.track(&d.name, |t| {
            t.failure = None;
            t.restart_due = None;
        });
        let container = self.rt.naming.container(&d.name);
        let probed = listed
            .iter()
            .find(|p| p.name() == container)
            .and_then(|entry| self.probed_view(d, entry));
        let (phase, message) = probed.unwrap_or_else(|| {
            (
                Phase::Running,
                format!("{container} runs {}", d.container.image),
            )
        });
        self.publish(d, phase, message);
    }

    /// Publishes a status for `d`, unless its desired document turned invalid meanwhile.
    pub(super) fn publish(&self, d: &Deployment, phase: Phase, message: String) {
        let still_valid = matches!(
            self.ctx.desired.borrow().deployments.get(&d.name),
            Some(DesiredDeployment::Valid(_))
        );
        if !still_valid && phase != Phase::Removing {
            return;
        }
        let (restarts, last_exit_code, image_digest, exit_reason, probe) = {
            let mut tracks = self.tracks();
            let t = self.entry(&mut tracks, &d.name);
            let probe = t.probe.clone().filter(|_| !d.container.probes.is_empty());
            (
                t.restarts,
                t.last_exit,
                t.digest.clone().flatten(),
                t.exit_reason.clone(),
                probe,
            )
        };
        self.ctx.status.deployment(DeploymentStatus {
            name: d.name.clone(),
            revision: Some(d.revision),
            phase,
            message: fleet_contract::cap_message(&message),
            restarts,
            last_exit_code,
            image_digest,
            exit_reason,
            probe,
            updated_at: self.ctx.clock.unix_secs(),
        });
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.insert(d.name.clone()) {
            self.save_published(&published);
        }
    }

    pub(super) fn unpublish(&self, name: &str) {
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
