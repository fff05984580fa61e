//! Resource limits (`mem_limit`, `cpus`, `pids_limit`, `deploy.resources.limits`), the
//! rest of `deploy` (restart policy, swarm keys) and `logging`.

use fleet_contract::{LogOptions, Resources, RestartPolicy};

use super::{err, integer, mapping, mib, string, Cx, R};
use crate::values::{self, shorten};
use crate::yaml::{Kind, Mark, Node};

pub(super) fn logging(cx: &mut Cx, path: &str, v: &Node) -> R<LogOptions> {
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

/// `mem_limit`/`cpus`/`pids_limit` and `deploy.resources.limits`, which must agree.
#[derive(Default)]
pub(super) struct Limits {
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

    pub(super) fn memory(&mut self, cx: &mut Cx, path: &str, v: &Node, _deploy: bool) -> R<()> {
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

    pub(super) fn cpus(&mut self, cx: &mut Cx, path: &str, v: &Node, _deploy: bool) -> R<()> {
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

    pub(super) fn pids(&mut self, path: &str, v: &Node, _deploy: bool) -> R<()> {
        let n = integer(path, v)?;
        // 0 and -1 are "no limit" in Compose.
        let n = match n {
            -1 | 0 => 0,
            n => u32::try_from(n).map_err(|_| err(path, v.mark, "must be -1 or more"))?,
        };
        Self::set(&mut self.pids, n, path, v.mark)
    }

    pub(super) fn resources(&self) -> Resources {
        Resources {
            memory_mib: self.memory_mib,
            cpu_millis: self.cpus.as_ref().map(|c| c.0).filter(|c| *c > 0),
            pids: self.pids.as_ref().map(|p| p.0).filter(|p| *p > 0),
        }
    }
}

/// `deploy`: resource limits and the restart policy are carried; the swarm keys are not.
pub(super) fn deploy(
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
