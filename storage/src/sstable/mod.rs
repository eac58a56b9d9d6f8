//! SSTables: immutable sorted files of internal keys, written once by a flush
//! or a compaction and read through a memory map.
//!
//! Layout (see `docs/storage-format.md`):
//! `data blocks ‖ filter block ‖ index block ‖ properties block ‖ footer`.
//! Every block is stored as `contents ‖ type (0 raw, 1 LZ4, 2 Snappy) ‖
//! crc32 (LE)` with the checksum over contents and type; LZ4 contents start
//! with the uncompressed length (u32 LE), Snappy's raw format carries its own.
//! The index block maps a separator key of each data block (at least its last
//! key, less than the next block's first) to its handle `varint offset ‖
//! varint size` (format 1, still read: the last key and `offset u64 LE ‖ size
//! u64 LE`). The footer (64 bytes) holds the handles of the index, filter and
//! properties blocks, the format version, its own checksum and the magic
//! number.
//!
//! Invariants: a table is never modified after `finish` (which fsyncs it);
//! every read checks the block checksum before using a byte, so damage is an
//! [`Error::Corruption`] naming the file and the block's offset — never a
//! panic, never wrong data.

pub mod block;

use crate::bloom::{BloomBuilder, may_contain};
use crate::iterator::InternalIterator;
use crate::key::{
    SEQUENCE_MAX, ValueKind, compare_internal_keys, internal_key, parse_internal_key,
};
use crate::{Error, Result};
use block::{BlockBuilder, BlockCursor};
use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identifies an SSTable file.
pub const TABLE_MAGIC: u64 = 0x5348_4f41_4c53_5354; // "SHOALSST"
/// The format version written.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version read.
const FORMAT_VERSION_MIN: u32 = 1;
/// Restart interval of the index block (its keys share long prefixes).
const INDEX_RESTART_INTERVAL: usize = 16;
const FOOTER_BYTES: usize = 64;
const BLOCK_TRAILER_BYTES: usize = 5;
/// Largest decompressed block accepted.
const BLOCK_UNCOMPRESSED_MAX_BYTES: usize = 256 << 20;

/// Block compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Blocks are stored as they are.
    None,
    /// Blocks are LZ4-compressed when that saves at least an eighth.
    Lz4,
    /// Blocks are Snappy-compressed when that saves at least an eighth (the
    /// default: on db_bench-style values it saves ~6 % more than LZ4 and
    /// decompresses faster with the pure-Rust codecs).
    Snappy,
}

/// How tables are written.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Target size of a data block before compression.
    pub block_size_bytes: usize,
    /// Entries between restart points.
    pub restart_interval: usize,
    /// Bloom filter bits per key.
    pub bloom_bits_per_key: usize,
    /// Block compression.
    pub compression: Compression,
}

impl Default for TableOptions {
    fn default() -> TableOptions {
        TableOptions {
            block_size_bytes: 4096,
            restart_interval: 16,
            bloom_bits_per_key: 10,
            compression: Compression::Snappy,
        }
    }
}

/// What a finished table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    /// Size of the file.
    pub file_size_bytes: u64,
    /// Number of entries.
    pub entries: u64,
    /// Smallest internal key.
    pub smallest_key: Vec<u8>,
    /// Largest internal key.
    pub largest_key: Vec<u8>,
}

/// Writes one table.
#[derive(Debug)]
pub struct TableBuilder {
    path: PathBuf,
    file: BufWriter<File>,
    options: TableOptions,
    offset: u64,
    data: BlockBuilder,
    index: BlockBuilder,
    bloom: BloomBuilder,
    entries: u64,
    smallest_key: Vec<u8>,
    last_key_written: Option<Vec<u8>>,
    /// The last finished data block's handle, indexed once the next
    /// block's first key (or the end of the table) bounds its separator.
    pending_index: Option<(u64, u64)>,
    compressed: Vec<u8>,
}

