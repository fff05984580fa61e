//! One compose service into one [`Deployment`]: the dispatch over the service's keys, and
//! the keys with a single value (image, command, environment, labels, network, restart,
//! user, capabilities, stop behaviour, pull policy).
//! Mounts and devices are in `mounts`, ports in `ports`, the health check in `health`, limits,
//! `deploy` and `logging` in `limits`, the value readers in `read`.

mod health;
mod limits;
mod mounts;
mod ports;
mod read;

use std::collections::BTreeMap;

use fleet_contract::{
    ContainerSpec, Deployment, DeviceId, Lifecycle, NetworkMode, PullPolicy, RestartPolicy,
    API_VERSION,
};

use crate::values::{self, shorten};
use crate::yaml::{Kind, Mark, Node};
use crate::{Finding, ServiceError, Severity};

pub(crate) use mounts::{named_volumes, top_level_volumes};
pub(crate) use read::{boolean, err, integer, mapping, mib, string, string_list};

use health::healthcheck;
use limits::{deploy, logging, Limits};

pub(crate) type R<T> = Result<T, ServiceError>;

/// The service being converted and where its findings go.
pub(crate) struct Cx<'a> {
    pub svc: &'a str,
    pub found: &'a mut Vec<Finding>,
    /// Named volume → the services that use it.
    pub users: &'a BTreeMap<String, Vec<String>>,
}

impl Cx<'_> {
    pub fn path(&self, rest: &str) -> String {
        format!("services.{}.{rest}", shorten(self.svc))
    }
    pub fn drop(&mut self, path: String, mark: Mark, message: impl Into<String>) {
        self.found.push(Finding {
            path,
            mark,
            severity: Severity::Unsupported,
            message: message.into(),
        });
    }
    pub fn note(&mut self, path: String, mark: Mark, message: impl Into<String>) {
        self.found.push(Finding {
            path,
            mark,
            severity: Severity::Note,
            message: message.into(),
        });
    }
}

/// Keys with nothing to carry them, and why.
fn not_carried(key: &str) -> Option<&'static str> {
    Some(match key {
        "entrypoint" => {
            "the manifest has no entrypoint (its `command` runs under the image's own \
             ENTRYPOINT); if the image has none, put the entrypoint at the start of `command`"
        }
        "env_file" => "files are not read at import; put the variables under `environment`",
        "build" => "images are not built; build and push the image, then set `image`",
        "container_name" => "the agent names the container after the deployment",
        "depends_on" => {
            "deployments start independently and in no order; let the service wait for what it \
             needs (a restart policy and a probe help)"
        }
        "links" | "external_links" => {
            "there are no links: podman's default network resolves no container names"
        }
        "networks" => {
            "networks are not carried: the container is on podman's default bridge network \
             (no names resolved between deployments); network_mode host or none is carried"
        }
        "expose" => "only documents ports between compose services; publish with `ports`",
        "extends" => {
            "not resolved; `docker compose config` prints the file with `extends` resolved"
        }
        "profiles" => "the service is converted whatever its profiles",
        "scale" => "a deployment is one container",
        "secrets" | "configs" => {
            "not carried: put the files on the device and bind-mount them (a volume with an \
             absolute host path)"
        }
        "hostname" | "domainname" | "dns" | "dns_search" | "dns_opt" | "extra_hosts"
        | "mac_address" => "the container's network identity is podman's default",
        "ipc" | "pid" | "uts" | "userns_mode" | "cgroup" | "cgroup_parent" | "isolation"
        | "runtime" | "init" | "platform" => "the manifest has no such setting",
        "shm_size"
        | "ulimits"
        | "sysctls"
        | "security_opt"
        | "device_cgroup_rules"
        | "blkio_config"
        | "cpu_shares"
        | "cpu_quota"
        | "cpu_period"
        | "cpu_rt_runtime"
        | "cpu_rt_period"
        | "cpuset"
        | "cpu_count"
        | "cpu_percent"
        | "mem_reservation"
        | "memswap_limit"
        | "mem_swappiness"
        | "oom_kill_disable"
        | "oom_score_adj"
        | "storage_opt"
        | "gpus"
        | "group_add" => "the manifest has no such setting",
        "tty" | "stdin_open" | "attach" | "annotations" | "volumes_from" | "credential_spec"
        | "develop" | "post_start" | "pre_stop" | "label_file" | "use_api_socket" | "models"
        | "provider" => "the manifest has no such setting",
        _ => return None,
    })
}

