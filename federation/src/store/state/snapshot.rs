//! Snapshots of the state: taking one (streamed in the format of
//! [`crate::store::snapshot`]) and installing one (that format or the older
//! JSON one) into a new database file that replaces the state's.

use std::path::Path;
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb, LogId, StorageError, StoredMembership};
use redb::{Database, Durability, ReadableDatabase, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{SResult, SiteState, View, init_tables, load_view, rerr, rule_key, werr};
use crate::store::tables::{BUSES, CURSORS, DEDUP, EVENTS, META, RULES, SOURCES};
use crate::store::{block_table, storage_err};
use crate::{NodeId, NodeInfo};

/// Events per block when a snapshot of the older JSON format is installed.
const SNAPSHOT_BLOCK_EVENTS: usize = 1024;
/// Everything in a snapshot of the older JSON format (installed still,
/// written no longer).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    next_seq: u64,
    buses: Vec<(String, serde_json::Value)>,
    rules: Vec<(String, String, serde_json::Value)>,
    cursors: Vec<(String, u64)>,
    dedup: Vec<(String, u64)>,
    events: Vec<(String, u64, u64, Box<serde_json::value::RawValue>)>,
    #[serde(default)]
    links: crate::store::links::LinkSnapshot,
    #[serde(default)]
    config_version: u64,
    /// Absent in snapshots written before sources were replicated.
    #[serde(default)]
    sources: Vec<(String, serde_json::Value)>,
}

/// A read of one version of the state, on the database file it was taken
/// from (kept open, and not deleted, while the read lasts, even if a
/// snapshot install replaces the file).
pub struct StateRead {
    /// The read transaction.
    pub txn: redb::ReadTransaction,
    _db: Arc<Database>,
}

impl std::fmt::Debug for StateRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRead").finish_non_exhaustive()
    }
}

/// The last log id applied and the membership as of it.
pub type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>);

/// What [`SiteState::write_snapshot`] wrote.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// The last log id applied in it.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership as of that log id.
    pub membership: StoredMembership<NodeId, NodeInfo>,
    /// Its rows and bytes.
    pub counts: crate::store::snapshot::Counts,
}

/// A serialized snapshot of the whole state and the log position it covers.
#[derive(Debug, Clone)]
pub struct SnapshotImage {
    /// The last log id applied in it.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership as of that log id.
    pub membership: StoredMembership<NodeId, NodeInfo>,
    /// The serialized state.
    pub data: Vec<u8>,
}
impl SiteState {
    /// Serialize the whole state (made durable first) into memory. For
    /// tests and tools: nodes stream snapshots to files
    /// ([`SiteState::write_snapshot`]).
    pub fn snapshot_bytes(&self) -> SResult<SnapshotImage> {
        let txn = self.flush_for_snapshot()?;
        let mut data = Vec::new();
        let info = self.write_snapshot(&txn.txn, &mut data)?;
        Ok(SnapshotImage {
            last_applied: info.last_applied,
            membership: info.membership,
            data,
        })
    }

