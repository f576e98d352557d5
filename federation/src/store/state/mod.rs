//! The site state machine: buses, rules, sources, committed events, dedup index and
//! dispatch cursors, on redb, plus an in-memory view for fast reads.
//!
//! Application is deterministic: it depends only on the command and the
//! state, never on the clock or the node, so every replica (and a replica
//! re-applying after a crash) computes the same sequence numbers and the
//! same duplicate verdicts.

//!
//! - this module: the state ([`SiteState`]) and its view ([`View`]),
//!   opening it, and the keys and definition fields the state reads;
//! - `apply`: applying committed entries ([`SiteState::apply`]);
//! - `snapshot`: taking and installing snapshots
//!   ([`SiteState::write_snapshot`], [`SiteState::install_snapshot_from`]);
//! - `reads`: what the node reads (events, link outboxes and inboxes,
//!   counts);
//! - `journal`: the delivery journal's part of a checkpoint (marks,
//!   entries, counters, their collection);
//! - `lookup`: finding and listing events, and the journal's reads.

mod apply;
mod journal;
mod lookup;
mod reads;
mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::{ErrorSubject, ErrorVerb, LogId, StorageError, StoredMembership};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

pub use self::journal::START_MARK;
pub use self::lookup::{
    CLOCK_SLACK_MS, DeadLetter, DeadLetterCursor, DeadLetterPage, DeadLetterQuery, EventFilter,
    EventPage, FoundEvent, LookupError, SCAN_LIMIT,
};
pub use self::snapshot::{Applied, SnapshotImage, SnapshotInfo, StateRead};
use crate::error::FederationError;
use crate::store::tables::{BUSES, CURSORS, DEDUP, EVENTS, META, RULES, SOURCES};
use crate::store::{block_table, storage_err};
use crate::{NodeId, NodeInfo};

type SResult<T> = Result<T, StorageError<NodeId>>;

fn werr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::StateMachine, ErrorVerb::Write, &e)
}

fn rerr<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    storage_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e)
}

/// The key of a rule in the rules table.
pub fn rule_key(bus: &str, rule: &str) -> String {
    format!("{bus}\u{0}{rule}")
}

/// The key of a target's dispatch cursor.
pub fn target_key(bus: &str, rule: &str, target: &str) -> String {
    format!("{bus}/{rule}/{target}")
}

/// The bus a stored source definition commits its events to (`bus`).
pub fn source_bus(spec: &serde_json::Value) -> Option<&str> {
    spec.get("bus").and_then(serde_json::Value::as_str)
}

