//! The desired-state cache: documents as received (or, refused unread, their key, length
//! and reason), written record by record, and tombstones for deletions that were received.

use std::time::Duration;

use rusqlite::{params, Connection};

use super::{now_secs, Store, StoreError};

/// One cached desired-state document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRecord {
    /// Key, e.g. `deploy.web`.
    pub key: String,
    /// File path or KV key it came from.
    pub source: String,
    /// Revision, when the document decoded.
    pub revision: Option<u64>,
    /// Bytes of the document as received (also when its body is not kept).
    pub length: u64,
    /// The document as received; empty when it was refused unread.
    pub body: Vec<u8>,
    /// Why the document was refused unread (by size): then only its key, length and this
    /// reason are cached.
    pub refused: Option<String>,
}

impl DesiredRecord {
    /// A record of a document received whole.
    pub fn new(
        key: impl Into<String>,
        source: impl Into<String>,
        revision: Option<u64>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            key: key.into(),
            source: source.into(),
            revision,
            length: body.len() as u64,
            body,
            refused: None,
        }
    }
}

/// What one [`Store::replace_desired`] did, record by record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// Records written.
    pub written: usize,
    /// Records the cache could not store, with why; each keeps its previous cached version
    /// (or, without one, a marker naming the refusal).
    pub refused: Vec<(String, String)>,
    /// Keys deleted from the cache (and recorded as tombstones).
    pub deleted: Vec<String>,
}

/// At most this many deletions are remembered; the oldest go first.
pub const MAX_TOMBSTONES: u32 = 1024;
/// Deletions older than this are forgotten (an agent offline longer re-learns from the plane).
pub const TOMBSTONE_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

