//! Record logs: the framing shared by the write-ahead log and the manifest.
//!
//! A log is a sequence of records `crc32 (u32 LE) ‖ length (u32 LE) ‖ payload`,
//! where the checksum covers the length bytes and the payload. Files are
//! preallocated, so the unwritten rest of a file reads as zeros; a record of
//! length zero ends the log.
//!
//! Recovery tells a torn tail from corruption: a record that runs past the end
//! of the file, or fails its checksum with nothing but zeros after it, was
//! being written when the process died — the log ends before it. A bad record
//! followed by more data is corruption, reported with the file and offset.

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The size of each zero-filling write: a page, so that the page cache
/// holds the log in page-sized folios ([`LogWriter::zero_fill`]).
const ZERO_FILL_STEP_BYTES: usize = 4096;

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 8;
/// Largest record accepted (a write batch or a manifest edit).
pub const RECORD_SIZE_MAX_BYTES: usize = 512 << 20;

/// Appends records to a log file.
///
/// The write-ahead log is *mapped*: its file is allocated ahead (real blocks,
/// not a sparse hole, so a full disk fails here with an error rather than
/// later as a fault) and records are copied into a shared mapping of it. A
/// copy costs no system call, and the bytes are in the page cache at once, so
/// a killed process loses nothing; an fsync of the file makes them durable,
/// as with `write(2)`. Where the file system cannot allocate ahead, and for
/// the manifest, records go through `write(2)`.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
    offset: u64,
    allocated: u64,
    preallocate_bytes: u64,
    buffer: Vec<u8>,
    /// Whether records go into a mapping (until allocating ahead fails as
    /// unsupported).
    mapped: bool,
    /// The mapping of `[0, allocated)` when the log is mapped.
    map: Option<memmap2::MmapMut>,
}

impl LogWriter {
    /// Creates a new, empty log at `path` (which must not exist), preallocated
    /// to `preallocate_bytes`, written through `write(2)`.
    pub fn create(path: &Path, preallocate_bytes: u64) -> Result<LogWriter> {
        LogWriter::create_with(path, preallocate_bytes, false)
    }

    /// Like [`LogWriter::create`], but records are copied into a mapping of
    /// the allocated file where the file system allows it.
    pub fn create_mapped(path: &Path, preallocate_bytes: u64) -> Result<LogWriter> {
        LogWriter::create_with(path, preallocate_bytes, true)
    }

