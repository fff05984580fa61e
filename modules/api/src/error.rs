/// Why a module's `run` stopped with an error; the supervisor logs it and restarts the module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A dependency outside the process failed (podman, lvm, a file); retrying may help.
    #[error("{context}: {source}")]
    External {
        /// What was being done, e.g. "podman events".
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something the module cannot recover from by restarting alone.
    #[error("{0}")]
    Fatal(String),
}

impl ModuleError {
    /// Wraps an external failure with what was being done.
    pub fn external(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ModuleError::External {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Why a command was not executed or failed; the router maps each kind to a reply code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No module serves this verb (or it is not built in).
    #[error("unsupported verb {verb:?}")]
    Unsupported {
        /// The verb asked for.
        verb: String,
    },
    /// An argument is missing or invalid.
    #[error("bad request: field `{field}`: {message}")]
    BadRequest {
        /// The offending argument.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The sender may not do this.
    #[error("denied: {0}")]
    Denied(String),
    /// The thing the command names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The module cannot serve it right now (unavailable, busy, untrusted clock).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It was tried and failed.
    #[error("failed: {0}")]
    Failed(String),
}

impl CommandError {
    /// Stable machine-readable code for replies and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Unsupported { .. } => "unsupported",
            CommandError::BadRequest { .. } => "bad-request",
            CommandError::Denied(_) => "denied",
            CommandError::NotFound(_) => "not-found",
            CommandError::Unavailable(_) => "unavailable",
            CommandError::Failed(_) => "failed",
        }
    }
}

/// A module's config section is invalid; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[modules.{module}]: {message}")]
pub struct ConfigError {
    /// The module whose section is wrong.
    pub module: &'static str,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Parses a module's `[modules.<name>]` section into its config type (absent = defaults).
/// Unknown keys are rejected when `T` uses `deny_unknown_fields`; the error names the key.
pub fn parse_section<T>(
    module: &'static str,
    section: Option<&toml::Value>,
) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + Default,
{
    match section {
        None => Ok(T::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError {
                module,
                message: e.message().trim().to_owned(),
            }),
    }
}
