//! The Raft log: append-only segment files.
//!
//! A log directory holds:
//! - `NNNNNNNNNNNNNNNNNNNN.seg` segment files, named after the index of their
//!   first entry. A segment is a sequence of records; the last segment is the
//!   one being appended to, and a new one starts once it passes
//!   [`SEGMENT_BYTES`].
//! - `meta.json`: the vote, the last purged log id and a recent committed log
//!   id, replaced atomically (write, fsync, rename, fsync the directory).
//!
//! A record is a 40-byte header followed by the entry's payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length (u32, little endian) |
//! | 4..8 | magic: `STRB` (payload in the binary encoding of [`crate::wire`]) or `STRL` (payload is the whole entry as JSON, as written before the binary encoding; still read) |
//! | 8..16 | log index (u64) |
//! | 16..24 | term of the entry's leader (u64) |
//! | 24..32 | node id of the entry's leader (u64) |
//! | 32..40 | checksum: rapidhash v3 of bytes 8..32 and the payload (u64) |
//!
//! An append writes all its records with one `write` and, by default, one
//! `fdatasync` before openraft is told the entries are flushed. With a sync
//! interval (`log_sync_ms`), an append is only written to the operating
//! system and a background thread syncs the file that often: the entries
//! survive the process being killed, not the machine losing power within
//! the interval (the durability of nats-server's JetStream file store). On open, every segment is
//! scanned (headers and checksums; entries are not parsed): a record cut short
//! or failing its checksum at the end of the last segment is a torn write
//! that was never acknowledged, and is cut off; anywhere else it is
//! corruption, and opening fails with the file and offset.
//!
//! Compared with a B-tree database, an append costs one copy of the bytes
//! and one sync; that is the one step of a write every node of a site takes
//! before anything else can happen.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    StorageError, Vote,
};
use serde::{Deserialize, Serialize};

use super::fault::Fault;
use super::{blocking, storage_err, storage_msg};
use crate::error::FederationError;
use crate::{NodeId, TypeConfig};

type SResult<T> = Result<T, StorageError<NodeId>>;

/// How many recently appended entries are kept in memory, so that applying
/// them (and, in a multi-node site, replicating them) does not read them
/// back from disk and parse them again.
const CACHE_ENTRIES: usize = 64;

/// A segment past this size is closed and the next append starts a new one.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const HEADER: usize = 40;
/// Magic of a record whose payload is binary ([`crate::wire`]).
const MAGIC: &[u8; 4] = b"STRB";
/// Magic of a record whose payload is the entry as JSON (written by
/// earlier versions; read, never written).
const MAGIC_JSON: &[u8; 4] = b"STRL";
/// Largest payload a record may declare (an entry is ~1 MiB at most).
const MAX_PAYLOAD: u32 = 256 * 1024 * 1024;
const META_FILE: &str = "meta.json";

/// The durable Raft log of one node.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    cache: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    fault: Fault,
}

/// What `meta.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pos {
    /// First index of the segment holding the record.
    segment: u64,
    /// Offset of the record's header.
    offset: u64,
    /// Payload length.
    len: u32,
    log_id: LogId<NodeId>,
}

struct Inner {
    dir: PathBuf,
    /// Zero: fsync every append. Else: a background thread syncs this often.
    sync_interval: std::time::Duration,
    /// Appended since the last sync (interval mode).
    dirty: bool,
    segments: BTreeMap<u64, Segment>,
    positions: BTreeMap<u64, Pos>,
    /// What `meta.json` holds, or will hold after the next meta write: the
    /// committed id openraft reports is only kept here until then (after a
    /// crash an older value only means more is re-applied once a leader
    /// confirms it).
    meta: Meta,
    /// Unit tests only: bytes the "disk" still has room for; an append
    /// beyond it writes what fits and fails with `ENOSPC`, as a full disk
    /// does ([`LogStore::limit_room`]).
    #[cfg(test)]
    room: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn werr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Logs, ErrorVerb::Write, &e)
}

