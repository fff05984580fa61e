//! What podman's JSON output decodes into, and what the module asks podman to create.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleet_contract::{
    BindMount, ContainerSpec, DeviceMapping, NetworkMode, PortMapping, Resources, TmpfsMount,
};
use serde::Deserialize;

/// One container as `podman ps -a --format json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PsEntry {
    /// Full container id.
    #[serde(rename = "Id")]
    pub id: String,
    /// Names (podman gives exactly one).
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    /// `created`, `running`, `exited`, `stopping`, `paused`, ...
    #[serde(rename = "State", default)]
    pub state: String,
    /// Exit code of the last run (0 while it never exited).
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
    /// Host pid of the container's main process; 0 when it does not run.
    #[serde(rename = "Pid", default)]
    pub pid: i64,
    /// Unix seconds of the last start.
    #[serde(rename = "StartedAt", default)]
    pub started_at: i64,
    /// Unix seconds of the last exit (negative when it never exited).
    #[serde(rename = "ExitedAt", default)]
    pub exited_at: i64,
    /// Image id.
    #[serde(rename = "ImageID", default)]
    pub image_id: String,
    /// Labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl PsEntry {
    /// The container's name.
    pub fn name(&self) -> &str {
        self.names.first().map_or(self.id.as_str(), String::as_str)
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ImageInspect {
    #[serde(rename = "Digest", default)]
    pub(super) digest: String,
}

/// What to create: the main container of a deployment, or a one-shot (init) container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; the image's default when empty.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `(volume, mount point)` pairs.
    pub volumes: Vec<(String, String)>,
    /// Signal `podman stop` sends first.
    pub stop_signal: String,
    /// Seconds `podman stop` waits before SIGKILL.
    pub stop_timeout: u32,
    /// What the manifest asks of the host beyond image, command and env: network, ports,
    /// mounts, devices, limits, identity, capabilities (the default asks for nothing).
    pub host: HostOptions,
    /// Log size cap in MiB (`k8s-file` log, truncated by conmon at the cap); `None`:
    /// podman's default (no cap).
    pub log_max_mib: Option<u32>,
    /// Working directory of the podman process, and so of the container's conmon, which
    /// writes its `oom` marker there when the kernel OOM-kills the container (podman 4.3
    /// reads it from elsewhere, see `engine::oom`). `None`: the agent's own.
    pub conmon_dir: Option<PathBuf>,
}

/// The host-facing part of a main container's spec, as podman options (see
/// `containers::container_call` for the mapping).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostOptions {
    /// `bridge` (podman's default: no option), `host` or `none`.
    pub network: NetworkMode,
    /// `--publish`.
    pub ports: Vec<PortMapping>,
    /// Named volumes: `(podman volume name, mount path, read-only)`.
    pub volumes: Vec<(String, String, bool)>,
    /// Host paths mounted in (`--volume=host:path[:ro]`).
    pub binds: Vec<BindMount>,
    /// `--device`.
    pub devices: Vec<DeviceMapping>,
    /// `--tmpfs`.
    pub tmpfs: Vec<TmpfsMount>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--read-only`.
    pub read_only_root: bool,
    /// `--cap-add`, canonical names (`NET_ADMIN`, `ALL`).
    pub cap_add: Vec<String>,
    /// `--cap-drop`, canonical names.
    pub cap_drop: Vec<String>,
    /// `--user` (with `group`: `user:group`).
    pub user: Option<String>,
    /// The group of `--user`.
    pub group: Option<String>,
    /// `--workdir`.
    pub working_dir: Option<String>,
    /// `--memory`/`--memory-swap`, `--cpus`, `--pids-limit`.
    pub resources: Resources,
}

impl HostOptions {
    /// The options of `c`, the main container of deployment `deployment`; `volume` names
    /// a named volume of it on the device (`Naming::named_volume`).
    pub fn of(c: &ContainerSpec, volume: impl Fn(&str) -> String) -> Self {
        let caps = |list: &[String]| {
            list.iter()
                .map(|c| fleet_contract::canonical_capability(c).unwrap_or_else(|| c.clone()))
                .collect()
        };
        Self {
            network: c.network,
            ports: c.ports.clone(),
            volumes: c
                .volumes
                .iter()
                .map(|v| (volume(&v.name), v.mount_path.clone(), v.read_only))
                .collect(),
            binds: c.binds.clone(),
            devices: c.devices.clone(),
            tmpfs: c.tmpfs.clone(),
            privileged: c.privileged,
            read_only_root: c.read_only_root_filesystem,
            cap_add: caps(&c.cap_add),
            cap_drop: caps(&c.cap_drop),
            user: c.user.clone(),
            group: c.group.clone(),
            working_dir: c.working_dir.clone(),
            resources: c.resources.clone(),
        }
    }
}