/// The buses a stored rule definition dead-letters to, with the field
/// naming each: `targets[i].deadLetter.bus` and `deadLetter.bus` (only
/// dead letters of type `bus`).
pub fn dead_letter_buses(spec: &serde_json::Value) -> Vec<(String, &str)> {
    fn bus_of(dl: Option<&serde_json::Value>) -> Option<&str> {
        let dl = dl?;
        if dl.get("type").and_then(serde_json::Value::as_str) != Some("bus") {
            return None;
        }
        dl.get("bus").and_then(serde_json::Value::as_str)
    }
    let mut out = Vec::new();
    if let Some(targets) = spec.get("targets").and_then(serde_json::Value::as_array) {
        for (i, t) in targets.iter().enumerate() {
            if let Some(bus) = bus_of(t.get("deadLetter")) {
                out.push((format!("targets[{i}].deadLetter.bus"), bus));
            }
        }
    }
    if let Some(bus) = bus_of(spec.get("deadLetter")) {
        out.push(("deadLetter.bus".to_string(), bus));
    }
    out
}
/// A committed event as the dispatcher reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The bus.
    pub bus: String,
    /// Site-wide sequence number (increasing in commit order).
    pub seq: u64,
    /// Ingestion time, ms since the epoch.
    pub ingest_ms: u64,
    /// The event in JSON structured form.
    pub json: Vec<u8>,
}
/// The in-memory view of the replicated configuration and progress.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Bus name → definition.
    pub buses: BTreeMap<String, serde_json::Value>,
    /// (bus, rule) → definition.
    pub rules: BTreeMap<(String, String), serde_json::Value>,
    /// Source name → definition.
    pub sources: BTreeMap<String, serde_json::Value>,
    /// Target key → next sequence to process.
    pub cursors: BTreeMap<String, u64>,
    /// The next sequence number to assign.
    pub next_seq: u64,
    /// The last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last applied membership.
    pub membership: StoredMembership<NodeId, NodeInfo>,
    /// Outbox and inbox progress of links to other sites.
    pub links: crate::store::links::LinkView,
    /// The control-group version of the shared configuration this site
    /// runs ([`Command::ConfigVersion`](crate::Command::ConfigVersion); 0: none imported).
    pub config_version: u64,
    /// Bytes the state holds in its growing tables: event blocks, link
    /// outboxes and inboxes, the delivery journal, cursor marks and target
    /// counters (key and value of every row) and the dedup index (key and
    /// value of every entry). Kept as entries are applied
    /// and collected; what `max_state_bytes` limits (see
    /// [`SiteState::set_max_bytes`]).
    pub stored_bytes: u64,
    /// Events the state holds (in the blocks of the events table), kept
    /// the same way: the `strait_events_stored` gauge reads it instead of
    /// walking every block (a walk reads the whole state through the page
    /// cache, every second, on the leader).
    pub stored_events: u64,
    /// (bus, archive name) → archive definition (see
    /// [`crate::store::archive`]), kept in the meta table (`archives`).
    pub archives: BTreeMap<(String, String), serde_json::Value>,
    /// Replay name → replay definition, state and progress, kept in the
    /// meta table (`replays`).
    pub replays: BTreeMap<String, serde_json::Value>,
    /// Seeks asked for and not yet done by the leader's dispatcher:
    /// target key → (sequence, request id) ([`Command::Seek`](crate::Command::Seek)).
    pub pending_seeks: BTreeMap<String, (u64, String)>,
}
/// The state of a site, shared by the Raft state machine (the only writer)
/// and the node's readers (API, dispatcher).
pub struct SiteState {
    /// The database; replaced as a whole when a snapshot is installed
    /// (readers holding the previous one finish on it).
    db: RwLock<Arc<Database>>,
    cache_bytes: usize,
    path: PathBuf,
    view: RwLock<View>,
    /// Held by whatever replaces the view (an apply, a snapshot install)
    /// for its whole transaction. The view itself is only locked to copy it
    /// and to swap in the new one, so readers (every ingest request checks
    /// its bus) never wait for a commit's fsync.
    writer: Mutex<()>,
    config_version: watch::Sender<u64>,
    head: watch::Sender<u64>,
    links_version: watch::Sender<u64>,
    /// [`SiteState::set_max_bytes`] (0: no limit).
    max_bytes: AtomicU64,
    /// The archives' events on this node (outside the database).
    archive: crate::store::archive::ArchiveStore,
}

/// The state holds as many bytes as the node allows (`max_state_bytes`):
/// new events are refused until retention frees space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this site's state is full: it holds {stored} bytes and max_state_bytes is {limit}; new \
     events are refused until retention (retention_secs) frees space (see docs/operations.md)"
)]
pub struct StateFull {
    /// The limit, bytes.
    pub limit: u64,
    /// What the state holds, bytes ([`View::stored_bytes`]).
    pub stored: u64,
}

impl std::fmt::Debug for SiteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteState")
            .field("path", &self.path)
            .finish()
    }
}

impl SiteState {
    /// Open (or create) the state database at `path` and load the view.
    pub fn open(path: &Path) -> Result<Arc<SiteState>, FederationError> {
        SiteState::open_with_cache(path, DEFAULT_CACHE)
    }

