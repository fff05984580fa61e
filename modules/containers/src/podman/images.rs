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

    /// The repo digest of a local image (`sha256:...`), if it has one; an error when the
    /// image is not present. For a reference pinned by digest, that digest: podman found
    /// the image by it. Its `.Digest` is the digest of the manifest the image was first
    /// stored from, which differs for an image that was in local storage before it was
    /// pulled (seen here: imported, pushed, then pulled by the registry's digest, `.Digest`
    /// kept the import's; `RepoDigests` held both).
    pub async fn image_digest(&self, image: &str) -> Result<Option<String>, Error> {
        let call = Call::new(&["image", "inspect"])
            .opts(["--format", "json"])
            .name("container.image", image);
        let out = self.run(&call).await?;
        let images: Vec<ImageInspect> = self.decode(&call, &out)?;
        if let Some(pinned) = pinned_digest(image) {
            return Ok(Some(pinned));
        }
        Ok(images
            .into_iter()
            .next()
            .map(|i| i.digest)
            .filter(|d| !d.is_empty()))
    }
}

/// The digest `image` is pinned by (`repo@sha256:...`), if it is.
pub fn pinned_digest(image: &str) -> Option<String> {
    fleet_contract::ImageReference::parse(image)
        .ok()?
        .digest
        .map(str::to_owned)
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

#[cfg(test)]
mod tests {
    use super::pinned_digest;

    #[test]
    fn a_pinned_reference_gives_its_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            pinned_digest(&format!("127.0.0.1:5000/app@{d}")),
            Some(d.clone())
        );
        assert_eq!(pinned_digest(&format!("r.local/app:1@{d}")), Some(d));
        assert_eq!(pinned_digest("r.local:5000/app:1"), None);
        assert_eq!(pinned_digest("-bad"), None);
    }
}