    fn create_with(path: &Path, preallocate_bytes: u64, mapped: bool) -> Result<LogWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|error| Error::io(path, error))?;
        let mut writer = LogWriter {
            file,
            path: path.to_path_buf(),
            offset: 0,
            allocated: 0,
            preallocate_bytes: preallocate_bytes.max(1),
            buffer: Vec::new(),
            mapped,
            map: None,
        };
        writer.reserve(0)?;
        Ok(writer)
    }

    /// True when records are copied into a mapping.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    fn reserve(&mut self, needed: u64) -> Result<()> {
        if self.allocated > 0 && self.offset + needed <= self.allocated {
            return Ok(());
        }
        let size = self.offset + needed.max(self.preallocate_bytes);
        if self.mapped {
            match allocate(&self.file, size) {
                Ok(true) => {
                    let map = map_file(&self.file).map_err(|error| Error::io(&self.path, error))?;
                    self.allocated = size;
                    self.map = Some(map);
                    return Ok(());
                }
                // Not supported here: write(2) from now on.
                Ok(false) => {
                    self.mapped = false;
                    self.map = None;
                }
                Err(error) => return Err(Error::io(&self.path, error)),
            }
        }
        self.file
            .set_len(size)
            .map_err(|error| Error::io(&self.path, error))?;
        self.allocated = size;
        Ok(())
    }

    /// Appends one record (not yet durable; see [`LogWriter::sync`]).
    pub fn append(&mut self, payload: &[u8]) -> Result<()> {
        self.append_with(payload, false)
    }

    /// Appends one record that is about to be synced. It goes through
    /// `pwrite(2)` even into a mapped log (the map and the file share the
    /// page cache): measured here, an fsync after a copy into the map took
    /// ~600 µs against ~85 µs after a `pwrite`.
    pub fn append_for_sync(&mut self, payload: &[u8]) -> Result<()> {
        self.append_with(payload, true)
    }

    fn append_with(&mut self, payload: &[u8], through_write: bool) -> Result<()> {
        if payload.is_empty() || payload.len() > RECORD_SIZE_MAX_BYTES {
            return Err(Error::InvalidArgument(format!(
                "log record of {} bytes",
                payload.len()
            )));
        }
        let length = (payload.len() as u32).to_le_bytes();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&length);
        hasher.update(payload);
        let checksum = hasher.finalize().to_le_bytes();
        let record_bytes = HEADER_BYTES + payload.len();
        self.reserve(record_bytes as u64)?;
        if let Some(map) = self.map.as_mut().filter(|_| !through_write) {
            let start = self.offset as usize;
            let record = &mut map[start..start + record_bytes];
            record[..4].copy_from_slice(&checksum);
            record[4..HEADER_BYTES].copy_from_slice(&length);
            record[HEADER_BYTES..].copy_from_slice(payload);
        } else {
            use std::os::unix::fs::FileExt;
            self.buffer.clear();
            self.buffer.extend_from_slice(&checksum);
            self.buffer.extend_from_slice(&length);
            self.buffer.extend_from_slice(payload);
            self.file
                .write_all_at(&self.buffer, self.offset)
                .map_err(|error| Error::io(&self.path, error))?;
        }
        self.offset += record_bytes as u64;
        Ok(())
    }

    /// Writes zeros over the whole allocated file and syncs them, so that its
    /// blocks are written (not merely allocated) before records go in.
    ///
    /// A page per `pwrite`, because the writes size the page cache's folios:
    /// since Linux 6.16, ext4 caches a file in folios as large as the writes
    /// that create them, and a record copied into the map dirties the whole
    /// folio it lands in. Zero-filled a megabyte at a time, every sync after
    /// a small append wrote a megabyte (`tests/sync_amplification.rs`).
    /// 16,384 calls for a 64 MiB log, made off the write path (the spare
    /// log) or at open.
    pub fn zero_fill(&mut self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; ZERO_FILL_STEP_BYTES];
        let mut offset = 0;
        while offset < self.allocated {
            let length = zeros.len().min((self.allocated - offset) as usize);
            self.file
                .write_all_at(&zeros[..length], offset)
                .map_err(|error| Error::io(&self.path, error))?;
            offset += length as u64;
        }
        write_back_in_steps(&self.file, self.allocated)
            .and_then(|()| self.file.sync_data())
            .map_err(|error| Error::io(&self.path, error))
    }

    /// Unmaps a mapped log that takes no more appends, before its fsync.
    /// Writing back a page of a shared mapping write-protects it in every
    /// CPU's page tables: one TLB-shootdown interrupt per page to each other
    /// CPU running this process, a few microseconds of a writer's time each
    /// (measured: 15,400 during a one-thread fill of 1M entries, the cause
    /// of its p99 put latency). Unmapped first, the log costs one.
    /// Later appends, if any, go through `write(2)`.
    ///
    /// The pages are released a megabyte at a time before the unmapping:
    /// unmapping 64 MiB of written pages at once held the process's
    /// memory-map lock for about 2.5 ms, and a writer growing its heap
    /// (`mprotect`) waited that long behind it.
    pub fn unmap(&mut self) {
        if let Some(map) = &self.map {
            release_pages(map);
        }
        self.map = None;
        self.mapped = false;
    }

    /// Makes every appended record durable. The pages are written back a
    /// megabyte at a time first ([`write_back_in_steps`]): a frozen log has
    /// up to its whole size dirty.
    pub fn sync(&mut self) -> Result<()> {
        write_back_in_steps(&self.file, self.offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|error| Error::io(&self.path, error))
    }

    /// Bytes of records written.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every intact record of a log. Returns the payloads and whether a
/// torn tail was cut off.
pub fn read_log(path: &Path) -> Result<(Vec<Vec<u8>>, bool)> {
    let bytes = std::fs::read(path).map_err(|error| Error::io(path, error))?;
    parse_log(path, &bytes)
}

/// [`read_log`] over bytes already in memory.
pub fn parse_log(path: &Path, bytes: &[u8]) -> Result<(Vec<Vec<u8>>, bool)> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match record_at(rest) {
            Record::Valid(payload) => {
                records.push(payload.to_vec());
                offset += HEADER_BYTES + payload.len();
            }
            Record::End => return Ok((records, false)),
            Record::Bad => {
                // A torn tail is the last thing written: nothing intact follows
                // it. An intact record after a bad one means the bad one was
                // damaged after it was written.
                if intact_record_after(rest) {
                    return Err(Error::corruption(
                        path,
                        offset as u64,
                        "log record damaged (checksum or length) with intact records after it",
                    ));
                }
                return Ok((records, true));
            }
        }
    }
    Ok((records, false))
}

enum Record<'a> {
    Valid(&'a [u8]),
    /// Zeros: the preallocated, never-written rest of the file.
    End,
    Bad,
}

