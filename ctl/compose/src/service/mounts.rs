//! What a service mounts and passes through from the host: `volumes` (named volumes,
//! binds, tmpfs), `tmpfs` and `devices`, in Compose's short and long syntax.

use std::collections::BTreeMap;

use fleet_contract::{BindMount, ContainerSpec, DeviceMapping, TmpfsMount, VolumeMount};

use super::{boolean, err, mapping, mib, string, Cx, R};
use crate::values::{self, shorten};
use crate::yaml::{Key, Kind, Node};
use crate::{Finding, Severity};

/// A volume's name as the manifest takes it: lower case, `_` and `.` as `-`.
fn volume_name(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

const RELATIVE: &str = "a relative host path is relative to the compose file on this machine, \
                        not on the device; write the absolute path on the device (under the \
                        device policy's bind roots)";

/// `volumes`: `SOURCE:TARGET[:OPTIONS]` (a named volume, or a bind when SOURCE is an
/// absolute path) or the long syntax (volume, bind, tmpfs).
pub(crate) fn volumes(cx: &mut Cx, path: &str, v: &Node, spec: &mut ContainerSpec) -> R<()> {
    let Kind::Seq(items) = &v.kind else {
        return Err(err(
            path,
            v.mark,
            format!("is {}; a list of volumes is expected", v.describe()),
        ));
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let m = match &item.kind {
            Kind::Map(entries) => long_volume(cx, &p, entries)?,
            _ => {
                let Some(s) = string(cx, &p, item)? else {
                    continue;
                };
                short_volume(&s).map_err(|e| err(&p, item.mark, e))?
            }
        };
        let Mount { kind, options } = m;
        for o in options {
            cx.drop(
                p.clone(),
                item.mark,
                format!("the mount option {:?} is not carried", shorten(&o)),
            );
        }
        match kind {
            MountKind::Named {
                name,
                target,
                read_only,
            } => {
                let short = volume_name(&name);
                if short != name {
                    cx.note(
                        p.clone(),
                        item.mark,
                        format!("the volume {:?} is named {short:?}", shorten(&name)),
                    );
                }
                let others: Vec<&str> = cx
                    .users
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .filter(|s| *s != cx.svc)
                    .collect();
                if !others.is_empty() {
                    let list = others.join(", ");
                    cx.drop(
                        p.clone(),
                        item.mark,
                        format!(
                            "the volume {:?} is shared with {list}: a deployment's volumes are \
                             its own, so this one gets a volume of its own",
                            shorten(&name)
                        ),
                    );
                }
                spec.volumes.push(VolumeMount {
                    name: short,
                    mount_path: target,
                    read_only,
                });
            }
            MountKind::Bind {
                source,
                target,
                read_only,
            } => {
                cx.note(
                    p,
                    item.mark,
                    "the host path must exist on the device (docker compose would create it) \
                     and be allowed by the device's policy",
                );
                spec.binds.push(BindMount {
                    host_path: source,
                    mount_path: target,
                    read_only,
                });
            }
            MountKind::Tmpfs(t) => spec.tmpfs.push(t),
            MountKind::Dropped(why) => cx.drop(p, item.mark, why),
        }
    }
    Ok(())
}

struct Mount {
    kind: MountKind,
    /// Options that were not carried.
    options: Vec<String>,
}

enum MountKind {
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Tmpfs(TmpfsMount),
    Dropped(String),
}

fn is_relative(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('~')
}

fn short_volume(s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.splitn(3, ':').collect();
    let dropped = |why: &str| Mount {
        kind: MountKind::Dropped(why.to_owned()),
        options: Vec::new(),
    };
    let (source, target, opts) = match parts.as_slice() {
        [_] => {
            return Ok(dropped(
                "an anonymous volume: the manifest's volumes are named; write NAME:PATH",
            ))
        }
        [source, target] => (*source, *target, ""),
        [source, target, opts] => (*source, *target, *opts),
        _ => return Err(format!("{:?} is not SOURCE:TARGET[:MODE]", shorten(s))),
    };
    if source.is_empty() || target.is_empty() {
        return Err(format!("{:?} is not SOURCE:TARGET[:MODE]", shorten(s)));
    }
    let mut read_only = false;
    let mut options = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // macOS file sharing hints; nothing on Linux.
            "cached" | "delegated" | "consistent" => {}
            other => options.push(other.to_owned()),
        }
    }
    let kind = if is_relative(source) {
        MountKind::Dropped(RELATIVE.into())
    } else if source.starts_with('/') {
        MountKind::Bind {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
        }
    } else {
        MountKind::Named {
            name: source.to_owned(),
            target: target.to_owned(),
            read_only,
        }
    };
    Ok(Mount { kind, options })
}

