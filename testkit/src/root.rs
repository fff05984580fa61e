//! A temp dir laid out like a device's `/etc`, `/var/lib` and `/run` (ARCHITECTURE §5).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::error::{Error, Result};

/// Env var: when `1`, [`TempRoot::keep`] leaks the dir so it survives the test for inspection.
pub const KEEP_TEMP_ENV: &str = "FLEET_KEEP_TEMP";

/// A temp dir with `etc/fleet-agent`, `etc/fleet-agent/deployments.d`, `var/lib/fleet-agent`
/// and `run/fleet-agent` created; removed on drop unless kept.
#[derive(Debug)]
pub struct TempRoot {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl TempRoot {
    /// Creates the temp dir and the device directories inside it.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-root-")
            .tempdir()
            .map_err(|e| Error::io("creating TempRoot dir", e))?;
        let path = dir.path().to_path_buf();
        let root = TempRoot {
            dir: Some(dir),
            path,
        };
        for d in [root.etc(), root.deployments(), root.state(), root.run()] {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        Ok(root)
    }

    /// The root of the fake device filesystem.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<root>/etc/fleet-agent` (config dir).
    pub fn etc(&self) -> PathBuf {
        self.path.join("etc/fleet-agent")
    }

    /// `<root>/etc/fleet-agent/deployments.d` (local deployment source).
    pub fn deployments(&self) -> PathBuf {
        self.etc().join("deployments.d")
    }

    /// `<root>/var/lib/fleet-agent` (state dir, home of `state.db`).
    pub fn state(&self) -> PathBuf {
        self.path.join("var/lib/fleet-agent")
    }

    /// `<root>/run/fleet-agent` (runtime dir, secrets tmpfs analogue).
    pub fn run(&self) -> PathBuf {
        self.path.join("run/fleet-agent")
    }

    /// `<root>/etc/fleet-agent/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.etc().join("config.toml")
    }

    /// Writes `toml` to [`config_path`](Self::config_path) and returns that path.
    ///
    /// Panics on I/O failure: a test cannot go on without its config.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let path = self.config_path();
        if let Err(e) = std::fs::write(&path, toml) {
            panic!("writing {}: {e}", path.display());
        }
        path
    }

    /// If `FLEET_KEEP_TEMP=1`, leaks the dir (prints its path) so it outlives the test.
    ///
    /// Returns true when the dir was kept.
    pub fn keep(&mut self) -> bool {
        if std::env::var(KEEP_TEMP_ENV).as_deref() != Ok("1") {
            return false;
        }
        if let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            eprintln!("{KEEP_TEMP_ENV}=1: keeping {}", kept.display());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_exists_and_is_removed_on_drop() {
        let root = TempRoot::new().unwrap();
        for d in [root.etc(), root.deployments(), root.state(), root.run()] {
            assert!(d.is_dir(), "{}", d.display());
            assert!(d.starts_with(root.path()));
        }
        assert_eq!(root.config_path(), root.etc().join("config.toml"));
        let p = root.write_config("[agent]\nname = \"t\"\n");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "[agent]\nname = \"t\"\n"
        );
        let path = root.path().to_path_buf();
        drop(root);
        assert!(!path.exists());
    }
}
