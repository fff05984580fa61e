//! The exit watcher: a pidfd on the main process of every running managed container wakes
//! the loop when that process ends, without a resident child process.
//!
//! Each pass hands [`Exits::watch`] the containers `podman ps` lists as running (or paused)
//! with their host pid. A new one gets a pidfd (`pidfd_open(2)`, Linux 5.3), polled by tokio
//! like a socket: it turns readable when the process exits, whoever ended it (its own exit,
//! `kill -9` from the host, `podman stop`/`kill`/`rm -f`, `podman system migrate`, a cgroup
//! kill), and the loop runs a pass, which sees the container exited or gone. A pid listed
//! by the pass but already gone when the pidfd is opened triggers a pass at once. Pids are
//! handed out cyclically, so a pid freed between the listing and `pidfd_open` is given to
//! another process only after the whole pid space wrapped: the pidfd is the container's.
//!
//! What no process exit shows (a stopped container removed by hand, a paused one, a
//! container renamed) is found by the periodic resync (`resync_secs`).

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// The pidfds of the containers being watched, by container id.
pub(super) struct Exits {
    trigger: mpsc::UnboundedSender<()>,
    watched: Mutex<HashMap<String, Watch>>,
    /// Set once the kernel refused pidfds (logged once; the resync is all that is left).
    unsupported: AtomicBool,
}

struct Watch {
    pid: i64,
    /// `None`: the pid could not be watched (gone, or an error logged); not tried again
    /// until the container's pid changes.
    task: Option<AbortHandle>,
}

impl Exits {
    /// A watcher that sends on `trigger` when a watched process exits.
    pub(super) fn new(trigger: mpsc::UnboundedSender<()>) -> Self {
        Self {
            trigger,
            watched: Mutex::new(HashMap::new()),
            unsupported: AtomicBool::new(false),
        }
    }

    /// Watches exactly `running` (container id, host pid): opens a pidfd for each one not
    /// watched yet (or whose pid changed: restarted), drops the others.
    pub(super) fn watch<'a>(&self, running: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let mut keep: HashMap<String, Watch> = HashMap::new();
        for (id, pid) in running {
            if let Some(w) = watched.remove(id).filter(|w| w.pid == pid) {
                keep.insert(id.to_owned(), w);
                continue;
            }
            let task = self.spawn(id, pid);
            keep.insert(id.to_owned(), Watch { pid, task });
        }
        for (_, w) in watched.drain() {
            w.abort();
        }
        *watched = keep;
    }

    /// Number of container processes watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched.values().filter(|w| w.task.is_some()).count()
    }

    /// A task that triggers a pass when `pid` exits; `None` when nothing is to be watched
    /// (already gone: a pass is triggered now; no pidfd support: logged once).
    fn spawn(&self, id: &str, pid: i64) -> Option<AbortHandle> {
        if self.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        let fd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                tracing::debug!(container = %id, pid, "exited before it could be watched");
                let _ = self.trigger.send(());
                return None;
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOSYS) {
                    self.unsupported.store(true, Ordering::Relaxed);
                    tracing::warn!(error = %e, "this kernel has no pidfd_open (Linux < 5.3): \
                        container exits are found by the periodic resync only");
                } else {
                    tracing::warn!(container = %id, pid, error = %e, "cannot watch the container's process");
                }
                return None;
            }
        };
        let fd = match poll_readable(fd) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(container = %id, pid, error = %e, "cannot poll the container's pidfd");
                return None;
            }
        };
        let trigger = self.trigger.clone();
        let id = id.to_owned();
        let task = tokio::spawn(async move {
            // Readable once the process has exited; an error means the same for us: look.
            let _ = fd.readable().await;
            tracing::debug!(container = %id, pid, "container process exited");
            let _ = trigger.send(());
        });
        Some(task.abort_handle())
    }
}

impl Drop for Exits {
    fn drop(&mut self) {
        let watched = self.watched.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, w) in watched.drain() {
            w.abort();
        }
    }
}

impl Watch {
    fn abort(self) {
        if let Some(t) = self.task {
            t.abort();
        }
    }
}

/// `pidfd_open(pid, 0)`: a file descriptor referring to process `pid`, close-on-exec.
#[allow(unsafe_code)]
fn pidfd_open(pid: i64) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open reads no memory of ours; it returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fd` registered with tokio's reactor for readability.
#[allow(unsafe_code)]
fn poll_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, refers to the same file for its whole life and returns
    // the same number from every `as_raw_fd`; the `AsyncFd` owns it from here on.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_watched_process_that_exits_triggers_and_a_gone_one_triggers_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exits = Exits::new(tx);
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = i64::from(child.id());
        exits.watch([("c1", pid)]);
        assert_eq!(exits.len(), 1);
        assert!(rx.try_recv().is_err(), "no trigger while it runs");
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a trigger when the process exits")
            .unwrap();
        child.wait().unwrap();
        // Reaped: no such process any more, so watching it triggers at once.
        exits.watch([("c2", pid)]);
        assert!(rx.try_recv().is_ok());
        assert_eq!(exits.len(), 0, "c1 dropped, c2 not watchable");
        // Listed again with the same pid: not retried, no second trigger.
        exits.watch([("c2", pid)]);
        assert!(rx.try_recv().is_err());
        exits.watch([]);
        assert_eq!(exits.len(), 0);
    }
}