fn rerr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Logs, ErrorVerb::Read, &e)
}

fn corrupt(path: &Path, offset: u64, what: &str) -> StorageError<NodeId> {
    storage_msg(
        ErrorSubject::Logs,
        ErrorVerb::Read,
        format!("{} at byte {offset}: {what}", path.display()),
    )
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn checksum(fixed: &[u8], payload: &[u8]) -> u64 {
    let a = rapidhash::v3::rapidhash_v3(fixed);
    let b = rapidhash::v3::rapidhash_v3(payload);
    a.rotate_left(17) ^ b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Append one record for `entry` to `buf`; returns the payload length.
fn encode_record(buf: &mut Vec<u8>, entry: &Entry<TypeConfig>) -> SResult<u32> {
    let start = buf.len();
    buf.resize(start + HEADER, 0);
    crate::wire::encode_payload(buf, &entry.payload).map_err(werr)?;
    let len = u32::try_from(buf.len() - start - HEADER)
        .ok()
        .filter(|l| *l <= MAX_PAYLOAD)
        .ok_or_else(|| {
            storage_msg(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                format!("log entry {} is too large", entry.log_id.index),
            )
        })?;
    let (head, payload) = buf[start..].split_at_mut(HEADER);
    head[0..4].copy_from_slice(&len.to_le_bytes());
    head[4..8].copy_from_slice(MAGIC);
    head[8..16].copy_from_slice(&entry.log_id.index.to_le_bytes());
    head[16..24].copy_from_slice(&entry.log_id.leader_id.term.to_le_bytes());
    head[24..32].copy_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
    let sum = checksum(&head[8..32], payload);
    head[32..40].copy_from_slice(&sum.to_le_bytes());
    Ok(len)
}

/// Why a record's payload does not decode.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error(transparent)]
    Binary(#[from] crate::wire::WireError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The entry of a record that passed its checksum: binary payloads carry
/// the log id in the header, JSON ones (earlier versions) in the payload.
fn decode_record(
    head: &[u8],
    body: &[u8],
    log_id: LogId<NodeId>,
) -> Result<Entry<TypeConfig>, RecordError> {
    if &head[4..8] == MAGIC_JSON {
        return Ok(serde_json::from_slice(body)?);
    }
    Ok(Entry {
        log_id,
        payload: crate::wire::decode_payload(body)?,
    })
}

fn sync_dir(dir: &Path) -> SResult<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(werr)
}

fn open_segment(path: &Path) -> SResult<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(werr)
}

/// What scanning a segment found (see [`scan_segment_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Intact records.
    pub records: usize,
    /// Length of the intact prefix, bytes.
    pub intact_len: u64,
    /// Why the scan stopped before the end, if it did (a torn write when
    /// it is the last segment).
    pub problem: Option<String>,
}

/// Scan the bytes of a segment whose first record must have index
/// `first`, the way a node checks its segments when it opens its log. For
/// tests and fuzzing. An error is corruption that no torn write explains
/// (an index out of sequence).
pub fn scan_segment_bytes(bytes: &[u8], first: u64) -> Result<SegmentScan, String> {
    let (found, intact_len, problem) =
        scan_reader(bytes, Path::new("(bytes)"), first).map_err(|e| e.to_string())?;
    Ok(SegmentScan {
        records: found.len(),
        intact_len,
        problem,
    })
}

/// Scan one segment: the position of every intact record. Returns the
/// positions and the length of the intact prefix.
fn scan(path: &Path, first: u64) -> SResult<(Vec<Pos>, u64, Option<String>)> {
    let file = File::open(path).map_err(rerr)?;
    scan_reader(BufReader::with_capacity(1 << 20, file), path, first)
}

