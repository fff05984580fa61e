//! Why an init container failed its deployment; the message is the deployment's status.

/// An init container did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// It exited non-zero.
    #[error("init container {name:?} failed with exit {code}; last log lines: {logs}")]
    Exit {
        /// Init container name.
        name: String,
        /// Its exit code.
        code: i32,
        /// Its last log lines, joined with " | ".
        logs: String,
    },
    /// It ran past its timeout and was killed.
    #[error(
        "init container {name:?} timed out after {secs} s and was killed; last log lines: {logs}"
    )]
    Timeout {
        /// Init container name.
        name: String,
        /// The timeout.
        secs: u32,
        /// Its last log lines, joined with " | ".
        logs: String,
    },
    /// The container runtime could not run it.
    #[error("init container {name:?} could not run: {message}")]
    Runtime {
        /// Init container name.
        name: String,
        /// The runtime's error.
        message: String,
    },
    /// The module runs without a container runtime (a wiring defect).
    #[error("init containers need a container runtime, and none is built in")]
    NoRuntime,
}
