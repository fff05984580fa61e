//! The agent's SQLite store: desired-state cache, deployment status, command journal, audit
//! log and per-module key/value areas, in one WAL-mode file.
//!
//! Opening checks integrity. A corrupt file is moved aside (never deleted) with its WAL and a
//! fresh store is created; desired state is then re-fetched from the control plane, and the
//! recovery is recorded in the audit log and shown by `fleet-agent status`.

mod desired;
mod kv;
mod migrations;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_contract::DeploymentStatus;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

pub use desired::{CacheReport, DesiredRecord, MAX_TOMBSTONES, TOMBSTONE_MAX_AGE};
pub use kv::ScopedStore;
pub use migrations::latest as latest_schema_version;

/// Store failures, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("{path}: {op}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A file operation failed (creating the directory, moving a corrupt file aside).
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Stored data could not be decoded.
    #[error("{path}: {what}: {message}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Why.
        message: String,
    },
}

/// What happened while opening the store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpenReport {
    /// The file did not exist and was created.
    pub created: bool,
    /// A corrupt file was found and moved here.
    pub recovered_from: Option<PathBuf>,
    /// Why the old file was judged corrupt.
    pub corruption: Option<String>,
    /// Schema version after migrations.
    pub schema_version: u32,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Sequence number (monotonic, never reused).
    pub seq: i64,
    /// Unix seconds.
    pub at: u64,
    /// Who (operator key, `local`, `agent`).
    pub actor: String,
    /// What (verb, `store-recovered`, ...).
    pub action: String,
    /// `allowed`, `denied` or `info`.
    pub decision: String,
    /// Why, in one line.
    pub reason: String,
    /// Extra JSON detail.
    pub detail: serde_json::Value,
}

/// What audit retention has trimmed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditWatermark {
    /// Every entry with `seq <=` this was trimmed.
    pub trimmed_through_seq: i64,
    /// How many entries were trimmed in total.
    pub trimmed_total: u64,
    /// Unix seconds of the last trim.
    pub last_trim_at: u64,
}

