//! The merging iterator: one ordered view over many sorted sources (memtables
//! and tables). When two sources hold the same internal key, the one listed
//! first wins; sequence numbers are unique, so that happens only for a table
//! and its own copy during a compaction's hand-over.
//!
//! Sources are few (memtables, level-0 tables, one per deeper table), so the
//! smallest is found by a linear scan.

use crate::Result;
use crate::iterator::InternalIterator;
use crate::key::compare_internal_keys;
use std::cmp::Ordering;

/// A boxed source.
pub type Source = Box<dyn InternalIterator + Send>;

/// Merges sorted sources into one sorted cursor.
pub struct MergingIterator {
    sources: Vec<Source>,
    current: Option<usize>,
}

impl std::fmt::Debug for MergingIterator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MergingIterator")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl MergingIterator {
    /// Merges `sources`.
    pub fn new(sources: Vec<Source>) -> MergingIterator {
        MergingIterator {
            sources,
            current: None,
        }
    }

    fn find_smallest(&mut self) {
        let mut smallest: Option<usize> = None;
        for (index, source) in self.sources.iter().enumerate() {
            if !source.valid() {
                continue;
            }
            smallest = match smallest {
                Some(best)
                    if compare_internal_keys(self.sources[best].key(), source.key())
                        != Ordering::Greater =>
                {
                    Some(best)
                }
                _ => Some(index),
            };
        }
        self.current = smallest;
    }
}

impl InternalIterator for MergingIterator {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        for source in &mut self.sources {
            source.seek_to_first()?;
        }
        self.find_smallest();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for source in &mut self.sources {
            source.seek(target)?;
        }
        self.find_smallest();
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        let Some(current) = self.current else {
            return Ok(());
        };
        let key = self.sources[current].key().to_vec();
        // Step every source sitting on the same key, so duplicates appear once.
        for source in &mut self.sources {
            if source.valid() && compare_internal_keys(source.key(), &key) == Ordering::Equal {
                source.next()?;
            }
        }
        self.find_smallest();
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current.map_or(&[], |index| self.sources[index].key())
    }

    fn value(&self) -> &[u8] {
        self.current
            .map_or(&[], |index| self.sources[index].value())
    }
}
