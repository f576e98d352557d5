//! Archives: an append-only store of the events of a bus that matched an
//! archive's pattern, one directory per archive under `archive/` beside
//! `state.redb`, **outside** the state database (so a snapshot never
//! copies it; see docs/architecture.md, "Archives").
//!
//! Every node of a site writes its own copy while it applies committed
//! `Append` entries (the same log on every node gives the same archive).
//! An archive is a directory `archive/<bus>/<name>/` of segment files
//! `<first log index, 20 digits>.seg`, each a sequence of records:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SARC` |
//! | 4..8 | payload length (u32, little endian) |
//! | 8..16 | log index of the entry that appended the event |
//! | 16..24 | the event's sequence number |
//! | 24..32 | its ingest time, ms since the epoch |
//! | 32..36 | flags: bit 0 = last record of its log entry |
//! | 36..40 | reserved (0) |
//! | 40..48 | checksum: rapidhash v3 of bytes 0..40 and of the payload |
//! | 48.. | the event's JSON structured form |
//!
//! Crash safety: the records of one apply are written with one `write` per
//! archive before the state database commits that apply (and fsynced when
//! the apply is durable), so the archive is never behind the state. A
//! re-applied entry (after a crash the state database may be behind the
//! log) is recognised by its log index (at most the archive's last index)
//! and skipped. At open, the last segment is checked record by record: a
//! torn or checksum-failing tail, and the records of a log entry whose
//! last record is missing, are cut off (that entry is re-applied whole).
//!
//! A node that installs a snapshot did not apply the entries the snapshot
//! covers: the archive records that range as a **hole** (`holes.json`),
//! and the node fetches the missing records from a peer of its site
//! ([`ArchiveStore::read_range`] there, [`ArchiveStore::fill`] here) into
//! a segment of their own, then shrinks the hole. Reads merge segments in
//! log order and skip records already returned, so a segment written
//! twice (a crash between a fill and its hole update) is harmless.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Record magic.
const MAGIC: &[u8; 4] = b"SARC";
/// Record header length.
pub const HEADER: usize = 48;
/// Flag: the last record of its log entry.
const LAST_OF_ENTRY: u32 = 1;
/// A segment is closed once it holds this many bytes (retention frees
/// whole segments).
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Largest event a record holds (a larger length is corruption).
const MAX_PAYLOAD: usize = 64 << 20;

/// Errors of the archive store.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file could not be read or written.
    #[error("archive {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A record not at the end of the last segment is damaged.
    #[error("archive segment {path} is corrupt at byte {offset}: {why}")]
    Corrupt {
        /// The segment.
        path: String,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// Bytes given to [`decode_records`] are not whole, valid records.
    #[error("archive records: {0}")]
    Malformed(String),
}

type AResult<T> = Result<T, ArchiveError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One archived event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedEvent {
    /// Log index of the entry that appended it.
    pub index: u64,
    /// Its sequence number in the site.
    pub seq: u64,
    /// Ingest time, ms since the epoch.
    pub ingest_ms: u64,
    /// The event, JSON structured form.
    pub json: Vec<u8>,
}

/// Figures of one archive on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStats {
    /// Events held.
    pub event_count: u64,
    /// Bytes of its segment files.
    pub size_bytes: u64,
    /// Log index ranges (inclusive) this node is missing and fetches from
    /// a peer (after a snapshot install).
    pub holes: Vec<(u64, u64)>,
    /// Segment files.
    pub segments: u64,
}

/// Encode one record (see the module documentation) onto `out`.
pub fn encode_record(out: &mut Vec<u8>, e: &ArchivedEvent, last_of_entry: bool) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(e.json.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(&e.ingest_ms.to_le_bytes());
    let flags = if last_of_entry { LAST_OF_ENTRY } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let sum = checksum(&out[start..start + 40], &e.json);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&e.json);
}

