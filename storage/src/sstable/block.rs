//! SSTable blocks: sorted entries with prefix-compressed keys and restart
//! points (as in LevelDB's block format, written here from its description).
//!
//! Contents: entries `varint shared ‖ varint unshared ‖ varint value length ‖
//! key suffix ‖ value`, where `shared` is the length of the prefix common with
//! the previous key; every `restart_interval` entries the key is stored whole
//! (`shared = 0`) and its offset recorded. After the entries: the restart
//! offsets (u32 LE each) and their count (u32 LE). Seeks binary-search the
//! restart points, then scan forward.
//!
//! Invariant: the reader checks every length and offset against the block's
//! bounds, so a damaged block (that somehow passed its checksum) yields an
//! error, never a panic or an out-of-bounds read.

use crate::key::compare_internal_keys;
use std::cmp::Ordering;
use std::sync::Arc;

/// Appends a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 varint at `*position`, advancing it; `None` if malformed.
pub fn get_varint(bytes: &[u8], position: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*position)?;
        *position += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Builds one block's contents.
#[derive(Debug)]
pub struct BlockBuilder {
    buffer: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    /// An empty block builder.
    pub fn new(restart_interval: usize) -> BlockBuilder {
        BlockBuilder {
            buffer: Vec::new(),
            restarts: Vec::new(),
            restart_interval: restart_interval.max(1),
            since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Appends an entry; keys must arrive in increasing internal-key order.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.since_restart == 0 {
            self.restarts.push(self.buffer.len() as u32);
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        put_varint(&mut self.buffer, shared as u64);
        put_varint(&mut self.buffer, (key.len() - shared) as u64);
        put_varint(&mut self.buffer, value.len() as u64);
        self.buffer.extend_from_slice(&key[shared..]);
        self.buffer.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart = (self.since_restart + 1) % self.restart_interval;
        self.entries += 1;
    }

    /// Size of the contents so far.
    pub fn size_estimate(&self) -> usize {
        self.buffer.len() + self.restarts.len() * 4 + 4
    }

    /// True when no entry was added.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The last key added.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Finishes the block, returning its contents and resetting the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut contents = std::mem::take(&mut self.buffer);
        for restart in &self.restarts {
            contents.extend_from_slice(&restart.to_le_bytes());
        }
        contents.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        self.since_restart = 0;
        self.last_key.clear();
        self.entries = 0;
        contents
    }
}

/// A block's structure could not be parsed (the caller names file and offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A positioned cursor over one block's entries.
#[derive(Debug, Clone)]
pub struct BlockCursor {
    contents: Arc<Vec<u8>>,
    /// End of the entries (start of the restart array).
    entries_end: usize,
    restarts_start: usize,
    restart_count: usize,
    /// Offset of the next entry to decode.
    next_offset: usize,
    key: Vec<u8>,
    value: (usize, usize),
    valid: bool,
}

impl BlockCursor {
    /// Opens a cursor over checked, decompressed block contents.
    pub fn new(contents: Arc<Vec<u8>>) -> Result<BlockCursor, Malformed> {
        let length = contents.len();
        if length < 4 {
            return Err(Malformed);
        }
        let count = u32::from_le_bytes([
            contents[length - 4],
            contents[length - 3],
            contents[length - 2],
            contents[length - 1],
        ]) as usize;
        let restarts_bytes = count.checked_mul(4).ok_or(Malformed)?;
        let restarts_start = (length - 4).checked_sub(restarts_bytes).ok_or(Malformed)?;
        if count == 0 && restarts_start != 0 {
            return Err(Malformed);
        }
        Ok(BlockCursor {
            contents,
            entries_end: restarts_start,
            restarts_start,
            restart_count: count,
            next_offset: 0,
            key: Vec::new(),
            value: (0, 0),
            valid: false,
        })
    }

    fn restart_offset(&self, index: usize) -> Result<usize, Malformed> {
        let at = self.restarts_start + index * 4;
        let bytes = self.contents.get(at..at + 4).ok_or(Malformed)?;
        let offset = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if offset >= self.entries_end {
            return Err(Malformed);
        }
        Ok(offset)
    }

    /// True when positioned on an entry.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current key (only when valid).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value (only when valid).
    pub fn value(&self) -> &[u8] {
        &self.contents[self.value.0..self.value.1]
    }