    /// [`SiteState::open`] with a database page cache of `cache_bytes`
    /// (the largest part of the state's memory; see [`DEFAULT_CACHE`]).
    pub fn open_with_cache(
        path: &Path,
        cache_bytes: usize,
    ) -> Result<Arc<SiteState>, FederationError> {
        let fail = |m: String| FederationError::Storage {
            path: path.display().to_string(),
            message: m,
        };
        snapshot::clean_install_leftovers(path).map_err(|e| fail(e.to_string()))?;
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| fail(e.to_string()))?;
        init_tables(&db).map_err(|e| fail(e.to_string()))?;
        let view = load_view(&db).map_err(|e| fail(e.to_string()))?;
        let archive_dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("archive");
        let archive = crate::store::archive::ArchiveStore::open(&archive_dir)
            .map_err(|e| fail(e.to_string()))?;
        // Archives deleted while this node was down (or before a crash
        // finished deleting them) lose their files.
        for (bus, name) in archive.names() {
            if !view.archives.contains_key(&(bus.clone(), name.clone())) {
                archive
                    .remove(&bus, &name)
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        let state = SiteState {
            db: RwLock::new(Arc::new(db)),
            cache_bytes,
            path: path.to_path_buf(),
            view: RwLock::new(View::default()),
            writer: Mutex::new(()),
            config_version: watch::Sender::new(0),
            head: watch::Sender::new(0),
            links_version: watch::Sender::new(0),
            max_bytes: AtomicU64::new(0),
            archive,
        };
        state.head.send_replace(view.next_seq);
        *state
            .view
            .write()
            .map_err(|_| fail("view lock poisoned".into()))? = view;
        Ok(Arc::new(state))
    }

    /// Refuse new events ([`SiteState::full`]) while the state holds
    /// `bytes` or more ([`View::stored_bytes`]); 0: no limit. A setting of
    /// this node, not replicated: every ingress path asks [`SiteState::full`]
    /// before it proposes new events.
    pub fn set_max_bytes(&self, bytes: u64) {
        self.max_bytes.store(bytes, Ordering::Relaxed);
    }

    /// `Some` while the state holds at least the bytes
    /// [`SiteState::set_max_bytes`] allows.
    pub fn full(&self) -> Option<StateFull> {
        let limit = self.max_bytes.load(Ordering::Relaxed);
        let stored = self.view().stored_bytes;
        (limit > 0 && stored >= limit).then_some(StateFull { limit, stored })
    }

    /// The archives' events held by this node.
    pub fn archive(&self) -> &crate::store::archive::ArchiveStore {
        &self.archive
    }

    /// The current database.
    fn db(&self) -> Arc<Database> {
        match self.db.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A read guard on the in-memory view.
    pub fn view(&self) -> RwLockReadGuard<'_, View> {
        match self.view.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        match self.view.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        match self.writer.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
    /// Bumped whenever buses or rules change (not on appends or checkpoints).
    pub fn subscribe_config(&self) -> watch::Receiver<u64> {
        self.config_version.subscribe()
    }

    /// Bumped whenever an outbox or inbox changes.
    pub fn subscribe_links(&self) -> watch::Receiver<u64> {
        self.links_version.subscribe()
    }

    /// The next sequence number to be assigned; bumped on every append.
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

/// The state database's page cache (redb's default): memory the state
/// uses whatever it holds.
pub const DEFAULT_CACHE: usize = 1 << 30;

/// The events the state holds ([`View::stored_events`]) counted block by
/// block.
fn count_events(txn: &redb::ReadTransaction) -> SResult<u64> {
    let mut n = 0u64;
    for item in txn.open_table(EVENTS).map_err(rerr)?.iter().map_err(rerr)? {
        let (k, v) = item.map_err(rerr)?;
        let (bus, first) = k.value();
        n += block_table::parse(bus, first, v.value())
            .map_err(rerr)?
            .len() as u64;
    }
    Ok(n)
}

/// The state's size ([`View::stored_bytes`]) counted row by row.
fn count_stored(txn: &redb::ReadTransaction) -> SResult<u64> {
    let mut bytes = 0;
    for def in [
        EVENTS,
        crate::store::tables::OUTBOX,
        crate::store::tables::INBOX,
    ] {
        let table = txn.open_table(def).map_err(rerr)?;
        bytes += block_table::count_bytes(&table).map_err(rerr)?;
    }
    for item in txn.open_table(DEDUP).map_err(rerr)?.iter().map_err(rerr)? {
        let (k, _) = item.map_err(rerr)?;
        bytes += dedup_bytes(k.value());
    }
    let table = txn
        .open_table(crate::store::tables::JOURNAL)
        .map_err(rerr)?;
    for item in table.iter().map_err(rerr)? {
        let (k, v) = item.map_err(rerr)?;
        bytes += journal::journal_row_bytes(k.value().1, v.value().len());
    }
    let table = txn.open_table(crate::store::tables::MARKS).map_err(rerr)?;
    for item in table.iter().map_err(rerr)? {
        let (k, _) = item.map_err(rerr)?;
        bytes += journal::mark_bytes(k.value().0);
    }
    let table = txn.open_table(crate::store::tables::COUNTS).map_err(rerr)?;
    for item in table.iter().map_err(rerr)? {
        let (k, v) = item.map_err(rerr)?;
        bytes += journal::counts_bytes(k.value(), v.value().len());
    }
    Ok(bytes)
}

fn init_tables(db: &Database) -> SResult<()> {
    let txn = db.begin_write().map_err(werr)?;
    crate::store::tables::create_tables(&txn).map_err(werr)?;
    txn.commit().map_err(werr)
}

fn load_view(db: &Database) -> SResult<View> {
    let txn = db.begin_read().map_err(rerr)?;
    let meta = txn.open_table(META).map_err(rerr)?;
    let get_meta = |k: &str| -> SResult<Option<Vec<u8>>> {
        Ok(meta.get(k).map_err(rerr)?.map(|v| v.value().to_vec()))
    };
    let mut view = View::default();
    if let Some(b) = get_meta("last_applied")? {
        view.last_applied = serde_json::from_slice(&b).map_err(rerr)?;
    }
    if let Some(b) = get_meta("membership")? {
        view.membership = serde_json::from_slice(&b).map_err(rerr)?;
    }
    if let Some(b) = get_meta("next_seq")? {
        view.next_seq = serde_json::from_slice(&b).map_err(rerr)?;
    }
    if let Some(b) = get_meta("config_version")? {
        view.config_version = serde_json::from_slice(&b).map_err(rerr)?;
    }
    if let Some(b) = get_meta(apply::PENDING_SEEKS)? {
        view.pending_seeks = serde_json::from_slice(&b).map_err(rerr)?;
    }
    view.stored_bytes = match get_meta("stored_bytes")? {
        Some(b) => serde_json::from_slice(&b).map_err(rerr)?,
        // Written before the count was kept (or an empty state): count.
        None => count_stored(&txn)?,
    };
    view.stored_events = match get_meta("stored_events")? {
        Some(b) => serde_json::from_slice(&b).map_err(rerr)?,
        // Written before the count was kept (or an empty state): count.
        None => count_events(&txn)?,
    };
    for item in txn.open_table(BUSES).map_err(rerr)?.iter().map_err(rerr)? {
        let (k, v) = item.map_err(rerr)?;
        view.buses.insert(
            k.value().to_string(),
            serde_json::from_slice(v.value()).map_err(rerr)?,
        );
    }
    for item in txn.open_table(RULES).map_err(rerr)?.iter().map_err(rerr)? {
        let (k, v) = item.map_err(rerr)?;
        let key = k.value();
        let (bus, rule) = key.split_once('\u{0}').unwrap_or((key, ""));
        view.rules.insert(
            (bus.to_string(), rule.to_string()),
            serde_json::from_slice(v.value()).map_err(rerr)?,
        );
    }
    for item in txn
        .open_table(SOURCES)
        .map_err(rerr)?
        .iter()
        .map_err(rerr)?
    {
        let (k, v) = item.map_err(rerr)?;
        view.sources.insert(
            k.value().to_string(),
            serde_json::from_slice(v.value()).map_err(rerr)?,
        );
    }
    for item in txn
        .open_table(CURSORS)
        .map_err(rerr)?
        .iter()
        .map_err(rerr)?
    {
        let (k, v) = item.map_err(rerr)?;
        view.cursors.insert(k.value().to_string(), v.value());
    }
    if let Some(b) = get_meta("archives")? {
        let list: Vec<((String, String), serde_json::Value)> =
            serde_json::from_slice(&b).map_err(rerr)?;
        view.archives = list.into_iter().collect();
    }
    if let Some(b) = get_meta("replays")? {
        view.replays = serde_json::from_slice(&b).map_err(rerr)?;
    }
    let link_meta = txn
        .open_table(crate::store::tables::LINK_META)
        .map_err(rerr)?;
    view.links =
        crate::store::links::load(&link_meta).map_err(|m| rerr(std::io::Error::other(m)))?;
    Ok(view)
}

/// Bytes a dedup entry counts for in the state's size: key and value.
fn dedup_bytes(key: &str) -> u64 {
    key.len() as u64 + 8
}