/// Converts service `svc` (its node `node`, key at `mark`).
pub(crate) fn convert_service(
    svc: &str,
    mark: Mark,
    node: &Node,
    users: &BTreeMap<String, Vec<String>>,
    found: &mut Vec<Finding>,
) -> R<Deployment> {
    let here = format!("services.{}", shorten(svc));
    let lower = svc.to_ascii_lowercase();
    DeviceId::parse(&lower).map_err(|e| {
        err(
            &here,
            mark,
            format!(
                "the service name {:?} cannot be a deployment name ({e}); rename the service",
                shorten(svc)
            ),
        )
    })?;
    let entries = if node.is_null() {
        &[][..]
    } else {
        mapping(&here, node)?
    };
    let cx = &mut Cx { svc, found, users };
    let mut spec = ContainerSpec::default();
    let mut image = None;
    let mut has_build = false;
    let mut lifecycle = Lifecycle::default();
    let mut restart: Option<(RestartPolicy, Mark)> = None;
    let mut limits = Limits::default();
    let mut ports_at = None;
    for (k, v) in entries {
        let p = cx.path(&k.text);
        match k.text.as_str() {
            "image" => image = string(cx, &p, v)?,
            "command" => {
                if let Some(c) = command(cx, &p, v)? {
                    spec.command = c;
                }
            }
            "environment" => spec.env = environment(cx, &p, v)?,
            "labels" => spec.labels = labels(cx, &p, v)?,
            "ports" => {
                ports_at = Some((p.clone(), k.mark));
                ports::ports(cx, &p, v, &mut spec)?;
            }
            "volumes" => mounts::volumes(cx, &p, v, &mut spec)?,
            "tmpfs" => mounts::tmpfs(cx, &p, v, &mut spec)?,
            "devices" => mounts::devices(cx, &p, v, &mut spec)?,
            "network_mode" => spec.network = network_mode(cx, &p, v)?.unwrap_or_default(),
            "restart" => {
                if let Some(s) = string(cx, &p, v)? {
                    restart = restart_policy(cx, &p, v.mark, &s)?.map(|r| (r, v.mark));
                }
            }
            "mem_limit" => limits.memory(cx, &p, v, false)?,
            "cpus" => limits.cpus(cx, &p, v, false)?,
            "pids_limit" => limits.pids(&p, v, false)?,
            "user" => {
                if let Some(u) = string(cx, &p, v)? {
                    let (user, group) = match u.split_once(':') {
                        Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
                        None => (u, None),
                    };
                    spec.user = Some(user);
                    spec.group = group;
                }
            }
            "cap_add" => spec.cap_add = string_list(cx, &p, v)?.unwrap_or_default(),
            "cap_drop" => spec.cap_drop = string_list(cx, &p, v)?.unwrap_or_default(),
            "read_only" => spec.read_only_root_filesystem = boolean(&p, v)?,
            "privileged" => spec.privileged = boolean(&p, v)?,
            "working_dir" => spec.working_dir = string(cx, &p, v)?,
            "healthcheck" => spec.probes = healthcheck(cx, &p, v)?.into_iter().collect(),
            "stop_signal" => {
                if let Some(s) = string(cx, &p, v)? {
                    lifecycle.stop_signal = signal(&p, v.mark, &s)?;
                }
            }
            "stop_grace_period" => {
                if let Some(s) = string(cx, &p, v)? {
                    let (secs, exact) =
                        values::duration_secs(&s).map_err(|e| err(&p, v.mark, e))?;
                    if !exact {
                        cx.note(p.clone(), v.mark, format!("rounded up to {secs} s"));
                    }
                    lifecycle.grace_period_secs = u32::try_from(secs)
                        .map_err(|_| err(&p, v.mark, format!("{secs} s is too long")))?;
                }
            }
            "pull_policy" => spec.pull_policy = pull_policy(cx, &p, v)?.unwrap_or_default(),
            "logging" => spec.logs = logging(cx, &p, v)?,
            "deploy" => {
                if let Some(r) = deploy(cx, &p, v, &mut limits)? {
                    if restart.is_none() {
                        restart = Some(r);
                    }
                }
            }
            "build" => {
                has_build = true;
                cx.drop(p, k.mark, not_carried("build").unwrap_or_default());
            }
            x if x.starts_with("x-") => {}
            x => match not_carried(x) {
                Some(why) => cx.drop(p, k.mark, why),
                None => cx.drop(cx.path(&shorten(x)), k.mark, "is not a Compose service key"),
            },
        }
    }
    let image = image.ok_or_else(|| {
        err(
            &here,
            mark,
            if has_build {
                "has `build` but no `image`: build and push the image, then set `image`"
            } else {
                "has no `image`"
            },
        )
    })?;
    spec.image = image;
    if spec.network != NetworkMode::Bridge && !spec.ports.is_empty() {
        // docker discards published ports outside the bridge network (with a warning).
        let (p, mark) = ports_at.unwrap_or_else(|| (cx.path("ports"), mark));
        cx.drop(
            p,
            mark,
            format!(
                "published ports mean nothing with network_mode {}: docker discards them",
                spec.network.as_str()
            ),
        );
        spec.ports.clear();
    }
    // Compose's default is "no"; the manifest's is `always`, so it is always written.
    spec.restart = restart.map_or(RestartPolicy::Never, |(r, _)| r);
    spec.resources = limits.resources();
    Ok(Deployment {
        api_version: API_VERSION.to_owned(),
        name: lower,
        revision: 1,
        container: spec,
        lifecycle,
        init: Vec::new(),
    })
}

