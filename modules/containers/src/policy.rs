//! `[modules.containers.policy]` and `[modules.containers.logs]`: what this device lets a
//! manifest ask of the host, and the check that refuses a manifest asking for more, before
//! anything of it runs (no pull, no container). Secure defaults: nothing beyond an ordinary
//! container is allowed.
//!
//! The check is pure except for resolving host paths: a bind's host path and a device path
//! are resolved (symlinks followed, for the longest part that exists) so a symlink under an
//! allowed root cannot lead outside it.

use std::fmt;
use std::path::{Path, PathBuf};

use fleet_contract::{canonical_capability, quote, ContainerSpec, Deployment, NetworkMode};
use serde::Deserialize;

/// `[modules.containers.policy]`: every key defaults to "not allowed".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// May a manifest set `privileged = true` (every device and capability of the host)?
    #[serde(default)]
    pub privileged: bool,
    /// May a manifest use `network = "host"`?
    #[serde(default)]
    pub host_network: bool,
    /// May a manifest publish host ports below 1024?
    #[serde(default)]
    pub low_ports: bool,
    /// Host directories a bind mount's `hostPath` must be, or lie below (compared by path
    /// components, after following symlinks). Empty: no bind mounts.
    #[serde(default)]
    pub bind_roots: Vec<String>,
    /// Device paths a manifest may pass through, as patterns where `*` matches any run of
    /// characters but `/` and `?` one character, e.g. `/dev/i2c-*`, `/dev/ttyUSB?`. Matched
    /// against the device node the path resolves to. Empty: no devices.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Capabilities a manifest may add (`NET_ADMIN`, `SYS_TIME`, ...); `ALL` allows every
    /// one, including `capAdd = ["ALL"]`. Empty: none. Dropping is always allowed.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// `[modules.containers.logs]`: every container's log cap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Log cap in MiB of a container whose manifest sets no `container.logs.maxSizeMib`
    /// (and of init containers).
    #[serde(default = "default_log_mib")]
    pub max_size_mib: u32,
    /// The most `container.logs.maxSizeMib` may ask for, in MiB.
    #[serde(default = "default_log_ceiling")]
    pub ceiling_mib: u32,
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            max_size_mib: default_log_mib(),
            ceiling_mib: default_log_ceiling(),
        }
    }
}

fn default_log_mib() -> u32 {
    10
}
fn default_log_ceiling() -> u32 {
    100
}

/// Largest log cap the config may set (the manifest's own upper bound).
const MAX_LOG_MIB: u32 = 1024;

impl Logs {
    /// The cap of a container with `spec`.
    pub fn cap_of(&self, spec: &ContainerSpec) -> u32 {
        spec.logs.max_size_mib.unwrap_or(self.max_size_mib)
    }

    /// Semantic checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_LOG_MIB).contains(&self.ceiling_mib) {
            return Err(format!(
                "logs.ceiling_mib = {} is outside 1..={MAX_LOG_MIB}",
                self.ceiling_mib
            ));
        }
        if self.max_size_mib == 0 || self.max_size_mib > self.ceiling_mib {
            return Err(format!(
                "logs.max_size_mib = {} must be at least 1 and at most logs.ceiling_mib ({})",
                self.max_size_mib, self.ceiling_mib
            ));
        }
        Ok(())
    }
}

impl Policy {
    /// Semantic checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, root) in self.bind_roots.iter().enumerate() {
            let ok = root.starts_with('/')
                && root != "/"
                && !root.contains('\0')
                && root.split('/').all(|part| part != "." && part != "..");
            if !ok {
                return Err(format!(
                    "policy.bind_roots[{i}] = {}: use an absolute path other than \"/\", without '.' or '..'",
                    quote(root)
                ));
            }
        }
        for (i, pattern) in self.devices.iter().enumerate() {
            if !pattern.starts_with("/dev/") || pattern.contains('\0') {
                return Err(format!(
                    "policy.devices[{i}] = {}: a device pattern starts with /dev/",
                    quote(pattern)
                ));
            }
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if canonical_capability(cap).is_none() {
                return Err(format!(
                    "policy.capabilities[{i}] = {} is not a Linux capability (e.g. NET_ADMIN, or ALL)",
                    quote(cap)
                ));
            }
        }
        Ok(())
    }
}

/// A manifest asks for more than the device allows: the manifest field, and why (naming
/// the config key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The manifest field, e.g. `container.binds[0].hostPath`.
    pub field: String,
    /// The rest of the sentence, e.g. `"/etc" is outside modules.containers.policy.bind_roots ["/srv/fleet"]`.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.reason)
    }
}

