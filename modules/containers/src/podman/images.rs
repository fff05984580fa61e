//! Image calls: exists, pull, digest; and the credentials check pulls need.

use std::path::Path;

use super::types::ImageInspect;
use super::{Call, Podman, PULL};
use crate::error::Error;

impl Podman {
    /// Is `image` present in local storage?
    pub async fn image_exists(&self, image: &str) -> Result<bool, Error> {
        let call = Call::new(&["image", "exists"]).name("container.image", image);
        match self.run(&call).await {
            Ok(_) => Ok(true),
            Err(Error::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pulls `image`, with the configured credentials.
    pub async fn pull(&self, image: &str) -> Result<(), Error> {
        let mut call = Call::new(&["pull"]).opts(["--quiet"]);
        if let Some(path) = &self.auth_file {
            check_auth_file(path)?;
            call = call.opts([format!("--authfile={}", path.to_string_lossy())]);
        }
        let call = call.name("container.image", image).limit(PULL);
        match self.run(&call).await {
            Ok(_) => Ok(()),
            Err(e @ Error::Refused { .. }) => Err(e),
            Err(e) => Err(Error::Pull {
                image: image.to_owned(),
                message: e.detail().replace('\n', " | "),
            }),
        }
    }

    /// The repo digest of a local image (`sha256:...`), if it has one.
    pub async fn image_digest(&self, image: &str) -> Result<Option<String>, Error> {
        let call = Call::new(&["image", "inspect"])
            .opts(["--format", "json"])
            .name("container.image", image);
        let out = self.run(&call).await?;
        let images: Vec<ImageInspect> = self.decode(&call, &out)?;
        Ok(images
            .into_iter()
            .next()
            .map(|i| i.digest)
            .filter(|d| !d.is_empty()))
    }
}

/// Refuses credentials that are not root-only (they are registry passwords).
pub(super) fn check_auth_file(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let bad = |message: String| Error::AuthFile {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.uid() != 0 {
        return Err(bad(format!("owned by uid {}, not root", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets others read it; chmod 600",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}
