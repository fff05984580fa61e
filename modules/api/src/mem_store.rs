//! An in-memory [`ModuleStore`]: nothing is durable. For module tests and tools that run a
//! module without the agent's SQLite store.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::{ModuleStore, StoreError};

/// Keys and values in a map behind a mutex; every call succeeds.
#[derive(Debug, Default)]
pub struct MemStore(Mutex<BTreeMap<String, Vec<u8>>>);

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ModuleStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.map().insert(key.into(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.map().remove(key);
        Ok(())
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .map()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_and_prefix_listing() {
        let s = MemStore::default();
        s.put("a/1", b"x").unwrap();
        s.put("a/2", b"y").unwrap();
        s.put("b/1", b"z").unwrap();
        assert_eq!(s.get("a/1").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(s.keys("a/").unwrap(), vec!["a/1", "a/2"]);
        s.delete("a/1").unwrap();
        s.delete("missing").unwrap();
        assert_eq!(s.get("a/1").unwrap(), None);
        assert_eq!(s.keys("").unwrap(), vec!["a/2", "b/1"]);
    }
}