fn scan_reader(
    mut reader: impl Read,
    path: &Path,
    first: u64,
) -> SResult<(Vec<Pos>, u64, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut head = [0u8; HEADER];
    let mut payload = Vec::new();
    let mut expected = first;
    loop {
        match read_full(&mut reader, &mut head) {
            Ok(0) => return Ok((out, offset, None)),
            Ok(n) if n < HEADER => {
                return Ok((out, offset, Some("record header cut short".into())));
            }
            Ok(_) => {}
            Err(e) => return Err(rerr(e)),
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if (&head[4..8] != MAGIC && &head[4..8] != MAGIC_JSON) || len > MAX_PAYLOAD {
            return Ok((out, offset, Some("not a record header".into())));
        }
        payload.resize(len as usize, 0);
        match read_full(&mut reader, &mut payload) {
            Ok(n) if n < payload.len() => {
                return Ok((out, offset, Some("record cut short".into())));
            }
            Ok(_) => {}
            Err(e) => return Err(rerr(e)),
        }
        if checksum(&head[8..32], &payload) != u64_at(&head, 32) {
            return Ok((out, offset, Some("checksum mismatch".into())));
        }
        let index = u64_at(&head, 8);
        if index != expected {
            return Err(corrupt(
                path,
                offset,
                &format!("entry {index} where {expected} was expected"),
            ));
        }
        out.push(Pos {
            segment: first,
            offset,
            len,
            log_id: LogId::new(
                CommittedLeaderId::new(u64_at(&head, 16), u64_at(&head, 24)),
                index,
            ),
        });
        expected += 1;
        offset += (HEADER + payload.len()) as u64;
    }
}

/// Read until `buf` is full or the end of the file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Inner {
    fn open(dir: &Path, sync_interval: std::time::Duration) -> SResult<Inner> {
        std::fs::create_dir_all(dir).map_err(werr)?;
        super::paced_io::empty_trash(dir).map_err(werr)?;
        let meta: Meta = match std::fs::read(dir.join(META_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(rerr)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(rerr(e)),
        };
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(dir).map_err(rerr)? {
            let item = item.map_err(rerr)?;
            let name = item.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            let first: u64 = stem
                .parse()
                .map_err(|_| corrupt(&item.path(), 0, "segment name is not an index"))?;
            firsts.push(first);
        }
        firsts.sort_unstable();
        let purged = meta.last_purged.map(|l| l.index);
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            sync_interval,
            dirty: false,
            segments: BTreeMap::new(),
            positions: BTreeMap::new(),
            meta,
            #[cfg(test)]
            room: None,
        };
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let (found, intact, problem) = scan(&path, first)?;
            let last_segment = i + 1 == count;
            if let Some(problem) = problem {
                if !last_segment {
                    return Err(corrupt(&path, intact, &problem));
                }
                // A torn tail: never acknowledged, cut it off.
                tracing::warn!(file = %path.display(), offset = intact, %problem, "cutting a torn write off the raft log");
                let f = open_segment(&path)?;
                f.set_len(intact).map_err(werr)?;
                f.sync_data().map_err(werr)?;
            }
            if let Some(prev) = inner.positions.last_key_value().map(|(k, _)| *k)
                && !found.is_empty()
                && prev + 1 != first
            {
                return Err(corrupt(
                    &path,
                    0,
                    &format!("segment starts at {first} but the previous one ends at {prev}"),
                ));
            }
            let wholly_purged = match (found.last(), purged) {
                (Some(p), Some(purged)) => p.log_id.index <= purged,
                (None, Some(purged)) => first <= purged,
                _ => false,
            };
            if wholly_purged {
                // A purge that crashed before deleting the file.
                super::paced_io::discard(&path).map_err(werr)?;
                continue;
            }
            for p in found {
                if purged.is_none_or(|x| p.log_id.index > x) {
                    inner.positions.insert(p.log_id.index, p);
                }
            }
            let file = open_segment(&path)?;
            inner.segments.insert(
                first,
                Segment {
                    path,
                    file,
                    len: intact,
                },
            );
        }
        Ok(inner)
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.positions
            .last_key_value()
            .map(|(_, p)| p.log_id)
            .or(self.meta.last_purged)
    }

    fn write_meta(&mut self) -> SResult<()> {
        let bytes = serde_json::to_vec(&self.meta).map_err(werr)?;
        let tmp = self.dir.join("meta.json.tmp");
        {
            let f = File::create(&tmp).map_err(werr)?;
            f.write_all_at(&bytes, 0).map_err(werr)?;
            f.sync_data().map_err(werr)?;
        }
        std::fs::rename(&tmp, self.dir.join(META_FILE)).map_err(werr)?;
        sync_dir(&self.dir)
    }

    fn append(&mut self, entries: &[Entry<TypeConfig>]) -> SResult<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let expected = self.last_log_id().map(|l| l.index + 1);
        if expected.is_some_and(|e| e != first.log_id.index) {
            return Err(storage_msg(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                format!(
                    "append of entry {} would leave a hole (next is {expected:?})",
                    first.log_id.index
                ),
            ));
        }
        let roll = match self.segments.last_key_value() {
            None => true,
            Some((_, s)) => s.len >= SEGMENT_BYTES,
        };
        if roll {
            // The closed segment is synced before the next one starts, so
            // the interval thread only ever has the last one to sync.
            if self.dirty
                && let Some((_, s)) = self.segments.last_key_value()
            {
                s.file.sync_data().map_err(werr)?;
                self.dirty = false;
            }
            let start = first.log_id.index;
            let path = self.dir.join(segment_name(start));
            let file = open_segment(&path)?;
            file.set_len(0).map_err(werr)?;
            sync_dir(&self.dir)?;
            self.segments.insert(start, Segment { path, file, len: 0 });
        }
        let Some((&seg_first, seg)) = self.segments.iter_mut().next_back() else {
            return Err(storage_msg(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "no segment",
            ));
        };
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut new = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = seg.len + buf.len() as u64;
            let len = encode_record(&mut buf, entry)?;
            new.push(Pos {
                segment: seg_first,
                offset,
                len,
                log_id: entry.log_id,
            });
        }
        #[cfg(test)]
        if let Some(room) = self.room.as_mut() {
            if (buf.len() as u64) > *room {
                let fits = usize::try_from(*room).unwrap_or(usize::MAX).min(buf.len());
                seg.file.write_all_at(&buf[..fits], seg.len).map_err(werr)?;
                *room = 0;
                return Err(werr(std::io::Error::from_raw_os_error(28)));
            }
            *room -= buf.len() as u64;
        }
        seg.file.write_all_at(&buf, seg.len).map_err(werr)?;
        if self.sync_interval.is_zero() {
            seg.file.sync_data().map_err(werr)?;
        } else {
            self.dirty = true;
        }
        seg.len += buf.len() as u64;
        for p in new {
            self.positions.insert(p.log_id.index, p);
        }
        Ok(())
    }

    fn read(&self, start: u64, end: Bound<u64>) -> SResult<Vec<Entry<TypeConfig>>> {
        let mut out = Vec::new();
        let mut payload = Vec::new();
        for (_, p) in self.positions.range((Bound::Included(start), end)) {
            let Some(seg) = self.segments.get(&p.segment) else {
                return Err(storage_msg(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    format!(
                        "segment {} of entry {} is missing",
                        p.segment, p.log_id.index
                    ),
                ));
            };
            payload.resize(HEADER + p.len as usize, 0);
            seg.file
                .read_exact_at(&mut payload, p.offset)
                .map_err(rerr)?;
            let (head, body) = payload.split_at(HEADER);
            if checksum(&head[8..32], body) != u64_at(head, 32) {
                return Err(corrupt(&seg.path, p.offset, "checksum mismatch"));
            }
            out.push(
                decode_record(head, body, p.log_id).map_err(|e| {
                    corrupt(&seg.path, p.offset, &format!("undecodable entry: {e}"))
                })?,
            );
        }
        Ok(out)
    }

    /// Remove entries from `index` on.
    fn truncate(&mut self, index: u64) -> SResult<()> {
        let Some(pos) = self.positions.get(&index).copied() else {
            return Ok(());
        };
        self.positions.split_off(&index);
        let later: Vec<u64> = self
            .segments
            .range((Bound::Excluded(pos.segment), Bound::Unbounded))
            .map(|(k, _)| *k)
            .collect();
        for first in later {
            if let Some(s) = self.segments.remove(&first) {
                super::paced_io::discard(&s.path).map_err(werr)?;
            }
        }
        if let Some(seg) = self.segments.get_mut(&pos.segment) {
            seg.file.set_len(pos.offset).map_err(werr)?;
            seg.file.sync_data().map_err(werr)?;
            seg.len = pos.offset;
        }
        sync_dir(&self.dir)
    }

    /// Forget entries up to `log_id` and delete segments holding nothing else.
    fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        if self
            .meta
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        self.meta.last_purged = Some(log_id);
        self.write_meta()?;
        self.positions = self.positions.split_off(&(log_id.index + 1));
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for (i, first) in firsts.iter().enumerate() {
            // A segment's entries end before the next segment's first.
            let whole = match firsts.get(i + 1) {
                Some(next) => *next <= log_id.index + 1,
                None => self.positions.is_empty(),
            };
            if whole && let Some(s) = self.segments.remove(first) {
                // Deleted in the background, a step at a time: deleting
                // whole segments at once stalled every fsync behind it.
                super::paced_io::discard(&s.path).map_err(werr)?;
            }
        }
        Ok(())
    }
}