fn record_at(rest: &[u8]) -> Record<'_> {
    if rest.iter().take(HEADER_BYTES * 2).all(|byte| *byte == 0)
        && rest.iter().all(|byte| *byte == 0)
    {
        return Record::End;
    }
    if rest.len() < HEADER_BYTES {
        return Record::Bad;
    }
    let checksum = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let length = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    if length == 0 || length > RECORD_SIZE_MAX_BYTES || HEADER_BYTES + length > rest.len() {
        return Record::Bad;
    }
    let end = HEADER_BYTES + length;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&rest[4..8]);
    hasher.update(&rest[HEADER_BYTES..end]);
    if hasher.finalize() != checksum {
        return Record::Bad;
    }
    Record::Valid(&rest[HEADER_BYTES..end])
}

/// True when some offset after the first byte starts an intact record.
fn intact_record_after(rest: &[u8]) -> bool {
    (1..rest.len()).any(|start| matches!(record_at_quick(&rest[start..]), Some(true)))
}

/// Like [`record_at`] without the all-zeros scan (which is quadratic here).
fn record_at_quick(rest: &[u8]) -> Option<bool> {
    if rest.len() < HEADER_BYTES {
        return None;
    }
    let length = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    if length == 0 || HEADER_BYTES + length > rest.len() {
        return Some(false);
    }
    Some(matches!(
        record_at(&rest[..HEADER_BYTES + length]),
        Record::Valid(_)
    ))
}

/// Allocates real blocks for `[0, size)` of `file`, extending it. `Ok(false)`
/// where the file system or platform cannot.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn allocate(file: &File, size: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let length = libc::off_t::try_from(size)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "log too large"))?;
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    if result == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(error),
    }
}

/// Starts the write-back of `file`'s dirty pages in `[0, end)` a megabyte at
/// a time, with at most two megabytes under write, and waits for it; the
/// caller's fsync then finds little left to write. One fsync of a large
/// dirty file completes all of its pages in one block-completion softirq,
/// run on whichever CPU takes the disk's interrupt: measured, 2.2 ms on the
/// CPU of a writer thread in the middle of a put, when the flush thread
/// fsynced a 64 MiB log; a megabyte's share of that is about 35 µs.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn write_back_in_steps(file: &File, end: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const STEP: u64 = 1 << 20;
    let range = |offset: u64, flags: libc::c_uint| -> std::io::Result<()> {
        let length = STEP.min(end - offset);
        let (Ok(offset), Ok(length)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(length),
        ) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "file too large",
            ));
        };
        // SAFETY: sync_file_range on an open descriptor we own; no memory
        // is passed.
        let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, flags) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let mut offset = 0;
    while offset < end {
        range(offset, libc::SYNC_FILE_RANGE_WRITE)?;
        if offset >= STEP {
            range(offset - STEP, wait)?;
        }
        offset += STEP;
    }
    if offset >= STEP {
        range(offset - STEP, wait)?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn write_back_in_steps(_file: &File, _end: u64) -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn allocate(_file: &File, _size: u64) -> std::io::Result<bool> {
    Ok(false)
}

/// A shared, writable mapping of the whole of `file`.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<memmap2::MmapMut> {
    // SAFETY: the log file is this process's own (the directory is locked);
    // nothing truncates it while it is mapped, and every access stays below
    // the allocated size, whose blocks exist.
    unsafe { memmap2::MmapMut::map_mut(file) }
}

/// Drops the page-table entries of a shared file mapping, a megabyte at a
/// time; the data stays in the page cache (and in the file).
#[allow(unsafe_code)]
fn release_pages(map: &memmap2::MmapMut) {
    const STEP: usize = 1 << 20;
    let mut offset = 0;
    while offset < map.len() {
        let length = STEP.min(map.len() - offset);
        // SAFETY: the mapping is shared and of a file, so MADV_DONTNEED only
        // drops page-table entries: later accesses (there are none; it is
        // unmapped next) would read the file's data, not zeros.
        let released = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, length)
        };
        if released.is_err() {
            return;
        }
        offset += length;
    }
}