/// `command`: a list as is, a string split as Compose splits it.
fn command(cx: &mut Cx, path: &str, v: &Node) -> R<Option<Vec<String>>> {
    match &v.kind {
        Kind::Seq(_) => string_list(cx, path, v),
        _ => {
            let Some(s) = string(cx, path, v)? else {
                return Ok(None);
            };
            match values::split_command(&s) {
                Ok(argv) => Ok(Some(argv)),
                Err(why) => {
                    cx.drop(path.to_owned(), v.mark, why);
                    Ok(None)
                }
            }
        }
    }
}

/// One `KEY=VALUE` of an environment or labels.
struct Pair {
    key: String,
    /// `None` for a list entry without `=` or a mapping entry with a null value.
    value: Option<String>,
    path: String,
    mark: Mark,
}

/// A list of `KEY=VALUE` strings or a mapping.
fn pairs(cx: &mut Cx, path: &str, v: &Node) -> R<Vec<Pair>> {
    let mut out = Vec::new();
    match &v.kind {
        Kind::Map(entries) => {
            for (k, val) in entries {
                let p = format!("{path}.{}", shorten(&k.text));
                let value = match &val.kind {
                    _ if val.is_null() => None,
                    Kind::Scalar { .. } => match string(cx, &p, val)? {
                        Some(s) => Some(s),
                        None => continue,
                    },
                    _ => {
                        return Err(err(
                            &p,
                            val.mark,
                            format!("is {}; a string is expected", val.describe()),
                        ))
                    }
                };
                out.push(Pair {
                    key: k.text.clone(),
                    value,
                    path: p,
                    mark: k.mark,
                });
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let Some(s) = string(cx, &p, item)? else {
                    if item.is_null() {
                        return Err(err(&p, item.mark, "is null; KEY=VALUE is expected"));
                    }
                    continue;
                };
                let (key, value) = match s.split_once('=') {
                    Some((k, val)) => (k.to_owned(), Some(val.to_owned())),
                    None => (s, None),
                };
                out.push(Pair {
                    key,
                    value,
                    path: p,
                    mark: item.mark,
                });
            }
        }
        _ if v.is_null() => {}
        _ => {
            return Err(err(
                path,
                v.mark,
                format!("is {}; a mapping or a list of KEY=VALUE", v.describe()),
            ))
        }
    }
    Ok(out)
}

