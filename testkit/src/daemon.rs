//! The process plumbing shared by every daemon type: spawn with output to a log file,
//! poll readiness while watching for an early exit, retry on a lost port race, kill on drop.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{tail, Error, Result};
use crate::wait::{free_port, POLL_INTERVAL};

/// How long a daemon gets to become ready (generous: 2-core CI runs tests in parallel).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried before giving up when each one is taken before the daemon binds it.
const PORT_ATTEMPTS: usize = 5;
/// Lines of log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// One long-running child process whose stdout+stderr go to `log`.
#[derive(Debug)]
pub(crate) struct Daemon {
    binary: &'static str,
    log: PathBuf,
    /// Length of the log when the current child was spawned.
    log_offset: u64,
    child: Option<Child>,
}

/// Outcome of one readiness check.
pub(crate) enum Ready {
    Yes,
    NotYet,
}

impl Daemon {
    pub(crate) fn new(binary: &'static str, log: PathBuf) -> Self {
        Daemon {
            binary,
            log,
            log_offset: 0,
            child: None,
        }
    }

    /// The tail of the daemon's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        tail(&String::from_utf8_lossy(&text), LOG_TAIL_LINES)
    }

    /// Log text written by the current child (lossy), for readiness checks that look for a line.
    pub(crate) fn log_text(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(self.log_offset)
            .unwrap_or(usize::MAX)
            .min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    fn spawn(&mut self, args: &[OsString]) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        self.log_offset = log
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", self.log.display()), e))?
            .len();
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicating log handle", e))?;
        let child = Command::new(self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: self.binary.to_owned(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// `Err(Exited)` if the child has exited (or was never started).
    fn check_alive(&mut self) -> Result<()> {
        let status = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(status))) => status.to_string(),
            Some(Err(e)) => format!("wait failed: {e}"),
            None => "not running".to_owned(),
        };
        self.child = None;
        Err(Error::Exited {
            binary: self.binary.to_owned(),
            status,
            log_tail: self.log_tail(),
        })
    }

    /// Whether the process is currently running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Spawns with `args` and polls `ready` until it says yes, the child exits, or the deadline.
    fn start_once(
        &mut self,
        args: &[OsString],
        what: &str,
        ready: &mut dyn FnMut(&Daemon) -> Ready,
    ) -> Result<()> {
        self.spawn(args)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            if let Ready::Yes = ready(self) {
                // The check may have talked to a stranger on our port in the instant
                // before our child failed to bind; make sure ours is still up.
                return self.check_alive();
            }
            if Instant::now() >= deadline {
                let err = Error::NotReady {
                    binary: self.binary.to_owned(),
                    what: what.to_owned(),
                    timeout: READY_TIMEOUT,
                    log_tail: self.log_tail(),
                };
                self.stop();
                return Err(err);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Starts on a fresh free port, retrying up to 5 times when the port is lost to a race.
    ///
    /// Returns the port the daemon listens on.
    pub(crate) fn start_on_free_port(
        &mut self,
        what: &str,
        mut args_for: impl FnMut(u16) -> Result<Vec<OsString>>,
        mut ready: impl FnMut(&Daemon, u16) -> Ready,
    ) -> Result<u16> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let args = args_for(port)?;
            match self.start_once(&args, what, &mut |d| ready(d, port)) {
                Ok(()) => return Ok(port),
                Err(e) if is_addr_in_use(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Timeout {
            what: format!("a free port for {}", self.binary),
            timeout: READY_TIMEOUT,
        }))
    }

    /// Starts again on the same `port`, retrying while the old socket is still being released.
    pub(crate) fn start_on_port(
        &mut self,
        port: u16,
        what: &str,
        args: &[OsString],
        mut ready: impl FnMut(&Daemon, u16) -> Ready,
    ) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.start_once(args, what, &mut |d| ready(d, port)) {
                Err(e) if is_addr_in_use(&e) && Instant::now() < deadline => {
                    std::thread::sleep(POLL_INTERVAL);
                }
                other => return other,
            }
        }
    }

    /// Kills the child (SIGKILL, like a crash) and reaps it. A no-op when not running.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_addr_in_use(e: &Error) -> bool {
    match e {
        Error::Exited { log_tail, .. } => {
            log_tail.to_lowercase().contains("address already in use")
        }
        _ => false,
    }
}

/// True once a TCP connection to `127.0.0.1:port` succeeds.
pub(crate) fn tcp_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exit_names_binary_and_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::new("sh", dir.path().join("log"));
        let args: Vec<OsString> = vec!["-c".into(), "echo boom-on-stderr >&2; exit 3".into()];
        let err = d
            .start_once(&args, "never", &mut |_| Ready::NotYet)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sh exited early"), "{err}");
        assert!(err.contains("boom-on-stderr"), "{err}");
    }

    #[test]
    fn address_in_use_exit_is_retried_on_a_new_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::new("sh", dir.path().join("log"));
        let mut tries = 0;
        let err = d
            .start_on_free_port(
                "never",
                |port| {
                    tries += 1;
                    Ok(vec![
                        "-c".into(),
                        format!("echo 'bind {port}: Address already in use' >&2; exit 1").into(),
                    ])
                },
                |_, _| Ready::NotYet,
            )
            .unwrap_err();
        assert_eq!(tries, PORT_ATTEMPTS);
        assert!(is_addr_in_use(&err), "{err}");
    }

    #[test]
    fn unknown_binary_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::new("fleet-no-such-daemon", dir.path().join("log"));
        let err = d
            .start_once(&[], "never", &mut |_| Ready::NotYet)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot spawn fleet-no-such-daemon"), "{err}");
    }

    #[test]
    fn drop_kills_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut d = Daemon::new("sh", dir.path().join("log"));
        let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
        d.start_once(&["-c".into(), script.into()], "pid file", &mut |_| {
            // The shell creates the file before it writes the pid: wait for the full line.
            if std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n')) {
                Ready::Yes
            } else {
                Ready::NotYet
            }
        })
        .unwrap();
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        assert!(proc_dir.exists());
        drop(d);
        assert!(!proc_dir.exists(), "child {} survived drop", pid.trim());
    }
}