fn long_volume(cx: &mut Cx, path: &str, entries: &[(Key, Node)]) -> R<Mount> {
    let mut ty = None;
    let (mut source, mut target, mut read_only) = (None, None, false);
    let mut size = None;
    let mut options = Vec::new();
    for (k, v) in entries {
        let p = format!("{path}.{}", shorten(&k.text));
        match k.text.as_str() {
            "type" => ty = string(cx, &p, v)?,
            "source" => source = string(cx, &p, v)?,
            "target" => target = string(cx, &p, v)?,
            "read_only" => read_only = boolean(&p, v)?,
            "consistency" => {}
            "tmpfs" => {
                for (tk, tv) in mapping(&p, v)? {
                    let tp = format!("{p}.{}", shorten(&tk.text));
                    if tk.text == "size" {
                        size = Some(tmpfs_size(cx, &tp, tv)?);
                    } else {
                        options.push(format!("tmpfs.{}", shorten(&tk.text)));
                    }
                }
            }
            "bind" | "volume" => {
                for (ok, _) in mapping(&p, v)? {
                    options.push(format!("{}.{}", k.text, shorten(&ok.text)));
                }
            }
            other => options.push(shorten(other)),
        }
    }
    let first = entries.first().map(|(k, _)| k.mark).unwrap_or_default();
    let target = target.ok_or_else(|| err(path, first, "has no `target`"))?;
    let kind = match ty.as_deref() {
        Some("volume") => match source {
            Some(name) if !name.is_empty() => MountKind::Named {
                name,
                target,
                read_only,
            },
            _ => MountKind::Dropped(
                "an anonymous volume: the manifest's volumes are named; give it a source".into(),
            ),
        },
        Some("bind") => {
            let source = source.ok_or_else(|| err(path, first, "has no `source`"))?;
            if source.starts_with('/') {
                MountKind::Bind {
                    source,
                    target,
                    read_only,
                }
            } else {
                MountKind::Dropped(RELATIVE.into())
            }
        }
        Some("tmpfs") => MountKind::Tmpfs(TmpfsMount {
            mount_path: target,
            size_mib: size,
        }),
        Some(other) => MountKind::Dropped(format!(
            "a {:?} mount is not carried (volume, bind and tmpfs are)",
            shorten(other)
        )),
        None => return Err(err(path, first, "has no `type`")),
    };
    Ok(Mount { kind, options })
}

fn tmpfs_size(cx: &mut Cx, path: &str, v: &Node) -> R<u32> {
    let b = match &v.kind {
        Kind::Scalar { text, plain: true } if text.bytes().all(|c| c.is_ascii_digit()) => text
            .parse::<u128>()
            .map_err(|_| err(path, v.mark, "is too large"))?,
        _ => {
            let s = string(cx, path, v)?.unwrap_or_default();
            values::bytes(&s).map_err(|e| err(path, v.mark, e))?
        }
    };
    mib(cx, path, v.mark, b)
}

/// `tmpfs`: a path or a list of `PATH[:OPTIONS]`; `size=` is carried.
pub(crate) fn tmpfs(cx: &mut Cx, path: &str, v: &Node, spec: &mut ContainerSpec) -> R<()> {
    let items: Vec<(String, &Node)> = match &v.kind {
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{path}[{i}]"), n))
            .collect(),
        _ => vec![(path.to_owned(), v)],
    };
    for (p, item) in items {
        let Some(s) = string(cx, &p, item)? else {
            continue;
        };
        let (target, opts) = s.split_once(':').unwrap_or((&s, ""));
        let mut size = None;
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", n)) => {
                    let b = values::bytes(n).map_err(|e| err(&p, item.mark, e))?;
                    size = Some(mib(cx, &p, item.mark, b)?);
                }
                _ => cx.drop(
                    p.clone(),
                    item.mark,
                    format!("the tmpfs option {:?} is not carried", shorten(o)),
                ),
            }
        }
        spec.tmpfs.push(TmpfsMount {
            mount_path: target.to_owned(),
            size_mib: size,
        });
    }
    Ok(())
}