fn environment(cx: &mut Cx, path: &str, v: &Node) -> R<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for Pair {
        key,
        value,
        path,
        mark,
    } in pairs(cx, path, v)?
    {
        match value {
            Some(value) => {
                env.insert(key, value);
            }
            None => cx.drop(
                path,
                mark,
                format!(
                    "{} has no value: docker compose takes it from its own environment; give it \
                     a value",
                    shorten(&key)
                ),
            ),
        }
    }
    Ok(env)
}

fn labels(cx: &mut Cx, path: &str, v: &Node) -> R<BTreeMap<String, String>> {
    Ok(pairs(cx, path, v)?
        .into_iter()
        // A label without a value is an empty one (as Compose reads it).
        .map(|p| (p.key, p.value.unwrap_or_default()))
        .collect())
}

fn network_mode(cx: &mut Cx, path: &str, v: &Node) -> R<Option<NetworkMode>> {
    let Some(s) = string(cx, path, v)? else {
        return Ok(None);
    };
    Ok(match s.as_str() {
        "bridge" | "default" => Some(NetworkMode::Bridge),
        "host" => Some(NetworkMode::Host),
        "none" => Some(NetworkMode::None),
        other => {
            cx.drop(
                path.to_owned(),
                v.mark,
                format!(
                    "{:?} is not carried: only bridge, host and none are",
                    shorten(other)
                ),
            );
            None
        }
    })
}

fn restart_policy(cx: &mut Cx, path: &str, mark: Mark, s: &str) -> R<Option<RestartPolicy>> {
    Ok(Some(match s {
        "no" => RestartPolicy::Never,
        "always" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure,
        "unless-stopped" => {
            cx.note(
                path.to_owned(),
                mark,
                "carried as `always`: the agent restarts a container stopped by hand as well",
            );
            RestartPolicy::Always
        }
        s if s.starts_with("on-failure:") => {
            cx.drop(
                path.to_owned(),
                mark,
                "the retry count is not carried: carried as `on-failure`, which retries with \
                 backoff without limit",
            );
            RestartPolicy::OnFailure
        }
        other => {
            return Err(err(
                path,
                mark,
                format!(
                    "{:?} is not a restart policy (no, always, on-failure, unless-stopped)",
                    shorten(other)
                ),
            ))
        }
    }))
}

/// A signal as the manifest names it: `SIGTERM` for `SIGTERM`, `TERM`, `term` or `15`.
fn signal(path: &str, mark: Mark, s: &str) -> R<String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = match upper.as_str() {
        "1" => "SIGHUP".to_owned(),
        "2" => "SIGINT".to_owned(),
        "3" => "SIGQUIT".to_owned(),
        "9" => "SIGKILL".to_owned(),
        "10" => "SIGUSR1".to_owned(),
        "12" => "SIGUSR2".to_owned(),
        "15" => "SIGTERM".to_owned(),
        "28" => "SIGWINCH".to_owned(),
        "30" => "SIGPWR".to_owned(),
        u if u.starts_with("SIG") => u.to_owned(),
        u => format!("SIG{u}"),
    };
    const KNOWN: &[&str] = &[
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH",
        "SIGPWR",
    ];
    if KNOWN.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(err(
            path,
            mark,
            format!(
                "{:?} is not a signal the manifest takes ({})",
                shorten(s),
                KNOWN.join(", ")
            ),
        ))
    }
}

fn pull_policy(cx: &mut Cx, path: &str, v: &Node) -> R<Option<PullPolicy>> {
    let Some(s) = string(cx, path, v)? else {
        return Ok(None);
    };
    Ok(match s.as_str() {
        "always" => Some(PullPolicy::Always),
        "missing" | "if_not_present" => Some(PullPolicy::IfNotPresent),
        other => {
            cx.drop(
                path.to_owned(),
                v.mark,
                format!(
                    "{:?} is not carried: only always and missing are",
                    shorten(other)
                ),
            );
            None
        }
    })
}
