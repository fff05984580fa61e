//! `ports`: Compose's short syntax (`[HOST_IP:]HOST:CONTAINER[/PROTO]`, ranges) and long
//! syntax, as `[[container.ports]]`.

use fleet_contract::{ContainerSpec, PortMapping, Protocol, MAX_LIST_ENTRIES};

use super::{err, integer, string, Cx, R};
use crate::values::shorten;
use crate::yaml::{Key, Kind, Node};

/// `ports`: `[HOST_IP:]HOST:CONTAINER[/PROTO]` (equal-length ranges expand to one mapping
/// per port) or the long syntax. A port without a host port (Compose picks an ephemeral
/// one) is not carried: the manifest publishes fixed ports.
pub(crate) fn ports(cx: &mut Cx, path: &str, v: &Node, spec: &mut ContainerSpec) -> R<()> {
    let Kind::Seq(items) = &v.kind else {
        return Err(err(
            path,
            v.mark,
            format!("is {}; a list of ports is expected", v.describe()),
        ));
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let parsed = match &item.kind {
            Kind::Map(entries) => long_port(cx, &p, entries)?,
            _ => {
                let Some(s) = string(cx, &p, item)? else {
                    continue;
                };
                short_port(&s).map_err(|e| err(&p, item.mark, e))?
            }
        };
        match parsed {
            Port::Mapped(list) => {
                if spec.ports.len() + list.len() > MAX_LIST_ENTRIES {
                    return Err(err(
                        &p,
                        item.mark,
                        format!("a manifest publishes at most {MAX_LIST_ENTRIES} ports"),
                    ));
                }
                spec.ports.extend(list);
            }
            Port::Dropped(why) => cx.drop(p, item.mark, why),
        }
    }
    Ok(())
}

enum Port {
    Mapped(Vec<PortMapping>),
    Dropped(String),
}

fn protocol(s: &str) -> Result<Option<Protocol>, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Some(Protocol::Tcp)),
        "udp" => Ok(Some(Protocol::Udp)),
        "sctp" => Ok(None),
        _ => Err(format!("{:?} is not a protocol (tcp, udp)", shorten(s))),
    }
}

/// `80`, `8000-8010` → (first, last).
fn port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "{:?} is not a port (1-65535) or a range of ports",
            shorten(s)
        )
    };
    let one = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(bad)
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        }
        None => one(s).map(|p| (p, p)),
    }
}

fn expand(
    host_ip: Option<String>,
    host: (u16, u16),
    target: (u16, u16),
    protocol: Protocol,
) -> Port {
    if usize::from(host.1 - host.0) >= MAX_LIST_ENTRIES {
        return Port::Dropped(format!(
            "a range of {} ports; a manifest publishes at most {MAX_LIST_ENTRIES}",
            u32::from(host.1 - host.0) + 1
        ));
    }
    if host.1 - host.0 != target.1 - target.0 {
        return Port::Dropped(
            "a host port range for a different number of container ports: Compose picks one \
             port of the range, the manifest publishes fixed ports"
                .into(),
        );
    }
    Port::Mapped(
        (0..=(host.1 - host.0))
            .map(|d| PortMapping {
                host_ip: host_ip.clone(),
                host_port: host.0 + d,
                container_port: target.0 + d,
                protocol,
            })
            .collect(),
    )
}

const EPHEMERAL: &str = "no host port: Compose publishes it on an ephemeral host port, the \
                         manifest only on fixed ones; write HOST:CONTAINER";

fn short_port(s: &str) -> Result<Port, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto),
        None => (s, "tcp"),
    };
    let Some(protocol) = protocol(proto)? else {
        return Ok(Port::Dropped(
            "sctp is not carried (tcp and udp are)".into(),
        ));
    };
    // `[::1]:80:80`, `::1:80:80`, `127.0.0.1:80:80`, `127.0.0.1::80`, `80:80`, `80`.
    let (ip, host, target) = if let Some(rest) = spec.strip_prefix('[') {
        let (ip, rest) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{:?} is not [IP]:HOST:CONTAINER", shorten(s)))?;
        let (host, target) = rest.rsplit_once(':').unwrap_or(("", rest));
        (Some(ip), host, target)
    } else {
        let mut parts = spec.rsplitn(3, ':');
        let target = parts.next().unwrap_or_default();
        let host = parts.next();
        let ip = parts.next();
        match host {
            None => return Ok(Port::Dropped(EPHEMERAL.into())),
            Some(h) => (ip, h, target),
        }
    };
    let target = port_range(target)?;
    if host.is_empty() {
        return Ok(Port::Dropped(EPHEMERAL.into()));
    }
    let host = port_range(host)?;
    let ip = ip.filter(|ip| !ip.is_empty()).map(str::to_owned);
    Ok(expand(ip, host, target, protocol))
}

fn long_port(cx: &mut Cx, path: &str, entries: &[(Key, Node)]) -> R<Port> {
    let mut target = None;
    let mut published = None;
    let mut host_ip = None;
    let mut proto = Protocol::Tcp;
    for (k, v) in entries {
        let p = format!("{path}.{}", shorten(&k.text));
        match k.text.as_str() {
            "target" => {
                let n = integer(&p, v)?;
                let n = u16::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| err(&p, v.mark, format!("{n} is not a port (1-65535)")))?;
                target = Some(n);
            }
            "published" => {
                if let Some(s) = string(cx, &p, v)? {
                    published = Some(port_range(&s).map_err(|e| err(&p, v.mark, e))?);
                }
            }
            "host_ip" => host_ip = string(cx, &p, v)?,
            "protocol" => {
                if let Some(s) = string(cx, &p, v)? {
                    match protocol(&s).map_err(|e| err(&p, v.mark, e))? {
                        Some(pr) => proto = pr,
                        None => {
                            return Ok(Port::Dropped(
                                "sctp is not carried (tcp and udp are)".into(),
                            ))
                        }
                    }
                }
            }
            // Swarm's routing mode; docker compose publishes the same either way.
            "mode" => {}
            "name" | "app_protocol" => cx.drop(p, k.mark, "port metadata is not carried"),
            other => cx.drop(
                format!("{path}.{}", shorten(other)),
                k.mark,
                "is not a port key",
            ),
        }
    }
    let Some(target) = target else {
        return Err(err(
            path,
            entries.first().map(|(k, _)| k.mark).unwrap_or_default(),
            "has no `target`",
        ));
    };
    let Some(published) = published else {
        return Ok(Port::Dropped(EPHEMERAL.into()));
    };
    Ok(expand(host_ip, published, (target, target), proto))
}
