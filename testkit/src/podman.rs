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
        // Storage-only containers (a podman killed mid-create) carry no label podman shows.
        for name in external_names()? {
            if name.contains(&self.id) && !container_exists(&name)? {
                podman(&["rm", "--storage", "--", &name])?;
            }
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

/// Names of every container in containers/storage, including the storage-only ones podman's
/// database does not know (`podman ps -a --external`).
pub fn external_names() -> Result<Vec<String>> {
    let out = podman(&["ps", "-a", "--external", "--format", "{{.Names}}"])?;
    Ok(out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Is `name` in podman's database?
pub fn container_exists(name: &str) -> Result<bool> {
    let status = Command::new(BINARY)
        .args(["container", "exists", "--", name])
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

/// Leaves a storage-only container `name` behind, the state a `podman create` killed between
/// its storage and its database write leaves: `podman create` is SIGKILLed after a delay
/// that is narrowed (bisection between "too early: nothing" and "too late: created") until
/// that state is hit. Returns the attempts it took; fails after `max_attempts`.
pub fn storage_only_container(
    name: &str,
    image: &str,
    label: &str,
    max_attempts: u32,
) -> Result<u32> {
    let (mut lo, mut hi) = (10u64, 600u64);
    for attempt in 1..=max_attempts {
        // Bisect, with a little spread so one unlucky delay is not retried forever.
        let d = (lo + hi) / 2 + u64::from(attempt % 3) * 3;
        let mut child = Command::new(BINARY)
            .args([
                "create", "--name", name, "--label", label, "--", image, "true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: BINARY.to_owned(),
                source,
            })?;
        std::thread::sleep(std::time::Duration::from_millis(d));
        let _ = child.kill();
        let _ = child.wait();
        let in_db = container_exists(name)?;
        let in_storage = external_names()?.iter().any(|n| n == name);
        match (in_db, in_storage) {
            (false, true) => return Ok(attempt),
            (true, _) => {
                hi = d.max(lo + 2);
                podman(&["rm", "-f", "--", name])?;
            }
            (false, false) => lo = d.min(hi.saturating_sub(2)),
        }
        if hi <= lo + 2 {
            // The window moved (load): widen again.
            (lo, hi) = (lo.saturating_sub(40).max(5), hi + 40);
        }
    }
    Err(Error::Command {
        command: format!("podman create --name {name} (killed mid-flight)"),
        status: format!("no storage-only state in {max_attempts} attempts"),
        stderr_tail: String::new(),
    })
}

/// Watches `/proc` for a process whose argv contains every one of `needles` (e.g. `podman`,
/// `create`, a container name) and SIGKILLs it `after` it was first seen; gives up after
/// `within`. Returns the pid it killed.
pub fn kill_when_running(
    needles: Vec<String>,
    after: std::time::Duration,
    within: std::time::Duration,
) -> std::thread::JoinHandle<Option<u32>> {
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end {
            if let Some(pid) = find_process(&needles) {
                std::thread::sleep(after);
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                return Some(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        None
    })
}

/// The first process whose argv (NUL-separated in `/proc/<pid>/cmdline`) holds every needle
/// as one whole argument.
pub fn find_process(needles: &[String]) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_podman = args.first().is_some_and(|a| a.ends_with(b"podman"));
        if is_podman && needles.iter().all(|n| args.contains(&n.as_bytes())) {
            return Some(pid);
        }
    }
    None
}
