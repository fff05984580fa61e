//! The main container's spec: what runs, what it may reach on the host, its limits, its logs
//! and its health probes. Every field added after the first release is optional and is left
//! out of the encoded JSON at its default, so an old manifest means (and hashes) the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::probe::Probe;

/// The main container of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Image reference, e.g. `registry.local:5000/app:1.2`, or pinned by digest:
    /// `registry.local:5000/app@sha256:<64 hex>`.
    pub image: String,
    /// Command and arguments; the image's default when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Restart policy when the container exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    // Fields below were added after the first release (their order after the first four
    // keeps a refused list-form document refused by the shape check, not by a type error).
    /// When the image is pulled: `if-not-present` (default) or `always` (before every
    /// creation of the container).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pull_policy: PullPolicy,
    /// Working directory of the container's process (absolute); the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User the process runs as: a name known to the image or a numeric uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group the process runs as (name or numeric gid); needs `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Network: `bridge` (default, podman's network), `host` or `none`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: NetworkMode,
    /// Published ports (bridge network only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Named volumes: kept across upgrades and removals, deleted only by a purge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Host directories or files mounted into the container (within the device's policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<BindMount>,
    /// Host devices passed through (within the device's policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceMapping>,
    /// In-memory file systems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsMount>,
    /// Full access to the host (within the device's policy).
    #[serde(default, skip_serializing_if = "is_default")]
    pub privileged: bool,
    /// Mount the image's root file system read-only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only_root_filesystem: bool,
    /// Capabilities added (within the device's policy), e.g. `NET_ADMIN`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped, e.g. `ALL` or `NET_RAW`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Labels on the container (the `fleet.` prefix is the agent's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Memory, CPU and process limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Log size, within the device's cap.
    #[serde(default, skip_serializing_if = "is_default")]
    pub logs: LogOptions,
    /// Health probes; the deployment is `Running` once all pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<Probe>,
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// When an exited container is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always restart (with crash-loop backoff).
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Never restart; the deployment reports the exit.
    Never,
}

/// When the image is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Only when the image is not in local storage.
    #[default]
    IfNotPresent,
    /// Before every creation of the container (a moving tag is followed).
    Always,
}

/// The container's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// podman's default bridge network; ports are published from it.
    #[default]
    Bridge,
    /// The host's network stack (needs the device's policy).
    Host,
    /// No network but loopback.
    None,
}

impl NetworkMode {
    /// The mode's manifest name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

/// A port published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    /// Host address to bind (an IPv4 or IPv6 literal); every address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Host port (1..=65535; below 1024 needs the device's policy).
    pub host_port: u16,
    /// Port inside the container (1..=65535).
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The protocol's manifest name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A named volume of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// Volume name within the deployment (`[a-z0-9][a-z0-9-]*`); the device's volume is
    /// named after the deployment and this name.
    pub name: String,
    /// Where it is mounted in the container (absolute).
    pub mount_path: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// A host path mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BindMount {
    /// Absolute host path, under one of the device policy's bind roots.
    pub host_path: String,
    /// Where it is mounted in the container (absolute).
    pub mount_path: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// A host device passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceMapping {
    /// The device node on the host, under `/dev/` (e.g. `/dev/i2c-1`, `/dev/ttyUSB0`).
    pub host_path: String,
    /// Its path in the container; the host path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    /// cgroup permissions: a non-empty subset of `rwm` (read, write, mknod); `rwm` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// An in-memory file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TmpfsMount {
    /// Where it is mounted (absolute).
    pub mount_path: String,
    /// Size cap in MiB (1..=4096); podman's default (half the RAM) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u32>,
}

/// Resource limits; absent ones are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit in MiB (6..=1048576); past it the kernel OOM-kills the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// CPU limit in thousandths of a CPU (10..=1024000; podman refuses less than 0.01 CPU):
    /// 500 is half a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Most processes and threads at once (1..=4194304).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// How much the container may log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogOptions {
    /// Log size cap in MiB (1..=1024), at most the device's; the device's cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_mib: Option<u32>,
}