/// Sync the last segment every `interval` while the log is open.
fn sync_loop(inner: std::sync::Weak<Mutex<Inner>>, interval: std::time::Duration) {
    loop {
        std::thread::sleep(interval);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Sync a duplicate of the file handle, so appends do not wait for
        // the sync.
        let file = {
            let mut guard = lock(&inner);
            if !guard.dirty {
                continue;
            }
            guard.dirty = false;
            guard
                .segments
                .last_key_value()
                .and_then(|(_, s)| s.file.try_clone().ok())
        };
        drop(inner);
        if let Some(file) = file
            && let Err(e) = file.sync_data()
        {
            tracing::error!(error = %e, "syncing the raft log failed");
        }
    }
}

impl LogStore {
    /// Open (or create) the log in directory `dir`, fsyncing every append.
    pub fn open(dir: &Path) -> Result<LogStore, FederationError> {
        LogStore::open_with_sync(dir, std::time::Duration::ZERO)
    }

    /// Open (or create) the log in directory `dir`. With a zero
    /// `sync_interval` every append is fsynced before it counts as flushed;
    /// otherwise appends go to the operating system and the log is fsynced
    /// that often (see the module documentation).
    pub fn open_with_sync(
        dir: &Path,
        sync_interval: std::time::Duration,
    ) -> Result<LogStore, FederationError> {
        let inner = Inner::open(dir, sync_interval).map_err(|e| FederationError::Storage {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let inner = Arc::new(Mutex::new(inner));
        if !sync_interval.is_zero() {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || sync_loop(weak, sync_interval))
                .map_err(|e| FederationError::Storage {
                    path: dir.display().to_string(),
                    message: format!("starting the log sync thread: {e}"),
                })?;
        }
        Ok(LogStore {
            inner,
            cache: Arc::default(),
            fault: Fault::default(),
        })
    }

    /// Note this log's storage errors in `fault` (shared with the state
    /// machine of the same node).
    pub fn with_fault(mut self, fault: Fault) -> LogStore {
        self.fault = fault;
        self
    }

    fn cache(&self) -> MutexGuard<'_, BTreeMap<u64, Entry<TypeConfig>>> {
        lock(&self.cache)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Encode `entries`, write them with one write and fsync them, then keep
    /// them in the in-memory tail. Blocking: call it off the runtime (the
    /// [`RaftLogStorage::append`] implementation does).
    pub fn append_durable(&self, entries: Vec<Entry<TypeConfig>>) -> SResult<()> {
        self.inner().append(&entries)?;
        let mut cache = self.cache();
        for entry in entries {
            cache.insert(entry.log_id.index, entry);
        }
        while cache.len() > CACHE_ENTRIES {
            cache.pop_first();
        }
        Ok(())
    }

    /// Unit tests only: from now on appends have room for `bytes` more
    /// bytes (`None`: unlimited); the append that does not fit writes what
    /// fits and fails with `ENOSPC`, like one on a full disk.
    #[cfg(test)]
    pub(crate) fn limit_room(&self, bytes: Option<u64>) {
        self.inner().room = bytes;
    }

    /// Bytes on disk in segment files (for tests and metrics).
    pub fn disk_bytes(&self) -> u64 {
        self.inner().segments.values().map(|s| s.len).sum()
    }

    /// Bytes of the records after index `after` (all records when `None`):
    /// what the log holds beyond a snapshot.
    pub fn bytes_after(&self, after: Option<u64>) -> u64 {
        let inner = self.inner();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        inner
            .positions
            .range((from, Bound::Unbounded))
            .map(|(_, p)| HEADER as u64 + u64::from(p.len))
            .sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner().segments.len()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        {
            let cache = self.cache();
            if let Some((&first, _)) = cache.first_key_value()
                && first <= start
            {
                let hit: Vec<Entry<TypeConfig>> = cache
                    .range((Bound::Included(start), end))
                    .map(|(_, e)| e.clone())
                    .collect();
                let last_cached = cache.last_key_value().map(|(k, _)| *k).unwrap_or(0);
                let covers_end = match end {
                    Bound::Included(e) => e <= last_cached,
                    Bound::Excluded(e) => e <= last_cached + 1,
                    Bound::Unbounded => true,
                };
                if covers_end {
                    return Ok(hit);
                }
            }
        }
        let this = self.clone();
        blocking(move || this.inner().read(start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let inner = self.inner();
        Ok(LogState {
            last_purged_log_id: inner.meta.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        let this = self.clone();
        let vote = *vote;
        self.fault.note(
            blocking(move || {
                let mut inner = this.inner();
                inner.meta.vote = Some(vote);
                inner.write_meta()
            })
            .await,
        )
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        Ok(self.inner().meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        // Not written on its own: it rides along with the next meta write.
        // After a crash, an older value only means a little more is
        // re-applied.
        self.inner().meta.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(self.inner().meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let this = self.clone();
        let started = std::time::Instant::now();
        let result = self
            .fault
            .note(blocking(move || this.append_durable(entries)).await);
        metrics::histogram!("strait_raft_log_append_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.cache().retain(|k, _| *k < log_id.index);
        let this = self.clone();
        self.fault
            .note(blocking(move || this.inner().truncate(log_id.index)).await)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.cache().retain(|k, _| *k > log_id.index);
        let this = self.clone();
        self.fault.note(
            blocking(move || this.inner().purge(log_id))
                .await
                .map_err(|e| {
                    storage_msg(
                        ErrorSubject::Logs,
                        ErrorVerb::Delete,
                        format!("purge up to {log_id}: {e}"),
                    )
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn ids(log: &LogStore, start: u64) -> Vec<(u64, u64)> {
        let inner = log.inner();
        match inner.read(start, Bound::Unbounded) {
            Ok(v) => v
                .iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect(),
            Err(e) => panic!("read: {e}"),
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, or a real segment cut or with a byte flipped:
        /// the scan never panics, and never claims more than it was given.
        #[test]
        fn segment_scan_never_panics(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            n in 1u64..5,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            if let Ok(scan) = scan_segment_bytes(&junk, 1) {
                proptest::prop_assert!(scan.intact_len <= junk.len() as u64);
            }
            let mut seg = Vec::new();
            for i in 1..=n {
                encode_record(&mut seg, &entry(1, i)).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            }
            let whole = scan_segment_bytes(&seg, 1).map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert_eq!(whole.records as u64, n);
            proptest::prop_assert_eq!(whole.problem, None);
            let short = &seg[..cut.index(seg.len())];
            if let Ok(scan) = scan_segment_bytes(short, 1) {
                proptest::prop_assert!(scan.records < n as usize);
                proptest::prop_assert!(scan.problem.is_some() || scan.intact_len == short.len() as u64);
            }
            let mut bad = seg.clone();
            let at = flip.index(bad.len());
            bad[at] ^= 0x01;
            if let Ok(scan) = scan_segment_bytes(&bad, 1) {
                proptest::prop_assert!(scan.records < n as usize, "a flipped bit went unnoticed");
            }
        }
    }

    /// A record as versions before the binary encoding wrote it: magic
    /// `STRL`, the whole entry as JSON.
    fn json_record(buf: &mut Vec<u8>, entry: &Entry<TypeConfig>) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(entry)?;
        let mut head = [0u8; HEADER];
        head[0..4].copy_from_slice(&u32::try_from(payload.len())?.to_le_bytes());
        head[4..8].copy_from_slice(MAGIC_JSON);
        head[8..16].copy_from_slice(&entry.log_id.index.to_le_bytes());
        head[16..24].copy_from_slice(&entry.log_id.leader_id.term.to_le_bytes());
        head[24..32].copy_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
        let sum = checksum(&head[8..32], &payload);
        head[32..40].copy_from_slice(&sum.to_le_bytes());
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&payload);
        Ok(())
    }

    #[test]
    fn a_log_written_in_json_is_read_and_continued_in_binary() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let append = |index: u64| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::Command::Append {
                ingest_ms: index,
                dedup_window_ms: 5,
                entries: Arc::new(vec![crate::AppendEntry {
                    bus: "b".into(),
                    source: "/s".into(),
                    id: format!("e{index}"),
                    event: serde_json::value::RawValue::from_string(format!(r#"{{"n":{index}}}"#))
                        .unwrap_or_else(|e| panic!("{e}")),
                }]),
            }),
        };
        let mut seg = Vec::new();
        json_record(&mut seg, &entry(1, 1))?;
        json_record(&mut seg, &append(2))?;
        std::fs::write(dir.path().join(segment_name(1)), &seg)?;
        let log = LogStore::open(dir.path())?;
        assert_eq!(ids(&log, 1), vec![(1, 1), (1, 2)]);
        log.append_durable(vec![append(3)])?;
        drop(log);
        let log = LogStore::open(dir.path())?;
        let all = log.inner().read(1, Bound::Unbounded)?;
        let events: Vec<String> = all
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(crate::Command::Append { entries, .. }) => {
                    Some(format!("{}={}", entries[0].id, entries[0].event.get()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(events, vec![r#"e2={"n":2}"#, r#"e3={"n":3}"#]);
        // The new record is binary.
        let bytes = std::fs::read(dir.path().join(segment_name(1)))?;
        assert_eq!(&bytes[seg.len() + 4..seg.len() + 8], MAGIC);
        Ok(())
    }

    #[test]
    fn entries_survive_a_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = LogStore::open(dir.path())?;
        log.append_durable((1..=5).map(|i| entry(1, i)).collect())?;
        log.append_durable(vec![entry(2, 6)])?;
        drop(log);
        let log = LogStore::open(dir.path())?;
        assert_eq!(
            ids(&log, 1),
            vec![(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 6)]
        );
        assert_eq!(log.inner().last_log_id().map(|l| l.index), Some(6));
        Ok(())
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_corruption_inside_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = LogStore::open(dir.path())?;
        log.append_durable((1..=3).map(|i| entry(1, i)).collect())?;
        let seg = dir.path().join(segment_name(1));
        let len = std::fs::metadata(&seg)?.len();
        drop(log);
        // Half a record at the end: cut off.
        let bytes = std::fs::read(&seg)?;
        let one = bytes.len() / 3;
        let mut torn = bytes.clone();
        torn.extend_from_slice(&bytes[..one / 2]);
        std::fs::write(&seg, &torn)?;
        let log = LogStore::open(dir.path())?;
        assert_eq!(ids(&log, 1).len(), 3);
        assert_eq!(std::fs::metadata(&seg)?.len(), len);
        // The log goes on after the cut.
        log.append_durable(vec![entry(1, 4)])?;
        assert_eq!(ids(&log, 1).len(), 4);
        drop(log);
        // A flipped byte in the last record: cut off as a torn write.
        let mut bytes = std::fs::read(&seg)?;
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, &bytes)?;
        let log = LogStore::open(dir.path())?;
        assert_eq!(ids(&log, 1).len(), 3);
        drop(log);
        // Corruption in a segment that is not the last: refused, naming it.
        let log = LogStore::open(dir.path())?;
        {
            let mut inner = log.inner();
            let next = segment_name(4);
            let path = dir.path().join(&next);
            let file = open_segment(&path)?;
            inner.segments.insert(4, Segment { path, file, len: 0 });
        }
        log.append_durable(vec![entry(1, 4)])?;
        drop(log);
        let mut bytes = std::fs::read(&seg)?;
        bytes[HEADER] ^= 0xff; // the first record's payload
        std::fs::write(&seg, &bytes)?;
        let err = match LogStore::open(dir.path()) {
            Ok(_) => anyhow::bail!("a corrupt inner segment was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&segment_name(1)), "{err}");
        assert!(err.contains("checksum"), "{err}");
        Ok(())
    }

    #[test]
    fn truncate_then_append_replaces_the_tail() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = LogStore::open(dir.path())?;
        log.append_durable((1..=5).map(|i| entry(1, i)).collect())?;
        log.inner().truncate(3)?;
        assert!(log.append_durable(vec![entry(2, 5)]).is_err());
        log.append_durable(vec![entry(2, 3), entry(2, 4)])?;
        drop(log);
        let log = LogStore::open(dir.path())?;
        assert_eq!(ids(&log, 1), vec![(1, 1), (1, 2), (2, 3), (2, 4)]);
        Ok(())
    }

    #[test]
    fn purge_deletes_whole_segments_and_survives_a_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = LogStore::open(dir.path())?;
        for i in 1..=9 {
            log.append_durable(vec![entry(1, i)])?;
            if i % 3 == 0 {
                // Force a new segment after every third entry.
                let mut inner = log.inner();
                if let Some((_, s)) = inner.segments.iter_mut().next_back() {
                    s.len = SEGMENT_BYTES;
                }
            }
        }
        // Lengths were faked above: reopen to read the true ones.
        drop(log);
        let log = LogStore::open(dir.path())?;
        assert_eq!(log.segment_count(), 3);
        log.inner()
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 5))?;
        assert_eq!(log.segment_count(), 2);
        assert_eq!(ids(&log, 0), vec![(1, 6), (1, 7), (1, 8), (1, 9)]);
        drop(log);
        let log = LogStore::open(dir.path())?;
        assert_eq!(ids(&log, 0), vec![(1, 6), (1, 7), (1, 8), (1, 9)]);
        assert_eq!(
            log.inner().meta.last_purged.map(|l| l.index),
            Some(5),
            "purge point kept"
        );
        // Purging everything (a snapshot past the log) leaves an empty log
        // that continues after the purge point.
        log.inner()
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 20))?;
        assert_eq!(log.segment_count(), 0);
        assert_eq!(log.inner().last_log_id().map(|l| l.index), Some(20));
        log.append_durable(vec![entry(2, 21)])?;
        drop(log);
        let log = LogStore::open(dir.path())?;
        assert_eq!(ids(&log, 0), vec![(2, 21)]);
        Ok(())
    }

    #[test]
    fn vote_and_committed_are_kept() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut log = LogStore::open(dir.path())?;
            let vote = Vote::new(3, 2);
            log.save_vote(&vote).await?;
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(3, 2), 7)))
                .await?;
            // The committed id rides along with the next meta write.
            log.save_vote(&vote).await?;
            drop(log);
            let mut log = LogStore::open(dir.path())?;
            assert_eq!(log.read_vote().await?, Some(vote));
            assert_eq!(log.read_committed().await?.map(|l| l.index), Some(7));
            anyhow::Ok(())
        })
    }
}
