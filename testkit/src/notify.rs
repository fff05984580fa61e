//! A `NOTIFY_SOCKET` stand-in: a Unix datagram socket that records sd_notify messages.

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{Error, Result};

/// A bound `UnixDatagram` in its own temp dir, to pass as `NOTIFY_SOCKET` to the agent.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Lines of a datagram after the one `wait_for` stopped at, served before new datagrams.
    pending: Mutex<VecDeque<String>>,
    _dir: TempDir,
}

impl NotifySocket {
    /// Binds a fresh datagram socket at `<tempdir>/notify.sock`.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-notify-")
            .tempdir()
            .map_err(|e| Error::io("creating NotifySocket dir", e))?;
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        Ok(NotifySocket {
            socket,
            path,
            pending: Mutex::new(VecDeque::new()),
            _dir: dir,
        })
    }

    /// The socket path; set it as `NOTIFY_SOCKET` in the child's environment.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn pending(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receives one datagram, or `None` if none arrives within `timeout`.
    ///
    /// Lines left over from a datagram that [`wait_for`](Self::wait_for) stopped inside
    /// come back first, joined with `\n`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<String> {
        {
            let mut pending = self.pending();
            if !pending.is_empty() {
                let lines: Vec<String> = pending.drain(..).collect();
                return Some(lines.join("\n"));
            }
        }
        // A zero timeout would mean "block forever" to set_read_timeout.
        let timeout = timeout.max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Collects lines (each datagram split on `\n`) until one equals `needle`.
    ///
    /// Returns every line received so far, `needle` last, so callers can assert ordering.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!("notify line {needle:?} (got {lines:?})"),
                    timeout,
                });
            }
            let Some(msg) = self.recv_timeout(left) else {
                continue;
            };
            let mut rest = msg.split('\n').filter(|l| !l.is_empty());
            for line in rest.by_ref() {
                lines.push(line.to_owned());
                if line == needle {
                    self.pending().extend(rest.map(str::to_owned));
                    return Ok(lines);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_collects_lines_in_order() {
        let sock = NotifySocket::new().unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(b"STATUS=starting\nMAINPID=42", sock.path())
            .unwrap();
        tx.send_to(b"READY=1\nSTATUS=running", sock.path()).unwrap();
        let lines = sock.wait_for("READY=1", Duration::from_secs(5)).unwrap();
        assert_eq!(lines, ["STATUS=starting", "MAINPID=42", "READY=1"]);
        assert_eq!(
            sock.recv_timeout(Duration::from_secs(1)).as_deref(),
            Some("STATUS=running")
        );
    }

    #[test]
    fn wait_for_times_out_with_what_it_saw() {
        let sock = NotifySocket::new().unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(b"STATUS=hello", sock.path()).unwrap();
        let err = sock
            .wait_for("READY=1", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("READY=1") && err.contains("STATUS=hello"),
            "{err}"
        );
        assert!(sock.recv_timeout(Duration::ZERO).is_none());
    }

    #[test]
    fn socket_dir_removed_on_drop() {
        let sock = NotifySocket::new().unwrap();
        let path = sock.path().to_path_buf();
        assert!(path.exists());
        drop(sock);
        assert!(!path.exists());
    }
}
