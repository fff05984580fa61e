//! Errors of the containers module; every message names the thing that failed.

/// What went wrong talking to podman or preparing a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// podman could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The shell-escaped command line.
        command: String,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// podman ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The shell-escaped command line.
        command: String,
        /// Exit status.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// podman's output was not what we expected.
    #[error("cannot decode the output of `{command}`: {message}")]
    Decode {
        /// The shell-escaped command line.
        command: String,
        /// What was wrong.
        message: String,
    },
    /// podman did not finish in time (it was killed).
    #[error("`{command}` did not finish within {secs} s")]
    Timeout {
        /// The shell-escaped command line.
        command: String,
        /// The limit.
        secs: u64,
    },
    /// An image could not be pulled; `message` carries the registry's answer.
    #[error("pull {image} failed: {message}")]
    Pull {
        /// The image reference.
        image: String,
        /// podman's (and so the registry's) error.
        message: String,
    },
    /// The registry credentials file is unusable.
    #[error("auth file {path}: {message}")]
    AuthFile {
        /// The configured path.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// The stderr tail of a failed command, or the whole message otherwise.
    pub fn detail(&self) -> String {
        match self {
            Error::Command { stderr, .. } => stderr.clone(),
            other => other.to_string(),
        }
    }
}
