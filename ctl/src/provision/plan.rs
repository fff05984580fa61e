//! Pure decisions of `fleetctl provision`: targets, hosts files, the probe's answer and
//! the rules it must pass, the package for an architecture, the config document and what
//! has to change. Nothing here touches the network or a device.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

mod config;
mod probe;

use config::split_set;
pub(crate) use config::{apply_sets, render_config, ConfigInputs, Plane, Rendered, TrustedKey};
pub(crate) use probe::{probe_script, Probe};

/// The device's config file.
pub(crate) const CONFIG_PATH: &str = "/etc/fleet-agent/config.toml";
/// Where credentials files go on the device.
pub(crate) const CREDS_DIR: &str = "/etc/fleet-agent/creds";
/// Oldest glibc the agent is built for (Debian 12 "bookworm" ships 2.36; the build checks 2.34).
pub(crate) const MIN_GLIBC: (u32, u32) = (2, 34);
/// Oldest Debian release (VERSION_ID) provisioning accepts.
pub(crate) const MIN_DEBIAN: u32 = 12;

/// `user@host[:port]` as given on the command line or in a hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub user: String,
    pub host: String,
    pub port: Option<u16>,
}

impl Target {
    /// Parses `user@host[:port]`; `[v6addr]:port` is accepted for IPv6.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let (user, rest) = s
            .split_once('@')
            .ok_or_else(|| anyhow!("target {s:?}: expected user@host[:port]"))?;
        if user.is_empty() || user.contains(char::is_whitespace) {
            bail!("target {s:?}: empty or invalid user before '@'");
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("target {s:?}: unclosed '[' in host"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None if tail.is_empty() => None,
                None => bail!("target {s:?}: unexpected {tail:?} after ']'"),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
            bail!("target {s:?}: empty or invalid host");
        }
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| anyhow!("target {s:?}: port {p:?} is not 1..=65535"))
            })
            .transpose()?;
        Ok(Target {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// `user@host` for ssh (the port goes in `-p`).
    pub(crate) fn login(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) if self.host.contains(':') => write!(f, "{}@[{}]:{p}", self.user, self.host),
            Some(p) => write!(f, "{}@{}:{p}", self.user, self.host),
            None => write!(f, "{}@{}", self.user, self.host),
        }
    }
}

/// One line of a hosts file: the target and its own `key=value` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostLine {
    pub target: Target,
    pub sets: Vec<String>,
}

/// Parses a hosts file: one `user@host[:port] [key=value]...` per line, `#` comments,
/// blank lines ignored. Errors name the file and line.
pub(crate) fn parse_hosts(name: &str, text: &str) -> Result<Vec<HostLine>> {
    let mut out: Vec<HostLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let target = Target::parse(first).with_context(|| format!("{name}:{n}"))?;
        let mut sets = Vec::new();
        for w in words {
            split_set(w).with_context(|| format!("{name}:{n}"))?;
            sets.push(w.to_owned());
        }
        if let Some(prev) = out.iter().position(|h| h.target == target) {
            bail!(
                "{name}:{n}: {target} is already listed (entry {})",
                prev + 1
            );
        }
        out.push(HostLine { target, sets });
    }
    if out.is_empty() {
        bail!("{name}: no hosts (one user@host[:port] per line)");
    }
    Ok(out)
}

/// A `fleet-agent_<V>_<arch>.deb` found in the package directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deb {
    pub path: PathBuf,
    pub version: String,
}

/// Picks the package for `arch` among `names` (file names in `dir`): the highest version
/// when there are several. Errors list the architectures that are there.
pub(crate) fn choose_deb(dir: &Path, names: &[String], arch: &str) -> Result<Deb> {
    let mut found: Vec<(String, String)> = Vec::new();
    for n in names {
        let Some(rest) = n
            .strip_prefix("fleet-agent_")
            .and_then(|r| r.strip_suffix(".deb"))
        else {
            continue;
        };
        if let Some((v, a)) = rest.rsplit_once('_') {
            if !v.is_empty() && !a.is_empty() {
                found.push((v.to_owned(), a.to_owned()));
            }
        }
    }
    let best = found
        .iter()
        .filter(|(_, a)| a == arch)
        .max_by(|x, y| compare_versions(&x.0, &y.0));
    match best {
        Some((v, a)) => Ok(Deb {
            path: dir.join(format!("fleet-agent_{v}_{a}.deb")),
            version: v.clone(),
        }),
        None => {
            let mut have: Vec<&str> = found.iter().map(|(_, a)| a.as_str()).collect();
            have.sort_unstable();
            have.dedup();
            bail!(
                "unsupported architecture {arch}: no fleet-agent_*_{arch}.deb in {} (found: {}; \
                 build it with `packaging/build --arch {arch}`)",
                dir.display(),
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            )
        }
    }
}