    /// Decodes the entry at `next_offset`; invalid at the end of the entries.
    pub fn advance(&mut self) -> Result<(), Malformed> {
        if self.next_offset >= self.entries_end {
            self.valid = false;
            return Ok(());
        }
        let bytes = &self.contents[..self.entries_end];
        let mut position = self.next_offset;
        let shared = get_varint(bytes, &mut position).ok_or(Malformed)? as usize;
        let unshared = get_varint(bytes, &mut position).ok_or(Malformed)? as usize;
        let value_length = get_varint(bytes, &mut position).ok_or(Malformed)? as usize;
        if shared > self.key.len() {
            return Err(Malformed);
        }
        let key_end = position.checked_add(unshared).ok_or(Malformed)?;
        let value_end = key_end.checked_add(value_length).ok_or(Malformed)?;
        if value_end > self.entries_end {
            return Err(Malformed);
        }
        self.key.truncate(shared);
        self.key.extend_from_slice(&bytes[position..key_end]);
        self.value = (key_end, value_end);
        self.next_offset = value_end;
        self.valid = true;
        Ok(())
    }

    fn seek_to_restart(&mut self, index: usize) -> Result<(), Malformed> {
        self.key.clear();
        self.next_offset = self.restart_offset(index)?;
        self.advance()
    }

    /// Moves to the first entry.
    pub fn seek_to_first(&mut self) -> Result<(), Malformed> {
        if self.restart_count == 0 {
            self.valid = false;
            return Ok(());
        }
        self.seek_to_restart(0)
    }

    /// Moves to the first entry whose key is `>= target` (invalid if none).
    pub fn seek(&mut self, target: &[u8]) -> Result<(), Malformed> {
        if self.restart_count == 0 {
            self.valid = false;
            return Ok(());
        }
        // The last restart point whose key is < target.
        let (mut low, mut high) = (0usize, self.restart_count);
        while high - low > 1 {
            let middle = (low + high) / 2;
            self.seek_to_restart(middle)?;
            if compare_internal_keys(&self.key, target) == Ordering::Less {
                low = middle;
            } else {
                high = middle;
            }
        }
        self.seek_to_restart(low)?;
        while self.valid && compare_internal_keys(&self.key, target) == Ordering::Less {
            self.advance()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ValueKind, internal_key};

    #[test]
    fn varints_round_trip() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut position = 0;
            assert_eq!(get_varint(&out, &mut position), Some(value));
            assert_eq!(position, out.len());
        }
        assert_eq!(get_varint(&[0x80; 11], &mut 0), None);
    }

    #[test]
    fn seek_finds_every_key_and_the_gaps_between_them() {
        let mut builder = BlockBuilder::new(4);
        let keys: Vec<Vec<u8>> = (0..50u32)
            .map(|index| {
                internal_key(
                    format!("key{:03}", index * 2).as_bytes(),
                    1,
                    ValueKind::Value,
                )
            })
            .collect();
        for key in &keys {
            builder.add(key, b"value");
        }
        let mut cursor = BlockCursor::new(Arc::new(builder.finish())).unwrap();
        for (index, key) in keys.iter().enumerate() {
            cursor.seek(key).unwrap();
            assert!(cursor.valid());
            assert_eq!(cursor.key(), key.as_slice());
            let gap = internal_key(
                format!("key{:03}", index * 2 + 1).as_bytes(),
                1,
                ValueKind::Value,
            );
            cursor.seek(&gap).unwrap();
            assert_eq!(cursor.valid(), index + 1 < keys.len());
        }
        cursor.seek_to_first().unwrap();
        let mut count = 0;
        while cursor.valid() {
            count += 1;
            cursor.advance().unwrap();
        }
        assert_eq!(count, keys.len());
    }

    #[test]
    fn damaged_contents_never_panic() {
        let mut builder = BlockBuilder::new(2);
        for index in 0..10u32 {
            builder.add(
                &internal_key(&index.to_be_bytes(), 1, ValueKind::Value),
                b"v",
            );
        }
        let contents = builder.finish();
        for position in 0..contents.len() {
            for bit in 0..8 {
                let mut damaged = contents.clone();
                damaged[position] ^= 1 << bit;
                if let Ok(mut cursor) = BlockCursor::new(Arc::new(damaged)) {
                    if cursor.seek_to_first().is_ok() {
                        while cursor.valid() && cursor.advance().is_ok() {}
                    }
                    let _ = cursor.seek(b"anything-at-all");
                }
            }
        }
    }
}