impl TableBuilder {
    /// Creates the table file (which must not exist).
    pub fn create(path: &Path, options: &TableOptions) -> Result<TableBuilder> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|error| Error::io(path, error))?;
        Ok(TableBuilder {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(256 << 10, file),
            options: options.clone(),
            offset: 0,
            data: BlockBuilder::new(options.restart_interval),
            index: BlockBuilder::new(INDEX_RESTART_INTERVAL),
            bloom: BloomBuilder::new(options.bloom_bits_per_key),
            entries: 0,
            smallest_key: Vec::new(),
            last_key_written: None,
            pending_index: None,
            compressed: Vec::new(),
        })
    }

    /// Adds an entry; internal keys must strictly increase.
    pub fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        debug_assert!(
            self.entries == 0
                || compare_internal_keys(self.data_last_key(), internal_key) == Ordering::Less
        );
        if self.entries == 0 {
            self.smallest_key = internal_key.to_vec();
        }
        if let Some((offset, size)) = self.pending_index.take() {
            let previous = self.last_key_written.as_deref().unwrap_or(&[]);
            let separator = shortest_separator(previous, internal_key);
            self.add_index_entry(&separator, offset, size);
        }
        self.bloom.add(crate::key::user_key(internal_key));
        self.data.add(internal_key, value);
        self.entries += 1;
        if self.data.size_estimate() >= self.options.block_size_bytes {
            self.flush_data_block()?;
        }
        Ok(())
    }

    fn data_last_key(&self) -> &[u8] {
        if self.data.is_empty() {
            self.last_key_written.as_deref().unwrap_or(&[])
        } else {
            self.data.last_key()
        }
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let last_key = self.data.last_key().to_vec();
        let contents = self.data.finish();
        self.pending_index = Some(self.write_block(&contents, self.options.compression)?);
        self.last_key_written = Some(last_key);
        Ok(())
    }

    fn add_index_entry(&mut self, separator: &[u8], offset: u64, size: u64) {
        let mut handle = Vec::with_capacity(20);
        block::put_varint(&mut handle, offset);
        block::put_varint(&mut handle, size);
        self.index.add(separator, &handle);
    }

    /// Writes one block; returns its handle (offset, stored size).
    fn write_block(&mut self, contents: &[u8], compression: Compression) -> Result<(u64, u64)> {
        let mut kind = 0u8;
        let mut stored: &[u8] = contents;
        let compressed = match compression {
            Compression::None => None,
            Compression::Lz4 => {
                self.compressed.clear();
                self.compressed
                    .extend_from_slice(&(contents.len() as u32).to_le_bytes());
                self.compressed
                    .extend_from_slice(&lz4_flex::block::compress(contents));
                Some(1)
            }
            Compression::Snappy => {
                self.compressed
                    .resize(snap::raw::max_compress_len(contents.len()), 0);
                let length = snap::raw::Encoder::new()
                    .compress(contents, &mut self.compressed)
                    .map_err(|error| {
                        Error::io(&self.path, std::io::Error::other(error.to_string()))
                    })?;
                self.compressed.truncate(length);
                Some(2)
            }
        };
        if let Some(compressed_kind) = compressed
            && self.compressed.len() < contents.len() - contents.len() / 8
        {
            kind = compressed_kind;
            stored = &self.compressed;
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(stored);
        hasher.update(&[kind]);
        let checksum = hasher.finalize();
        let handle = (self.offset, stored.len() as u64);
        let path = &self.path;
        let write = |file: &mut BufWriter<File>| -> std::io::Result<()> {
            file.write_all(stored)?;
            file.write_all(&[kind])?;
            file.write_all(&checksum.to_le_bytes())
        };
        write(&mut self.file).map_err(|error| Error::io(path, error))?;
        self.offset += (stored.len() + BLOCK_TRAILER_BYTES) as u64;
        Ok(handle)
    }

    /// Bytes written so far plus the open block.
    pub fn estimated_size_bytes(&self) -> u64 {
        self.offset + self.data.size_estimate() as u64
    }

    /// Number of entries added.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Writes the filter, index, properties and footer, and fsyncs the file.
    pub fn finish(mut self) -> Result<TableSummary> {
        self.flush_data_block()?;
        let largest_key = self.last_key_written.clone().unwrap_or_default();
        if let Some((offset, size)) = self.pending_index.take() {
            self.add_index_entry(&largest_key, offset, size);
        }
        let filter = self.bloom.finish();
        let filter_handle = self.write_block(&filter, Compression::None)?;
        let index = self.index.finish();
        let index_handle = self.write_block(&index, self.options.compression)?;
        let mut properties = Vec::new();
        properties.extend_from_slice(&self.entries.to_le_bytes());
        block::put_varint(&mut properties, self.smallest_key.len() as u64);
        properties.extend_from_slice(&self.smallest_key);
        block::put_varint(&mut properties, largest_key.len() as u64);
        properties.extend_from_slice(&largest_key);
        let properties_handle = self.write_block(&properties, Compression::None)?;
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        for (offset, size) in [index_handle, filter_handle, properties_handle] {
            footer.extend_from_slice(&offset.to_le_bytes());
            footer.extend_from_slice(&size.to_le_bytes());
        }
        footer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        footer.extend_from_slice(&crc32fast::hash(&footer).to_le_bytes());
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        debug_assert_eq!(footer.len(), FOOTER_BYTES);
        let path = self.path.clone();
        self.file
            .write_all(&footer)
            .map_err(|error| Error::io(&path, error))?;
        let file = self
            .file
            .into_inner()
            .map_err(|error| Error::io(&path, error.into_error()))?;
        crate::log::write_back_in_steps(&file, self.offset + FOOTER_BYTES as u64)
            .and_then(|()| file.sync_all())
            .map_err(|error| Error::io(&path, error))?;
        Ok(TableSummary {
            file_size_bytes: self.offset + FOOTER_BYTES as u64,
            entries: self.entries,
            smallest_key: self.smallest_key,
            largest_key,
        })
    }
}

