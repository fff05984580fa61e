//! The runtime's [`AgentSelf`] extension point: version, artifact downloads, check-in and
//! restart requests for the self-upgrade module.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use fleet_module_api::{AgentSelf, CancellationToken, Health, Probe, RuntimeError};

use super::Shared;
use crate::config::NatsConfig;
use crate::control::ControlPlane;
use crate::VERSION;

pub(super) struct RuntimeSelf {
    pub(super) shared: OnceLock<Weak<Shared>>,
    pub(super) plane: OnceLock<Arc<dyn ControlPlane>>,
    pub(super) nats: NatsConfig,
    /// Fires when a module asked for a restart.
    pub(super) restart: CancellationToken,
    pub(super) reason: Mutex<Option<String>>,
}

#[async_trait]
impl AgentSelf for RuntimeSelf {
    fn version(&self) -> &str {
        VERSION
    }

    async fn fetch_artifact(
        &self,
        name: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<u64, RuntimeError> {
        let client = crate::control::nats::connect(&self.nats, "fleet-agent artifacts")
            .await
            .map_err(RuntimeError)?;
        crate::control::nats::download_artifact(&client, name, dest, max_bytes)
            .await
            .map_err(RuntimeError)
    }

    async fn check_in(&self, except: &str) -> Result<String, String> {
        let plane = self.plane.get().ok_or("the runtime is not wired yet")?;
        let reached = plane.check().await.map_err(|e| e.to_string())?;
        let shared = self
            .shared
            .get()
            .and_then(Weak::upgrade)
            .ok_or("the runtime is shutting down")?;
        let mut healthy = 0;
        for (slot, _) in &shared.slots {
            if slot.name() == except {
                continue;
            }
            // Unavailable modules were unavailable under the old version too; they do not
            // block a confirmation (their probe result is in the heartbeat).
            if !matches!(slot.state().probe, Some(Probe::Available { .. })) {
                continue;
            }
            match slot.health() {
                Health::Healthy => healthy += 1,
                other => return Err(format!("module {} is {other:?}", slot.name())),
            }
        }
        Ok(format!("{reached}; {healthy} available module(s) healthy"))
    }

    fn request_restart(&self, reason: String) {
        tracing::warn!(%reason, "restart requested by self-upgrade");
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.restart.cancel();
    }
}
