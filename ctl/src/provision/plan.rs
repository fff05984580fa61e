//! Pure decisions of `fleetctl provision`: targets, hosts files, the probe's answer and
//! the rules it must pass, the package for an architecture, the config document and what
//! has to change. Nothing here touches the network or a device.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

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

/// Splits `key=value`, checking the key is a dotted path of bare TOML keys.
fn split_set(s: &str) -> Result<(&str, &str)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("setting {s:?}: expected key=value"))?;
    let k = k.trim();
    let bare = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !k.split('.').all(bare) {
        bail!("setting {s:?}: key {k:?} is not a dotted TOML key like control.nats.servers");
    }
    Ok((k, v.trim()))
}

/// A `--set` value: TOML when it parses as a TOML value (`10`, `true`, `["a"]`), a plain
/// string otherwise (`pi-7`, `nats`).
fn set_value(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_owned()))
}

/// Applies `key=value` settings to `doc` in order (a later one wins).
pub(crate) fn apply_sets(doc: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, value) = split_set(s)?;
        let parts: Vec<&str> = key.split('.').collect();
        let (last, parents) = parts
            .split_last()
            .ok_or_else(|| anyhow!("setting {s:?}: empty key"))?;
        let mut table = &mut *doc;
        let mut path = String::new();
        for p in parents {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(p);
            let entry = table
                .entry((*p).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| anyhow!("setting {s:?}: {path} is a value, not a table"))?;
        }
        table.insert((*last).to_owned(), set_value(value));
    }
    Ok(())
}

/// A trusted operator key to put in `[[trust.operators]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustedKey {
    pub name: String,
    pub public_key: String,
    pub role: String,
}

impl TrustedKey {
    /// Parses `FILE[:ROLE]` (role `admin` when absent) and the key file's text (the public
    /// key `fleetctl keygen` printed); the name is the file's stem.
    pub(crate) fn parse(spec: &str, read: impl Fn(&Path) -> Result<String>) -> Result<Self> {
        let (file, role) = match spec.rsplit_once(':') {
            Some((f, r)) if matches!(r, "viewer" | "operator" | "admin") => (f, r),
            _ => (spec, "admin"),
        };
        let path = Path::new(file);
        let text = read(path)?;
        let key = text.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!(
                "--trusted-key {file}: expected one base64 public key (as `fleetctl keygen` prints)"
            );
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("--trusted-key {file}: no file name to name the key by"))?;
        Ok(TrustedKey {
            name: name.to_owned(),
            public_key: key.to_owned(),
            role: role.to_owned(),
        })
    }
}

/// Everything that goes into a device's config document.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigInputs {
    /// `--config FILE` contents (TOML), if given.
    pub base: Option<toml::Table>,
    /// `--set` values, then the hosts file line's.
    pub sets: Vec<String>,
    /// Basename of `--credentials FILE`, installed under [`CREDS_DIR`].
    pub credentials: Option<String>,
    /// `--trusted-key` entries.
    pub trusted: Vec<TrustedKey>,
}

