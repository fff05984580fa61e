//! The local control plane: one deployment manifest per `*.toml` file in `deployments.d/`,
//! watched with inotify. Adds, edits and deletions become full desired-state updates, the
//! same stream the network planes produce. A bad file marks only its own deployment Failed.
//! The OS upgrade request (`<device>.system` on the network planes) is the file
//! `system.toml` next to the directory (`/etc/fleet-agent/system.toml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_contract::{quote, DecodeError, Deployment, MAX_MANIFEST_BYTES};
use fleet_module_api::{CancellationToken, DesiredDeployment, DesiredState, DesiredSystem};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{ControlError, ControlPlane, DesiredUpdate, IgnoredInput, PlaneIo, Refusal};
use crate::store::DesiredRecord;

/// Events arriving this close together are handled as one rescan.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A full rescan also runs this often, in case an inotify event was lost (inotify does the
/// work; an idle agent should sleep).
const RESCAN_EVERY: Duration = Duration::from_secs(300);

/// Manifest directory source.
#[derive(Debug, Clone)]
pub struct LocalPlane {
    dir: PathBuf,
}

impl LocalPlane {
    /// A plane reading `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Reads every manifest in the directory now.
    pub fn scan(&self) -> Result<DesiredUpdate, ControlError> {
        let mut update = scan_dir(&self.dir)?;
        if let Some(file) = self.system_file() {
            let source = file.display().to_string();
            let system = match read_manifest(&file, super::caps::SYSTEM) {
                Ok(Read::Body(bytes)) => {
                    let system = super::decode_system(&source, &bytes);
                    // A refused request is cached as its length and error, not its body.
                    update.records.push(match &system {
                        DesiredSystem::Invalid { error, .. } => {
                            Refusal::new(bytes.len(), error.clone())
                                .record(super::SYSTEM_RECORD_KEY.to_owned(), &source)
                        }
                        DesiredSystem::Valid(_) => {
                            DesiredRecord::new(super::SYSTEM_RECORD_KEY, source, None, bytes)
                        }
                    });
                    Some(system)
                }
                Ok(Read::Refused(r)) => {
                    update
                        .records
                        .push(r.record(super::SYSTEM_RECORD_KEY.to_owned(), &source));
                    Some(DesiredSystem::Invalid {
                        error: r.error_at(&source),
                        source_name: source,
                    })
                }
                Err(Unusable::Missing) => None,
                Err(Unusable::Other(why)) => {
                    update.ignored.push(IgnoredInput::new(quote(&source), &why));
                    Some(DesiredSystem::Invalid {
                        error: DecodeError::whole(why).with_source(&source),
                        source_name: source,
                    })
                }
            };
            if system.is_some() {
                Arc::make_mut(&mut update.state).system = system;
            }
        }
        Ok(update)
    }

    /// `system.toml` beside the manifest directory: the OS upgrade request.
    pub fn system_file(&self) -> Option<PathBuf> {
        self.dir.parent().map(|p| p.join("system.toml"))
    }
}

