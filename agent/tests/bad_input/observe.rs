//! What the suite observes of the live agent: its status, the desired-state cache and the
//! reported rows of its store, its RSS, the status bucket, and podman's view of its scope.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fleet_contract::names;
use fleet_testkit::{podman, wait_until};
use serde_json::Value;

use super::common;
use super::live::{Rig, CONVERGE, GOOD};

impl Rig {
    pub fn status(&self) -> Option<Value> {
        common::status(&self.config)
    }

    /// Deployment name -> phase, from `fleet-agent status --json`.
    pub fn phases(&self) -> BTreeMap<String, String> {
        let Some(st) = self.status() else {
            return BTreeMap::new();
        };
        st["deployments"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        (
                            d["name"].as_str().unwrap_or_default().to_owned(),
                            d["phase"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn wait_good_running(&self, what: &str) -> Result<(), String> {
        wait_until(CONVERGE, what, || {
            let p = self.phases();
            GOOD.iter()
                .all(|g| p.get(*g).map(String::as_str) == Some("Running"))
                .then_some(())
        })
        .map_err(|e| format!("{e}; phases {:?}", self.phases()))
    }

    /// `podman ps -a` and `podman volume ls` of this agent's scope: name -> (id, state).
    pub fn podman_snapshot(&self) -> (BTreeMap<String, (String, String)>, BTreeSet<String>) {
        let filter = format!("label={}", self.scope.label());
        let ps = podman(&[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "{{.Names}} {{.ID}} {{.State}}",
        ])
        .unwrap_or_default();
        let containers = ps
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((
                    it.next()?.to_owned(),
                    (it.next()?.to_owned(), it.next()?.to_owned()),
                ))
            })
            .collect();
        let vols = podman(&["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"])
            .unwrap_or_default();
        (containers, vols.lines().map(str::to_owned).collect())
    }

    pub fn container_name(&self, deployment: &str) -> String {
        format!("fleet-{}-{deployment}", self.scope.id())
    }

    /// VmRSS of the agent in KiB.
    pub fn rss_kib(&self) -> u64 {
        let st =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        st.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.state().join("state.db")
    }

    /// Bytes of state.db plus its WAL.
    pub fn db_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        size(&self.db_path()) + size(&self.root.state().join("state.db-wal"))
    }

    /// Rows of the store's tables that hold what the agent reports (status, audit, command
    /// journal), as (table, text). The desired-state cache and the modules' own records of
    /// what they applied hold accepted manifests, env values included, by design.
    pub fn reported_rows(&self) -> Vec<(String, String)> {
        let Ok(db) = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (table, sql) in [
            (
                "deployment_status",
                "SELECT name || ' ' || body FROM deployment_status",
            ),
            (
                "audit",
                "SELECT actor || ' ' || action || ' ' || reason || ' ' || detail FROM audit",
            ),
            (
                "command_journal",
                "SELECT id || ' ' || reply FROM command_journal",
            ),
        ] {
            if let Ok(mut st) = db.prepare(sql) {
                if let Ok(rows) = st.query_map([], |r| r.get::<_, String>(0)) {
                    out.extend(rows.flatten().map(|t| (table.to_owned(), t)));
                }
            }
        }
        out
    }

    /// The desired-state cache: key -> (revision, body length).
    pub fn cache(&self) -> BTreeMap<String, (Option<i64>, usize)> {
        let Ok(db) = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return BTreeMap::new();
        };
        let Ok(mut st) = db.prepare("SELECT key, revision, length(body) FROM desired") else {
            return BTreeMap::new();
        };
        st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, Option<i64>>(1)?, r.get::<_, i64>(2)? as usize),
            ))
        })
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
    }

    /// Every status document the plane holds for the device now (NATS: the status bucket).
    pub fn status_bucket(&self) -> Vec<(String, Vec<u8>)> {
        let Some(client) = self.nats_client.clone() else {
            return Vec::new();
        };
        self.rt.block_on(async move {
            let js = async_nats::jetstream::new(client);
            let Ok(kv) = js.get_key_value(names::STATUS_BUCKET).await else {
                return Vec::new();
            };
            let Ok(keys) = kv.keys().await else {
                return Vec::new();
            };
            let keys: Vec<String> = futures::StreamExt::collect::<Vec<_>>(keys)
                .await
                .into_iter()
                .flatten()
                .collect();
            let mut out = Vec::new();
            for k in keys {
                if let Ok(Some(v)) = kv.get(&k).await {
                    out.push((k, v.to_vec()));
                }
            }
            out
        })
    }
}
