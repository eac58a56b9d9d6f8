//! The storage seam: the cluster core sees replica state only through the
//! [`Store`] trait. The server implements it over `shoal-storage`; tests and the
//! simulator use [`MemStore`], which can also play a process crash (everything
//! written survives) or a machine crash (only what was made durable survives).
//!
//! Invariant: when `write` returns `Ok` with [`Durability::Durable`], the write
//! and every write before it survive a machine crash.

use std::collections::BTreeMap;
use std::ops::Bound;

/// How durable a write must be before `write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Handed to the operating system; lost on a machine crash.
    Buffered,
    /// Synced to stable storage before returning.
    Durable,
}

/// Why the store could not do what was asked. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The underlying engine failed (disk full, I/O error, corruption).
    #[error("store failure: {0}")]
    Failed(String),
}

/// Key-value pairs returned by [`Store::scan`], in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Ordered byte-keyed storage for replica state and hints.
pub trait Store {
    /// Reads one key.
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes (`Some`) or deletes (`None`) one key at the given durability.
    fn write(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        durability: Durability,
    ) -> Result<(), StoreError>;
    /// Returns up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError>;
}

/// An in-memory [`Store`] that remembers what has been made durable.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Writes since the last durable write, in order, so that a sync makes
    /// exactly the prefix before it durable.
    unsynced: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Makes the next write fail, for fault tests.
    fail_next_write: bool,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// A process crash: everything handed to the store survives.
    pub fn crash_process(&mut self) {}

    /// A machine crash: writes not yet made durable are lost.
    pub fn crash_machine(&mut self) {
        self.current = self.durable.clone();
        self.unsynced.clear();
    }

    /// Makes the next `write` fail with [`StoreError::Failed`].
    pub fn fail_next_write(&mut self) {
        self.fail_next_write = true;
    }

    /// Number of keys currently held.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

impl Store for MemStore {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.current.get(key).cloned())
    }

    fn write(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        if self.fail_next_write {
            self.fail_next_write = false;
            return Err(StoreError::Failed("injected write failure".into()));
        }
        match value {
            Some(value) => self.current.insert(key.to_vec(), value.to_vec()),
            None => self.current.remove(key),
        };
        self.unsynced
            .push((key.to_vec(), value.map(|value| value.to_vec())));
        if durability == Durability::Durable {
            for (key, value) in self.unsynced.drain(..) {
                match value {
                    Some(value) => self.durable.insert(key, value),
                    None => self.durable.remove(&key),
                };
            }
        }
        Ok(())
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        Ok(self
            .current
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_crash_keeps_only_writes_up_to_the_last_durable_one() {
        let mut store = MemStore::new();
        store.write(b"a", Some(b"1"), Durability::Buffered).unwrap();
        store.write(b"b", Some(b"2"), Durability::Durable).unwrap();
        store.write(b"c", Some(b"3"), Durability::Buffered).unwrap();
        store.crash_machine();
        assert_eq!(store.read(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.read(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.read(b"c").unwrap(), None);
    }

    #[test]
    fn process_crash_keeps_buffered_writes() {
        let mut store = MemStore::new();
        store.write(b"a", Some(b"1"), Durability::Buffered).unwrap();
        store.crash_process();
        assert_eq!(store.read(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn scan_returns_the_half_open_range_in_order() {
        let mut store = MemStore::new();
        for key in [b"a", b"b", b"c", b"d"] {
            store.write(key, Some(b"v"), Durability::Buffered).unwrap();
        }
        let keys: Vec<_> = store
            .scan(b"b", b"d", 10)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
    }
}