#[async_trait]
impl ControlPlane for LocalPlane {
    fn name(&self) -> &'static str {
        "local"
    }

    fn publishes_heartbeats(&self) -> bool {
        false
    }

    async fn check(&self) -> Result<String, ControlError> {
        let update = self.scan()?;
        Ok(format!(
            "{}: {} manifest(s)",
            self.dir.display(),
            update.records.len()
        ))
    }

    async fn run(
        self: Arc<Self>,
        io: PlaneIo,
        shutdown: CancellationToken,
    ) -> Result<(), ControlError> {
        // Status stays in the store (`fleet-agent status`); commands arrive over the CLI.
        let tx = io.desired;
        let setup = |message: String| ControlError::Setup {
            plane: "local",
            message,
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| setup(format!("cannot create {}: {e}", self.dir.display())))?;
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Err(e) = &res {
                tracing::warn!(error = %e, "manifest watcher error; rescanning");
            }
            let _ = ev_tx.send(());
        })
        .map_err(|e| setup(format!("cannot start inotify watcher: {e}")))?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| setup(format!("cannot watch {}: {e}", self.dir.display())))?;
        if let Some(parent) = self.system_file().as_deref().and_then(Path::parent) {
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %parent.display(), error = %e, "cannot watch for system.toml; rescanning every 300 s");
            }
        }
        tracing::info!(dir = %self.dir.display(), "watching deployment manifests");

        let mut last: Option<(Arc<DesiredState>, Vec<IgnoredInput>)> = None;
        loop {
            match self.scan() {
                Ok(update) => {
                    let seen = (update.state.clone(), update.ignored.clone());
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        log_update(&update);
                        tx.send_replace(update);
                    }
                }
                Err(e) => tracing::error!(error = %e, "manifest scan failed; keeping last state"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                ev = ev_rx.recv() => {
                    if ev.is_none() {
                        return Err(setup("watcher stopped".into()));
                    }
                    // Debounce: editors write a file in several steps.
                    tokio::time::sleep(DEBOUNCE).await;
                    while ev_rx.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(RESCAN_EVERY) => {}
            }
        }
    }
}

fn log_update(update: &DesiredUpdate) {
    match &update.state.system {
        Some(DesiredSystem::Valid(s)) => tracing::info!(upgrade = %s.id, "desired OS upgrade"),
        Some(DesiredSystem::Invalid { error, .. }) => {
            tracing::warn!(error = %error, "OS upgrade request rejected")
        }
        None => {}
    }
    for i in &update.ignored {
        tracing::warn!(input = %i.input, reason = %i.reason, "input ignored");
    }
    for (name, d) in &update.state.deployments {
        match d {
            DesiredDeployment::Valid(dep) => {
                tracing::info!(deployment = %name, revision = dep.revision, "desired")
            }
            DesiredDeployment::Invalid { error, .. } => {
                tracing::warn!(deployment = %name, error = %error, "manifest rejected")
            }
        }
    }
}

/// Is this name a manifest's (not an editor backup, temp or hidden file)?
fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".toml")
}

/// What reading one manifest path gave.
enum Read {
    /// The whole file, within the cap.
    Body(Vec<u8>),
    /// Over the cap: its real size and why; nothing was read.
    Refused(Refusal),
}

/// Why a manifest path could not be read.
enum Unusable {
    /// It is gone (deleted or renamed between listing and reading).
    Missing,
    /// Anything else (not a regular file, a symlink loop, permissions), said in words.
    Other(String),
}

/// Reads a manifest without ever blocking or reading past `cap`: only a regular file (after
/// following symlinks) is opened, non-blocking, and its size is checked before reading.
fn read_manifest(path: &Path, cap: usize) -> Result<Read, Unusable> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let kind = |ft: std::fs::FileType| {
        if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            // A symlink pointing nowhere is not "missing": the link is there.
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    Unusable::Other("a symbolic link to nothing".into())
                }
                _ => Unusable::Missing,
            }
        } else if e.raw_os_error() == Some(libc::ELOOP) {
            Unusable::Other("a symbolic link loop".into())
        } else {
            Unusable::Other(format!("cannot read: {e}"))
        }
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Unusable::Other(format!(
            "{}, not a manifest file",
            kind(meta.file_type())
        )));
    }
    // Non-blocking: a FIFO swapped in after the check cannot hang the scan.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(Unusable::Other(format!(
            "{}, not a manifest file",
            kind(meta.file_type())
        )));
    }
    let too_big = |len: u64| {
        Read::Refused(Refusal::new(
            len as usize,
            DecodeError::too_large(len as usize, cap),
        ))
    };
    if meta.len() > cap as u64 {
        return Ok(too_big(meta.len()));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() > cap {
        // It grew while being read: its size now.
        let len = std::fs::metadata(path).map_or(buf.len() as u64, |m| m.len());
        return Ok(too_big(len));
    }
    Ok(Read::Body(buf))
}

