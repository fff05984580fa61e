//! Part b of the bad-input suite: one plane's scenario (one boot of the real agent, every
//! hostile document, the checks, then an offline restart), and the local plane's odd files.

use std::collections::{BTreeMap, BTreeSet};

use super::live::{self, Findings, Plane, GOOD};
use super::table::{self, Expect, Kind, GOOD_IMAGE as GOOD_IMAGE_REF};
use super::{all_cases, common, cut, gen, secret, sign_payload, unix_now, MAX_MESSAGE};

/// Part b: the live agent on one plane (one boot, every hostile document, then an offline
/// restart). Each finding names the plane and the fix it waits for.
pub fn live_plane(plane: live::Plane) {
    let started = std::time::Instant::now();
    let secret = secret();
    let Some(mut rig) = live::Rig::start(plane, &secret) else {
        return;
    };
    eprintln!(
        "{plane:?} plane: broker, podman scope and image ready at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let p = format!("{plane:?} plane");
    let mut f = Findings::default();
    let sign = |b: &[u8]| sign_payload(&rig.kp, b);
    // Fewer random mutations than part a: one boot per plane stays fast.
    let cases = all_cases(&secret, unix_now(), &sign, 30);

    // Boot with two good deployments and wait until podman runs them.
    for g in GOOD {
        rig.put_deployment(g, &rig.good_doc(g)).unwrap();
    }
    rig.spawn_agent();
    if let Err(e) = rig.wait_good_running("good deployments Running") {
        panic!("{p}: {e}\nagent log:\n{}", rig.log_tail());
    }
    let (before, before_vols) = rig.podman_snapshot();
    eprintln!(
        "{p}: good deployments running at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_idle = rig.rss_kib();
    let db_idle = rig.db_bytes();

    // Every hostile deployment document, where the plane reads them.
    let hostile_at = unix_now();
    let hostile = live::hostile_deployments(plane, &cases);
    let mut stored = Vec::new();
    let mut not_storable = Vec::new();
    for (key, case) in &hostile {
        match rig.put_deployment(key, &live::keyed(key, case)) {
            Ok(()) => stored.push((key.clone(), *case)),
            Err(e) => not_storable.push(format!("{} ({})", table::show(key), cut(&e))),
        }
    }
    // Class 6: 40 documents of 1 MB each.
    let big_doc = serde_json::to_vec(&table::with(
        &table::manifest_value("big", table::HOSTILE_IMAGE, &secret),
        "container.env.PAD",
        serde_json::json!("p".repeat(live::BIG_BYTES - 1000)),
    ))
    .unwrap();
    let big_keys: Vec<String> = (0..live::BIG_KEYS).map(|i| format!("big-{i:02}")).collect();
    for k in &big_keys {
        let doc =
            String::from_utf8(big_doc.clone())
                .unwrap()
                .replacen("\"big\"", &format!("\"{k}\""), 1);
        let doc = if plane == Plane::Local {
            toml_big(k, &secret)
        } else {
            doc.into_bytes()
        };
        if let Err(e) = rig.put_deployment(k, &doc) {
            not_storable.push(format!("{k} ({})", cut(&e)));
        }
    }
    // The system and agent documents, one after the other on their single key.
    let (sys_kind, agent_docs) = if plane == Plane::Local {
        (Kind::SystemToml, false)
    } else {
        (Kind::SystemJson, true)
    };
    let mut singles = 0;
    for c in cases
        .iter()
        .filter(|c| c.kind == sys_kind && c.expect != Expect::Accepted)
    {
        singles += usize::from(rig.put_singleton(false, &c.bytes).is_ok());
    }
    if agent_docs {
        for c in cases.iter().filter(|c| c.kind == Kind::AgentJson) {
            singles += usize::from(rig.put_singleton(true, &c.bytes).is_ok());
        }
    }
    // Every hostile command (network planes).
    let mut commands = 0;
    if plane != Plane::Local {
        for c in cases
            .iter()
            .filter(|c| c.kind == Kind::Command && c.expect != Expect::Accepted)
        {
            commands += usize::from(rig.send_command(&c.bytes).is_ok());
        }
    }
    // Local plane: odd files (class 8).
    if plane == Plane::Local {
        odd_files(&rig.root.deployments());
    }
    // Accepted documents that reach podman and fail there (classes 4 and 5): the planted
    // secret is in the env, a 200 KB value in one of them; their failure messages must
    // quote neither.
    let probes: Vec<(String, Vec<u8>)> = [
        (
            "p-start-fails",
            table::manifest_value("p-start-fails", GOOD_IMAGE_REF, &secret),
        ),
        (
            "p-big-env",
            table::with(
                &table::manifest_value("p-big-env", GOOD_IMAGE_REF, &secret),
                "container.env.TOKEN",
                serde_json::json!(format!("{secret}{}", "v".repeat(table::BIG))),
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| {
        let v = table::with(
            &v,
            "container.command",
            serde_json::json!(["/nonexistent/fleet-cmd", secret.clone()]),
        );
        let v = table::with(&v, "init", serde_json::json!([]));
        (k.to_owned(), v)
    })
    .map(|(k, v)| {
        let doc = if plane == Plane::Local {
            toml::to_string(&v).unwrap().into_bytes()
        } else {
            serde_json::to_vec(&v).unwrap()
        };
        (k, doc)
    })
    .collect();
    for (k, doc) in &probes {
        rig.put_deployment(k, doc).unwrap();
    }
    // A last, valid marker: once it shows in status, the plane has read everything before it.
    let marker = "zz-marker";
    let marker_doc = if plane == Plane::Local {
        table::manifest_toml(marker, table::HOSTILE_IMAGE, &secret).into_bytes()
    } else {
        serde_json::to_vec(&table::manifest_value(
            marker,
            table::HOSTILE_IMAGE,
            &secret,
        ))
        .unwrap()
    };
    rig.put_deployment(marker, &marker_doc).unwrap();
    eprintln!(
        "{p}: fed {} deployment documents ({} not storable on this plane: {}), {} × 1 MB, \
         {singles} system/agent documents, {commands} commands",
        stored.len(),
        not_storable.len(),
        not_storable.join(", "),
        live::BIG_KEYS,
    );
    eprintln!("{p}: fed at {:.0} s", started.elapsed().as_secs_f64());
    let read_all =
        fleet_testkit::wait_until(live::CONVERGE, "the marker deployment in status", || {
            rig.phases().contains_key(marker).then_some(())
        });
    f.check(read_all.is_ok(), || {
        format!("{p}: the plane never got to the last document (marker {marker} absent from status) (fix: agent planes): {read_all:?}")
    });
    eprintln!("{p}: all read at {:.0} s", started.elapsed().as_secs_f64());
    // The podman probes fail at start; their messages are short and quote no env value.
    for (k, _) in &probes {
        let failed = fleet_testkit::wait_until(
            std::time::Duration::from_secs(60),
            &format!("{k} failing in podman"),
            || {
                let st = rig.status()?;
                let d = common::deployment(&st, k)?.clone();
                let m = d["message"].as_str().unwrap_or_default();
                (d["phase"] == "Failed" || m.contains("podman")).then_some(d)
            },
        );
        match failed {
            Ok(d) => {
                let m = d["message"].as_str().unwrap_or_default();
                f.check(m.len() < MAX_MESSAGE, || format!("{p}: class 4: {k}'s failure message is {} bytes (limit {MAX_MESSAGE}): {} (fix: modules/containers, agent status)", m.len(), cut(m)));
                f.check(!m.contains(&secret), || format!("{p}: class 5: {k}'s failure message quotes the env value / argv (planted secret): {} (fix: modules/containers)", cut(m)));
            }
            Err(e) => f.0.push(format!(
                "{p}: {k} (podman start fails) never showed a podman failure message: {e} (fix: modules/containers)"
            )),
        }
    }

    eprintln!(
        "{p}: probes failed at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Class 1: one bad document cannot stop the others being cached.
    let cache = rig.cache();
    for k in GOOD.iter().chain([&marker]) {
        f.check(cache.contains_key(&format!("deploy.{k}")), || {
            format!(
                "{p}: class 1: with the hostile documents present, accepted deployment {k} is not in the desired-state cache ({} rows cached) (fix: agent store)",
                cache.len()
            )
        });
    }
    let rss_hostile = rig.rss_kib();
    let db_hostile = rig.db_bytes();
    let refused_bytes: usize = cache
        .iter()
        .filter(|(k, _)| !GOOD.iter().any(|g| **k == format!("deploy.{g}")))
        .map(|(_, (_, n))| n)
        .sum();
    f.check(refused_bytes < 1 << 20, || {
        format!(
            "{p}: class 6: the desired-state cache holds {refused_bytes} bytes for refused/hostile documents; a refused document is recorded as key, length and reason only (fix: agent store)"
        )
    });

    // Still on the plane: a signed ping is answered and status is published afterwards.
    if plane != Plane::Local {
        let beats = rig.heartbeats();
        match rig.ping("after-hostile") {
            Ok(r) => f.check(r["ok"] == true, || format!("{p}: the signed ping after the hostile documents was refused: {r}")),
            Err(e) => f.0.push(format!("{p}: class 4: no reply to a signed ping after the hostile documents (fix: agent planes): {e}")),
        }
        let hb = fleet_testkit::wait_until(
            std::time::Duration::from_secs(15),
            "a heartbeat after the hostile documents",
            || (rig.heartbeats() > beats).then_some(()),
        );
        f.check(hb.is_ok(), || format!("{p}: class 4: no heartbeat published after the hostile documents (fix: agent planes)"));
    }

    // The agent still records its heartbeat (every plane; the local plane has no other):
    // the record is rewritten on every change, and the hostile documents changed it (the
    // inputs it ignored), so it must have been written after they were put.
    let beat = fleet_testkit::wait_until(
        std::time::Duration::from_secs(15),
        "a heartbeat in status written after the hostile documents",
        || {
            rig.status()
                .filter(|s| {
                    s["running"] == true
                        && s["heartbeatAgeSecs"]
                            .as_u64()
                            .or(s["heartbeat_age_secs"].as_u64())
                            .is_some_and(|a| unix_now().saturating_sub(a) >= hostile_at)
                })
                .map(drop)
        },
    );
    f.check(beat.is_ok(), || {
        format!("{p}: class 4: no fresh heartbeat in `fleet-agent status` after the hostile documents (fix: agent): {:?}", rig.status().map(|s| (s["running"].clone(), s["heartbeatAgeSecs"].clone(), s["heartbeat_age_secs"].clone())))
    });

    // Class 8: odd keys (network planes) and odd files (local plane) are shown as ignored
    // inputs with their reason.
    let status_text = rig.status().map(|s| s.to_string()).unwrap_or_default();
    let odd: &[&str] = match plane {
        Plane::Nats => &["Web", "web.extra", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"],
        Plane::Mqtt => &[
            "Web",
            "web.extra",
            // The topic ends in `/*` (quoted in the status, so escaped in its JSON text).
            "deploy/*",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ],
        Plane::Local => &["fifo.toml", "loop.toml", "dir.toml", "bad-"],
    };
    for o in odd {
        f.check(status_text.contains(o), || {
            format!("{p}: class 8: the odd input {o:?} appears nowhere in `fleet-agent status --json` (expected as an ignored input with its reason) (fix: agent status/planes)")
        });
    }

    // Class 3: no container for any document the issue says must be refused.
    let (during, _) = rig.podman_snapshot();
    for (key, case) in &stored {
        if live::must_refuse(case) && during.contains_key(&rig.container_name(key)) {
            f.0.push(format!(
                "{p}: class {}: a container exists for refused document [{}] {} (fix: contract/ decoders, modules/containers)",
                case.class, case.id, case.what
            ));
        }
    }

    // Delete every hostile key; memory returns near idle.
    for (key, _) in &stored {
        let _ = rig.delete_deployment(key);
    }
    for k in &big_keys {
        let _ = rig.delete_deployment(k);
    }
    let _ = rig.delete_deployment(marker);
    for (k, _) in &probes {
        let _ = rig.delete_deployment(k);
    }
    rig.delete_singleton(false);
    rig.delete_singleton(true);
    if plane == Plane::Local {
        remove_odd_files(&rig.root.deployments());
    }
    let gone = fleet_testkit::wait_until(live::CONVERGE, "the marker gone from status", || {
        (!rig.phases().contains_key(marker)).then_some(())
    });
    f.check(gone.is_ok(), || {
        format!("{p}: the deletions never reached status (fix: agent planes)")
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let rss_after = rig.rss_kib();
    let db_after = rig.db_bytes();
    eprintln!(
        "{p}: RSS idle {rss_idle} KiB, with the hostile keys {rss_hostile} KiB, after deleting them {rss_after} KiB; \
         state.db+WAL {db_idle} -> {db_hostile} -> {db_after} bytes; cache bytes for hostile documents {refused_bytes}"
    );
    f.check(rss_after <= rss_idle + live::RSS_SLACK_KIB, || {
        format!(
            "{p}: class 6: RSS after deleting the hostile keys is {rss_after} KiB, idle was {rss_idle} KiB (bound idle + {} KiB) (fix: agent planes/cache)",
            live::RSS_SLACK_KIB
        )
    });
    let cache = rig.cache();
    let cached: BTreeSet<&str> = cache
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("deploy."))
        .collect();
    let want: BTreeSet<String> = GOOD.iter().map(|g| format!("deploy.{g}")).collect();
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    f.check(cached == want, || {
        format!("{p}: class 1: the cache after deleting the hostile keys holds {cached:?}, expected exactly the accepted {want:?} (fix: agent store)")
    });
    if plane != Plane::Local {
        match rig.ping("after-delete") {
            Ok(r) => f.check(r["ok"] == true, || format!("{p}: the signed ping after deletion was refused: {r}")),
            Err(e) => f.0.push(format!("{p}: class 4: no reply to a signed ping after the hostile keys were deleted (fix: agent planes): {e}")),
        }
    }

    // Deleted deployments leave no container or volume behind; only the good ones remain.
    eprintln!(
        "{p}: deletions done at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let only_good = |(c, v): &(BTreeMap<String, (String, String)>, BTreeSet<String>)| {
        c.keys()
            .all(|n| GOOD.iter().any(|g| *n == rig.container_name(g)))
            && v.iter()
                .all(|n| GOOD.iter().any(|g| n.starts_with(&rig.container_name(g))))
    };
    let cleaned = fleet_testkit::wait_until(
        std::time::Duration::from_secs(30),
        "only the good containers and volumes left",
        || {
            let snap = rig.podman_snapshot();
            only_good(&snap).then_some(())
        },
    );
    f.check(cleaned.is_ok(), || {
        format!(
            "{p}: deleted deployments left containers or volumes: {:?} (fix: modules/containers)",
            rig.podman_snapshot()
        )
    });

    // The good deployments kept running, in the same containers.
    let (after, after_vols) = rig.podman_snapshot();
    for g in GOOD {
        let n = rig.container_name(g);
        f.check(after.get(&n) == before.get(&n) && after.get(&n).is_some_and(|(_, s)| s == "running" || s == "Up"), || {
            format!("{p}: class 1: good deployment {g}'s container changed during the hostile documents: before {:?}, after {:?} (fix: modules/containers)", before.get(&n), after.get(&n))
        });
    }

    eprintln!(
        "{p}: offline restart at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Offline restart: stop the broker, restart the agent; no container or volume changes.
    rig.stop_agent();
    if let Some(n) = rig.nats.as_mut() {
        n.stop();
    }
    if let Some(m) = rig.mqtt.as_mut() {
        m.stop();
    }
    rig.spawn_agent();
    let up = fleet_testkit::wait_until(live::CONVERGE, "status after the offline restart", || {
        let ph = rig.phases();
        GOOD.iter().all(|g| ph.contains_key(*g)).then_some(())
    });
    f.check(up.is_ok(), || format!("{p}: class 1: after an offline restart status lacks the good deployments: {:?} (fix: agent store/cache)", rig.phases()));
    // Two resync periods of the containers module (resync_secs = 5) to act wrongly in.
    std::thread::sleep(std::time::Duration::from_secs(12));
    // Only the good deployments' containers and volumes are compared: a deleted
    // deployment's leftovers (reported above) may rightly go during the restart.
    let good_only = |(c, v): (BTreeMap<String, (String, String)>, BTreeSet<String>)| {
        let mine = |n: &str| GOOD.iter().any(|g| n.starts_with(&rig.container_name(g)));
        let c: BTreeMap<_, _> = c.into_iter().filter(|(n, _)| mine(n)).collect();
        let v: BTreeSet<_> = v.into_iter().filter(|n| mine(n)).collect();
        (c, v)
    };
    let (after, after_vols) = good_only((after, after_vols));
    let before_vols = good_only((BTreeMap::new(), before_vols)).1;
    let (offline, offline_vols) = good_only(rig.podman_snapshot());
    f.check(offline == after && offline_vols == after_vols && after_vols == before_vols, || {
        format!("{p}: class 1: the offline restart changed containers or volumes: before {after:?} {after_vols:?} (at boot {before_vols:?}), after {offline:?} {offline_vols:?} (fix: agent cache, modules/containers)")
    });

    // No panic and no planted secret anywhere the agent reports or logs.
    let log = rig.log();
    f.check(!log.contains("panicked"), || {
        let line = log
            .lines()
            .find(|l| l.contains("panicked"))
            .unwrap_or_default();
        format!("{p}: the agent log shows a panic: {}", cut(line))
    });
    for (i, line) in log.lines().enumerate() {
        if line.contains(&secret) {
            f.0.push(format!("{p}: class 5: agent log line {} holds the planted secret: {} (fix: agent/containers messages)", i + 1, cut(line)));
            break;
        }
    }
    for (table_name, row) in rig.reported_rows() {
        if row.contains(&secret) {
            f.0.push(format!("{p}: class 5: the store's {table_name} table holds the planted secret: {} (fix: agent/containers messages)", cut(&row)));
        }
    }
    let mut published: Vec<(String, Vec<u8>)> = rig.seen.lock().unwrap().clone();
    published.extend(rig.status_bucket());
    for (subject, body) in &published {
        if String::from_utf8_lossy(body).contains(&secret) {
            f.0.push(format!("{p}: class 5: published {subject} holds the planted secret (fix: agent/containers messages)"));
            break;
        }
    }
    if status_text.contains(&secret) {
        f.0.push(format!("{p}: class 5: `fleet-agent status --json` holds the planted secret (fix: agent/containers messages)"));
    }
    let largest = published.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    eprintln!(
        "{p}: {} documents published, the largest {largest} bytes",
        published.len()
    );
    let too_big: Vec<String> = published
        .iter()
        .filter(|(_, b)| b.len() > 512 * 1024)
        .map(|(s, b)| format!("{s} ({} bytes)", b.len()))
        .collect();
    f.check(too_big.is_empty(), || {
        format!("{p}: class 4: published documents over 512 KiB: {too_big:?} (fix: agent planes)")
    });

    eprintln!("{p}: {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        f.0.is_empty(),
        "{} findings on the {p} (seed {:#x}):\n{}\nagent log tail:\n{}",
        f.0.len(),
        gen::seed(),
        f.0.join("\n"),
        rig.log_tail()
    );
}

/// A 1 MB TOML manifest for `name` (local plane).
fn toml_big(name: &str, secret: &str) -> Vec<u8> {
    let base = table::manifest_toml(name, table::HOSTILE_IMAGE, secret);
    base.replacen(
        "MODE = \"test\"",
        &format!("MODE = \"{}\"", "p".repeat(live::BIG_BYTES - 1000)),
        1,
    )
    .into_bytes()
}

/// Class 8 files in `deployments.d/`: a non-UTF-8 name, a FIFO, a symlink loop, a directory.
fn odd_files(dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let bad = dir.join(std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.toml"));
    std::fs::write(bad, table::manifest_toml("bad", table::HOSTILE_IMAGE, "x")).unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo.toml"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo");
    std::os::unix::fs::symlink("loop.toml", dir.join("loop.toml")).unwrap();
    std::fs::create_dir(dir.join("dir.toml")).unwrap();
}

fn remove_odd_files(dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let _ = std::fs::remove_file(dir.join(std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.toml")));
    let _ = std::fs::remove_file(dir.join("fifo.toml"));
    let _ = std::fs::remove_file(dir.join("loop.toml"));
    let _ = std::fs::remove_dir(dir.join("dir.toml"));
}