/// Fsyncs a directory so that created, renamed or deleted entries are durable.
pub fn sync_directory(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| Error::io(path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_back_in_steps_keeps_the_data_and_reports_errors() {
        use std::io::{Read, Write};
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("file");
        // Three and a half steps, so the last one is partial.
        let data: Vec<u8> = (0..(7u32 << 19)).map(|i| (i % 251) as u8).collect();
        let mut file = File::create(&path).unwrap();
        file.write_all(&data).unwrap();
        for end in [0, 1, 1 << 20, data.len() as u64, data.len() as u64 + 12_345] {
            write_back_in_steps(&file, end).unwrap();
        }
        file.sync_data().unwrap();
        let mut read = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut read).unwrap();
        assert!(read == data, "the data changed");
        // A descriptor the call cannot use (a pipe: ESPIPE) is an error,
        // not a panic.
        if cfg!(target_os = "linux") {
            let (_reader, writer) = std::io::pipe().unwrap();
            let pipe = File::from(std::os::fd::OwnedFd::from(writer));
            let error = write_back_in_steps(&pipe, 1 << 20).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ESPIPE));
        }
    }

    fn write_log(path: &Path, records: &[&[u8]]) {
        let mut writer = LogWriter::create(path, 4096).unwrap();
        for record in records {
            writer.append(record).unwrap();
        }
        writer.sync().unwrap();
    }

    #[test]
    fn a_mapped_log_writes_the_same_bytes_and_grows_past_its_allocation() {
        let directory = tempfile::tempdir().unwrap();
        let written = directory.path().join("written");
        let mapped = directory.path().join("mapped");
        let records: [&[u8]; 4] = [b"one", &[7u8; 5000], b"three", &[9u8; 9000]];
        write_log(&written, &records);
        let mut writer = LogWriter::create_mapped(&mapped, 4096).unwrap();
        for (index, record) in records.into_iter().enumerate() {
            // Copies into the map and writes through pwrite, interleaved.
            if index % 2 == 0 {
                writer.append(record).unwrap();
            } else {
                writer.append_for_sync(record).unwrap();
            }
            // Visible to a reader at once, before any fsync: a killed
            // process loses nothing it appended.
            let (seen, _) = read_log(&mapped).unwrap();
            assert_eq!(seen.last().map(Vec::as_slice), Some(record));
        }
        writer.sync().unwrap();
        let end = writer.offset() as usize;
        drop(writer);
        let written_bytes = std::fs::read(&written).unwrap();
        let mapped_bytes = std::fs::read(&mapped).unwrap();
        assert_eq!(written_bytes[..end], mapped_bytes[..end]);
        assert!(mapped_bytes[end..].iter().all(|byte| *byte == 0));
        let (seen, torn) = read_log(&mapped).unwrap();
        assert!(!torn);
        assert_eq!(seen, records.map(<[u8]>::to_vec));
    }

    #[test]
    fn records_round_trip_through_a_preallocated_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        write_log(&path, &[b"one", b"two", &[7u8; 5000]]);
        let (records, torn) = read_log(&path).unwrap();
        assert!(!torn);
        assert_eq!(records.len(), 3);
        assert_eq!(records[2], vec![7u8; 5000]);
    }

    #[test]
    fn every_truncation_yields_a_prefix_of_the_records() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        write_log(&path, &[b"alpha", b"beta", b"gamma"]);
        let bytes = std::fs::read(&path).unwrap();
        let written = 3 * HEADER_BYTES + 5 + 4 + 5;
        for cut in 0..=written {
            let (records, _) = parse_log(&path, &bytes[..cut]).unwrap();
            let expected: Vec<&[u8]> = [&b"alpha"[..], b"beta", b"gamma"]
                .into_iter()
                .take(records.len())
                .collect();
            assert_eq!(records, expected, "cut at {cut}");
        }
    }

    #[test]
    fn a_torn_last_record_is_cut_and_earlier_corruption_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        write_log(&path, &[b"alpha", b"beta", b"gamma"]);
        let bytes = std::fs::read(&path).unwrap();
        // Damage the last record's payload: torn tail.
        let mut torn = bytes.clone();
        torn[3 * HEADER_BYTES + 5 + 4 + 2] ^= 0xff;
        let (records, was_torn) = parse_log(&path, &torn).unwrap();
        assert!(was_torn);
        assert_eq!(records.len(), 2);
        // Damage the first record: corruption naming the offset.
        let mut corrupt = bytes;
        corrupt[HEADER_BYTES + 1] ^= 0x01;
        match parse_log(&path, &corrupt) {
            Err(Error::Corruption { offset, .. }) => assert_eq!(offset, 0),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected_or_cut_never_misread() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        let originals: [&[u8]; 3] = [b"alpha", b"beta", b"gamma"];
        write_log(&path, &originals);
        let bytes = std::fs::read(&path).unwrap();
        let written = 3 * HEADER_BYTES + 5 + 4 + 5;
        for position in 0..written {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[position] ^= 1 << bit;
                let last_record_starts = 2 * HEADER_BYTES + 5 + 4;
                match parse_log(&path, &flipped) {
                    Ok((records, _)) => {
                        assert!(
                            position >= last_record_starts,
                            "flip at {position}:{bit} in an earlier record must be an error"
                        );
                        assert_eq!(records.len(), 2, "flip at {position}:{bit}");
                        for (record, original) in records.iter().zip(originals) {
                            assert_eq!(record.as_slice(), original, "flip at {position}:{bit}");
                        }
                    }
                    Err(Error::Corruption { .. }) => {
                        assert!(position < last_record_starts, "flip at {position}:{bit}");
                    }
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
        }
    }
}
