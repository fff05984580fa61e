//! The config document of `fleetctl provision`: `--config` as the base, `--set` dotted keys
//! on top, the device id, credentials path and trusted keys, and the plane it selects.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};

use super::CREDS_DIR;

/// Splits `key=value`, checking the key is a dotted path of bare TOML keys.
pub(super) fn split_set(s: &str) -> Result<(&str, &str)> {
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

/// A device's config document as written, with what the run needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// The TOML text of `config.toml`.
    pub text: String,
    /// The plane it selects.
    pub plane: Plane,
    /// Its `device_id`.
    pub device: String,
}

/// Builds the config document: base, then sets, then the device id (the device's host name
/// unless set), the credentials path for the plane, the trusted keys.
pub(crate) fn render_config(inputs: &ConfigInputs, hostname: &str) -> Result<Rendered> {
    let mut doc = inputs.base.clone().unwrap_or_default();
    apply_sets(&mut doc, &inputs.sets)?;
    if !doc.contains_key("device_id") {
        if hostname.is_empty() {
            bail!("device_id: not set and the device reported no host name (--set device_id=...)");
        }
        doc.insert("device_id".into(), toml::Value::String(hostname.to_owned()));
    }
    let device = match doc.get("device_id") {
        Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => bail!("device_id: must be a non-empty string"),
    };
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
    Ok(Rendered {
        text,
        plane,
        device,
    })
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