/// The SQLite store. One connection behind a mutex: every call is a short transaction.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    audit_max: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating, migrating and, if corrupt, replacing) the store at `path`.
    pub fn open(
        path: &Path,
        busy_timeout: Duration,
        audit_max: u64,
    ) -> Result<(Self, OpenReport), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                op: "create state directory",
                source,
            })?;
        }
        let mut report = OpenReport {
            created: !path.exists(),
            ..OpenReport::default()
        };
        let conn = match open_checked(path, busy_timeout) {
            Ok(conn) => conn,
            Err(why) => {
                let aside = move_aside(path)?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason = %why,
                    "STATE DATABASE CORRUPT: moved aside, starting with a fresh store; desired state will be re-fetched"
                );
                report.recovered_from = Some(aside);
                report.corruption = Some(why);
                report.created = true;
                open_checked(path, busy_timeout).map_err(|why| StoreError::Decode {
                    path: path.to_owned(),
                    what: "fresh database".into(),
                    message: why,
                })?
            }
        };
        let store = Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            audit_max,
        };
        report.schema_version = store.migrate()?;
        if let (Some(aside), Some(why)) = (&report.recovered_from, &report.corruption) {
            store.audit(
                "agent",
                "store-recovered",
                "info",
                why,
                serde_json::json!({ "moved_to": aside }),
            )?;
        }
        Ok((store, report))
    }

    /// Opens an existing store as a reader, for `fleet-agent status`: never creates, migrates
    /// or repairs (WAL readers still need write access to the `-shm` index).
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.to_owned(),
            op: "open existing store",
            source,
        })?;
        conn.busy_timeout(busy_timeout)
            .map_err(|source| StoreError::Sqlite {
                path: path.to_owned(),
                op: "set busy timeout",
                source,
            })?;
        Ok(Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            audit_max: u64::MAX,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back),
        // so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn migrate(&self) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let current: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("read schema version"))?;
        let latest = migrations::latest();
        if current > latest {
            tracing::warn!(
                current,
                latest,
                "state.db was migrated by a newer agent; continuing (migrations are additive)"
            );
            return Ok(current);
        }
        if current == latest {
            return Ok(latest);
        }
        // Every pending migration in one transaction: one commit (one fsync) for a fresh
        // store, and all or nothing.
        let tx = conn.transaction().map_err(self.err("begin migration"))?;
        for sql in &migrations::MIGRATIONS[current as usize..] {
            tx.execute_batch(sql).map_err(self.err("apply migration"))?;
        }
        tx.pragma_update(None, "user_version", latest)
            .map_err(self.err("bump schema version"))?;
        tx.commit().map_err(self.err("commit migration"))?;
        tracing::info!(from = current, to = latest, "store schema migrated");
        Ok(latest)
    }

    /// Current schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("read schema version"))
    }

    /// Runs SQLite's integrity check; `Ok("ok")` when healthy.
    pub fn integrity(&self) -> Result<String, StoreError> {
        integrity_check(&self.conn()).map_err(self.err("integrity check"))
    }

    // ---- deployment status ----

    /// Records the status of one deployment.
    pub fn put_status(&self, st: &DeploymentStatus) -> Result<(), StoreError> {
        let body = serde_json::to_string(st).map_err(|e| StoreError::Decode {
            path: self.path.clone(),
            what: format!("status of {}", st.name),
            message: e.to_string(),
        })?;
        self.conn()
            .execute(
                "INSERT INTO deployment_status(name, body, updated_at) VALUES (?1,?2,?3)
                 ON CONFLICT(name) DO UPDATE SET body=excluded.body, updated_at=excluded.updated_at",
                params![st.name, body, now_secs()],
            )
            .map_err(self.err("write deployment status"))?;
        Ok(())
    }

    /// Forgets the status of a removed deployment.
    pub fn delete_status(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM deployment_status WHERE name = ?1", [name])
            .map_err(self.err("delete deployment status"))?;
        Ok(())
    }

    /// Every deployment status, by name.
    pub fn statuses(&self) -> Result<Vec<DeploymentStatus>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, body FROM deployment_status ORDER BY name")
            .map_err(self.err("read deployment status"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err("read deployment status"))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, body) = row.map_err(self.err("read deployment status"))?;
            let st = serde_json::from_str(&body).map_err(|e| StoreError::Decode {
                path: self.path.clone(),
                what: format!("status of {name}"),
                message: e.to_string(),
            })?;
            out.push(st);
        }
        Ok(out)
    }

    // ---- command journal ----

    /// The recorded reply for command `id`, if it was executed and has not expired.
    pub fn journal_get(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT reply FROM command_journal WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read command journal"))
    }

    /// Records the reply to command `id`, kept until `expires_at`. A second record for the
    /// same id keeps the first (the first execution's reply is the answer).
    pub fn journal_put(
        &self,
        id: &str,
        verb: &str,
        reply: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO command_journal(id, verb, reply, recorded_at, expires_at)
                 VALUES (?1,?2,?3,?4,?5)",
                params![id, verb, reply, now_secs(), expires_at],
            )
            .map_err(self.err("write command journal"))?;
        Ok(n == 1)
    }

    /// Drops journal entries that expired before `now`; returns how many.
    pub fn journal_prune(&self, now: u64) -> Result<usize, StoreError> {
        self.conn()
            .execute("DELETE FROM command_journal WHERE expires_at < ?1", [now])
            .map_err(self.err("prune command journal"))
    }

    // ---- audit log ----

    /// Appends an audit entry, trimming the oldest beyond the retention bound and recording
    /// the trim in the watermark, in the same transaction.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        decision: &str,
        reason: &str,
        detail: serde_json::Value,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("begin audit"))?;
        let now = now_secs();
        tx.execute(
            "INSERT INTO audit(at, actor, action, decision, reason, detail) VALUES (?1,?2,?3,?4,?5,?6)",
            params![now, actor, action, decision, reason, detail.to_string()],
        )
        .map_err(self.err("append audit entry"))?;
        let seq = tx.last_insert_rowid();
        let count: u64 = tx
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .map_err(self.err("count audit entries"))?;
        if count > self.audit_max {
            let excess = count - self.audit_max;
            let through: i64 = tx
                .query_row(
                    "SELECT seq FROM audit ORDER BY seq LIMIT 1 OFFSET ?1",
                    [excess - 1],
                    |r| r.get(0),
                )
                .map_err(self.err("find audit trim point"))?;
            tx.execute("DELETE FROM audit WHERE seq <= ?1", [through])
                .map_err(self.err("trim audit log"))?;
            tx.execute(
                "INSERT INTO audit_watermark(id, trimmed_through_seq, trimmed_total, last_trim_at)
                 VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET trimmed_through_seq = excluded.trimmed_through_seq,
                 trimmed_total = trimmed_total + excluded.trimmed_total,
                 last_trim_at = excluded.last_trim_at",
                params![through, excess, now],
            )
            .map_err(self.err("record audit watermark"))?;
        }
        tx.commit().map_err(self.err("commit audit entry"))?;
        Ok(seq)
    }

    /// The newest `limit` audit entries, oldest first.
    pub fn audit_recent(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT seq, at, actor, action, decision, reason, detail FROM
                 (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
            )
            .map_err(self.err("read audit log"))?;
        let rows = stmt
            .query_map([limit], |r| {
                let detail: String = r.get(6)?;
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    decision: r.get(4)?,
                    reason: r.get(5)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })
            .map_err(self.err("read audit log"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read audit log"))
    }

    /// What retention has trimmed so far.
    pub fn audit_watermark(&self) -> Result<AuditWatermark, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT trimmed_through_seq, trimmed_total, last_trim_at FROM audit_watermark WHERE id = 1",
                [],
                |r| {
                    Ok(AuditWatermark {
                        trimmed_through_seq: r.get(0)?,
                        trimmed_total: r.get(1)?,
                        last_trim_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.err("read audit watermark"))?
            .unwrap_or_default())
    }
}

/// Opens `path`, sets WAL + FULL sync + busy timeout and checks integrity; `Err` carries why
/// the file is unusable.
fn open_checked(path: &Path, busy_timeout: Duration) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| format!("open: {e}"))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| format!("busy timeout: {e}"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| format!("set WAL mode: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal mode is {mode}, not wal"));
    }
    // FULL: a COMMIT that returned survives power loss (WAL + NORMAL may lose the last ones).
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| format!("set synchronous: {e}"))?;
    let check = integrity_check(&conn).map_err(|e| format!("integrity check: {e}"))?;
    if check != "ok" {
        return Err(format!("integrity check failed: {check}"));
    }
    Ok(conn)
}

fn integrity_check(conn: &Connection) -> Result<String, rusqlite::Error> {
    let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(lines.join("; "))
}

/// Renames `path` (and its -wal/-shm) to `<path>.corrupt-<unix secs>[-n]`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let base = format!("{}.corrupt-{}", path.display(), now_secs());
    let mut aside = PathBuf::from(&base);
    let mut n = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        op: "move corrupt database aside",
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&side, &to).map_err(|source| StoreError::Io {
                path: side.clone(),
                op: "move corrupt database aside",
                source,
            })?;
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests;