/// Debian-style version order, enough for our versions: digit runs compare as numbers,
/// other runs as text with `~` before everything.
pub(crate) fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn runs(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((ld, run)) if *ld == d => run.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let key = |c: char| if c == '~' { 0u32 } else { u32::from(c) + 1 };
    let (ra, rb) = (runs(a), runs(b));
    for i in 0..ra.len().max(rb.len()) {
        let o = match (ra.get(i), rb.get(i)) {
            (Some((true, x)), Some((true, y))) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            (Some((_, x)), Some((_, y))) => x.chars().map(key).cmp(y.chars().map(key)),
            (Some((_, x)), None) => {
                if x.starts_with('~') {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (None, Some((_, y))) => {
                if y.starts_with('~') {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Writes stdin to `dir/name` with `mode`, atomically: a temp file in the same directory,
/// then `mv -T` (never into a directory of that name); the directory is made (under
/// `umask`) when missing. `name` is a plain file name.
pub(crate) fn write_file_script(dir: &str, name: &str, mode: &str, umask: &str) -> String {
    let dest = super::ssh::shell_quote(&format!("{dir}/{name}"));
    let d = super::ssh::shell_quote(dir);
    format!(
        "umask {umask}; mkdir -p {d} || exit 1; t=$(mktemp {d}/.new.XXXXXX) || exit 1; \
         if cat > \"$t\" && chmod {mode} \"$t\" && mv -f -T \"$t\" {dest}; then exit 0; fi; \
         rm -f \"$t\"; exit 1"
    )
}

/// Installs the package read from stdin: a private temp dir, `dpkg -i`, the dir removed.
pub(crate) const INSTALL_SCRIPT: &str = "umask 077; d=$(mktemp -d) || exit 1; \
     cat > \"$d/fleet-agent.deb\" && DEBIAN_FRONTEND=noninteractive dpkg -i \"$d/fleet-agent.deb\"; \
     rc=$?; rm -rf \"$d\"; exit $rc";

/// What a run will change on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Changes {
    /// Install this package version (absent or different version on the device).
    pub install: Option<String>,
    pub write_config: bool,
    pub write_credentials: bool,
    /// Restart the service (config or credentials changed, and no install restarted it).
    pub restart: bool,
    /// Enable and start the service (not enabled or not running).
    pub enable: bool,
}

impl Changes {
    pub(crate) fn none(&self) -> bool {
        *self == Changes::default()
    }

    /// One line per change, for `--dry-run` and the summary.
    pub(crate) fn lines(&self, deb: &Deb) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = &self.install {
            out.push(format!(
                "copy {} and install fleet-agent {v} (dpkg -i)",
                deb.path.display()
            ));
        }
        if self.write_credentials {
            out.push(format!(
                "write the credentials file under {CREDS_DIR} (0600)"
            ));
        }
        if self.write_config {
            out.push(format!("write {CONFIG_PATH} (0640)"));
        }
        if self.restart {
            out.push("restart fleet-agent.service".into());
        }
        if self.enable {
            out.push("enable and start fleet-agent.service".into());
        }
        out
    }
}

/// Decides what to change: compares versions and sha256s the probe reported.
pub(crate) fn decide(
    probe: &Probe,
    deb: &Deb,
    config_sha: &str,
    creds_sha: Option<&str>,
) -> Changes {
    let install =
        (probe.installed.as_deref() != Some(deb.version.as_str())).then(|| deb.version.clone());
    let write_config = probe.config_sha.as_deref() != Some(config_sha);
    let write_credentials = creds_sha.is_some_and(|s| probe.creds_sha.as_deref() != Some(s));
    let restart = (write_config || write_credentials) && install.is_none() && probe.active;
    let enable = probe.has_systemd && (!probe.enabled || !probe.active) && install.is_none();
    Changes {
        install,
        write_config,
        write_credentials,
        restart,
        enable,
    }
}

/// Why an `ssh` run failed, from its exit status and stderr.
pub(crate) fn classify_ssh_failure(target: &Target, code: Option<i32>, stderr: &str) -> String {
    let port = target.port.unwrap_or(22);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return format!(
            "{target}: host key mismatch: the host key of {}:{port} is not the one in known_hosts \
             (a reinstalled device or a man in the middle; check, then fix known_hosts); nothing was changed",
            target.host
        );
    }
    if stderr.contains("Host key verification failed")
        || stderr.contains("No ") && stderr.contains("host key is known")
    {
        return format!(
            "{target}: host key verification failed: no trusted host key for {}:{port} in known_hosts \
             (add the device's key, e.g. from its console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); nothing was changed",
            target.host
        );
    }
    if code == Some(255) {
        let why = if stderr.contains("Connection refused") {
            "connection refused".to_owned()
        } else if stderr.contains("timed out") {
            "connection timed out".to_owned()
        } else if stderr.contains("Could not resolve hostname") {
            "host name does not resolve".to_owned()
        } else if stderr.contains("No route to host") || stderr.contains("Network is unreachable") {
            "no route to host".to_owned()
        } else if stderr.contains("Permission denied") {
            return format!(
                "{target}: login refused (Permission denied): is the key authorized for {}?; nothing was changed",
                target.user
            );
        } else {
            last.to_owned()
        };
        return format!(
            "{target}: unreachable: {}:{port}: {why}; nothing was changed",
            target.host
        );
    }
    match code {
        Some(c) => format!("{target}: exit {c}: {last}"),
        None => format!("{target}: killed by a signal: {last}"),
    }
}

#[cfg(test)]
mod tests;