fn checksum(fixed: &[u8], payload: &[u8]) -> u64 {
    let a = rapidhash::v3::rapidhash_v3(fixed);
    let b = rapidhash::v3::rapidhash_v3(payload);
    a ^ b.rotate_left(17)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A parsed record header.
struct Header {
    len: usize,
    index: u64,
    seq: u64,
    ingest_ms: u64,
    last: bool,
    sum: u64,
}

fn parse_header(h: &[u8]) -> Result<Header, String> {
    if h.len() < HEADER {
        return Err("short header".into());
    }
    if &h[0..4] != MAGIC {
        return Err("bad magic".into());
    }
    let len = u32_at(h, 4) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!("record length {len} exceeds {MAX_PAYLOAD}"));
    }
    Ok(Header {
        len,
        index: u64_at(h, 8),
        seq: u64_at(h, 16),
        ingest_ms: u64_at(h, 24),
        last: u32_at(h, 32) & LAST_OF_ENTRY != 0,
        sum: u64_at(h, 40),
    })
}

/// Decode whole records (as [`ArchiveStore::read_range`] returns them to a
/// peer); anything damaged or cut short is refused.
pub fn decode_records(mut b: &[u8]) -> AResult<Vec<ArchivedEvent>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let h = parse_header(b).map_err(ArchiveError::Malformed)?;
        let end = HEADER
            .checked_add(h.len)
            .filter(|e| *e <= b.len())
            .ok_or_else(|| ArchiveError::Malformed("record cut short".into()))?;
        let payload = &b[HEADER..end];
        if checksum(&b[..40], payload) != h.sum {
            return Err(ArchiveError::Malformed("checksum mismatch".into()));
        }
        out.push(ArchivedEvent {
            index: h.index,
            seq: h.seq,
            ingest_ms: h.ingest_ms,
            json: payload.to_vec(),
        });
        b = &b[end..];
    }
    Ok(out)
}

/// What the store knows of one segment file.
#[derive(Debug, Clone, Default)]
struct Segment {
    bytes: u64,
    events: u64,
    first_index: u64,
    last_index: u64,
    last_ms: u64,
}

/// One archive's files.
#[derive(Debug, Default)]
struct Archive {
    dir: PathBuf,
    /// First index (file name) → segment.
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to (its first index), open for appending.
    current: Option<(u64, File)>,
    /// Highest log index written by an apply.
    last_index: u64,
    holes: Vec<(u64, u64)>,
}