    /// Open a read of the current version of the state, then make the state
    /// durable: what the read sees is on disk when this returns, so a
    /// snapshot never covers more than a restart would find (applies go on
    /// meanwhile; they are only newer than the snapshot).
    pub fn flush_for_snapshot(&self) -> SResult<StateRead> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        // The archives first: their records of the entries the read sees
        // were written before those entries' state commits, and the log
        // before this point may be purged once this returns.
        self.archive.sync().map_err(werr)?;
        let mut flush = db.begin_write().map_err(werr)?;
        flush.set_durability(Durability::Immediate).map_err(werr)?;
        flush.commit().map_err(werr)?;
        Ok(StateRead { txn, _db: db })
    }

    /// A read of the current version of the state (not made durable).
    pub fn read(&self) -> SResult<StateRead> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        Ok(StateRead { txn, _db: db })
    }

    /// The last log id applied and the membership as of it, in the
    /// version of the state `txn` reads.
    pub fn applied_in(&self, txn: &redb::ReadTransaction) -> SResult<Applied> {
        let meta = txn.open_table(META).map_err(rerr)?;
        let get = |k: &str| -> SResult<Option<Vec<u8>>> {
            Ok(meta.get(k).map_err(rerr)?.map(|v| v.value().to_vec()))
        };
        let last_applied: Option<LogId<NodeId>> = match get("last_applied")? {
            Some(b) => serde_json::from_slice(&b).map_err(rerr)?,
            None => None,
        };
        let membership: StoredMembership<NodeId, NodeInfo> = match get("membership")? {
            Some(b) => serde_json::from_slice(&b).map_err(rerr)?,
            None => StoredMembership::default(),
        };
        Ok((last_applied, membership))
    }

    /// Write the version of the state `txn` reads to `out` in the snapshot
    /// format ([`crate::store::snapshot`]), a row at a time (writers go on
    /// meanwhile). Memory: the largest row, whatever the state holds.
    pub fn write_snapshot(
        &self,
        txn: &redb::ReadTransaction,
        out: &mut impl std::io::Write,
    ) -> SResult<SnapshotInfo> {
        let (last_applied, membership) = self.applied_in(txn)?;
        let counts = crate::store::snapshot::write(txn, out).map_err(rerr)?;
        Ok(SnapshotInfo {
            last_applied,
            membership,
            counts,
        })
    }

    /// Replace the whole state with a snapshot's, held in memory (tests
    /// and tools; see [`SiteState::install_snapshot_from`]).
    pub fn install_snapshot(&self, bytes: &[u8]) -> SResult<()> {
        self.install_snapshot_from(bytes)
    }

    /// Replace the whole state with the snapshot `input` streams.
    ///
    /// The snapshot is loaded into a new database file beside the state
    /// (`state.redb.install-…`) in transactions of bounded size, which then
    /// replaces the state file with one rename: a crash before the rename
    /// leaves the old state whole (the partial file is deleted at the next
    /// open), a crash after it the new one. The old file is deleted gently
    /// once no reader uses it. Memory: one record and one load
    /// transaction's pages, whatever the snapshot holds. Disk: the new
    /// state is built while the old one still exists.
    pub fn install_snapshot_from(&self, input: impl std::io::Read) -> SResult<()> {
        let mut input = std::io::BufReader::with_capacity(READ_BUFFER, input);
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.path.with_file_name(format!(
            "{name}.{INSTALLING}{}",
            crate::store::paced_io::unique()
        ));
        let built = build_from_snapshot(&tmp, self.cache_bytes.min(INSTALL_CACHE), &mut input);
        let view = match built {
            Ok(view) => view,
            Err(e) => {
                if tmp.exists()
                    && let Err(d) = crate::store::paced_io::discard(&tmp)
                {
                    tracing::warn!(file = %tmp.display(), error = %d, "cannot delete a partly installed state");
                }
                return Err(e);
            }
        };
        let _writer = self.lock_writer();
        // Before the switch: the entries the snapshot covers are a hole in
        // this node's archives (filled from a peer later). Marked first, so
        // a crash after the switch cannot leave the hole unrecorded.
        self.mark_archive_holes(&view)?;
        let old_link = self.path.with_file_name(format!(
            "{name}.{REPLACED}{}",
            crate::store::paced_io::unique()
        ));
        // Keep the old file reachable by name, to delete it gently later.
        std::fs::hard_link(&self.path, &old_link).map_err(werr)?;
        std::fs::rename(&tmp, &self.path).map_err(werr)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(werr)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(self.cache_bytes)
            .create(&self.path)
            .map_err(werr)?;
        let old = {
            let mut slot = match self.db.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *slot, Arc::new(db))
        };
        let head = view.next_seq;
        for (bus, name) in self.archive.names() {
            if !view.archives.contains_key(&(bus.clone(), name.clone()))
                && let Err(e) = self.archive.remove(&bus, &name)
            {
                tracing::warn!(bus, archive = name, error = %e, "cannot delete a deleted archive's files");
            }
        }
        *self.view_mut() = view;
        self.config_version.send_modify(|v| *v += 1);
        self.links_version.send_modify(|v| *v += 1);
        self.head.send_replace(head);
        drop(_writer);
        retire(old, &old_link);
        Ok(())
    }
}

impl SiteState {
    /// Record, for every archive of the installed `view`, the log entries
    /// this node will not apply (those the snapshot covers) as a hole.
    fn mark_archive_holes(&self, view: &View) -> SResult<()> {
        let Some(upto) = view.last_applied.map(|l| l.index) else {
            return Ok(());
        };
        for ((bus, name), spec) in &view.archives {
            let created = spec
                .get("createdIndex")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let lo = (self.archive.last_index(bus, name) + 1).max(created + 1);
            self.archive.mark_hole(bus, name, lo, upto).map_err(werr)?;
        }
        Ok(())
    }
}

/// Buffer of a snapshot being installed.
const READ_BUFFER: usize = 256 << 10;

/// Cache of the database a snapshot is loaded into (the state is opened
/// again with the default cache once it is complete).
const INSTALL_CACHE: usize = 64 << 20;

/// Marks the name of a state file being built from a snapshot.
const INSTALLING: &str = "install-";

/// Marks the name of a replaced state file, until it is deleted.
const REPLACED: &str = "replaced-";

