//! `healthcheck`: docker's health check as one exec probe.

use fleet_contract::{ExecProbe, Probe};

use super::{boolean, err, integer, mapping, string, string_list, Cx, R};
use crate::values::{self, shorten};
use crate::yaml::{Kind, Node};

/// `healthcheck` as an exec probe with docker's timing defaults (30 s, 30 s, 3 retries).
pub(super) fn healthcheck(cx: &mut Cx, path: &str, v: &Node) -> R<Option<Probe>> {
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
