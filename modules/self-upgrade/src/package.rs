//! Cutover to a version installed by the Debian package (`fleet-agent package-cutover`, run
//! by the new package's postinst as `/usr/lib/fleet-agent/versions/<B>/fleet-agent`).
//!
//! dpkg owns only `versions/<v>/fleet-agent`; the links are the layout's. So an upgrade of
//! the package from A to B goes through the same probation as a self-upgrade:
//!
//! 1. A's binary survives dpkg deleting A's files: the preinst hard-links it to
//!    `versions/.pkg-keep-<A>`, and [`package_cutover`] moves it back to
//!    `versions/<A>/fleet-agent` (now a layout-owned file), so the guard, which runs from
//!    `confirmed`, still exists.
//! 2. With the service running ([`Mode::Probation`]): B's self-test must pass (else
//!    nothing moves, A stays current and the outcome is `Reverted`), then the probation
//!    record (from the confirmed version to B) is written and the current link swapped;
//!    the postinst restarts the service, and the guard and B's probation confirm or revert
//!    exactly as after a self-upgrade.
//! 3. Without a running service ([`Mode::Direct`]: a fresh install, a chroot, a stopped
//!    service) both links simply move to B, with no probation.

use std::fs;
use std::path::{Path, PathBuf};

use crate::guard::{new_probation, Now};
use crate::layout::{swap_link, sync_dir, Layout};
use crate::Error;

/// Prefix of the hard links the preinst keeps in `versions/`.
pub const KEEP_PREFIX: &str = ".pkg-keep-";

/// How the new version takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The service runs and will be restarted: self-test, probation record, link swap.
    Probation,
    /// Nothing runs: both links move at once.
    Direct,
}

/// One cutover request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The version the package installed (`versions/<to>/fleet-agent` must exist).
    pub to: &'a str,
    /// The package version it replaces (the preinst's old-version), if any.
    pub from: Option<&'a str>,
    /// See [`Mode`].
    pub mode: Mode,
    /// Probation length, seconds.
    pub deadline_secs: u64,
    /// Start attempts allowed during probation.
    pub max_attempts: u32,
}

/// What [`package_cutover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Both links point at `to`; no probation.
    Direct {
        /// The version current before, if any.
        from: Option<String>,
        /// The new version.
        to: String,
    },
    /// The probation record is written and the current link points at `to`; restart the
    /// service now.
    Probation {
        /// The confirmed version the guard reverts to.
        from: String,
        /// The version on probation.
        to: String,
    },
    /// `to` is already current and confirmed (a reinstall): nothing changed.
    Unchanged(String),
}

/// Moves the preinst's `versions/.pkg-keep-<v>` hard links back to `versions/<v>/fleet-agent`
/// (or drops them when that file exists). Returns the versions restored.
pub fn restore_kept(layout: &Layout) -> Result<Vec<String>, Error> {
    let mut restored = Vec::new();
    let Ok(rd) = fs::read_dir(&layout.versions) else {
        return Ok(restored);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(v) = name.strip_prefix(KEEP_PREFIX) else {
            continue;
        };
        if !is_version_dir_name(v) {
            continue;
        }
        let bin = layout.binary(v);
        if bin.exists() {
            fs::remove_file(e.path()).map_err(Error::io(e.path()))?;
        } else {
            let dir = layout.version_dir(v);
            fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            fs::rename(e.path(), &bin).map_err(Error::io(&bin))?;
            sync_dir(&dir)?;
            restored.push(v.to_owned());
        }
    }
    sync_dir(&layout.versions)?;
    Ok(restored)
}

