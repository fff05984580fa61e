//! Volume calls: ensure, remove.

use std::collections::BTreeMap;

use super::Podman;
use crate::error::Error;

impl Podman {
    /// Creates a named volume unless it exists.
    pub async fn volume_ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        if self.run(&["volume", "exists", name]).await.is_ok() {
            return Ok(());
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["volume", "create"];
        for l in &labels {
            args.extend(["--label", l]);
        }
        args.push(name);
        match self.run(&args).await {
            Ok(_) => Ok(()),
            // Lost a race with a concurrent creation: fine.
            Err(_) if self.run(&["volume", "exists", name]).await.is_ok() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a volume; a missing one is not an error.
    pub async fn volume_rm(&self, name: &str) -> Result<(), Error> {
        if self.run(&["volume", "exists", name]).await.is_err() {
            return Ok(());
        }
        self.run(&["volume", "rm", "-f", name]).await.map(drop)
    }
}
