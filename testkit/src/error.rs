//! The one error type of the testkit.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while setting up or driving a test daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating a temp dir, socket or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A binary could not be started at all (not installed, not executable).
    #[error("cannot spawn {binary}: {source}")]
    Spawn {
        /// The binary that failed to start.
        binary: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A daemon exited before it became ready.
    #[error("{binary} exited early ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The daemon binary.
        binary: String,
        /// Its exit status.
        status: String,
        /// The last lines of its stderr / log file.
        log_tail: String,
    },
    /// A daemon did not become ready before its deadline.
    #[error("{binary} not ready after {timeout:?}: {what}; log tail:\n{log_tail}")]
    NotReady {
        /// The daemon binary.
        binary: String,
        /// What readiness check was waited for.
        what: String,
        /// The deadline that passed.
        timeout: Duration,
        /// The last lines of its stderr / log file.
        log_tail: String,
    },
    /// A one-shot command (podman, tar) exited with failure.
    #[error("`{command}` failed ({status}); stderr tail:\n{stderr_tail}")]
    Command {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// [`crate::wait_until`] ran out of time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// A one-shot command did not exit within its limit and was killed.
    #[error("`{command}` still running after {limit:?}, killed; output tail:\n{output_tail}")]
    Hung {
        /// The command line that was run.
        command: String,
        /// The limit that passed.
        limit: Duration,
        /// The last lines of what it printed.
        output_tail: String,
    },
    /// A file needed by a daemon or image build is missing.
    #[error("missing {0}")]
    Missing(PathBuf),
}

/// Shorthand for results of testkit calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The last `lines` lines of `text`, for error messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
