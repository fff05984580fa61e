//! Errors of the self-upgrade module.

use std::path::PathBuf;

/// Why an upgrade step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A request field is missing or invalid.
    #[error("field `{field}`: {message}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The artifact was refused before anything became executable.
    #[error("refused: {0}")]
    Refused(String),
    /// Download failed.
    #[error("download: {0}")]
    Download(String),
    /// The new version's self-test failed.
    #[error("self-test of {version} failed: {detail}")]
    SelfTest {
        /// The version tested.
        version: String,
        /// Its output tail or the timeout.
        detail: String,
    },
    /// The device is not laid out for self-upgrade.
    #[error("not laid out for self-upgrade: {0}")]
    Layout(String),
    /// A record on the state volume cannot be read.
    #[error("record {path}: {message}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