/// A short internal key `s` with `last <= s < next` (both internal keys,
/// `last < next`), so the index need not store whole keys: where the user
/// keys differ at a byte that can be raised without reaching `next`'s, the
/// prefix up to that byte raised by one, with the trailer that sorts first
/// for its user key. Otherwise `last` itself.
fn shortest_separator(last: &[u8], next: &[u8]) -> Vec<u8> {
    let (last_user, next_user) = (crate::key::user_key(last), crate::key::user_key(next));
    let common = last_user
        .iter()
        .zip(next_user)
        .take_while(|(a, b)| a == b)
        .count();
    if let (Some(&byte), Some(&limit)) = (last_user.get(common), next_user.get(common))
        && byte < 0xff
        && byte + 1 < limit
        && common + 1 < last_user.len()
    {
        let mut shortened = last_user[..=common].to_vec();
        shortened[common] = byte + 1;
        return internal_key(&shortened, SEQUENCE_MAX, ValueKind::Value);
    }
    last.to_vec()
}

/// An open, immutable table.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    map: memmap2::Mmap,
    /// (last internal key of the block, block offset, stored size).
    index: Vec<(Vec<u8>, u64, u64)>,
    filter: Vec<u8>,
    summary: TableSummary,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buffer)
}

impl Table {
    /// Opens a table, checking its footer, index, filter and properties.
    pub fn open(path: &Path) -> Result<Table> {
        let file = File::open(path).map_err(|error| Error::io(path, error))?;
        // SAFETY: tables are immutable once `finish` returned, and the engine
        // never truncates or rewrites a table file while it is open (files
        // are deleted only after every reader dropped them). A file truncated
        // by something outside the engine would fault on access; that is the
        // hazard every mmap-based reader accepts.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|error| Error::io(path, error))?;
        let length = map.len();
        if length < FOOTER_BYTES {
            return Err(Error::corruption(path, 0, "file shorter than a footer"));
        }
        let mut footer = [0u8; FOOTER_BYTES];
        footer.copy_from_slice(&map[length - FOOTER_BYTES..]);
        let footer = &footer;
        let footer_offset = (length - FOOTER_BYTES) as u64;
        if read_u64(footer, 56) != TABLE_MAGIC {
            return Err(Error::corruption(path, footer_offset, "bad magic number"));
        }
        let checksum = u32::from_le_bytes([footer[52], footer[53], footer[54], footer[55]]);
        if crc32fast::hash(&footer[..52]) != checksum {
            return Err(Error::corruption(
                path,
                footer_offset,
                "footer checksum mismatch",
            ));
        }
        let version = u32::from_le_bytes([footer[48], footer[49], footer[50], footer[51]]);
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
            return Err(Error::corruption(
                path,
                footer_offset,
                format!("unknown format version {version}"),
            ));
        }
        let handle = |at: usize| (read_u64(footer, at), read_u64(footer, at + 8));
        let mut table = Table {
            path: path.to_path_buf(),
            map,
            index: Vec::new(),
            filter: Vec::new(),
            summary: TableSummary {
                file_size_bytes: length as u64,
                entries: 0,
                smallest_key: Vec::new(),
                largest_key: Vec::new(),
            },
        };
        let (index_offset, index_size) = handle(0);
        let (filter_offset, filter_size) = handle(16);
        let (properties_offset, properties_size) = handle(32);
        table.filter = table.read_block(filter_offset, filter_size)?.to_vec();
        let index = table.read_block(index_offset, index_size)?;
        let mut cursor = BlockCursor::new(index)
            .map_err(|_| Error::corruption(path, index_offset, "malformed index block"))?;
        let malformed_index = || Error::corruption(path, index_offset, "malformed index block");
        cursor.seek_to_first().map_err(|_| malformed_index())?;
        while cursor.valid() {
            let value = cursor.value();
            let (offset, size) = if version == 1 {
                if value.len() != 16 {
                    return Err(malformed_index());
                }
                (read_u64(value, 0), read_u64(value, 8))
            } else {
                let mut position = 0;
                let offset = block::get_varint(value, &mut position);
                let size = block::get_varint(value, &mut position);
                match (offset, size) {
                    (Some(offset), Some(size)) if position == value.len() => (offset, size),
                    _ => return Err(malformed_index()),
                }
            };
            table.index.push((cursor.key().to_vec(), offset, size));
            cursor.advance().map_err(|_| malformed_index())?;
        }
        let properties = table.read_block(properties_offset, properties_size)?;
        let malformed = || Error::corruption(path, properties_offset, "malformed properties block");
        if properties.len() < 8 {
            return Err(malformed());
        }
        table.summary.entries = read_u64(&properties, 0);
        let mut position = 8;
        for key in [
            &mut table.summary.smallest_key,
            &mut table.summary.largest_key,
        ] {
            let length =
                block::get_varint(&properties, &mut position).ok_or_else(malformed)? as usize;
            let end = position.checked_add(length).ok_or_else(malformed)?;
            *key = properties
                .get(position..end)
                .ok_or_else(malformed)?
                .to_vec();
            position = end;
        }
        Ok(table)
    }

    /// Reads and checks one block, returning its (decompressed) contents.
    fn read_block(&self, offset: u64, size: u64) -> Result<Arc<Vec<u8>>> {
        let corrupt = |reason: &str| Error::corruption(&self.path, offset, reason.to_string());
        let data_end = self.map.len().saturating_sub(FOOTER_BYTES) as u64;
        let end = offset
            .checked_add(size)
            .and_then(|end| end.checked_add(BLOCK_TRAILER_BYTES as u64))
            .filter(|end| *end <= data_end)
            .ok_or_else(|| corrupt("block handle out of range"))?;
        let (start, stored_end) = (offset as usize, (offset + size) as usize);
        let stored = &self.map[start..stored_end];
        let kind = self.map[stored_end];
        let trailer = &self.map[stored_end + 1..end as usize];
        let checksum = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(stored);
        hasher.update(&[kind]);
        if hasher.finalize() != checksum {
            return Err(corrupt("block checksum mismatch"));
        }
        match kind {
            0 => Ok(Arc::new(stored.to_vec())),
            1 => {
                if stored.len() < 4 {
                    return Err(corrupt("compressed block too short"));
                }
                let length =
                    u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]) as usize;
                if length > BLOCK_UNCOMPRESSED_MAX_BYTES {
                    return Err(corrupt("decompressed block too large"));
                }
                lz4_flex::block::decompress(&stored[4..], length)
                    .map(Arc::new)
                    .map_err(|_| corrupt("block does not decompress"))
            }
            2 => {
                let length = snap::raw::decompress_len(stored)
                    .map_err(|_| corrupt("block does not decompress"))?;
                if length > BLOCK_UNCOMPRESSED_MAX_BYTES {
                    return Err(corrupt("decompressed block too large"));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(stored)
                    .map(Arc::new)
                    .map_err(|_| corrupt("block does not decompress"))
            }
            _ => Err(corrupt("unknown block type")),
        }
    }

    fn block_cursor(&self, block: usize) -> Result<BlockCursor> {
        let (_, offset, size) = &self.index[block];
        let contents = self.read_block(*offset, *size)?;
        BlockCursor::new(contents)
            .map_err(|_| Error::corruption(&self.path, *offset, "malformed data block"))
    }

    fn malformed(&self, block: usize) -> Error {
        Error::corruption(&self.path, self.index[block].1, "malformed data block")
    }

    /// The first block whose separator is `>= target` (the only block that
    /// can hold the first entry `>= target`, or the one before it when the
    /// target falls between a block's last key and its separator).
    fn block_for(&self, target: &[u8]) -> usize {
        self.index
            .partition_point(|(last, _, _)| compare_internal_keys(last, target) == Ordering::Less)
    }

    /// The newest version of `user_key` with sequence `<= sequence_max`.
    pub fn get(&self, user_key: &[u8], sequence_max: u64) -> Result<Option<(ValueKind, Vec<u8>)>> {
        if !may_contain(&self.filter, user_key) {
            return Ok(None);
        }
        let target = internal_key(user_key, sequence_max.min(SEQUENCE_MAX), ValueKind::Value);
        let block = self.block_for(&target);
        if block >= self.index.len() {
            return Ok(None);
        }
        let mut cursor = self.block_cursor(block)?;
        cursor.seek(&target).map_err(|_| self.malformed(block))?;
        if !cursor.valid() {
            return Ok(None);
        }
        let parsed = parse_internal_key(cursor.key()).ok_or_else(|| self.malformed(block))?;
        if parsed.user_key != user_key {
            return Ok(None);
        }
        Ok(Some((parsed.kind, cursor.value().to_vec())))
    }

    /// A cursor over every entry.
    pub fn iter(self: &Arc<Table>) -> TableIterator {
        TableIterator {
            table: Arc::clone(self),
            block: 0,
            cursor: None,
        }
    }

    /// What the table holds.
    pub fn summary(&self) -> &TableSummary {
        &self.summary
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A cursor over one table, implementing [`InternalIterator`].
#[derive(Debug)]
pub struct TableIterator {
    table: Arc<Table>,
    block: usize,
    cursor: Option<BlockCursor>,
}

impl TableIterator {
    /// Skips empty blocks forward until positioned or past the end.
    fn settle(&mut self) -> Result<()> {
        while self.cursor.as_ref().is_some_and(|cursor| !cursor.valid()) {
            self.block += 1;
            if self.block >= self.table.index.len() {
                self.cursor = None;
                return Ok(());
            }
            let mut cursor = self.table.block_cursor(self.block)?;
            cursor
                .seek_to_first()
                .map_err(|_| self.table.malformed(self.block))?;
            self.cursor = Some(cursor);
        }
        Ok(())
    }
}

impl InternalIterator for TableIterator {
    fn valid(&self) -> bool {
        self.cursor.as_ref().is_some_and(BlockCursor::valid)
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.block = 0;
        self.cursor = None;
        if self.table.index.is_empty() {
            return Ok(());
        }
        let mut cursor = self.table.block_cursor(0)?;
        cursor
            .seek_to_first()
            .map_err(|_| self.table.malformed(0))?;
        self.cursor = Some(cursor);
        self.settle()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.cursor = None;
        self.block = self.table.block_for(target);
        if self.block >= self.table.index.len() {
            return Ok(());
        }
        let mut cursor = self.table.block_cursor(self.block)?;
        cursor
            .seek(target)
            .map_err(|_| self.table.malformed(self.block))?;
        self.cursor = Some(cursor);
        self.settle()
    }

    fn next(&mut self) -> Result<()> {
        if let Some(cursor) = self.cursor.as_mut()
            && cursor.advance().is_err()
        {
            self.cursor = None;
            return Err(self.table.malformed(self.block));
        }
        self.settle()
    }

    fn key(&self) -> &[u8] {
        self.cursor.as_ref().map_or(&[], BlockCursor::key)
    }

    fn value(&self) -> &[u8] {
        self.cursor.as_ref().map_or(&[], BlockCursor::value)
    }
}

#[cfg(test)]
mod tests;