impl Archive {
    fn seg_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.seg"))
    }

    fn stats(&self) -> ArchiveStats {
        ArchiveStats {
            event_count: self.segments.values().map(|s| s.events).sum(),
            size_bytes: self.segments.values().map(|s| s.bytes).sum(),
            holes: self.holes.clone(),
            segments: self.segments.len() as u64,
        }
    }

    fn save_holes(&self) -> AResult<()> {
        let path = self.dir.join("holes.json");
        let tmp = self.dir.join("holes.json.tmp");
        let json = serde_json::to_vec(&self.holes).map_err(|e| ArchiveError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&json).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> AResult<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Scan a segment: its figures and the byte length of its valid prefix.
/// `tail`: the last segment, where a torn or damaged end is cut off
/// (with the records of an unfinished entry); elsewhere damage is an error.
fn scan(path: &Path, tail: bool) -> AResult<(Segment, u64)> {
    let file = File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len();
    let mut r = BufReader::with_capacity(256 << 10, file);
    let mut seg = Segment::default();
    let mut at = 0u64;
    // Figures up to the last complete entry.
    let mut done = (Segment::default(), 0u64);
    let mut head = [0u8; HEADER];
    let mut payload = Vec::new();
    while at < file_len {
        let bad = |why: String| ArchiveError::Corrupt {
            path: path.display().to_string(),
            offset: at,
            why,
        };
        if file_len - at < HEADER as u64 {
            if tail {
                break;
            }
            return Err(bad("cut short".into()));
        }
        r.read_exact(&mut head).map_err(io(path))?;
        let h = match parse_header(&head) {
            Ok(h) => h,
            Err(e) if tail => {
                tracing::warn!(path = %path.display(), offset = at, error = %e, "archive: cutting off a damaged tail");
                break;
            }
            Err(e) => return Err(bad(e)),
        };
        if file_len - at - (HEADER as u64) < h.len as u64 {
            if tail {
                break;
            }
            return Err(bad("cut short".into()));
        }
        if tail {
            payload.resize(h.len, 0);
            r.read_exact(&mut payload).map_err(io(path))?;
            if checksum(&head[..40], &payload) != h.sum {
                tracing::warn!(path = %path.display(), offset = at, "archive: cutting off a tail failing its checksum");
                break;
            }
        } else {
            r.seek_relative(h.len as i64).map_err(io(path))?;
        }
        at += (HEADER + h.len) as u64;
        if seg.events == 0 {
            seg.first_index = h.index;
        }
        seg.events += 1;
        seg.bytes = at;
        seg.last_index = h.index;
        seg.last_ms = seg.last_ms.max(h.ingest_ms);
        if h.last {
            done = (seg.clone(), at);
        }
    }
    if tail {
        Ok(done)
    } else {
        Ok((seg.clone(), seg.bytes))
    }
}

fn open_archive(dir: &Path) -> AResult<Archive> {
    let mut a = Archive {
        dir: dir.to_path_buf(),
        ..Archive::default()
    };
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            firsts.push(first);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    firsts.sort_unstable();
    // The segment appends went to last is the one holding the highest
    // index; segments filled from a peer are complete when renamed.
    let mut newest: Option<(u64, u64)> = None;
    for first in &firsts {
        let path = a.seg_path(*first);
        let (seg, _) = scan(&path, false).or_else(|_| scan(&path, true))?;
        if newest.is_none_or(|(_, li)| seg.last_index >= li) {
            newest = Some((*first, seg.last_index));
        }
        a.segments.insert(*first, seg);
    }
    if let Some((first, _)) = newest {
        let path = a.seg_path(first);
        let (seg, valid) = scan(&path, true)?;
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if f.metadata().map_err(io(&path))?.len() > valid {
            tracing::warn!(path = %path.display(), valid, "archive: cutting the last segment back to its last whole entry");
            f.set_len(valid).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
        if seg.events == 0 {
            drop(f);
            std::fs::remove_file(&path).map_err(io(&path))?;
            a.segments.remove(&first);
        } else {
            a.segments.insert(first, seg);
        }
    }
    a.last_index = a.segments.values().map(|s| s.last_index).max().unwrap_or(0);
    let holes = dir.join("holes.json");
    if let Ok(bytes) = std::fs::read(&holes) {
        a.holes = serde_json::from_slice(&bytes).unwrap_or_default();
        // A fill renamed before its hole was shrunk: go on after it (what
        // it held is read once: reads skip records already returned).
        for hole in a.holes.iter_mut() {
            if let Some(seg) = a.segments.get(&hole.0) {
                hole.0 = seg.last_index + 1;
            }
        }
        a.holes.retain(|(lo, hi)| lo <= hi);
    }
    Ok(a)
}

/// The directory name of a bus or archive name: names may start with `.`
/// (`..` is a valid name), so those get a `%` first (never in a name).
fn component(name: &str) -> String {
    if name.starts_with('.') || name.is_empty() {
        format!("%{name}")
    } else {
        name.to_string()
    }
}

/// The name a directory holds ([`component`] undone).
fn from_component(dir: &str) -> String {
    dir.strip_prefix('%').unwrap_or(dir).to_string()
}

/// The archives of one node (see the module documentation).
#[derive(Debug)]
pub struct ArchiveStore {
    root: PathBuf,
    archives: Mutex<HashMap<(String, String), Archive>>,
}

impl ArchiveStore {
    /// Open (or create) the store in `root`.
    pub fn open(root: &Path) -> AResult<ArchiveStore> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut archives = HashMap::new();
        for bus in std::fs::read_dir(root).map_err(io(root))? {
            let bus = bus.map_err(io(root))?;
            if !bus.path().is_dir() {
                continue;
            }
            let bus_name = from_component(&bus.file_name().to_string_lossy());
            for name in std::fs::read_dir(bus.path()).map_err(io(&bus.path()))? {
                let name = name.map_err(io(&bus.path()))?;
                if !name.path().is_dir() {
                    continue;
                }
                let a = open_archive(&name.path())?;
                archives.insert(
                    (
                        bus_name.clone(),
                        from_component(&name.file_name().to_string_lossy()),
                    ),
                    a,
                );
            }
        }
        Ok(ArchiveStore {
            root: root.to_path_buf(),
            archives: Mutex::new(archives),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Archive>> {
        match self.archives.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn archive<'a>(
        &self,
        map: &'a mut HashMap<(String, String), Archive>,
        bus: &str,
        name: &str,
    ) -> AResult<&'a mut Archive> {
        let key = (bus.to_string(), name.to_string());
        if !map.contains_key(&key) {
            let dir = self.root.join(component(bus)).join(component(name));
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            map.insert(
                key.clone(),
                Archive {
                    dir,
                    ..Archive::default()
                },
            );
        }
        map.get_mut(&key)
            .ok_or_else(|| ArchiveError::Malformed("archive vanished".into()))
    }

    /// The highest log index an apply wrote to the archive (0: none).
    pub fn last_index(&self, bus: &str, name: &str) -> u64 {
        self.lock()
            .get(&(bus.to_string(), name.to_string()))
            .map_or(0, |a| a.last_index)
    }

    /// Append the events an apply archived, in log order; the records of
    /// entries at or below the archive's last index are skipped (a
    /// re-applied entry). `sync`: fsync before returning.
    pub fn append(
        &self,
        bus: &str,
        name: &str,
        events: &[ArchivedEvent],
        sync: bool,
    ) -> AResult<()> {
        let mut map = self.lock();
        let a = self.archive(&mut map, bus, name)?;
        let fresh: Vec<&ArchivedEvent> = events.iter().filter(|e| e.index > a.last_index).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (i, e) in fresh.iter().enumerate() {
            let last = fresh.get(i + 1).is_none_or(|n| n.index != e.index);
            encode_record(&mut buf, e, last);
        }
        let full = a
            .current
            .as_ref()
            .and_then(|(first, _)| a.segments.get(first))
            .is_none_or(|s| s.bytes >= SEGMENT_BYTES);
        if full {
            let first = fresh[0].index;
            let path = a.seg_path(first);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            sync_dir(&a.dir)?;
            a.segments.insert(
                first,
                Segment {
                    first_index: first,
                    ..Segment::default()
                },
            );
            a.current = Some((first, f));
        }
        let Some((first, file)) = a.current.as_mut() else {
            return Err(ArchiveError::Malformed("no open segment".into()));
        };
        let path = a.dir.join(format!("{first:020}.seg"));
        file.write_all(&buf).map_err(io(&path))?;
        if sync {
            file.sync_data().map_err(io(&path))?;
        }
        if let Some(seg) = a.segments.get_mut(first) {
            seg.bytes += buf.len() as u64;
            seg.events += fresh.len() as u64;
            seg.last_index = fresh[fresh.len() - 1].index;
            seg.last_ms = fresh
                .iter()
                .map(|e| e.ingest_ms)
                .fold(seg.last_ms, u64::max);
        }
        a.last_index = fresh[fresh.len() - 1].index;
        Ok(())
    }

    /// fsync every archive's open segment.
    pub fn sync(&self) -> AResult<()> {
        let map = self.lock();
        for a in map.values() {
            if let Some((first, f)) = &a.current {
                f.sync_data().map_err(io(&a.seg_path(*first)))?;
            }
        }
        Ok(())
    }

    /// Delete an archive's files.
    pub fn remove(&self, bus: &str, name: &str) -> AResult<()> {
        let mut map = self.lock();
        map.remove(&(bus.to_string(), name.to_string()));
        let dir = self.root.join(component(bus)).join(component(name));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    /// The archives with files on this node.
    pub fn names(&self) -> Vec<(String, String)> {
        self.lock().keys().cloned().collect()
    }

    /// Figures of an archive on this node.
    pub fn stats(&self, bus: &str, name: &str) -> ArchiveStats {
        self.lock()
            .get(&(bus.to_string(), name.to_string()))
            .map(Archive::stats)
            .unwrap_or_default()
    }

    /// Delete the segments whose newest event was ingested before
    /// `before_ms` (retention; a segment goes whole). Returns the events
    /// deleted.
    pub fn expire(&self, bus: &str, name: &str, before_ms: u64) -> AResult<u64> {
        let mut map = self.lock();
        let Some(a) = map.get_mut(&(bus.to_string(), name.to_string())) else {
            return Ok(0);
        };
        let doomed: Vec<u64> = a
            .segments
            .iter()
            .filter(|(_, s)| s.events > 0 && s.last_ms < before_ms)
            .map(|(f, _)| *f)
            .collect();
        let mut gone = 0;
        for first in doomed {
            if a.current.as_ref().is_some_and(|(c, _)| *c == first) {
                a.current = None;
            }
            let path = a.seg_path(first);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
            if let Some(s) = a.segments.remove(&first) {
                gone += s.events;
            }
        }
        // Holes wholly before what remains need no fill any more.
        if gone > 0 {
            let oldest = a.segments.keys().next().copied().unwrap_or(u64::MAX);
            let before = a.holes.len();
            a.holes
                .retain(|(_, hi)| *hi >= oldest && oldest != u64::MAX);
            if a.holes.len() != before {
                a.save_holes()?;
            }
        }
        Ok(gone)
    }

    /// Record that this node lacks the entries `lo..=hi` (a snapshot
    /// install covered them); later appends are above `hi`.
    pub fn mark_hole(&self, bus: &str, name: &str, lo: u64, hi: u64) -> AResult<()> {
        if lo > hi {
            return Ok(());
        }
        let mut map = self.lock();
        let a = self.archive(&mut map, bus, name)?;
        a.holes.push((lo, hi));
        a.holes.sort_unstable();
        a.last_index = a.last_index.max(hi);
        // The next append starts a segment of its own, above the hole.
        a.current = None;
        a.save_holes()
    }

    /// The ranges this node lacks.
    pub fn holes(&self, bus: &str, name: &str) -> Vec<(u64, u64)> {
        self.lock()
            .get(&(bus.to_string(), name.to_string()))
            .map(|a| a.holes.clone())
            .unwrap_or_default()
    }

    /// Fill the start of a hole: `events` (read from a peer) are the
    /// archived events of the entries `from..=upto`, where `from` is the
    /// first index of a hole. They become a segment of their own (named
    /// `from`), written and fsynced under a temporary name and renamed;
    /// then the hole shrinks to what is left above `upto`.
    pub fn fill(
        &self,
        bus: &str,
        name: &str,
        from: u64,
        upto: u64,
        events: &[ArchivedEvent],
    ) -> AResult<()> {
        let mut map = self.lock();
        let a = self.archive(&mut map, bus, name)?;
        let Some(pos) = a.holes.iter().position(|(l, _)| *l == from) else {
            return Ok(());
        };
        let (_, hi) = a.holes[pos];
        let upto = upto.min(hi);
        let inside: Vec<&ArchivedEvent> = events
            .iter()
            .filter(|e| e.index >= from && e.index <= upto)
            .collect();
        if !inside.is_empty() {
            let mut buf = Vec::new();
            for (i, e) in inside.iter().enumerate() {
                let last = inside.get(i + 1).is_none_or(|n| n.index != e.index);
                encode_record(&mut buf, e, last);
            }
            let path = a.seg_path(from);
            let tmp = a.dir.join(format!("{from:020}.seg.tmp"));
            {
                let mut f = File::create(&tmp).map_err(io(&tmp))?;
                f.write_all(&buf).map_err(io(&tmp))?;
                f.sync_all().map_err(io(&tmp))?;
            }
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            sync_dir(&a.dir)?;
            a.segments.insert(
                from,
                Segment {
                    bytes: buf.len() as u64,
                    events: inside.len() as u64,
                    first_index: inside[0].index,
                    last_index: inside[inside.len() - 1].index,
                    last_ms: inside.iter().map(|e| e.ingest_ms).max().unwrap_or(0),
                },
            );
        }
        if upto >= hi {
            a.holes.remove(pos);
        } else {
            a.holes[pos].0 = upto + 1;
        }
        a.save_holes()
    }

    /// Events with a log index in `lo..=hi`, encoded as records (what a
    /// peer filling a hole asks for), at most about `max_bytes`; the
    /// second value is the last index included (whole entries only), or
    /// `hi` when everything up to it is there.
    pub fn read_range(
        &self,
        bus: &str,
        name: &str,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> AResult<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        let mut last_whole = hi;
        let mut after = (lo, 0u64);
        let mut first = true;
        loop {
            let evs = self.read(bus, name, after, first, 1024)?;
            first = false;
            let Some(last) = evs.last() else { break };
            after = (last.index, last.seq);
            for e in &evs {
                if e.index > hi {
                    return Ok((out, last_whole));
                }
                if out.len() >= max_bytes {
                    // Stop at an entry boundary.
                    if e.index != last_whole {
                        return Ok((out, e.index.saturating_sub(1)));
                    }
                }
                last_whole = e.index;
                encode_record(&mut out, e, false);
            }
        }
        Ok((out, hi))
    }

    /// Up to `limit` events after position `after` = (log index, sequence)
    /// in log order (`inclusive`: the position itself too), merged across
    /// segments, each event once.
    pub fn read(
        &self,
        bus: &str,
        name: &str,
        after: (u64, u64),
        inclusive: bool,
        limit: usize,
    ) -> AResult<Vec<ArchivedEvent>> {
        self.read_since(bus, name, after, inclusive, 0, limit)
    }

    /// [`ArchiveStore::read`], skipping the segments whose every event was
    /// ingested before `since_ms` without reading them (their events may
    /// still be returned from segments that are read: the caller filters).
    pub fn read_since(
        &self,
        bus: &str,
        name: &str,
        after: (u64, u64),
        inclusive: bool,
        since_ms: u64,
        limit: usize,
    ) -> AResult<Vec<ArchivedEvent>> {
        Ok(self
            .read_since_from(bus, name, after, inclusive, since_ms, limit, None)?
            .0)
    }

    /// [`ArchiveStore::read_since`] that can go on where an earlier read
    /// stopped: `hint` (what that read returned) lets it start in the
    /// segment and at the byte where the event after `after` begins,
    /// instead of reading every record header of the segment from its
    /// start (which made a long replay read each segment once per chunk).
    /// A hint that does not match `after` is ignored. Returns the events
    /// and the hint for the next read.
    #[allow(clippy::too_many_arguments)]
    pub fn read_since_from(
        &self,
        bus: &str,
        name: &str,
        after: (u64, u64),
        inclusive: bool,
        since_ms: u64,
        limit: usize,
        hint: Option<ReadHint>,
    ) -> AResult<(Vec<ArchivedEvent>, Option<ReadHint>)> {
        let hint = hint.filter(|h| !inclusive && h.after == after);
        // Take what is needed under the lock, read the files without it.
        let (dir, segs) = {
            let map = self.lock();
            let Some(a) = map.get(&(bus.to_string(), name.to_string())) else {
                return Ok((Vec::new(), None));
            };
            let segs: Vec<(u64, Segment)> = a
                .segments
                .iter()
                .filter(|(f, s)| {
                    s.last_index >= after.0
                        && s.last_ms >= since_ms
                        // Segments hold positions in log order: the ones
                        // before the hint's hold only earlier events.
                        && hint.is_none_or(|h| **f >= h.segment)
                })
                .map(|(f, s)| (*f, s.clone()))
                .collect();
            (a.dir.clone(), segs)
        };
        let mut out: Vec<ArchivedEvent> = Vec::new();
        let mut next_hint = None;
        for (first, seg) in segs {
            let path = dir.join(format!("{first:020}.seg"));
            let mut file = match File::open(&path) {
                Ok(f) => f,
                // Removed by retention meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let mut at = 0u64;
            if let Some(h) = hint
                && h.segment == first
                && h.offset <= seg.bytes
            {
                use std::io::Seek as _;
                file.seek(std::io::SeekFrom::Start(h.offset))
                    .map_err(io(&path))?;
                at = h.offset;
            }
            let mut r = BufReader::with_capacity(256 << 10, file.take(seg.bytes - at));
            let mut head = [0u8; HEADER];
            while at < seg.bytes {
                r.read_exact(&mut head).map_err(io(&path))?;
                let h = parse_header(&head).map_err(|why| ArchiveError::Corrupt {
                    path: path.display().to_string(),
                    offset: at,
                    why,
                })?;
                at += (HEADER + h.len) as u64;
                let pos = (h.index, h.seq);
                let wanted = if inclusive { pos >= after } else { pos > after };
                let newer = out.last().is_none_or(|l| pos > (l.index, l.seq));
                if !wanted || !newer {
                    r.seek_relative(h.len as i64).map_err(io(&path))?;
                    continue;
                }
                let mut json = vec![0u8; h.len];
                r.read_exact(&mut json).map_err(io(&path))?;
                if checksum(&head[..40], &json) != h.sum {
                    return Err(ArchiveError::Corrupt {
                        path: path.display().to_string(),
                        offset: at - (HEADER + h.len) as u64,
                        why: "checksum mismatch".into(),
                    });
                }
                out.push(ArchivedEvent {
                    index: h.index,
                    seq: h.seq,
                    ingest_ms: h.ingest_ms,
                    json,
                });
                next_hint = Some(ReadHint {
                    segment: first,
                    offset: at,
                    after: pos,
                });
                if out.len() >= limit {
                    return Ok((out, next_hint));
                }
            }
        }
        Ok((out, next_hint))
    }
}

/// Where a read of an archive stopped ([`ArchiveStore::read_since_from`]):
/// the segment and the byte after the last event returned, and that
/// event's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadHint {
    segment: u64,
    offset: u64,
    after: (u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(index: u64, seq: u64, ms: u64) -> ArchivedEvent {
        ArchivedEvent {
            index,
            seq,
            ingest_ms: ms,
            json: format!("{{\"id\":\"{seq}\"}}").into_bytes(),
        }
    }

    #[test]
    fn appends_read_back_in_order_and_reapplies_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ArchiveStore::open(dir.path()).expect("open");
        s.append("b", "a", &[ev(3, 1, 10), ev(3, 2, 10)], true)
            .expect("append");
        s.append("b", "a", &[ev(5, 3, 20)], false).expect("append");
        // Re-applied after a crash: skipped.
        s.append("b", "a", &[ev(3, 1, 10), ev(3, 2, 10)], true)
            .expect("append");
        let all = s.read("b", "a", (0, 0), true, 100).expect("read");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let after = s.read("b", "a", (3, 2), false, 100).expect("read");
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        // Read on from where a read stopped: the same events.
        let (first, hint) = s
            .read_since_from("b", "a", (0, 0), true, 0, 1, None)
            .expect("read");
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        let (rest, _) = s
            .read_since_from("b", "a", (3, 1), false, 0, 100, hint)
            .expect("read");
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(s.stats("b", "a").event_count, 3);
        drop(s);
        let s = ArchiveStore::open(dir.path()).expect("reopen");
        assert_eq!(s.last_index("b", "a"), 5);
        assert_eq!(s.read("b", "a", (0, 0), true, 100).expect("read").len(), 3);
    }

    #[test]
    fn a_torn_tail_and_an_unfinished_entry_are_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ArchiveStore::open(dir.path()).expect("open");
        s.append("b", "a", &[ev(3, 1, 10)], true).expect("append");
        drop(s);
        let seg = dir.path().join("b/a").join(format!("{:020}.seg", 3));
        // An entry of two records of which only the first was written,
        // then half a header.
        let mut buf = Vec::new();
        encode_record(&mut buf, &ev(4, 2, 11), false);
        buf.extend_from_slice(b"SARC\x01");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        f.write_all(&buf).expect("write");
        drop(f);
        let s = ArchiveStore::open(dir.path()).expect("reopen");
        assert_eq!(s.last_index("b", "a"), 3);
        let all = s.read("b", "a", (0, 0), true, 100).expect("read");
        assert_eq!(all.len(), 1);
        // Entry 4 is applied again, whole.
        s.append("b", "a", &[ev(4, 2, 11), ev(4, 3, 11)], true)
            .expect("append");
        assert_eq!(s.read("b", "a", (0, 0), true, 100).expect("read").len(), 3);
    }

    #[test]
    fn holes_are_filled_from_a_peer_and_retention_frees_whole_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer_dir = tempfile::tempdir().expect("tempdir");
        let peer = ArchiveStore::open(peer_dir.path()).expect("open");
        for i in 1..=10u64 {
            peer.append("b", "a", &[ev(i, i, i * 100)], false)
                .expect("append");
        }
        let s = ArchiveStore::open(dir.path()).expect("open");
        s.append("b", "a", &[ev(1, 1, 100)], false).expect("append");
        // A snapshot at 7 was installed.
        s.mark_hole("b", "a", 2, 7).expect("hole");
        s.append("b", "a", &[ev(8, 8, 800)], false).expect("append");
        assert_eq!(s.holes("b", "a"), vec![(2, 7)]);
        let (bytes, upto) = peer.read_range("b", "a", 2, 7, 1 << 20).expect("range");
        assert_eq!(upto, 7);
        let got = decode_records(&bytes).expect("decode");
        assert_eq!(got.len(), 6);
        s.fill("b", "a", 2, 4, &got).expect("fill");
        assert_eq!(s.holes("b", "a"), vec![(5, 7)]);
        s.fill("b", "a", 5, 7, &got).expect("fill");
        assert!(s.holes("b", "a").is_empty());
        let all = s.read("b", "a", (0, 0), true, 100).expect("read");
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        drop(s);
        let s = ArchiveStore::open(dir.path()).expect("reopen");
        assert_eq!(s.read("b", "a", (0, 0), true, 100).expect("read").len(), 8);
        // Retention: segments whose newest event is older go whole.
        let before = s.stats("b", "a").size_bytes;
        let gone = s.expire("b", "a", 750).expect("expire");
        assert_eq!(gone, 7);
        assert!(s.stats("b", "a").size_bytes < before);
        let left = s.read("b", "a", (0, 0), true, 100).expect("read");
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [8]);
        s.remove("b", "a").expect("remove");
        // Names that are not plain directory names stay inside the store.
        s.append("..", "..", &[ev(1, 1, 1)], false).expect("append");
        assert!(dir.path().join("%../%..").is_dir());
        drop(s);
        let s = ArchiveStore::open(dir.path()).expect("reopen");
        assert_eq!(s.names(), vec![("..".to_string(), "..".to_string())]);
        assert_eq!(s.stats("b", "a"), ArchiveStats::default());
    }

    #[test]
    fn a_partial_range_stops_at_an_entry_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ArchiveStore::open(dir.path()).expect("open");
        s.append("b", "a", &[ev(1, 1, 1), ev(1, 2, 1), ev(2, 3, 2)], false)
            .expect("append");
        let (bytes, upto) = s.read_range("b", "a", 1, 2, 1).expect("range");
        assert_eq!(upto, 1);
        assert_eq!(decode_records(&bytes).expect("decode").len(), 2);
    }

    proptest! {
        #[test]
        fn records_round_trip(evs in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8)) {
            let evs: Vec<ArchivedEvent> = evs.into_iter()
                .map(|(index, seq, ingest_ms, json)| ArchivedEvent { index, seq, ingest_ms, json })
                .collect();
            let mut buf = Vec::new();
            for e in &evs {
                encode_record(&mut buf, e, true);
            }
            prop_assert_eq!(decode_records(&buf).expect("decode"), evs);
        }

        #[test]
        fn malformed_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_records(&bytes);
        }
    }
}
