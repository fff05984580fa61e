//! Volume calls: list, ensure, remove.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Call, Podman};
use crate::error::Error;

/// One volume as `podman volume ls --format json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VolumeEntry {
    /// Volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl VolumeEntry {
    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
}

impl Podman {
    /// Every volume carrying `label` (`key=value`).
    pub async fn volumes(&self, label: &str) -> Result<Vec<VolumeEntry>, Error> {
        let call = Call::new(&["volume", "ls"]).opts([
            "--format=json".to_owned(),
            format!("--filter=label={label}"),
        ]);
        let out = self.run(&call).await?;
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        self.decode(&call, &out)
    }

    /// Creates a named volume unless it exists: one call either way (podman 4.3 has no
    /// `volume create --ignore`; an existing volume is its "already exists" error).
    pub async fn volume_ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut call = Call::new(&["volume", "create"]);
        for (k, v) in labels {
            call = call.opts([format!("--label={k}={v}")]);
        }
        let call = call.name("volume", name);
        match self.run(&call).await {
            Ok(_) => Ok(()),
            Err(Error::Command { stderr, .. }) if stderr.contains("already exists") => Ok(()),
            // Any other failure, unless the volume is there after all (a concurrent creation).
            Err(e) if self.volume_exists(name).await? => {
                tracing::debug!(volume = %name, error = %e, "volume create failed but the volume exists");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Does volume `name` exist?
    pub async fn volume_exists(&self, name: &str) -> Result<bool, Error> {
        let call = Call::new(&["volume", "exists"]).name("volume", name);
        match self.run(&call).await {
            Ok(_) => Ok(true),
            Err(Error::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a volume; a missing one is not an error.
    pub async fn volume_rm(&self, name: &str) -> Result<(), Error> {
        if !self.volume_exists(name).await? {
            return Ok(());
        }
        let call = Call::new(&["volume", "rm"])
            .opts(["-f"])
            .name("volume", name);
        self.run(&call).await.map(drop)
    }

    /// Removes a volume no container uses (no `-f`: podman refuses one in use, naming the
    /// container, instead of removing that container with it); a missing one is not an
    /// error. One call.
    pub async fn volume_rm_unused(&self, name: &str) -> Result<(), Error> {
        let call = Call::new(&["volume", "rm"]).name("volume", name);
        match self.run(&call).await {
            Ok(_) => Ok(()),
            Err(Error::Command { stderr, .. }) if stderr.contains("no such volume") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
