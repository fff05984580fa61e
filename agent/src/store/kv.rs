//! Per-module key/value areas, and the scoped view a module gets of them.

use std::sync::Arc;

use fleet_module_api::{ModuleStore, StoreError as ModuleStoreError};
use rusqlite::{params, OptionalExtension};

use super::{now_secs, Store, StoreError};

impl Store {
    /// Reads a module's key.
    pub fn kv_get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn()
            .query_row(
                "SELECT value FROM module_kv WHERE module = ?1 AND key = ?2",
                [module, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read module key"))
    }

    /// Writes a module's key (committed, durable, when this returns).
    pub fn kv_put(&self, module: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO module_kv(module, key, value, updated_at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(module, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                params![module, key, value, now_secs()],
            )
            .map_err(self.err("write module key"))?;
        Ok(())
    }

    /// Deletes a module's key.
    pub fn kv_delete(&self, module: &str, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "DELETE FROM module_kv WHERE module = ?1 AND key = ?2",
                [module, key],
            )
            .map_err(self.err("delete module key"))?;
        Ok(())
    }

    /// A module's keys starting with `prefix`.
    pub fn kv_keys(&self, module: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key FROM module_kv WHERE module = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
            )
            .map_err(self.err("list module keys"))?;
        let rows = stmt
            .query_map([module, prefix], |r| r.get(0))
            .map_err(self.err("list module keys"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("list module keys"))
    }

    /// Atomically adds `delta` to an integer key (created at 0); returns the new value.
    /// Used by the power-cut test plumbing to prove committed writes survive.
    pub fn kv_increment(&self, module: &str, key: &str, delta: i64) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("begin increment"))?;
        let current: Option<Vec<u8>> = tx
            .query_row(
                "SELECT value FROM module_kv WHERE module = ?1 AND key = ?2",
                [module, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read counter"))?;
        let n = match current {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| StoreError::Decode {
                    path: self.path.clone(),
                    what: format!("{module}/{key}"),
                    message: "not an integer".into(),
                })?,
        } + delta;
        tx.execute(
            "INSERT INTO module_kv(module, key, value, updated_at) VALUES (?1,?2,?3,?4)
             ON CONFLICT(module, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
            params![module, key, n.to_string().into_bytes(), now_secs()],
        )
        .map_err(self.err("write counter"))?;
        tx.commit().map_err(self.err("commit counter"))?;
        Ok(n)
    }
}

/// A module's view of the store: its own key/value area and nothing else.
#[derive(Debug, Clone)]
pub struct ScopedStore {
    store: Arc<Store>,
    module: &'static str,
}

impl ScopedStore {
    /// Scopes `store` to `module`.
    pub fn new(store: Arc<Store>, module: &'static str) -> Self {
        Self { store, module }
    }
}

impl ModuleStore for ScopedStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ModuleStoreError> {
        self.store
            .kv_get(self.module, key)
            .map_err(|e| ModuleStoreError(e.to_string()))
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), ModuleStoreError> {
        self.store
            .kv_put(self.module, key, value)
            .map_err(|e| ModuleStoreError(e.to_string()))
    }
    fn delete(&self, key: &str) -> Result<(), ModuleStoreError> {
        self.store
            .kv_delete(self.module, key)
            .map_err(|e| ModuleStoreError(e.to_string()))
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, ModuleStoreError> {
        self.store
            .kv_keys(self.module, prefix)
            .map_err(|e| ModuleStoreError(e.to_string()))
    }
}
