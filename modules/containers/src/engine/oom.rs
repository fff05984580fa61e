//! Exits by the kernel's OOM killer. A container past its memory limit is killed with
//! SIGKILL: exit code 137, as from any `kill -9`; only the cgroup knows better, and it is
//! gone once the container exited. conmon watches it (cgroup v2 `memory.events`, v1 an
//! eventfd on `memory.oom_control`) and on a kill creates a file `oom` in its working
//! directory, which is that of the podman that started it. podman 4.3.1 looks for that file
//! in the container's bundle directory instead, so its `.State.OOMKilled` stays false
//! (measured on the build machine: conmon 2.1.6, cgroup v1; the file appeared in the
//! working directory of `podman start`, and `.State.OOMKilled` turned true only when podman
//! ran from the bundle directory).
//!
//! So the podman that starts a main container runs in a directory of the engine's own per
//! container, `<run_dir>/containers/conmon/<container>`, emptied before every start; an
//! `oom` file there after an exit means the kernel killed it. Without a marker, a SIGKILL
//! exit is looked up in `podman inspect` (`.State.OOMKilled`, right on podman 5).

use std::path::PathBuf;

use super::Engine;

/// [`fleet_contract::DeploymentStatus::exit_reason`] of a container the kernel killed for
/// its memory limit.
pub(super) const OOM_KILLED: &str = "oom-killed";
/// Exit code of a process killed with SIGKILL.
const SIGKILL_EXIT: i32 = 128 + 9;

impl Engine {
    fn conmon_dir_of(&self, container: &str) -> PathBuf {
        self.ctx
            .paths
            .run_dir
            .join(crate::NAME)
            .join("conmon")
            .join(container)
    }

    /// The working directory for the podman that starts `container`, without a marker of
    /// an earlier run; `None` (the agent's own, no OOM marker) when it cannot be made.
    pub(super) fn fresh_conmon_dir(&self, container: &str) -> Option<PathBuf> {
        let dir = self.conmon_dir_of(container);
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            match std::fs::remove_file(dir.join("oom")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        });
        match made {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e,
                    "no conmon directory: an OOM kill is seen only by podman inspect");
                None
            }
        }
    }

    /// Drops the directory of a removed container.
    pub(super) fn forget_conmon_dir(&self, container: &str) {
        let _ = std::fs::remove_dir_all(self.conmon_dir_of(container));
    }

    /// Why `container` stopped, beyond `exit_code`: [`OOM_KILLED`] or nothing.
    pub(super) async fn exit_reason(&self, container: &str, exit_code: i32) -> Option<String> {
        let marker = self.conmon_dir_of(container).join("oom").exists();
        let killed = marker
            || (exit_code == SIGKILL_EXIT
                && self
                    .rt
                    .podman
                    .oom_killed(container)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::debug!(%container, error = %e, "cannot inspect the exit");
                        false
                    }));
        killed.then(|| OOM_KILLED.to_owned())
    }
}

/// The exit as a status message says it: `code 137 (OOM-killed: over its 32 MiB memory
/// limit)`.
pub(super) fn exit_text(exit_code: i32, reason: Option<&str>, memory_mib: Option<u32>) -> String {
    match (reason, memory_mib) {
        (Some(OOM_KILLED), Some(mib)) => {
            format!("code {exit_code} (oom-killed: over its {mib} MiB memory limit)")
        }
        (Some(r), _) => format!("code {exit_code} ({r})"),
        (None, _) => format!("code {exit_code}"),
    }
}
