//! One compose service into one [`Deployment`]: the dispatch over the service's keys, and
//! the keys with a single value (image, command, environment, restart, limits, user,
//! capabilities, labels, health check, stop behaviour, pull policy, logging, deploy).
//! Mounts, ports and devices are in [`crate::service::mounts`].

mod mounts;

use std::collections::BTreeMap;

use fleet_contract::{
    ContainerSpec, Deployment, DeviceId, ExecProbe, Lifecycle, LogOptions, NetworkMode, Probe,
    PullPolicy, Resources, RestartPolicy, API_VERSION,
};

use crate::values::{self, shorten};
use crate::yaml::{Key, Kind, Mark, Node};
use crate::{Finding, ServiceError, Severity};

pub(crate) use mounts::{named_volumes, top_level_volumes};

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

pub(crate) fn err(path: &str, mark: Mark, message: impl Into<String>) -> ServiceError {
    ServiceError {
        path: path.to_owned(),
        mark: Some(mark),
        message: message.into(),
    }
}

/// A scalar's text with Compose interpolation applied; `None` for null, or when the value
/// depends on interpolation (a finding says so). A list or mapping is an error.
pub(crate) fn string(cx: &mut Cx, path: &str, v: &Node) -> R<Option<String>> {
    match &v.kind {
        _ if v.is_null() => Ok(None),
        Kind::Scalar { text, .. } => match values::interpolate(text) {
            Ok(s) => Ok(Some(s)),
            Err(why) => {
                cx.drop(path.to_owned(), v.mark, why);
                Ok(None)
            }
        },
        _ => Err(err(
            path,
            v.mark,
            format!("is {}; a string is expected", v.describe()),
        )),
    }
}