/// Builds the config document: base, then sets, then the device id (the device's host name
/// unless set), the credentials path for the plane, the trusted keys. Returns the TOML text.
pub(crate) fn render_config(inputs: &ConfigInputs, hostname: &str) -> Result<(String, Plane)> {
    let mut doc = inputs.base.clone().unwrap_or_default();
    apply_sets(&mut doc, &inputs.sets)?;
    if !doc.contains_key("device_id") {
        if hostname.is_empty() {
            bail!("device_id: not set and the device reported no host name (--set device_id=...)");
        }
        doc.insert("device_id".into(), toml::Value::String(hostname.to_owned()));
    }
    match doc.get("device_id") {
        Some(toml::Value::String(s)) if !s.is_empty() => {}
        _ => bail!("device_id: must be a non-empty string"),
    }
    let plane = Plane::of(&doc)?;
    if let Some(file) = &inputs.credentials {
        let path = toml::Value::String(format!("{CREDS_DIR}/{file}"));
        let (section, key) = match plane {
            Plane::Nats { .. } => ("nats", "creds_file"),
            Plane::Mqtt { .. } => ("mqtt", "password_file"),
            Plane::Local => {
                bail!("--credentials: the local plane uses no credentials (set control.plane)")
            }
        };
        let control = table_at(&mut doc, "control")?;
        let sec = control
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| anyhow!("control.{section}: must be a table"))?;
        sec.entry(key.to_owned()).or_insert(path);
    }
    if !inputs.trusted.is_empty() {
        let trust = table_at(&mut doc, "trust")?;
        let ops = trust
            .entry("operators".to_owned())
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(|| anyhow!("trust.operators: must be an array of tables"))?;
        for k in &inputs.trusted {
            let present = ops
                .iter()
                .any(|o| o.get("public_key").and_then(|v| v.as_str()) == Some(&k.public_key));
            if !present {
                let mut t = toml::Table::new();
                t.insert("name".into(), k.name.clone().into());
                t.insert("public_key".into(), k.public_key.clone().into());
                t.insert("role".into(), k.role.clone().into());
                ops.push(toml::Value::Table(t));
            }
        }
    }
    let text = toml::to_string(&doc).context("rendering config.toml")?;
    Ok((text, plane))
}

fn table_at<'a>(doc: &'a mut toml::Table, key: &str) -> Result<&'a mut toml::Table> {
    doc.entry(key.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| anyhow!("{key}: must be a table"))
}

/// The control plane a config selects, with what fleetctl needs to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plane {
    Local,
    Nats { url: String },
    Mqtt { addr: String },
}

impl Plane {
    fn of(doc: &toml::Table) -> Result<Self> {
        let control = doc.get("control");
        let plane = match control.and_then(|c| c.get("plane")) {
            None => "local",
            Some(toml::Value::String(s)) => s.as_str(),
            Some(_) => bail!("control.plane: must be a string (local, nats or mqtt)"),
        };
        match plane {
            "local" => Ok(Plane::Local),
            "nats" => {
                let servers = control
                    .and_then(|c| c.get("nats"))
                    .and_then(|n| n.get("servers"));
                let url = match servers {
                    Some(toml::Value::Array(a)) => a.first().and_then(|v| v.as_str()),
                    Some(_) => bail!("control.nats.servers: must be an array of URLs"),
                    None => None,
                };
                let url = url.ok_or_else(|| {
                    anyhow!("control.nats.servers: the nats plane needs at least one server URL")
                })?;
                Ok(Plane::Nats {
                    url: url.to_owned(),
                })
            }
            "mqtt" => {
                let m = control.and_then(|c| c.get("mqtt"));
                let host = m
                    .and_then(|m| m.get("host"))
                    .and_then(|h| h.as_str())
                    .unwrap_or("127.0.0.1");
                let port = m
                    .and_then(|m| m.get("port"))
                    .and_then(|p| p.as_integer())
                    .unwrap_or(1883);
                Ok(Plane::Mqtt {
                    addr: format!("{host}:{port}"),
                })
            }
            other => bail!("control.plane: {other:?} is not local, nats or mqtt"),
        }
    }
}

/// What the one-round-trip probe found on the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Probe {
    pub uid: Option<u32>,
    /// `sudo -n true` succeeded (asked only when not root).
    pub sudo: bool,
    pub arch: String,
    pub os_id: String,
    pub os_version: String,
    pub glibc: String,
    /// `dpkg-query` version when fleet-agent is installed.
    pub installed: Option<String>,
    pub hostname: String,
    /// sha256 of the current config.toml, if present.
    pub config_sha: Option<String>,
    /// sha256 of the credentials file, if asked and present.
    pub creds_sha: Option<String>,
    pub enabled: bool,
    pub active: bool,
    pub has_systemd: bool,
}

