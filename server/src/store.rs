//! The cluster core's [`Store`] over the storage engine: replica state and
//! hints live in one `shoal_storage::Db` under the key prefixes the cluster
//! chooses. A durable write is synced before `write` returns (the engine's
//! group commit); a buffered one has reached the operating system, so a
//! process crash loses nothing that was acknowledged.

use shoal_cluster::store::{Durability, Entries, Store, StoreError};
use shoal_storage::{Db, WriteOptions};

/// [`Store`] over an open engine.
#[derive(Debug)]
pub struct DbStore {
    db: Db,
}

impl DbStore {
    /// Wraps an open engine.
    pub fn new(db: Db) -> DbStore {
        DbStore { db }
    }

    /// The engine, for statistics and shutdown.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Flushes and closes the engine.
    pub fn close(self) -> shoal_storage::Result<()> {
        self.db.close()
    }
}

fn failed(error: shoal_storage::Error) -> StoreError {
    StoreError::Failed(error.to_string())
}

impl Store for DbStore {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(failed)
    }

    fn write(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let options = WriteOptions {
            sync: durability == Durability::Durable,
        };
        match value {
            Some(value) => self.db.put(key, value, &options),
            None => self.db.delete(key, &options),
        }
        .map_err(failed)
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
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
        assert_eq!(
            store.scan(b"a", b"c", 10).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        store.write(b"a", None, Durability::Durable).unwrap();
        assert_eq!(store.read(b"a").unwrap(), None);
        store.close().unwrap();
    }
}