const KEY: &str = "modules.containers.policy";

/// Is `d` within `policy` and `logs`, and are its mounts clear of `data_mount` (where the
/// deployment's data volume goes)? The first field asking for more is refused.
pub fn check(
    d: &Deployment,
    policy: &Policy,
    logs: &Logs,
    data_mount: &str,
) -> Result<(), Refusal> {
    let c = &d.container;
    let refuse = |field: String, reason: String| Err(Refusal { field, reason });
    if c.privileged && !policy.privileged {
        return refuse(
            "container.privileged".into(),
            format!("is true, but {KEY}.privileged is false"),
        );
    }
    if c.network == NetworkMode::Host && !policy.host_network {
        return refuse(
            "container.network".into(),
            format!("is \"host\", but {KEY}.host_network is false"),
        );
    }
    for (i, p) in c.ports.iter().enumerate() {
        if p.host_port < 1024 && !policy.low_ports {
            return refuse(
                format!("container.ports[{i}].hostPort"),
                format!(
                    "{} is below 1024, but {KEY}.low_ports is false",
                    p.host_port
                ),
            );
        }
    }
    for (i, b) in c.binds.iter().enumerate() {
        if !within_roots(Path::new(&b.host_path), &policy.bind_roots) {
            return refuse(
                format!("container.binds[{i}].hostPath"),
                format!(
                    "{} is outside {KEY}.bind_roots {}",
                    quote(&b.host_path),
                    list(&policy.bind_roots)
                ),
            );
        }
    }
    for (i, dev) in c.devices.iter().enumerate() {
        let resolved = resolve(Path::new(&dev.host_path));
        let node = resolved.to_string_lossy();
        if !policy.devices.iter().any(|p| glob(p, &node)) {
            let via = if node != dev.host_path.as_str() {
                format!(" (it is {})", quote(&node))
            } else {
                String::new()
            };
            return refuse(
                format!("container.devices[{i}].hostPath"),
                format!(
                    "{}{via} is not allowed by {KEY}.devices {}",
                    quote(&dev.host_path),
                    list(&policy.devices)
                ),
            );
        }
    }
    let allowed: Vec<String> = policy
        .capabilities
        .iter()
        .filter_map(|c| canonical_capability(c))
        .collect();
    for (i, cap) in c.cap_add.iter().enumerate() {
        let ok = allowed.iter().any(|a| a == "ALL")
            || canonical_capability(cap).is_some_and(|cap| allowed.contains(&cap));
        if !ok {
            return refuse(
                format!("container.capAdd[{i}]"),
                format!(
                    "{} is not allowed by {KEY}.capabilities {}",
                    quote(cap),
                    list(&policy.capabilities)
                ),
            );
        }
    }
    if let Some(mib) = c.logs.max_size_mib {
        if mib > logs.ceiling_mib {
            return refuse(
                "container.logs.maxSizeMib".into(),
                format!(
                    "{mib} is above modules.containers.logs.ceiling_mib {}",
                    logs.ceiling_mib
                ),
            );
        }
    }
    let data = Path::new(data_mount);
    let mounts = c
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("container.volumes[{i}].mountPath"), &v.mount_path))
        .chain(
            c.binds
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("container.binds[{i}].mountPath"), &b.mount_path)),
        )
        .chain(
            c.tmpfs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("container.tmpfs[{i}].mountPath"), &t.mount_path)),
        );
    for (field, at) in mounts {
        if Path::new(at) == data {
            return refuse(
                field,
                format!(
                    "{} is where the deployment's data volume is mounted (modules.containers.data_mount)",
                    quote(at)
                ),
            );
        }
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Is `path` one of `roots` or below one, by path components, both as written and with
/// symlinks followed (a root that is itself a symlink is resolved too)?
pub fn within_roots(path: &Path, roots: &[String]) -> bool {
    let lexical = roots.iter().any(|r| path.starts_with(r));
    if !lexical {
        return false;
    }
    let real = resolve(path);
    roots
        .iter()
        .any(|r| real.starts_with(resolve(Path::new(r))))
}

/// `path` with symlinks followed for its longest existing prefix, the rest appended as
/// written (a path that does not exist yet cannot lead anywhere by itself; podman refuses
/// to bind it anyway).
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// Does `text` match `pattern`, where `*` is any run of characters but `/` and `?` any one
/// character but `/`?
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point (the last `*`): linear in practice.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some('?') if t[ti] != '/' => {
                pi += 1;
                ti += 1;
            }
            Some(&c) if c != '*' && c != '?' && c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` take one more character, unless that is a `/`.
                Some((sp, st)) if t[st] != '/' => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                _ => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests;