/// Cuts over to the packaged version `req.to`. `self_test` runs the new binary's
/// `version --json` and `self-test` (only in [`Mode::Probation`]); when it fails nothing
/// moves, the outcome `Reverted` is recorded and the error returned.
pub fn package_cutover(
    layout: &Layout,
    req: &Request<'_>,
    now: &Now,
    self_test: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<Done, Error> {
    let to = req.to;
    for (field, v) in [("to", Some(to)), ("from", req.from)] {
        if let Some(v) = v.filter(|v| !is_version_dir_name(v)) {
            return Err(Error::BadRequest {
                field,
                message: format!("{v:?} is not a version directory name"),
            });
        }
    }
    let to_bin = layout.binary(to);
    if !to_bin.is_file() {
        return Err(Error::Layout(format!(
            "{} does not exist; is the package unpacked?",
            to_bin.display()
        )));
    }
    if let Some(parent) = layout.current.parent() {
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    restore_kept(layout)?;
    let current = layout.current_version();
    let confirmed = layout.confirmed_version();
    if current.as_deref() == Some(to) && confirmed.as_deref() == Some(to) {
        return Ok(Done::Unchanged(to.to_owned()));
    }
    // The guard reverts to `confirmed`; it must be another version whose binary exists.
    // A plain-file or missing layout falls back to the package version it replaces.
    let fallback = confirmed
        .clone()
        .filter(|c| c != to && layout.binary(c).is_file())
        .or_else(|| {
            req.from
                .filter(|a| *a != to && layout.binary(a).is_file())
                .map(ToOwned::to_owned)
        });
    match (req.mode, fallback) {
        (Mode::Probation, Some(from)) => {
            // `confirmed` names the version the guard falls back to, whatever the self-test says.
            if confirmed.as_deref() != Some(from.as_str()) {
                swap_link(&layout.confirmed, &Path::new("versions").join(&from))?;
            }
            if let Err(e) = self_test(&to_bin) {
                layout.revert(&from, to, &e.to_string(), now.unix)?;
                return Err(e);
            }
            if current.as_deref() != Some(from.as_str()) {
                swap_link(&layout.current, &layout.binary(&from))?;
            }
            layout.clear_outcome()?;
            // Record first, then the link (as a self-upgrade cutover): a crash in between
            // leaves a record the guard resolves by reverting, a no-op on the link.
            let p = new_probation(&from, to, req.deadline_secs, req.max_attempts, now);
            layout.write_probation(&p)?;
            swap_link(&layout.current, &to_bin)?;
            Ok(Done::Probation {
                from,
                to: to.to_owned(),
            })
        }
        _ => {
            layout.clear_probation()?;
            layout.clear_outcome()?;
            swap_link(&layout.current, &to_bin)?;
            swap_link(&layout.confirmed, &Path::new("versions").join(to))?;
            Ok(Done::Direct {
                from: current,
                to: to.to_owned(),
            })
        }
    }
}

/// A name fit for `versions/<v>/`: not empty, no `/`, not hidden (`.staging-*`, `.pkg-keep-*`).
fn is_version_dir_name(v: &str) -> bool {
    !(v.is_empty() || v.contains('/') || v.starts_with('.'))
}

/// `versions/.pkg-keep-<v>`, where the preinst hard-links version `v`'s binary.
pub fn keep_path(layout: &Layout, v: &str) -> PathBuf {
    layout.versions.join(format!("{KEEP_PREFIX}{v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{self, GuardOutcome};
    use crate::{Config, Outcome};

    fn now(uptime: u64) -> Now {
        Now {
            unix: 1_000 + uptime,
            boot_id: "boot-1".into(),
            uptime,
        }
    }

    fn layout_in(dir: &Path) -> Layout {
        let cfg = Config {
            install_root: dir.join("lib/fleet-agent"),
            current_link: dir.join("bin/fleet-agent"),
            ..Config::default()
        };
        Layout::new(&cfg, &dir.join("state"))
    }

    /// What dpkg does: unpack `versions/<v>/fleet-agent`.
    fn unpack(l: &Layout, v: &str) {
        fs::create_dir_all(l.version_dir(v)).unwrap();
        fs::write(l.binary(v), format!("binary {v}")).unwrap();
    }

    /// What dpkg does when B replaces A: the preinst keeps A, then A's files go.
    fn upgrade_files(l: &Layout, a: &str, b: &str) {
        fs::hard_link(l.binary(a), keep_path(l, a)).unwrap();
        unpack(l, b);
        fs::remove_file(l.binary(a)).unwrap();
        fs::remove_dir(l.version_dir(a)).unwrap();
    }

    fn req<'a>(to: &'a str, from: Option<&'a str>, mode: Mode) -> Request<'a> {
        Request {
            to,
            from,
            mode,
            deadline_secs: 600,
            max_attempts: 3,
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    fn fresh_install(l: &Layout, v: &str) {
        unpack(l, v);
        let done = package_cutover(l, &req(v, None, Mode::Direct), &now(1), |_| {
            panic!("a direct cutover runs no self-test")
        })
        .unwrap();
        assert_eq!(
            done,
            Done::Direct {
                from: None,
                to: v.into()
            }
        );
    }

    #[test]
    fn fresh_install_makes_both_links_and_a_reinstall_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        fresh_install(&l, "1.0.0");
        assert_eq!(l.check().unwrap(), ("1.0.0".to_owned(), "1.0.0".to_owned()));
        assert_eq!(read(&l.current), "binary 1.0.0");
        assert_eq!(l.read_probation().unwrap(), None);
        let again = package_cutover(&l, &req("1.0.0", None, Mode::Probation), &now(2), |_| {
            panic!("nothing to test")
        })
        .unwrap();
        assert_eq!(again, Done::Unchanged("1.0.0".into()));
    }

    #[test]
    fn upgrade_with_the_service_running_goes_through_probation_and_the_guard() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        fresh_install(&l, "1.0.0");
        upgrade_files(&l, "1.0.0", "2.0.0");
        let mut tested = None;
        let done = package_cutover(
            &l,
            &req("2.0.0", Some("1.0.0"), Mode::Probation),
            &now(10),
            |bin| {
                tested = Some(bin.to_owned());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            done,
            Done::Probation {
                from: "1.0.0".into(),
                to: "2.0.0".into()
            }
        );
        assert_eq!(tested, Some(l.binary("2.0.0")));
        // A is back as a layout-owned file, still confirmed: the guard can run from it.
        assert_eq!(read(&l.binary("1.0.0")), "binary 1.0.0");
        assert!(!keep_path(&l, "1.0.0").exists());
        assert_eq!(l.check().unwrap(), ("1.0.0".to_owned(), "2.0.0".to_owned()));
        let p = l.read_probation().unwrap().unwrap();
        assert_eq!((p.from.as_str(), p.to.as_str()), ("1.0.0", "2.0.0"));
        assert_eq!(p.deadline_uptime_secs, 610);
        // The restart: the guard counts the attempt, B confirms itself.
        assert!(matches!(
            guard::run(&l, &now(11)).unwrap(),
            GuardOutcome::Attempt { n: 1, .. }
        ));
        let p = l.read_probation().unwrap().unwrap();
        l.confirm(&p, 1_020).unwrap();
        assert_eq!(l.check().unwrap(), ("2.0.0".to_owned(), "2.0.0".to_owned()));
    }

    #[test]
    fn a_new_version_that_never_checks_in_is_reverted_to_the_old_package() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        fresh_install(&l, "1.0.0");
        upgrade_files(&l, "1.0.0", "2.0.0");
        package_cutover(
            &l,
            &req("2.0.0", Some("1.0.0"), Mode::Probation),
            &now(10),
            |_| Ok(()),
        )
        .unwrap();
        assert!(matches!(
            guard::run(&l, &now(700)).unwrap(),
            GuardOutcome::Reverted { .. }
        ));
        assert_eq!(read(&l.current), "binary 1.0.0");
        assert!(matches!(
            l.read_outcome().unwrap(),
            Some(Outcome::Reverted { to, .. }) if to == "2.0.0"
        ));
    }

    #[test]
    fn a_failing_self_test_leaves_the_old_version_current() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        fresh_install(&l, "1.0.0");
        upgrade_files(&l, "1.0.0", "2.0.0");
        let err = package_cutover(
            &l,
            &req("2.0.0", Some("1.0.0"), Mode::Probation),
            &now(10),
            |_| {
                Err(Error::SelfTest {
                    version: "2.0.0".into(),
                    detail: "FAIL store".into(),
                })
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("FAIL store"), "{err}");
        assert_eq!(l.check().unwrap(), ("1.0.0".to_owned(), "1.0.0".to_owned()));
        assert_eq!(read(&l.current), "binary 1.0.0");
        assert_eq!(l.read_probation().unwrap(), None);
        assert!(matches!(
            l.read_outcome().unwrap(),
            Some(Outcome::Reverted { from, to, reason, .. })
                if from == "1.0.0" && to == "2.0.0" && reason.contains("FAIL store")
        ));
        // The guard finds nothing to do: A keeps running.
        assert_eq!(guard::run(&l, &now(11)).unwrap(), GuardOutcome::NoProbation);
    }

    #[test]
    fn without_a_running_service_both_links_move_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        fresh_install(&l, "1.0.0");
        upgrade_files(&l, "1.0.0", "2.0.0");
        let done = package_cutover(
            &l,
            &req("2.0.0", Some("1.0.0"), Mode::Direct),
            &now(10),
            |_| panic!("a direct cutover runs no self-test"),
        )
        .unwrap();
        assert_eq!(
            done,
            Done::Direct {
                from: Some("1.0.0".into()),
                to: "2.0.0".into()
            }
        );
        assert_eq!(l.check().unwrap(), ("2.0.0".to_owned(), "2.0.0".to_owned()));
        assert_eq!(l.read_probation().unwrap(), None);
    }

    #[test]
    fn a_missing_new_binary_is_an_error_that_moves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        fresh_install(&l, "1.0.0");
        let err = package_cutover(
            &l,
            &req("3.0.0", Some("1.0.0"), Mode::Probation),
            &now(10),
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("versions/3.0.0/fleet-agent"),
            "{err}"
        );
        assert_eq!(l.check().unwrap(), ("1.0.0".to_owned(), "1.0.0".to_owned()));
    }
}