impl Store {
    /// Caches one desired document.
    pub fn put_desired(&self, rec: &DesiredRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("begin"))?;
        upsert_desired(&tx, rec).map_err(|e| match e {
            UpsertError::Sqlite(source) => StoreError::Sqlite {
                path: self.path.clone(),
                op: "cache desired state",
                source,
            },
            UpsertError::Refused(message) => StoreError::Decode {
                path: self.path.clone(),
                what: rec.key.clone(),
                message,
            },
        })?;
        tx.commit().map_err(self.err("commit desired state"))
    }

    /// Makes the cache hold `recs`, record by record: a record the cache cannot store is
    /// refused alone (reported, its previous version kept) and every other one is written.
    /// When `complete` (the plane's full listing), cached keys absent from `recs` were deleted:
    /// they are removed and recorded as tombstones (bounded by [`MAX_TOMBSTONES`] and
    /// [`TOMBSTONE_MAX_AGE`]).
    pub fn replace_desired(
        &self,
        recs: &[DesiredRecord],
        complete: bool,
    ) -> Result<CacheReport, StoreError> {
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(self.err("begin"))?;
        let mut report = CacheReport::default();
        let now = now_secs();
        for rec in recs {
            let sp = tx.savepoint().map_err(self.err("begin record"))?;
            match upsert_desired(&sp, rec) {
                Ok(()) => {
                    sp.commit().map_err(self.err("commit record"))?;
                    report.written += 1;
                }
                Err(e) => {
                    drop(sp); // rolls the record back
                    let reason = match e {
                        UpsertError::Sqlite(e) => format!("SQLite: {e}"),
                        UpsertError::Refused(why) => why,
                    };
                    // Without a previous version, a marker keeps the refusal visible after
                    // a restart (and the deployment known, so nothing is removed for it).
                    let marker = DesiredRecord {
                        key: rec.key.clone(),
                        source: rec.source.clone(),
                        revision: None,
                        length: rec.length,
                        body: Vec::new(),
                        refused: Some(format!("not cached: {reason}")),
                    };
                    tx.execute(
                        "INSERT OR IGNORE INTO desired(key, source, revision, body, updated_at, length, refused)
                         VALUES (?1,?2,NULL,?3,?4,?5,?6)",
                        params![marker.key, marker.source, marker.body, now, marker.length as i64, marker.refused],
                    )
                    .map_err(self.err("cache refusal marker"))?;
                    report.refused.push((rec.key.clone(), reason));
                }
            }
            tx.execute("DELETE FROM desired_deleted WHERE key = ?1", [&rec.key])
                .map_err(self.err("clear tombstone"))?;
        }
        if complete {
            let keep: std::collections::BTreeSet<&str> =
                recs.iter().map(|r| r.key.as_str()).collect();
            let cached: Vec<(String, String)> = {
                let mut stmt = tx
                    .prepare("SELECT key, source FROM desired")
                    .map_err(self.err("list desired state"))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(self.err("list desired state"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(self.err("list desired state"))?
            };
            for (key, source) in cached {
                if keep.contains(key.as_str()) {
                    continue;
                }
                tx.execute("DELETE FROM desired WHERE key = ?1", [&key])
                    .map_err(self.err("delete desired state"))?;
                tx.execute(
                    "INSERT INTO desired_deleted(key, source, deleted_at) VALUES (?1,?2,?3)
                     ON CONFLICT(key) DO UPDATE SET source=excluded.source, deleted_at=excluded.deleted_at",
                    params![key, source, now],
                )
                .map_err(self.err("record deletion"))?;
                report.deleted.push(key);
            }
            tx.execute(
                "DELETE FROM desired_deleted WHERE deleted_at < ?1 OR key NOT IN
                 (SELECT key FROM desired_deleted ORDER BY deleted_at DESC, key LIMIT ?2)",
                params![
                    now.saturating_sub(TOMBSTONE_MAX_AGE.as_secs()),
                    MAX_TOMBSTONES
                ],
            )
            .map_err(self.err("bound tombstones"))?;
        }
        tx.commit().map_err(self.err("commit desired state"))?;
        Ok(report)
    }

    /// Every cached desired document, by key.
    pub fn desired(&self) -> Result<Vec<DesiredRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key, source, revision, body, length, refused FROM desired ORDER BY key",
            )
            .map_err(self.err("read desired state"))?;
        let rows = stmt
            .query_map([], |r| {
                let body: Vec<u8> = r.get(3)?;
                let length: Option<i64> = r.get(4)?;
                Ok(DesiredRecord {
                    key: r.get(0)?,
                    source: r.get(1)?,
                    revision: r.get(2)?,
                    length: length.map_or(body.len() as u64, |n| n.max(0) as u64),
                    body,
                    refused: r.get(5)?,
                })
            })
            .map_err(self.err("read desired state"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read desired state"))
    }

    /// Keys whose deletion was received (tombstones), oldest first.
    pub fn desired_deleted(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT key FROM desired_deleted ORDER BY deleted_at, key")
            .map_err(self.err("read deletions"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(self.err("read deletions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read deletions"))
    }
}

enum UpsertError {
    Sqlite(rusqlite::Error),
    Refused(String),
}

/// Writes one desired record (an unchanged one is left alone: no write for flash to wear).
/// The store checks what SQLite cannot hold (a revision past `i64::MAX`) itself, whatever
/// the decoder let through.
fn upsert_desired(conn: &Connection, rec: &DesiredRecord) -> Result<(), UpsertError> {
    let revision = match rec.revision {
        None => None,
        Some(r) => Some(i64::try_from(r).map_err(|_| {
            UpsertError::Refused(format!(
                "field `revision`: {r} is past the largest revision the cache stores ({})",
                i64::MAX
            ))
        })?),
    };
    let length = i64::try_from(rec.length).unwrap_or(i64::MAX);
    conn.execute(
        "INSERT INTO desired(key, source, revision, body, updated_at, length, refused)
         VALUES (?1,?2,?3,?4,?5,?6,?7)
         ON CONFLICT(key) DO UPDATE SET source=excluded.source, revision=excluded.revision,
         body=excluded.body, updated_at=excluded.updated_at, length=excluded.length,
         refused=excluded.refused
         WHERE desired.body IS NOT excluded.body OR desired.source IS NOT excluded.source
         OR desired.revision IS NOT excluded.revision OR desired.refused IS NOT excluded.refused
         OR desired.length IS NOT excluded.length",
        params![
            rec.key,
            rec.source,
            revision,
            rec.body,
            now_secs(),
            length,
            rec.refused
        ],
    )
    .map_err(UpsertError::Sqlite)?;
    Ok(())
}
