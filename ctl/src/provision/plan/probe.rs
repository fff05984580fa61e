//! The one-round-trip probe of a device, its answer and the rules a device must pass
//! before anything is changed on it.

use anyhow::{anyhow, bail, Result};

use super::{CONFIG_PATH, CREDS_DIR, MIN_DEBIAN, MIN_GLIBC};

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