/// A list of strings (each element as [`string`]); `None` if any element is not carried.
pub(crate) fn string_list(cx: &mut Cx, path: &str, v: &Node) -> R<Option<Vec<String>>> {
    let Kind::Seq(items) = &v.kind else {
        return Err(err(
            path,
            v.mark,
            format!("is {}; a list of strings is expected", v.describe()),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match string(cx, &format!("{path}[{i}]"), item)? {
            Some(s) => out.push(s),
            None if item.is_null() => {
                return Err(err(
                    &format!("{path}[{i}]"),
                    item.mark,
                    "is null; a string is expected",
                ))
            }
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

pub(crate) fn boolean(path: &str, v: &Node) -> R<bool> {
    match &v.kind {
        Kind::Scalar { text, .. } => match text.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            _ => Err(err(
                path,
                v.mark,
                format!("{:?} is not true or false", shorten(text)),
            )),
        },
        _ => Err(err(
            path,
            v.mark,
            format!("is {}; true or false is expected", v.describe()),
        )),
    }
}

pub(crate) fn integer(path: &str, v: &Node) -> R<i64> {
    match &v.kind {
        Kind::Scalar { text, .. } => text.trim().parse::<i64>().map_err(|_| {
            err(
                path,
                v.mark,
                format!("{:?} is not a whole number", shorten(text)),
            )
        }),
        _ => Err(err(
            path,
            v.mark,
            format!("is {}; a number is expected", v.describe()),
        )),
    }
}

/// The mapping's entries, or an error naming what it is instead.
pub(crate) fn mapping<'n>(path: &str, v: &'n Node) -> R<&'n [(Key, Node)]> {
    v.as_map().ok_or_else(|| {
        err(
            path,
            v.mark,
            format!("is {}; a mapping is expected", v.describe()),
        )
    })
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
                mounts::ports(cx, &p, v, &mut spec)?;
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

/// `healthcheck` as an exec probe with docker's timing defaults (30 s, 30 s, 3 retries).
fn healthcheck(cx: &mut Cx, path: &str, v: &Node) -> R<Option<Probe>> {
    let entries = mapping(path, v)?;
    let mut test = None;
    let mut timing = [(30u32, "interval"), (30, "timeout"), (0, "start_period")];
    let mut retries = 3u32;
    let mut disabled = false;
    for (k, val) in entries {
        let p = format!("{path}.{}", shorten(&k.text));
        match k.text.as_str() {
            "test" => test = Some((health_test(cx, &p, val)?, val.mark)),
            "disable" => disabled = boolean(&p, val)?,
            "retries" => {
                let n = integer(&p, val)?;
                retries = match n {
                    0 => 3,
                    n => u32::try_from(n).map_err(|_| err(&p, val.mark, "must be 0 or more"))?,
                };
            }
            key @ ("interval" | "timeout" | "start_period") => {
                let Some(s) = string(cx, &p, val)? else {
                    continue;
                };
                let (secs, exact) = values::duration_secs(&s).map_err(|e| err(&p, val.mark, e))?;
                let secs = u32::try_from(secs)
                    .map_err(|_| err(&p, val.mark, format!("{secs} s is too long")))?;
                if !exact {
                    cx.note(p.clone(), val.mark, format!("rounded up to {secs} s"));
                }
                if key == "start_period" && secs > 0 {
                    cx.note(
                        p.clone(),
                        val.mark,
                        "carried as initialDelaySecs: the first check runs after it (docker \
                         runs checks during it and ignores their failures)",
                    );
                }
                for t in timing.iter_mut().filter(|t| t.1 == key) {
                    // docker reads 0 as its default.
                    if secs > 0 || key == "start_period" {
                        t.0 = secs;
                    }
                }
            }
            "start_interval" => cx.drop(p, k.mark, "the manifest has no start interval"),
            other => cx.drop(
                format!("{path}.{}", shorten(other)),
                k.mark,
                "is not a health check key",
            ),
        }
    }
    if disabled {
        return Ok(None);
    }
    let Some((test, mark)) = test else {
        cx.drop(
            path.to_owned(),
            v.mark,
            "has no `test`: the image's own HEALTHCHECK is not known at import, so nothing is \
             carried",
        );
        return Ok(None);
    };
    let Some(command) = test else {
        return Ok(None); // ["NONE"], or a test not carried (its finding is written)
    };
    cx.note(
        path.to_owned(),
        mark,
        "becomes an exec probe: the deployment is Running once it passes, and a container \
         that keeps failing it is restarted per its restart policy (docker only reports health)",
    );
    Ok(Some(Probe {
        name: None,
        http: None,
        tcp: None,
        exec: Some(ExecProbe { command }),
        period_secs: timing[0].0,
        timeout_secs: timing[1].0,
        initial_delay_secs: timing[2].0,
        failure_threshold: retries,
    }))
}

/// `test`: `["CMD", args…]`, `["CMD-SHELL", "cmd"]` or a string (`/bin/sh -c`, as docker
/// runs CMD-SHELL), `["NONE"]` (no probe). `Ok(None)` when there is no command to run.
fn health_test(cx: &mut Cx, path: &str, v: &Node) -> R<Option<Vec<String>>> {
    let shell = |s: String| vec!["/bin/sh".to_owned(), "-c".to_owned(), s];
    if let Kind::Seq(_) = v.kind {
        let Some(list) = string_list(cx, path, v)? else {
            return Ok(None);
        };
        return match list.split_first() {
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => Ok(Some(rest.to_vec())),
            Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                Ok(Some(shell(rest.join(" "))))
            }
            Some((first, _)) if first == "NONE" => Ok(None),
            _ => Err(err(
                path,
                v.mark,
                "is not [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or [\"NONE\"]",
            )),
        };
    }
    Ok(string(cx, path, v)?.map(shell))
}

fn logging(cx: &mut Cx, path: &str, v: &Node) -> R<LogOptions> {
    let mut out = LogOptions::default();
    for (k, val) in mapping(path, v)? {
        let p = format!("{path}.{}", shorten(&k.text));
        match k.text.as_str() {
            "driver" => {
                if let Some(d) = string(cx, &p, val)? {
                    if !matches!(d.as_str(), "json-file" | "local" | "k8s-file") {
                        cx.drop(
                            p,
                            val.mark,
                            "the log driver is not carried: podman logs to its own files, \
                             capped by logs.maxSizeMib",
                        );
                    }
                }
            }
            "options" | "driver_opts" => {
                for (ok, ov) in mapping(&p, val)? {
                    let op = format!("{p}.{}", shorten(&ok.text));
                    if ok.text == "max-size" {
                        if let Some(s) = string(cx, &op, ov)? {
                            let b = values::bytes(&s).map_err(|e| err(&op, ov.mark, e))?;
                            out.max_size_mib = Some(mib(cx, &op, ov.mark, b)?);
                        }
                    } else {
                        cx.drop(
                            op,
                            ok.mark,
                            "the manifest caps only the log size (max-size)",
                        );
                    }
                }
            }
            other => cx.drop(
                format!("{path}.{}", shorten(other)),
                k.mark,
                "is not a logging key",
            ),
        }
    }
    Ok(out)
}

/// Bytes as whole MiB, rounded up (with a note when not exact).
pub(crate) fn mib(cx: &mut Cx, path: &str, mark: Mark, bytes: u128) -> R<u32> {
    let m = bytes.div_ceil(1 << 20);
    if bytes % (1 << 20) != 0 {
        cx.note(path.to_owned(), mark, format!("rounded up to {m} MiB"));
    }
    u32::try_from(m).map_err(|_| err(path, mark, format!("{m} MiB is too large")))
}

/// `mem_limit`/`cpus`/`pids_limit` and `deploy.resources.limits`, which must agree.
#[derive(Default)]
struct Limits {
    memory: Option<(u128, Mark, String)>,
    cpus: Option<(u32, Mark, String)>,
    pids: Option<(u32, Mark, String)>,
    memory_mib: Option<u32>,
}

impl Limits {
    fn set<T: PartialEq + Copy + std::fmt::Debug>(
        slot: &mut Option<(T, Mark, String)>,
        value: T,
        path: &str,
        mark: Mark,
    ) -> R<()> {
        if let Some((old, _, old_path)) = slot {
            if *old != value {
                return Err(err(
                    path,
                    mark,
                    format!("disagrees with {old_path}; set the limit once"),
                ));
            }
        }
        *slot = Some((value, mark, path.to_owned()));
        Ok(())
    }

    fn memory(&mut self, cx: &mut Cx, path: &str, v: &Node, _deploy: bool) -> R<()> {
        let b = match &v.kind {
            Kind::Scalar { text, plain: true } if text.bytes().all(|c| c.is_ascii_digit()) => text
                .parse::<u128>()
                .map_err(|_| err(path, v.mark, "is too large"))?,
            _ => {
                let Some(s) = string(cx, path, v)? else {
                    return Ok(());
                };
                values::bytes(&s).map_err(|e| err(path, v.mark, e))?
            }
        };
        Self::set(&mut self.memory, b, path, v.mark)?;
        // 0 is no limit in Compose.
        self.memory_mib = if b == 0 {
            None
        } else {
            Some(mib(cx, path, v.mark, b)?)
        };
        Ok(())
    }

    fn cpus(&mut self, cx: &mut Cx, path: &str, v: &Node, _deploy: bool) -> R<()> {
        let Some(s) = string(cx, path, v)? else {
            return Ok(());
        };
        let c: f64 = s
            .trim()
            .parse()
            .ok()
            .filter(|c: &f64| c.is_finite() && *c >= 0.0 && *c <= 1_000_000.0)
            .ok_or_else(|| {
                err(
                    path,
                    v.mark,
                    format!("{:?} is not a number of CPUs such as 0.5", shorten(&s)),
                )
            })?;
        let millis = (c * 1000.0).round();
        if (c * 1000.0 - millis).abs() > 1e-6 {
            cx.note(
                path.to_owned(),
                v.mark,
                format!("rounded to {millis} thousandths of a CPU"),
            );
        }
        // In range by the filter above: at most 10^9.
        Self::set(&mut self.cpus, millis as u32, path, v.mark)
    }

    fn pids(&mut self, path: &str, v: &Node, _deploy: bool) -> R<()> {
        let n = integer(path, v)?;
        // 0 and -1 are "no limit" in Compose.
        let n = match n {
            -1 | 0 => 0,
            n => u32::try_from(n).map_err(|_| err(path, v.mark, "must be -1 or more"))?,
        };
        Self::set(&mut self.pids, n, path, v.mark)
    }

    fn resources(&self) -> Resources {
        Resources {
            memory_mib: self.memory_mib,
            cpu_millis: self.cpus.as_ref().map(|c| c.0).filter(|c| *c > 0),
            pids: self.pids.as_ref().map(|p| p.0).filter(|p| *p > 0),
        }
    }
}

/// `deploy`: resource limits and the restart policy are carried; the swarm keys are not.
fn deploy(
    cx: &mut Cx,
    path: &str,
    v: &Node,
    limits: &mut Limits,
) -> R<Option<(RestartPolicy, Mark)>> {
    let mut restart = None;
    for (k, val) in mapping(path, v)? {
        let p = format!("{path}.{}", shorten(&k.text));
        match k.text.as_str() {
            "replicas" => {
                if integer(&p, val)? != 1 {
                    cx.drop(p, k.mark, "a deployment is one container");
                }
            }
            "mode" => {
                if string(cx, &p, val)?.as_deref() != Some("replicated") {
                    cx.drop(p, k.mark, "a deployment is one container on one device");
                }
            }
            "resources" => {
                for (rk, rv) in mapping(&p, val)? {
                    let rp = format!("{p}.{}", shorten(&rk.text));
                    if rk.text != "limits" {
                        cx.drop(rp, rk.mark, "only limits are carried");
                        continue;
                    }
                    for (lk, lv) in mapping(&rp, rv)? {
                        let lp = format!("{rp}.{}", shorten(&lk.text));
                        match lk.text.as_str() {
                            "memory" => limits.memory(cx, &lp, lv, true)?,
                            "cpus" => limits.cpus(cx, &lp, lv, true)?,
                            "pids" => limits.pids(&lp, lv, true)?,
                            _ => cx.drop(lp, lk.mark, "the manifest has no such limit"),
                        }
                    }
                }
            }
            "restart_policy" => {
                for (rk, rv) in mapping(&p, val)? {
                    let rp = format!("{p}.{}", shorten(&rk.text));
                    if rk.text != "condition" {
                        cx.drop(
                            rp,
                            rk.mark,
                            "the agent restarts with its own backoff, without a limit",
                        );
                        continue;
                    }
                    let Some(c) = string(cx, &rp, rv)? else {
                        continue;
                    };
                    let policy = match c.as_str() {
                        "none" => RestartPolicy::Never,
                        "on-failure" => RestartPolicy::OnFailure,
                        "any" => RestartPolicy::Always,
                        other => {
                            return Err(err(
                                &rp,
                                rv.mark,
                                format!(
                                    "{:?} is not a condition (none, on-failure, any)",
                                    shorten(other)
                                ),
                            ))
                        }
                    };
                    restart = Some((policy, rv.mark));
                }
            }
            _ => cx.drop(p, k.mark, "swarm settings are not carried"),
        }
    }
    Ok(restart)
}
