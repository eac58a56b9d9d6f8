//! The iterator protocol shared by every sorted source of internal keys: the
//! memtables, SSTable blocks and tables, and the merging iterator over all of
//! them. Keys are internal keys (see [`crate::key`]), in the order given by
//! [`crate::key::compare_internal_keys`].

use crate::Result;

/// A positioned cursor over internal keys in ascending internal-key order.
///
/// `key` and `value` may only be called while `valid` is true. An error from
/// `seek*` or `next` leaves the iterator invalid.
pub trait InternalIterator {
    /// True when the cursor is on an entry.
    fn valid(&self) -> bool;
    /// Moves to the first entry.
    fn seek_to_first(&mut self) -> Result<()>;
    /// Moves to the first entry whose internal key is `>= target`.
    fn seek(&mut self, target: &[u8]) -> Result<()>;
    /// Moves to the next entry.
    fn next(&mut self) -> Result<()>;
    /// The current internal key.
    fn key(&self) -> &[u8];
    /// The current value (empty for deletions).
    fn value(&self) -> &[u8];
}