/// `devices`: `HOST[:CONTAINER][:PERMISSIONS]` as docker splits it, or the long syntax.
pub(crate) fn devices(cx: &mut Cx, path: &str, v: &Node, spec: &mut ContainerSpec) -> R<()> {
    let Kind::Seq(items) = &v.kind else {
        return Err(err(
            path,
            v.mark,
            format!("is {}; a list of devices is expected", v.describe()),
        ));
    };
    let is_perm = |s: &str| !s.is_empty() && s.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let (host, container, perms) = if let Kind::Map(entries) = &item.kind {
            let (mut s, mut t, mut perm) = (None, None, None);
            for (k, val) in entries {
                let kp = format!("{p}.{}", shorten(&k.text));
                match k.text.as_str() {
                    "source" => s = string(cx, &kp, val)?,
                    "target" => t = string(cx, &kp, val)?,
                    "permissions" => perm = string(cx, &kp, val)?,
                    other => cx.drop(
                        format!("{p}.{}", shorten(other)),
                        k.mark,
                        "is not a device key",
                    ),
                }
            }
            let s = s.ok_or_else(|| err(&p, item.mark, "has no `source`"))?;
            (s, t, perm)
        } else {
            let Some(s) = string(cx, &p, item)? else {
                continue;
            };
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [h] => ((*h).to_owned(), None, None),
                [h, x] if is_perm(x) => ((*h).to_owned(), None, Some((*x).to_owned())),
                [h, c] => ((*h).to_owned(), Some((*c).to_owned()), None),
                [h, c, m] => (
                    (*h).to_owned(),
                    Some((*c).to_owned()),
                    Some((*m).to_owned()),
                ),
                _ => {
                    return Err(err(
                        &p,
                        item.mark,
                        format!("{:?} is not HOST[:CONTAINER][:PERMISSIONS]", shorten(&s)),
                    ))
                }
            }
        };
        if !host.starts_with('/') {
            cx.drop(
                p,
                item.mark,
                "a CDI device name is not carried: pass the device node (/dev/…)",
            );
            continue;
        }
        let container = container.filter(|c| *c != host);
        spec.devices.push(DeviceMapping {
            host_path: host,
            container_path: container,
            permissions: perms.filter(|m| m != "rwm"),
        });
    }
    Ok(())
}

/// Names of the named volumes a service uses (for volumes shared between services).
pub(crate) fn named_volumes(service: &Node) -> Vec<String> {
    let Some(Kind::Seq(items)) = service
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.text == "volumes"))
        .map(|(_, v)| &v.kind)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for item in items {
        let name = match &item.kind {
            Kind::Scalar { text, .. } => match text.split_once(':') {
                Some((s, _)) if !s.starts_with(['/', '.', '~']) && !s.is_empty() => s.to_owned(),
                _ => continue,
            },
            Kind::Map(entries) => {
                let get = |key: &str| {
                    entries.iter().find_map(|(k, v)| match &v.kind {
                        Kind::Scalar { text, .. } if k.text == key => Some(text.as_str()),
                        _ => None,
                    })
                };
                match (get("type"), get("source")) {
                    (Some("volume"), Some(s)) if !s.is_empty() => s.to_owned(),
                    _ => continue,
                }
            }
            Kind::Seq(_) => continue,
        };
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

/// The top-level `volumes` declarations: an empty one declares a volume (carried by the
/// services' mounts); driver, options, `external` and names are not carried.
pub(crate) fn top_level_volumes(k: &Key, v: &Node, found: &mut Vec<Finding>) {
    let Some(entries) = v.as_map() else {
        if !v.is_null() {
            found.push(Finding {
                path: "volumes".into(),
                mark: k.mark,
                severity: Severity::Unsupported,
                message: format!("is {}; a mapping of volume names", v.describe()),
            });
        }
        return;
    };
    let volumes: BTreeMap<&str, &Node> =
        entries.iter().map(|(k, v)| (k.text.as_str(), v)).collect();
    for (name, decl) in volumes {
        for (dk, _) in decl.as_map().unwrap_or_default() {
            found.push(Finding {
                path: format!("volumes.{}.{}", shorten(name), shorten(&dk.text)),
                mark: dk.mark,
                severity: Severity::Unsupported,
                message: "volume settings are not carried: the device's volume is a local \
                          podman volume named after the deployment"
                    .into(),
            });
        }
    }
}
