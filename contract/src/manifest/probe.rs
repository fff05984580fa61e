//! Health probes of a deployment's main container: `http`, `tcp` or `exec`, with the timing
//! that decides when a deployment is `Running` and when it is `Unhealthy`.

use serde::{Deserialize, Serialize};

use super::container::is_default;

/// One health probe. Exactly one of `http`, `tcp` and `exec` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// Name in status and messages (`[a-z0-9][a-z0-9-]*`); the probe's kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An HTTP GET that must answer with the expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connect that must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// A command run in the container that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Seconds after the container starts before the first check (0..=3600).
    #[serde(default, skip_serializing_if = "is_default")]
    pub initial_delay_secs: u32,
    /// Seconds between checks (1..=3600).
    #[serde(default = "default_period", skip_serializing_if = "is_default_period")]
    pub period_secs: u32,
    /// Seconds one check may take (1..=3600).
    #[serde(
        default = "default_timeout",
        skip_serializing_if = "is_default_timeout"
    )]
    pub timeout_secs: u32,
    /// Consecutive failures that fail the probe (1..=100).
    #[serde(
        default = "default_threshold",
        skip_serializing_if = "is_default_threshold"
    )]
    pub failure_threshold: u32,
}

/// `GET http://<container>:<port><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    /// Port inside the container (1..=65535).
    pub port: u16,
    /// Request path, starting with `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Expected status code (100..=599).
    #[serde(default = "default_status")]
    pub status: u16,
}

/// A TCP connect to a port of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbe {
    /// Port inside the container (1..=65535).
    pub port: u16,
}

/// A command run inside the container (`podman exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecProbe {
    /// Command and arguments; exit 0 passes.
    pub command: Vec<String>,
}

/// What a probe checks, borrowed from a [`Probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeCheck<'a> {
    /// An HTTP GET.
    Http(&'a HttpProbe),
    /// A TCP connect.
    Tcp(&'a TcpProbe),
    /// A command in the container.
    Exec(&'a ExecProbe),
}

impl Probe {
    /// The check this probe runs; `None` only for a probe that failed validation.
    pub fn check(&self) -> Option<ProbeCheck<'_>> {
        match (&self.http, &self.tcp, &self.exec) {
            (Some(h), None, None) => Some(ProbeCheck::Http(h)),
            (None, Some(t), None) => Some(ProbeCheck::Tcp(t)),
            (None, None, Some(e)) => Some(ProbeCheck::Exec(e)),
            _ => None,
        }
    }

    /// The probe's kind: `http`, `tcp` or `exec`.
    pub fn kind(&self) -> &'static str {
        match self.check() {
            Some(ProbeCheck::Http(_)) => "http",
            Some(ProbeCheck::Tcp(_)) => "tcp",
            Some(ProbeCheck::Exec(_)) => "exec",
            None => "invalid",
        }
    }

    /// The name shown in status: `name`, else the kind.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| self.kind())
    }
}

fn default_period() -> u32 {
    10
}
fn is_default_period(v: &u32) -> bool {
    *v == default_period()
}
fn default_timeout() -> u32 {
    1
}
fn is_default_timeout(v: &u32) -> bool {
    *v == default_timeout()
}
fn default_threshold() -> u32 {
    3
}
fn is_default_threshold(v: &u32) -> bool {
    *v == default_threshold()
}
fn default_path() -> String {
    "/".into()
}
fn default_status() -> u16 {
    200
}
