//! The runtime's [`AgentSelf`] extension point: version, artifact downloads, check-in and
//! restart requests for the self-upgrade module.

use std::path::Path;
use std::sync::{Mutex, OnceLock, Weak};

use async_trait::async_trait;
use fleet_module_api::{AgentSelf, CancellationToken, RuntimeError};

use super::Shared;
use crate::config::NatsConfig;
use crate::VERSION;

pub(super) struct RuntimeSelf {
    pub(super) shared: OnceLock<Weak<Shared>>,
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
        let shared = self
            .shared
            .get()
            .and_then(Weak::upgrade)
            .ok_or("the runtime is shutting down")?;
        // Fresh, not the last event's: health is read now.
        shared.update_checkin(&shared.heartbeat(false));
        let checkin = shared.checkin.borrow().clone();
        match checkin.waiting_for(except) {
            Some(why) => Err(why),
            None => Ok("control plane reached; every available module healthy".to_owned()),
        }
    }

    fn request_restart(&self, reason: String) {
        tracing::warn!(%reason, "restart requested by self-upgrade");
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.restart.cancel();
    }
}
