//! The engine's side of named volumes (see [`crate::volumes`]): ensured before every run of
//! the container, never removed here, and recorded as `retained` in the status detail once
//! their deployment is removed (by the removal itself, and from every volume listing).

use std::collections::BTreeMap;

use fleet_contract::Deployment;

use super::Engine;
use crate::podman::VolumeEntry;
use crate::reconcile::{Observed, Want};
use crate::volumes::named_in;

impl Engine {
    /// Before the container runs: its named volumes exist, labelled; and they are not
    /// retained any more (the deployment is desired again).
    pub(super) async fn ensure_named_volumes(&self, d: &Deployment) -> Result<(), String> {
        self.rt
            .ensure_named_volumes(d)
            .await
            .map_err(|e| format!("named volume: {e}"))?;
        self.detail.retain(&self.ctx, &d.name, &[]);
        Ok(())
    }

    /// After the deployment `name` was removed: its named volumes stay; record which (one
    /// `volume ls`, which also finds those of earlier revisions).
    pub(super) async fn record_retained(&self, name: &str) {
        let _volumes = self.detail.volumes.lock().await;
        match self.rt.named_volumes().await {
            Ok(all) => self.detail.retain(&self.ctx, name, &all),
            Err(e) => {
                tracing::warn!(deployment = %name, error = %e, "cannot list the named volumes kept");
            }
        }
    }

    /// From a listing of this instance's volumes: the named volumes of deployments neither
    /// desired (an invalid document counts as desired) nor with a container on the device.
    pub(super) fn record_all_retained(
        &self,
        listed: &[VolumeEntry],
        desired: &BTreeMap<String, Want<'_>>,
        observed: &[Observed],
    ) {
        let mut retained = named_in(&self.rt.naming, listed);
        retained.retain(|(d, _)| {
            !desired.contains_key(d) && !observed.iter().any(|o| &o.deployment == d)
        });
        self.detail.set_retained(&self.ctx, retained);
    }
}