/// Fill a new database at `tmp` from the snapshot `input` streams (this
/// format or the older JSON one), durably; its view.
fn build_from_snapshot(
    tmp: &Path,
    cache_bytes: usize,
    input: &mut impl std::io::BufRead,
) -> SResult<View> {
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(tmp)
        .map_err(werr)?;
    init_tables(&db)?;
    let legacy = input.fill_buf().map_err(serr)?.first() == Some(&b'{');
    if legacy {
        // Written before the streamed format: one JSON document, loaded
        // whole (as it was written).
        let body: SnapshotBody = serde_json::from_reader(input).map_err(serr)?;
        let txn = db.begin_write().map_err(werr)?;
        fill_legacy(&txn, body)?;
        txn.commit().map_err(werr)?;
    } else {
        crate::store::snapshot::read_header(input).map_err(serr)?;
        crate::store::snapshot::load(input, &db).map_err(serr)?;
    }
    let view = load_view(&db)?;
    let mut txn = db.begin_write().map_err(werr)?;
    txn.set_durability(Durability::Immediate).map_err(werr)?;
    txn.commit().map_err(werr)?;
    Ok(view)
}

fn serr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e)
}

/// Wait (a while) until no reader uses the replaced database `old`, then
/// delete its file gently.
fn retire(old: Arc<Database>, link: &Path) {
    let mut old = old;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Arc::try_unwrap(old) {
            Ok(db) => {
                drop(db);
                if let Err(e) = crate::store::paced_io::discard(link) {
                    tracing::warn!(file = %link.display(), error = %e, "cannot delete the replaced state");
                }
                return;
            }
            Err(still) if std::time::Instant::now() < deadline => {
                old = still;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => {
                // A reader still has it open: unlink only (shrinking would
                // cut the file under it); the space is freed when it closes.
                tracing::warn!(file = %link.display(), "replaced state still in use; unlinking it");
                if let Err(e) = std::fs::remove_file(link) {
                    tracing::warn!(file = %link.display(), error = %e, "cannot delete the replaced state");
                }
                return;
            }
        }
    }
}

/// Delete what an interrupted install left beside the state at `path`: a
/// partly built state (the install never switched to it), and the old
/// state's extra name (a link to the current state when the crash came
/// before the switch, the replaced file after it).
pub(super) fn clean_install_leftovers(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let current = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    for item in entries {
        let item = item?;
        let file = item.file_name().to_string_lossy().into_owned();
        let Some(rest) = file
            .strip_prefix(name.as_ref())
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        if rest.starts_with(INSTALLING) {
            crate::store::paced_io::discard(&item.path())?;
        } else if rest.starts_with(REPLACED) {
            let m = item.metadata()?;
            if Some((m.dev(), m.ino())) == current {
                std::fs::remove_file(item.path())?;
            } else {
                crate::store::paced_io::discard(&item.path())?;
            }
        }
    }
    Ok(())
}

/// Fill the empty tables of `txn` from a snapshot in the older JSON format.
fn fill_legacy(txn: &WriteTransaction, body: SnapshotBody) -> SResult<()> {
    let mut buses = txn.open_table(BUSES).map_err(werr)?;
    for (name, spec) in body.buses {
        let b = serde_json::to_vec(&spec).map_err(werr)?;
        buses.insert(name.as_str(), b.as_slice()).map_err(werr)?;
    }
    let mut rules = txn.open_table(RULES).map_err(werr)?;
    for (bus, rule, spec) in body.rules {
        let b = serde_json::to_vec(&spec).map_err(werr)?;
        rules
            .insert(rule_key(&bus, &rule).as_str(), b.as_slice())
            .map_err(werr)?;
    }
    let mut sources = txn.open_table(SOURCES).map_err(werr)?;
    for (name, spec) in body.sources {
        let b = serde_json::to_vec(&spec).map_err(werr)?;
        sources.insert(name.as_str(), b.as_slice()).map_err(werr)?;
    }
    let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
    for (k, v) in body.cursors {
        cursors.insert(k.as_str(), v).map_err(werr)?;
    }
    let mut dedup = txn.open_table(DEDUP).map_err(werr)?;
    for (k, ms) in body.dedup {
        dedup.insert(k.as_str(), ms).map_err(werr)?;
    }
    let mut events = txn.open_table(EVENTS).map_err(werr)?;
    // The snapshot lists events by (bus, sequence).
    block_table::put_rows(
        &mut events,
        body.events
            .iter()
            .map(|(bus, seq, ms, raw)| (bus.as_str(), *seq, *ms, raw.get().as_bytes())),
        SNAPSHOT_BLOCK_EVENTS,
    )
    .map_err(werr)?;
    crate::store::links::restore(txn, &body.links)?;
    let mut meta = txn.open_table(META).map_err(werr)?;
    let la = serde_json::to_vec(&body.last_applied).map_err(werr)?;
    meta.insert("last_applied", la.as_slice()).map_err(werr)?;
    let m = serde_json::to_vec(&body.membership).map_err(werr)?;
    meta.insert("membership", m.as_slice()).map_err(werr)?;
    let s = serde_json::to_vec(&body.next_seq).map_err(werr)?;
    meta.insert("next_seq", s.as_slice()).map_err(werr)?;
    let c = serde_json::to_vec(&body.config_version).map_err(werr)?;
    meta.insert("config_version", c.as_slice()).map_err(werr)?;
    Ok(())
}