fn scan_dir(dir: &Path) -> Result<DesiredUpdate, ControlError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DesiredUpdate::default());
        }
        Err(e) => {
            return Err(ControlError::Setup {
                plane: "local",
                message: format!("cannot read {}: {e}", dir.display()),
            })
        }
    };
    let mut ignored = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        match name.to_str() {
            Some(n) if is_manifest_name(n) => files.push((n.to_owned(), entry.path())),
            Some(_) => {} // editor backups, notes, hidden files: not manifests
            None => ignored.push(IgnoredInput::new(
                format!("{}/{}", dir.display(), quote(&name.to_string_lossy())),
                "file name is not UTF-8",
            )),
        }
    }
    files.sort();

    let mut deployments: BTreeMap<String, DesiredDeployment> = BTreeMap::new();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut records = Vec::new();
    for (file_name, path) in files {
        let source = path.display().to_string();
        let stem = file_name.trim_end_matches(".toml").to_owned();
        let bytes = match read_manifest(&path, MAX_MANIFEST_BYTES) {
            Ok(Read::Body(b)) => b,
            Ok(Read::Refused(r)) => {
                let entry = super::refused_deployment(&source, &r);
                records.push(r.record(format!("deploy.{stem}"), &source));
                sources.insert(stem.clone(), source);
                deployments.insert(stem, entry);
                continue;
            }
            Err(Unusable::Missing) => continue,
            Err(Unusable::Other(why)) => {
                ignored.push(IgnoredInput::new(
                    format!("{}/{}", dir.display(), quote(&file_name)),
                    &why,
                ));
                // Known by name, so nothing is removed for it while it cannot be read.
                if fleet_contract::DeviceId::parse(&stem).is_ok() && !sources.contains_key(&stem) {
                    let error = DecodeError::whole(why).with_source(&source);
                    sources.insert(stem.clone(), source.clone());
                    deployments.insert(
                        stem,
                        DesiredDeployment::Invalid {
                            source_name: source,
                            error,
                        },
                    );
                }
                continue;
            }
        };
        let decoded = Deployment::from_toml_bytes(&bytes).map_err(|e| e.with_source(&source));
        let (name, entry, revision) = match decoded {
            Ok(d) => (
                d.name.clone(),
                DesiredDeployment::Valid(Box::new(d.clone())),
                Some(d.revision),
            ),
            Err(error) => (
                stem,
                DesiredDeployment::Invalid {
                    source_name: source.clone(),
                    error,
                },
                None,
            ),
        };
        if let Some(first) = sources.get(&name) {
            let error = DecodeError::whole(format!(
                "deployment name {} is already defined in {first}",
                quote(&name)
            ))
            .with_source(&source);
            // Keep the first definition; report the duplicate under its own file name.
            deployments.insert(
                format!("{name}@{file_name}"),
                DesiredDeployment::Invalid {
                    source_name: source,
                    error,
                },
            );
            continue;
        }
        sources.insert(name.clone(), source.clone());
        // A refused manifest is cached as its length and error, never its body.
        records.push(match &entry {
            DesiredDeployment::Invalid { error, .. } => {
                Refusal::new(bytes.len(), error.clone()).record(format!("deploy.{name}"), &source)
            }
            DesiredDeployment::Valid(_) => {
                DesiredRecord::new(format!("deploy.{name}"), source, revision, bytes)
            }
        });
        deployments.insert(name, entry);
    }
    Ok(DesiredUpdate {
        state: Arc::new(DesiredState {
            deployments,
            system: None,
            // The directory was read in full: a file that is gone was deleted.
            complete: true,
            ..DesiredState::default()
        }),
        records,
        ignored,
        ignored_overflow: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "apiVersion = \"fleet/v1\"\nname = \"NAME\"\nrevision = 1\n[container]\nimage = \"busybox\"\n";

    #[test]
    fn scans_valid_invalid_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), M.replace("NAME", "alpha")).unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "apiVersion = \"fleet/v1\"\nname = 5\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".a.toml.swp"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("c.toml"), M.replace("NAME", "alpha")).unwrap();
        let u = scan_dir(dir.path()).unwrap();
        let names: Vec<_> = u.state.deployments.keys().cloned().collect();
        assert_eq!(names, ["alpha", "alpha@c.toml", "b"]);
        assert!(matches!(
            u.state.deployments["alpha"],
            DesiredDeployment::Valid(_)
        ));
        match &u.state.deployments["b"] {
            DesiredDeployment::Invalid { error, .. } => {
                assert_eq!(
                    (error.line, error.field.as_deref()),
                    (Some(2), Some("name")),
                    "{error}"
                );
                assert!(error.to_string().contains("b.toml: line 2"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        match &u.state.deployments["alpha@c.toml"] {
            DesiredDeployment::Invalid { error, .. } => {
                assert!(error.message.contains("already defined in"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            u.records.len(),
            2,
            "alpha and b are cached; the duplicate is not"
        );
    }

    #[test]
    fn missing_dir_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let u = scan_dir(&dir.path().join("nope")).unwrap();
        assert!(u.state.deployments.is_empty());
    }

    #[test]
    fn binary_garbage_is_an_invalid_deployment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.toml"), [0xff, 0xfe, 0x00, 0x01]).unwrap();
        let u = scan_dir(dir.path()).unwrap();
        assert!(matches!(
            u.state.deployments["g"],
            DesiredDeployment::Invalid { .. }
        ));
    }

    /// Odd entries in the directory each appear as an ignored input with the reason; none
    /// blocks the scan (a FIFO is never opened for a blocking read), and a deployment whose
    /// file cannot be read stays known (Invalid), so nothing is removed for it.
    #[test]
    fn odd_files_are_ignored_inputs_with_their_reason() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("good.toml"), M.replace("NAME", "good")).unwrap();
        std::fs::write(
            d.join(std::ffi::OsStr::from_bytes(b"bad-\xff.toml")),
            M.replace("NAME", "x"),
        )
        .unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(d.join("pipe.toml"))
            .status()
            .unwrap();
        assert!(made.success());
        std::os::unix::fs::symlink("loop-b.toml", d.join("loop-a.toml")).unwrap();
        std::os::unix::fs::symlink("loop-a.toml", d.join("loop-b.toml")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("dangling.toml")).unwrap();
        std::fs::create_dir(d.join("x.toml")).unwrap();

        let u = scan_dir(d).unwrap();
        let reason = |needle: &str| {
            u.ignored
                .iter()
                .find(|i| i.input.contains(needle))
                .map(|i| i.reason.clone())
                .unwrap_or_else(|| panic!("{needle} not among {:#?}", u.ignored))
        };
        assert!(reason("bad-").contains("not UTF-8"));
        assert!(reason("pipe.toml").contains("a FIFO"));
        assert!(reason("loop-a.toml").contains("symbolic link loop"));
        assert!(reason("dangling.toml").contains("link to nothing"));
        assert!(reason("x.toml").contains("a directory"));
        assert!(matches!(
            u.state.deployments["good"],
            DesiredDeployment::Valid(_)
        ));
        for name in ["pipe", "x", "dangling"] {
            assert!(
                matches!(u.state.deployments[name], DesiredDeployment::Invalid { .. }),
                "{name}"
            );
        }
    }

    /// A file over the cap is refused with its real size, not the read cap, and cached as
    /// (key, length, reason) without its body.
    #[test]
    fn an_oversized_file_is_refused_with_its_real_size() {
        let dir = tempfile::tempdir().unwrap();
        let size = MAX_MANIFEST_BYTES + 12_345;
        std::fs::write(dir.path().join("big.toml"), vec![b'#'; size]).unwrap();
        let u = scan_dir(dir.path()).unwrap();
        match &u.state.deployments["big"] {
            DesiredDeployment::Invalid { error, .. } => {
                assert!(
                    error.to_string().contains(&format!("{size} bytes")),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(u.records.len(), 1);
        assert_eq!(u.records[0].length, size as u64);
        assert!(u.records[0].body.is_empty());
        assert!(u.records[0].refused.is_some());
    }
}
