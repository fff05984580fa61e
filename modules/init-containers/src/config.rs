//! `[modules.init-containers]`.

use serde::Deserialize;

/// `[modules.init-containers]`: every key optional, unknown keys rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log lines of a failed init container quoted in the deployment's status (1..=50).
    #[serde(default = "default_log_lines")]
    pub log_lines: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_lines: default_log_lines(),
        }
    }
}

fn default_log_lines() -> usize {
    5
}
