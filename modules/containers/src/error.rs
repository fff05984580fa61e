//! Errors of the containers module; every message names the thing that failed.
//!
//! No message carries podman's argv or an env value: a call is named by its operation and
//! target (`podman create fleet-web`), a failure by podman's exit code and one capped line of
//! its stderr with every secret of the call (env values, container arguments) redacted.

/// What went wrong talking to podman or preparing a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// podman could not be started at all.
    #[error("cannot run `{what}`: {source}")]
    Spawn {
        /// Operation and target, e.g. `podman create fleet-web`.
        what: String,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// podman ran and failed.
    #[error("`{what}` failed ({}): {stderr}", exit_text(*.code))]
    Command {
        /// Operation and target.
        what: String,
        /// podman's exit code (`None` when a signal ended it).
        code: Option<i32>,
        /// podman's error line, secrets redacted, capped.
        stderr: String,
    },
    /// podman's output was not what we expected.
    #[error("cannot decode the output of `{what}`: {message}")]
    Decode {
        /// Operation and target.
        what: String,
        /// What was wrong (position and kind, never the output itself).
        message: String,
    },
    /// podman did not finish in time (it was killed).
    #[error("`{what}` did not finish within {secs} s (killed)")]
    Timeout {
        /// Operation and target.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// An image could not be pulled; `message` carries the registry's answer.
    #[error("pull {} failed: {message}", crate::podman::short(image))]
    Pull {
        /// The image reference.
        image: String,
        /// podman's (and so the registry's) error line.
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
    /// A value was refused before podman was run: it would have been taken as an option, or
    /// podman cannot take it (a NUL byte).
    #[error("{field} {reason}; podman was not run")]
    Refused {
        /// The field, e.g. `container.image` or `container.env."TOKEN"`.
        field: String,
        /// Why, without the value when it may be secret.
        reason: String,
    },
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_owned(),
    }
}

impl Error {
    /// podman's error line of a failed command, or the whole message otherwise.
    pub fn detail(&self) -> String {
        match self {
            Error::Command { stderr, .. } => stderr.clone(),
            other => other.to_string(),
        }
    }

    /// Did podman say the container name is taken?
    pub fn name_in_use(&self) -> bool {
        matches!(self, Error::Command { stderr, .. } if stderr.contains("is already in use"))
    }

    /// Did `podman run --pull=never` fail because the image is not in local storage?
    pub fn image_unknown(&self) -> bool {
        matches!(self, Error::Command { stderr, .. } if stderr.contains("image not known"))
    }
}
