//! The cluster core's [`Store`] over the storage engine: replica state and
//! hints live in one `shoal_storage::Db` under the key prefixes the cluster
//! chooses.
//!
//! Writes are gathered for one turn of the event loop and written as one
//! `WriteBatch` — one log record, one `write(2)`, and for a turn that holds
//! durable writes one fsync shared by all of them (group commit across
//! requests) — by [`DbStore::flush`], which the event loop calls before any
//! output of the turn leaves the node. Reads see the gathered writes. So the
//! `Store` contract holds where it matters: nothing the core acknowledges,
//! answers or sends reaches anyone before the write behind it has reached the
//! operating system (and, when durable, the disk).
//!
//! A failed flush is fail-stop: the writes the core already counted as
//! stored are not, so the node must not say anything more. [`DbStore::failure`]
//! reports it and every later write fails; the event loop then drops the
//! turn's outputs and stops the node (the engine is read-only until reopened
//! anyway), and the restart recovers what reached the log.

use std::collections::HashMap;

use shoal_cluster::store::{Durability, Entries, Store, StoreError};
use shoal_storage::{Db, WriteBatch, WriteOptions};

/// Gathered bytes beyond which a write flushes at once, bounding memory.
const PENDING_BYTES_MAX: usize = 4 << 20;

/// [`Store`] over an open engine; see the module docs.
#[derive(Debug)]
pub struct DbStore {
    db: Db,
    batch: WriteBatch,
    /// The gathered writes by key, for reads (`None`: a delete).
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    pending_bytes: usize,
    pending_sync: bool,
    failure: Option<String>,
}

impl DbStore {
    /// Wraps an open engine.
    pub fn new(db: Db) -> DbStore {
        DbStore {
            db,
            batch: WriteBatch::new(),
            overlay: HashMap::new(),
            pending_bytes: 0,
            pending_sync: false,
            failure: None,
        }
    }

    /// Writes what was gathered as one batch, synced if any write asked to be.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if let Some(failure) = &self.failure {
            return Err(StoreError::Failed(failure.clone()));
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let options = WriteOptions {
            sync: self.pending_sync,
        };
        let result = self.db.write(&self.batch, &options);
        self.batch.clear();
        self.overlay.clear();
        self.pending_bytes = 0;
        self.pending_sync = false;
        if let Err(error) = result {
            let reason = error.to_string();
            self.failure = Some(reason.clone());
            return Err(StoreError::Failed(reason));
        }
        Ok(())
    }

    /// Why a flush failed, once one has: the node must stop.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The engine, for statistics and shutdown.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes what is gathered, then flushes and closes the engine.
    pub fn close(mut self) -> shoal_storage::Result<()> {
        if let Err(error) = self.flush() {
            tracing::error!(%error, "gathered writes lost at close");
        }
        self.db.close()
    }
}

fn failed(error: shoal_storage::Error) -> StoreError {
    StoreError::Failed(error.to_string())
}

impl Store for DbStore {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.overlay.get(key) {
            return Ok(value.clone());
        }
        self.db.get(key).map_err(failed)
    }

    fn write(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        if let Some(failure) = &self.failure {
            return Err(StoreError::Failed(failure.clone()));
        }
        match value {
            Some(value) => self.batch.put(key, value),
            None => self.batch.delete(key),
        }
        self.pending_bytes += key.len() + value.map_or(0, <[u8]>::len);
        self.overlay.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        self.pending_sync |= durability == Durability::Durable;
        if self.pending_bytes > PENDING_BYTES_MAX {
            self.flush()?;
        }
        Ok(())
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        // Scans are rare (hint replay): write what is gathered, then read it.
        self.flush()?;
        self.db.scan(start, end, limit).map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_scans_and_deletes_go_through_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), shoal_storage::Options::default()).unwrap();
        let mut store = DbStore::new(db);
        store.write(b"a", Some(b"1"), Durability::Durable).unwrap();
        store.write(b"b", Some(b"2"), Durability::Buffered).unwrap();
        store.write(b"c", Some(b"3"), Durability::Buffered).unwrap();
        assert_eq!(store.read(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.read(b"zz").unwrap(), None);
        assert_eq!(
            store.scan(b"a", b"c", 10).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        store.write(b"a", None, Durability::Durable).unwrap();
        assert_eq!(store.read(b"a").unwrap(), None, "a gathered delete is seen");
        store.close().unwrap();
    }

    #[test]
    fn gathered_writes_reach_the_engine_only_at_flush_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), shoal_storage::Options::default()).unwrap();
        let mut store = DbStore::new(db);
        store
            .write(b"k", Some(b"old"), Durability::Buffered)
            .unwrap();
        store
            .write(b"k", Some(b"new"), Durability::Durable)
            .unwrap();
        assert_eq!(
            store.db().get(b"k").unwrap(),
            None,
            "not written before the flush"
        );
        assert_eq!(store.read(b"k").unwrap(), Some(b"new".to_vec()));
        store.flush().unwrap();
        assert_eq!(
            store.db().get(b"k").unwrap(),
            Some(b"new".to_vec()),
            "the later write wins"
        );
        assert!(
            store.db().stats().wal_syncs >= 1,
            "a durable write makes the flush sync"
        );
        store.close().unwrap();
        let reopened = Db::open(dir.path(), shoal_storage::Options::default()).unwrap();
        assert_eq!(reopened.get(b"k").unwrap(), Some(b"new".to_vec()));
    }
}