/// The probe script: `key=value` lines, one SSH round trip, reads only.
pub(crate) fn probe_script(creds_file: Option<&str>) -> String {
    let creds = creds_file.map_or(String::new(), |f| format!("{CREDS_DIR}/{f}"));
    format!(
        r#"LC_ALL=C; export LC_ALL
u=$(id -u); echo "uid=$u"
S=""
if [ "$u" != 0 ]; then
  if sudo -n true >/dev/null 2>&1; then echo sudo=yes; S="sudo -n"; else echo sudo=no; exit 0; fi
fi
echo "arch=$(dpkg --print-architecture 2>/dev/null)"
( . /etc/os-release 2>/dev/null; echo "os_id=${{ID:-}}"; echo "os_version=${{VERSION_ID:-}}" )
echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null)"
echo "installed=$(dpkg-query -W -f='${{db:Status-Status}} ${{Version}}' fleet-agent 2>/dev/null)"
echo "hostname=$(hostname 2>/dev/null || cat /etc/hostname)"
echo "config_sha=$($S sha256sum {CONFIG_PATH} 2>/dev/null | cut -d' ' -f1)"
c='{creds}'
if [ -n "$c" ]; then echo "creds_sha=$($S sha256sum "$c" 2>/dev/null | cut -d' ' -f1)"; fi
if [ -d /run/systemd/system ]; then
  echo systemd=yes
  echo "enabled=$(systemctl is-enabled fleet-agent 2>/dev/null)"
  echo "active=$(systemctl is-active fleet-agent 2>/dev/null)"
fi
"#
    )
}

impl Probe {
    /// Parses the probe's output; unknown lines are ignored.
    pub(crate) fn parse(out: &str) -> Self {
        let mut p = Probe::default();
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        for line in out.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k {
                "uid" => p.uid = v.parse().ok(),
                "sudo" => p.sudo = v == "yes",
                "arch" => p.arch = v.to_owned(),
                "os_id" => p.os_id = v.to_owned(),
                "os_version" => p.os_version = v.to_owned(),
                "glibc" => p.glibc = v.to_owned(),
                "installed" => {
                    p.installed = v
                        .strip_prefix("installed ")
                        .and_then(|ver| some(ver.trim()));
                }
                "hostname" => p.hostname = v.to_owned(),
                "config_sha" => p.config_sha = some(v),
                "creds_sha" => p.creds_sha = some(v),
                "systemd" => p.has_systemd = v == "yes",
                "enabled" => p.enabled = v == "enabled",
                "active" => p.active = v == "active",
                _ => {}
            }
        }
        p
    }

    /// True when commands must go through `sudo -n`.
    pub(crate) fn needs_sudo(&self) -> bool {
        self.uid != Some(0)
    }

    /// The rules a device must pass before anything is changed on it.
    pub(crate) fn check(&self) -> Result<()> {
        match self.uid {
            None => bail!("the probe printed no uid (is the login shell POSIX sh compatible?)"),
            Some(0) => {}
            Some(_) if self.sudo => {}
            Some(u) => bail!(
                "no root: the login user (uid {u}) is not root and `sudo -n true` failed \
                 (log in as root or give the user passwordless sudo)"
            ),
        }
        if self.arch.is_empty() {
            bail!("no `dpkg --print-architecture`: not a Debian system");
        }
        if self.os_id == "debian" {
            match self.os_version.split('.').next().and_then(|v| v.parse::<u32>().ok()) {
                Some(v) if v >= MIN_DEBIAN => {}
                Some(v) => bail!(
                    "Debian {v} is older than Debian {MIN_DEBIAN} (bookworm); fleet-agent needs glibc >= {}.{}",
                    MIN_GLIBC.0, MIN_GLIBC.1
                ),
                // testing/sid have no VERSION_ID; glibc decides below.
                None => {}
            }
        }
        let glibc = parse_glibc(&self.glibc).ok_or_else(|| {
            anyhow!(
                "glibc version unknown (`getconf GNU_LIBC_VERSION` printed {:?})",
                self.glibc
            )
        })?;
        if glibc < MIN_GLIBC {
            bail!(
                "glibc {}.{} is older than {}.{} (Debian 12 bookworm or newer is needed)",
                glibc.0,
                glibc.1,
                MIN_GLIBC.0,
                MIN_GLIBC.1
            );
        }
        Ok(())
    }
}

/// `glibc 2.36` → (2, 36).
fn parse_glibc(s: &str) -> Option<(u32, u32)> {
    let v = s.trim().strip_prefix("glibc ")?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor))
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
