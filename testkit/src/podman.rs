//! Podman helpers: a label scope whose containers are removed on drop, a tiny busybox image
//! built from the host's static busybox, and pushes to a test [`Registry`].

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{tail, Error, Result};
use crate::registry::Registry;
use crate::unique_id;

const BINARY: &str = "podman";
/// The label key that marks everything a [`PodmanScope`] owns.
pub const SCOPE_LABEL: &str = "fleet.test.scope";
/// Repository (without tag) of the images [`busybox_image`] builds.
pub const BUSYBOX_REPO: &str = "localhost/fleet-test/busybox";
/// Where the static busybox is taken from (Debian package busybox-static).
const HOST_BUSYBOX: &str = "/bin/busybox";
/// Applets linked into the image's `/bin`.
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "mkdir", "touch", "true", "false", "httpd",
];
/// Lock file serializing image builds across test processes.
const LOCK_PATH: &str = "/tmp/fleet-testkit-podman.lock";

/// Runs `podman <args>` to completion and returns its stdout; fails with the stderr tail.
pub fn podman(args: &[&str]) -> Result<String> {
    run(BINARY, args)
}

fn run(binary: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("{binary} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr_tail: tail(&String::from_utf8_lossy(&out.stderr), 20),
        })
    }
}

/// A unique id plus label for one test's containers; `Drop` force-removes all of them.
#[derive(Debug)]
pub struct PodmanScope {
    id: String,
}

impl PodmanScope {
    /// A new scope with id `<prefix>-<pid>-<counter>-<nanos>` (prefix sanitized for podman names).
    pub fn new(prefix: &str) -> Result<Self> {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let clean = clean.trim_start_matches(['-', '.', '_']);
        let clean = if clean.is_empty() { "t" } else { clean };
        Ok(PodmanScope {
            id: unique_id(clean),
        })
    }

    /// The scope's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `fleet.test.scope=<id>`: put it on every container/volume the test creates.
    pub fn label(&self) -> String {
        format!("{SCOPE_LABEL}={}", self.id)
    }

    /// A container/volume name unique to this scope: `<id>-<suffix>`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.id)
    }

    /// Names of the containers (any state) that carry this scope's label.
    pub fn containers(&self) -> Result<Vec<String>> {
        let filter = format!("label={}", self.label());
        let out = podman(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?;
        Ok(out
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Force-removes every container, then every volume, carrying this scope's label.
    pub fn cleanup(&self) -> Result<()> {
        let filter = format!("label={}", self.label());
        let ids = podman(&["ps", "-aq", "--filter", &filter])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(&ids);
            podman(&args)?;
        }
        let vols = podman(&["volume", "ls", "-q", "--filter", &filter])?;
        let vols: Vec<&str> = vols.split_whitespace().collect();
        if !vols.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(&vols);
            podman(&args)?;
        }
        Ok(())
    }

    /// Pushes local `image` to `<registry.addr()>/<dest_repo>` over plain HTTP; returns that reference.
    ///
    /// `dest_repo` may carry a tag (`fleet/app:v1`); without one the registry gets `latest`.
    pub fn push_to(&self, registry: &Registry, image: &str, dest_repo: &str) -> Result<String> {
        let dest = format!("{}/{dest_repo}", registry.addr());
        podman(&["push", "--tls-verify=false", "--quiet", image, &dest])?;
        Ok(dest)
    }
}

impl Drop for PodmanScope {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("fleet-testkit: cleaning podman scope {}: {e}", self.id);
        }
    }
}

/// Ensures `localhost/fleet-test/busybox:<tag>` exists locally and returns that reference.
///
/// Built once (under a file lock) by `podman import` of the host's static busybox plus applet links.
pub fn busybox_image(tag: &str) -> Result<String> {
    let image = format!("{BUSYBOX_REPO}:{tag}");
    let _lock = lock()?;
    if image_exists(&image)? {
        return Ok(image);
    }
    check_static_busybox()?;
    let dir = tempfile::Builder::new()
        .prefix("fleet-busybox-")
        .tempdir()
        .map_err(|e| Error::io("creating busybox build dir", e))?;
    let tar = dir.path().join("rootfs.tar");
    write_rootfs_tar(&tar)?;
    let tar = tar.to_string_lossy();
    podman(&[
        "import",
        "--quiet",
        "--change",
        "CMD [\"/bin/sh\"]",
        &tar,
        &image,
    ])?;
    Ok(image)
}

fn image_exists(image: &str) -> Result<bool> {
    let status = Command::new(BINARY)
        .args(["image", "exists", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            binary: BINARY.to_owned(),
            source,
        })?;
    Ok(status.success())
}

/// A dynamically linked busybox would import fine and then fail in every container.
fn check_static_busybox() -> Result<()> {
    let path = Path::new(HOST_BUSYBOX);
    if !path.is_file() {
        return Err(Error::Missing(path.to_path_buf()));
    }
    // `file` is only a sanity check; without it trust the package.
    if let Ok(desc) = run("file", &["-L", HOST_BUSYBOX]) {
        if !desc.contains("statically linked") {
            return Err(Error::Command {
                command: format!("file -L {HOST_BUSYBOX}"),
                status: "not a static binary".to_owned(),
                stderr_tail: format!(
                    "{}\ninstall busybox-static (scripts/install-deps)",
                    desc.trim()
                ),
            });
        }
    }
    Ok(())
}

/// Writes a tar with `bin/busybox` and `bin/<applet> -> busybox` links.
fn write_rootfs_tar(tar: &Path) -> Result<()> {
    let root = tar.with_file_name("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)
        .map_err(|e| Error::io(format!("creating {}", bin.display()), e))?;
    std::fs::copy(HOST_BUSYBOX, bin.join("busybox"))
        .map_err(|e| Error::io(format!("copying {HOST_BUSYBOX}"), e))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| Error::io(format!("linking bin/{applet}"), e))?;
    }
    let root = root.to_string_lossy();
    let tar = tar.to_string_lossy();
    run("tar", &["-C", &root, "-cf", &tar, "."])?;
    Ok(())
}

/// An exclusive lock on [`LOCK_PATH`], released when the returned file is dropped (or the
/// process dies), so concurrent test processes never import at the same time.
fn lock() -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|e| Error::io(format!("opening {LOCK_PATH}"), e))?;
    file.lock()
        .map_err(|e| Error::io(format!("locking {LOCK_PATH}"), e))?;
    Ok(file)
}
