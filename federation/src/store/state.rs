//! The site state machine: buses, rules, sources, committed events, dedup index and
//! dispatch cursors, on redb, plus an in-memory view for fast reads.
//!
//! Application is deterministic: it depends only on the command and the
//! state, never on the clock or the node, so every replica (and a replica
//! re-applying after a crash) computes the same sequence numbers and the
//! same duplicate verdicts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::{EntryPayload, ErrorSubject, ErrorVerb, LogId, StorageError, StoredMembership};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::block_table;
use super::blocks::BlockBuilder;
use super::storage_err;
use crate::command::{AppendOutcome, Command, CommandResponse, Conflict, NotFound, Refusal};
use crate::error::FederationError;
use crate::{NodeId, NodeInfo, TypeConfig};

use super::tables::{BUSES, CURSORS, DEDUP, EVENTS, META, RULES, SOURCES};

/// Events per block when a snapshot of the older JSON format is installed.
const SNAPSHOT_BLOCK_EVENTS: usize = 1024;

/// Most dedup entries examined per checkpoint by the expiry sweep, so one
/// apply stays short. The sweep walks the index in key order and wraps.
const DEDUP_SWEEP_BATCH: usize = 20_000;

/// An apply that takes this long is logged as a warning (a tenth of it at
/// debug level): everything behind it in the site waits.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

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

fn dedup_key(bus: &str, source: &str, id: &str) -> String {
    format!("{bus}\u{0}{source}\u{0}{id}")
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

fn link_err(m: String) -> StorageError<NodeId> {
    rerr(std::io::Error::other(m))
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
    pub links: super::links::LinkView,
    /// The control-group version of the shared configuration this site
    /// runs ([`Command::ConfigVersion`]; 0: none imported).
    pub config_version: u64,
    /// Bytes the state holds in its growing tables: event blocks, link
    /// outboxes and inboxes (key and value of every row) and the dedup
    /// index (key and value of every entry). Kept as entries are applied
    /// and collected; what `max_state_bytes` limits (see
    /// [`SiteState::set_max_bytes`]).
    pub stored_bytes: u64,
    /// Events the state holds (in the blocks of the events table), kept
    /// the same way: the `strait_events_stored` gauge reads it instead of
    /// walking every block (a walk reads the whole state through the page
    /// cache, every second, on the leader).
    pub stored_events: u64,
}

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
    links: super::links::LinkSnapshot,
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
    pub counts: super::snapshot::Counts,
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
        clean_install_leftovers(path).map_err(|e| fail(e.to_string()))?;
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| fail(e.to_string()))?;
        init_tables(&db).map_err(|e| fail(e.to_string()))?;
        let view = load_view(&db).map_err(|e| fail(e.to_string()))?;
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

    /// The source definitions (name, definition) in name order, copied
    /// out so that the view's lock is not held while they are used.
    pub fn sources(&self) -> Vec<(String, serde_json::Value)> {
        self.view()
            .sources
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
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

    /// Up to `limit` events of `bus` with `seq >= from`, in order.
    pub fn read_events(&self, bus: &str, from: u64, limit: usize) -> SResult<Vec<StoredEvent>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(EVENTS).map_err(rerr)?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        block_table::scan_from(&table, bus, from, |seq, ingest_ms, json| {
            out.push(StoredEvent {
                bus: bus.to_string(),
                seq,
                ingest_ms,
                json: json.to_vec(),
            });
            out.len() < limit
        })
        .map_err(rerr)?;
        Ok(out)
    }

    /// Up to `limit` outbox entries owed to `remote` with `seq >= from`.
    pub fn read_outbox(
        &self,
        remote: &str,
        from: u64,
        limit: usize,
    ) -> SResult<Vec<super::links::LinkEntry>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let from = from.max(super::links::outbox_done_below(&txn, remote).map_err(link_err)?);
        let table = txn.open_table(super::tables::OUTBOX).map_err(rerr)?;
        super::links::read(&table, remote, from, limit).map_err(|m| rerr(std::io::Error::other(m)))
    }

    /// Up to `limit` outbox entries owed to `remote` with `seq >= from`,
    /// with the rule definitions they refer to by hash (read together, so
    /// every definition an entry names is there).
    pub fn read_outbox_with_specs(
        &self,
        remote: &str,
        from: u64,
        limit: usize,
    ) -> SResult<(Vec<super::links::LinkEntry>, Vec<super::links::SpecRow>)> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let from = from.max(super::links::outbox_done_below(&txn, remote).map_err(link_err)?);
        let table = txn.open_table(super::tables::OUTBOX).map_err(rerr)?;
        let entries = super::links::read(&table, remote, from, limit)
            .map_err(|m| rerr(std::io::Error::other(m)))?;
        let mut hashes: Vec<&str> = entries
            .iter()
            .filter_map(|e| crate::link::proto::item_spec_hash(&e.body))
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        let specs_table = txn.open_table(super::tables::SPECS_OUT).map_err(rerr)?;
        let mut specs = Vec::with_capacity(hashes.len());
        for h in hashes {
            if let Some(spec) = super::links::read_spec(&specs_table, remote, h)
                .map_err(|m| rerr(std::io::Error::other(m)))?
            {
                specs.push((h.to_string(), spec));
            }
        }
        Ok((entries, specs))
    }

    /// The rule definition `hash` that the inbox from `origin` refers to.
    pub fn read_inbox_spec(&self, origin: &str, hash: &str) -> SResult<Option<Vec<u8>>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(super::tables::SPECS_IN).map_err(rerr)?;
        super::links::read_spec(&table, origin, hash).map_err(|m| rerr(std::io::Error::other(m)))
    }

    /// Up to `limit` inbox entries from `origin` with `seq >= from`.
    pub fn read_inbox(
        &self,
        origin: &str,
        from: u64,
        limit: usize,
    ) -> SResult<Vec<super::links::LinkEntry>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let from = from.max(super::links::inbox_done_below(&txn, origin).map_err(link_err)?);
        let table = txn.open_table(super::tables::INBOX).map_err(rerr)?;
        super::links::read(&table, origin, from, limit).map_err(|m| rerr(std::io::Error::other(m)))
    }

    /// How many events of `bus` have `seq >= from` (counting stops at `cap`).
    pub fn count_events_from(&self, bus: &str, from: u64, cap: u64) -> SResult<u64> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(EVENTS).map_err(rerr)?;
        let mut n = 0u64;
        block_table::scan_from(&table, bus, from, |_, _, _| {
            n += 1;
            n < cap
        })
        .map_err(rerr)?;
        Ok(n.min(cap))
    }

    /// Total events stored (all buses), as kept ([`View::stored_events`]).
    pub fn stored_events(&self) -> SResult<u64> {
        Ok(self.view().stored_events)
    }

    /// Total events stored, counted block by block (reads the whole events
    /// table: for tests and checks, not for a gauge).
    pub fn count_stored_events(&self) -> SResult<u64> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        count_events(&txn)
    }

    /// Make every earlier `Durability::None` commit durable.
    pub fn flush(&self) -> SResult<()> {
        let db = self.db();
        let mut txn = db.begin_write().map_err(werr)?;
        txn.set_durability(Durability::Immediate).map_err(werr)?;
        txn.commit().map_err(werr)
    }

    /// Apply committed log entries in one transaction.
    pub fn apply(
        &self,
        entries: Vec<openraft::Entry<TypeConfig>>,
        durable: bool,
    ) -> SResult<Vec<CommandResponse>> {
        let _writer = self.lock_writer();
        let mut next = self.view().clone();
        let db = self.db();
        let mut txn = db.begin_write().map_err(werr)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(werr)?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut config_changed = false;
        let mut links_changed = false;
        let started = std::time::Instant::now();
        let count = entries.len();
        let mut slowest: (&'static str, std::time::Duration) = ("", std::time::Duration::ZERO);
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => CommandResponse::Ok,
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Ok
                }
                EntryPayload::Normal(cmd) => {
                    if matches!(
                        cmd,
                        Command::LinkEnqueue { .. }
                            | Command::LinkAcked { .. }
                            | Command::LinkReceive { .. }
                    ) {
                        links_changed = true;
                    }
                    if !matches!(
                        cmd,
                        Command::Append { .. }
                            | Command::Checkpoint { .. }
                            | Command::LinkEnqueue { .. }
                            | Command::LinkAcked { .. }
                            | Command::LinkReceive { .. }
                    ) {
                        config_changed = true;
                    }
                    let kind = cmd.kind();
                    let t = std::time::Instant::now();
                    let resp = apply_command(&txn, &mut next, cmd)?;
                    let took = t.elapsed();
                    if took > slowest.1 {
                        slowest = (kind, took);
                    }
                    resp
                }
            };
            responses.push(resp);
        }
        let commands = started.elapsed();
        {
            let mut meta = txn.open_table(META).map_err(werr)?;
            let la = serde_json::to_vec(&next.last_applied).map_err(werr)?;
            meta.insert("last_applied", la.as_slice()).map_err(werr)?;
            let m = serde_json::to_vec(&next.membership).map_err(werr)?;
            meta.insert("membership", m.as_slice()).map_err(werr)?;
            let s = serde_json::to_vec(&next.next_seq).map_err(werr)?;
            meta.insert("next_seq", s.as_slice()).map_err(werr)?;
            let c = serde_json::to_vec(&next.config_version).map_err(werr)?;
            meta.insert("config_version", c.as_slice()).map_err(werr)?;
            meta.insert("stored_bytes", next.stored_bytes.to_string().as_bytes())
                .map_err(werr)?;
            meta.insert("stored_events", next.stored_events.to_string().as_bytes())
                .map_err(werr)?;
        }
        txn.commit().map_err(werr)?;
        let took = started.elapsed();
        macro_rules! slow_apply {
            ($level:ident) => {
                tracing::$level!(
                    entries = count,
                    took_ms = took.as_millis() as u64,
                    commands_ms = commands.as_millis() as u64,
                    slowest = slowest.0,
                    slowest_ms = slowest.1.as_millis() as u64,
                    durable,
                    "slow apply"
                )
            };
        }
        if took >= SLOW_APPLY {
            slow_apply!(warn);
        } else if took >= SLOW_APPLY / 10 {
            slow_apply!(debug);
        }
        let head = next.next_seq;
        *self.view_mut() = next;
        if config_changed {
            self.config_version.send_modify(|v| *v += 1);
        }
        if links_changed {
            self.links_version.send_modify(|v| *v += 1);
        }
        self.head.send_if_modified(|h| {
            if *h != head {
                *h = head;
                true
            } else {
                false
            }
        });
        Ok(responses)
    }

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
    /// format ([`super::snapshot`]), a row at a time (writers go on
    /// meanwhile). Memory: the largest row, whatever the state holds.
    pub fn write_snapshot(
        &self,
        txn: &redb::ReadTransaction,
        out: &mut impl std::io::Write,
    ) -> SResult<SnapshotInfo> {
        let (last_applied, membership) = self.applied_in(txn)?;
        let counts = super::snapshot::write(txn, out).map_err(rerr)?;
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
        let tmp = self
            .path
            .with_file_name(format!("{name}.{INSTALLING}{}", super::gentle::unique()));
        let built = build_from_snapshot(&tmp, self.cache_bytes.min(INSTALL_CACHE), &mut input);
        let view = match built {
            Ok(view) => view,
            Err(e) => {
                if tmp.exists()
                    && let Err(d) = super::gentle::discard(&tmp)
                {
                    tracing::warn!(file = %tmp.display(), error = %d, "cannot delete a partly installed state");
                }
                return Err(e);
            }
        };
        let _writer = self.lock_writer();
        let old_link = self
            .path
            .with_file_name(format!("{name}.{REPLACED}{}", super::gentle::unique()));
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
        *self.view_mut() = view;
        self.config_version.send_modify(|v| *v += 1);
        self.links_version.send_modify(|v| *v += 1);
        self.head.send_replace(head);
        drop(_writer);
        retire(old, &old_link);
        Ok(())
    }

    /// The state's size ([`View::stored_bytes`]) counted row by row, as a
    /// check of the kept count (tests and tools: it reads every row).
    pub fn count_stored_bytes(&self) -> SResult<u64> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        count_stored(&txn)
    }

    /// Dedup index entries (tests).
    pub fn dedup_entries(&self) -> SResult<u64> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        txn.open_table(DEDUP).map_err(rerr)?.len().map_err(rerr)
    }
}

/// The state database's page cache (redb's default): memory the state
/// uses whatever it holds.
pub const DEFAULT_CACHE: usize = 1 << 30;

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
        super::snapshot::read_header(input).map_err(serr)?;
        super::snapshot::load(input, &db).map_err(serr)?;
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
                if let Err(e) = super::gentle::discard(link) {
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
fn clean_install_leftovers(path: &Path) -> std::io::Result<()> {
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
            super::gentle::discard(&item.path())?;
        } else if rest.starts_with(REPLACED) {
            let m = item.metadata()?;
            if Some((m.dev(), m.ino())) == current {
                std::fs::remove_file(item.path())?;
            } else {
                super::gentle::discard(&item.path())?;
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
    super::links::restore(txn, &body.links)?;
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
    for def in [EVENTS, super::tables::OUTBOX, super::tables::INBOX] {
        let table = txn.open_table(def).map_err(rerr)?;
        bytes += block_table::count_bytes(&table).map_err(rerr)?;
    }
    for item in txn.open_table(DEDUP).map_err(rerr)?.iter().map_err(rerr)? {
        let (k, _) = item.map_err(rerr)?;
        bytes += dedup_bytes(k.value());
    }
    Ok(bytes)
}

fn init_tables(db: &Database) -> SResult<()> {
    let txn = db.begin_write().map_err(werr)?;
    super::tables::create_tables(&txn).map_err(werr)?;
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
    let link_meta = txn.open_table(super::tables::LINK_META).map_err(rerr)?;
    view.links = super::links::load(&link_meta).map_err(|m| rerr(std::io::Error::other(m)))?;
    Ok(view)
}

/// Bytes a dedup entry counts for in the state's size: key and value.
fn dedup_bytes(key: &str) -> u64 {
    key.len() as u64 + 8
}

/// Delete up to [`DEDUP_SWEEP_BATCH`] dedup entries older than `horizon`,
/// continuing where the previous sweep stopped (kept in the meta table);
/// the bytes they counted for.
fn sweep_dedup(txn: &WriteTransaction, horizon: u64) -> SResult<u64> {
    let mut meta = txn.open_table(META).map_err(werr)?;
    let from: String = match meta.get("dedup_sweep").map_err(werr)? {
        Some(v) => String::from_utf8_lossy(v.value()).into_owned(),
        None => String::new(),
    };
    let mut dedup = txn.open_table(DEDUP).map_err(werr)?;
    let mut doomed = Vec::new();
    let mut last = None;
    let mut seen = 0;
    for item in dedup.range(from.as_str()..).map_err(werr)? {
        let (k, v) = item.map_err(werr)?;
        seen += 1;
        if v.value() < horizon {
            doomed.push(k.value().to_string());
        }
        last = Some(k.value().to_string());
        if seen >= DEDUP_SWEEP_BATCH {
            break;
        }
    }
    let mut gone = 0;
    for k in &doomed {
        dedup.remove(k.as_str()).map_err(werr)?;
        gone += dedup_bytes(k);
    }
    // Resume just after the last key seen, or wrap to the start at the end.
    let next = match last {
        Some(mut k) if seen >= DEDUP_SWEEP_BATCH => {
            k.push('\u{0}');
            k
        }
        _ => String::new(),
    };
    meta.insert("dedup_sweep", next.as_bytes()).map_err(werr)?;
    Ok(gone)
}

/// A table of JSON rows by name (buses, rules, sources).
type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Store `spec` as the JSON row `key` of `table` and as `map_key` of the
/// view's `map`.
fn put_json_row<K: Ord>(
    txn: &WriteTransaction,
    table: JsonTable,
    key: &str,
    map: &mut BTreeMap<K, serde_json::Value>,
    map_key: K,
    spec: serde_json::Value,
) -> SResult<()> {
    let bytes = serde_json::to_vec(&spec).map_err(werr)?;
    txn.open_table(table)
        .map_err(werr)?
        .insert(key, bytes.as_slice())
        .map_err(werr)?;
    map.insert(map_key, spec);
    Ok(())
}

/// Remove `map_key` from the view's `map` and the row `key` from `table`;
/// false (and nothing touched) when the map has no such entry.
fn delete_json_row<K: Ord>(
    txn: &WriteTransaction,
    table: JsonTable,
    key: &str,
    map: &mut BTreeMap<K, serde_json::Value>,
    map_key: &K,
) -> SResult<bool> {
    if map.remove(map_key).is_none() {
        return Ok(false);
    }
    txn.open_table(table)
        .map_err(werr)?
        .remove(key)
        .map_err(werr)?;
    Ok(true)
}

fn apply_command(
    txn: &WriteTransaction,
    view: &mut View,
    cmd: Command,
) -> SResult<CommandResponse> {
    Ok(match cmd {
        Command::PutBus { name, spec } => {
            put_json_row(txn, BUSES, &name, &mut view.buses, name.clone(), spec)?;
            CommandResponse::Ok
        }
        Command::DeleteBus { name } => {
            if !view.buses.contains_key(&name) {
                return Ok(CommandResponse::NotFound(NotFound::Bus { name }));
            }
            let rules: Vec<String> = view
                .rules
                .keys()
                .filter(|(b, _)| *b == name)
                .map(|(_, r)| r.clone())
                .collect();
            if !rules.is_empty() {
                return Ok(CommandResponse::Conflict(Conflict::BusHasRules {
                    bus: name,
                    rules,
                }));
            }
            let sources: Vec<String> = view
                .sources
                .iter()
                .filter(|(_, spec)| source_bus(spec) == Some(name.as_str()))
                .map(|(s, _)| s.clone())
                .collect();
            if !sources.is_empty() {
                return Ok(CommandResponse::Conflict(Conflict::BusHasSources {
                    bus: name,
                    sources,
                }));
            }
            let dead_letter_of: Vec<String> = view
                .rules
                .iter()
                .filter(|(_, spec)| dead_letter_buses(spec).iter().any(|(_, b)| *b == name))
                .map(|((b, r), _)| format!("{b}/{r}"))
                .collect();
            if !dead_letter_of.is_empty() {
                return Ok(CommandResponse::Refused(Refusal::BusIsDeadLetter {
                    bus: name,
                    rules: dead_letter_of,
                }));
            }
            delete_json_row(txn, BUSES, &name, &mut view.buses, &name)?;
            let mut events = txn.open_table(EVENTS).map_err(werr)?;
            let (mut gone, mut gone_events) = (0, 0u64);
            events
                .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |k, v| {
                    gone += block_table::row_bytes(k.0, v.len());
                    // A row that does not parse held no event it could count.
                    gone_events += super::blocks::Block::parse(v).map_or(0, |b| b.len() as u64);
                    false
                })
                .map_err(werr)?;
            view.stored_bytes = view.stored_bytes.saturating_sub(gone);
            view.stored_events = view.stored_events.saturating_sub(gone_events);
            CommandResponse::Ok
        }
        Command::PutRule {
            bus,
            name,
            spec,
            targets,
        } => {
            if !view.buses.contains_key(&bus) {
                return Ok(CommandResponse::NotFound(NotFound::Bus { name: bus }));
            }
            // A dead letter must have somewhere to go (checked here, at
            // commit, so a bus deleted meanwhile cannot slip through).
            if let Some((field, dl_bus)) = dead_letter_buses(&spec)
                .into_iter()
                .find(|(_, b)| !view.buses.contains_key(*b))
            {
                return Ok(CommandResponse::Refused(Refusal::NoDeadLetterBus {
                    field,
                    bus: dl_bus.to_string(),
                }));
            }
            put_json_row(
                txn,
                RULES,
                &rule_key(&bus, &name),
                &mut view.rules,
                (bus.clone(), name.clone()),
                spec,
            )?;
            let prefix = format!("{bus}/{name}/");
            let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
            // Targets removed from the rule lose their cursors.
            let stale: Vec<String> = view
                .cursors
                .keys()
                .filter(|k| {
                    k.starts_with(&prefix) && !targets.iter().any(|t| **k == format!("{prefix}{t}"))
                })
                .cloned()
                .collect();
            for k in stale {
                cursors.remove(k.as_str()).map_err(werr)?;
                view.cursors.remove(&k);
            }
            // New targets start at the head: a new rule sees new events only.
            for t in &targets {
                let key = format!("{prefix}{t}");
                if !view.cursors.contains_key(&key) {
                    cursors.insert(key.as_str(), view.next_seq).map_err(werr)?;
                    view.cursors.insert(key, view.next_seq);
                }
            }
            CommandResponse::Ok
        }
        Command::DeleteRule { bus, name } => {
            if !delete_json_row(
                txn,
                RULES,
                &rule_key(&bus, &name),
                &mut view.rules,
                &(bus.clone(), name.clone()),
            )? {
                return Ok(CommandResponse::NotFound(NotFound::Rule { bus, name }));
            }
            let prefix = format!("{bus}/{name}/");
            let stale: Vec<String> = view
                .cursors
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
            for k in stale {
                cursors.remove(k.as_str()).map_err(werr)?;
                view.cursors.remove(&k);
            }
            CommandResponse::Ok
        }
        Command::PutSource { name, spec } => {
            if let Some(bus) = source_bus(&spec)
                && !view.buses.contains_key(bus)
            {
                return Ok(CommandResponse::NotFound(NotFound::Bus {
                    name: bus.to_string(),
                }));
            }
            put_json_row(txn, SOURCES, &name, &mut view.sources, name.clone(), spec)?;
            CommandResponse::Ok
        }
        Command::DeleteSource { name } => {
            if !delete_json_row(txn, SOURCES, &name, &mut view.sources, &name)? {
                return Ok(CommandResponse::NotFound(NotFound::Source { name }));
            }
            CommandResponse::Ok
        }
        Command::Append {
            ingest_ms,
            dedup_window_ms,
            entries,
        } => {
            let mut events = txn.open_table(EVENTS).map_err(werr)?;
            let mut dedup = txn.open_table(DEDUP).map_err(werr)?;
            // Entries older than the window no longer count; the checkpoint
            // sweep deletes them later.
            let horizon = ingest_ms.saturating_sub(dedup_window_ms);
            let mut outcomes = Vec::with_capacity(entries.len());
            // One block per bus (almost always just one bus per entry).
            let mut blocks: Vec<(&str, BlockBuilder)> = Vec::new();
            for e in entries.iter() {
                if !view.buses.contains_key(&e.bus) {
                    outcomes.push(AppendOutcome::NoSuchBus);
                    continue;
                }
                let key = dedup_key(&e.bus, &e.source, &e.id);
                // One index operation per new event: insert, and look at what
                // was there before.
                let prev = {
                    dedup
                        .insert(key.as_str(), ingest_ms)
                        .map_err(werr)?
                        .map(|g| g.value())
                };
                if prev.is_none() {
                    view.stored_bytes += dedup_bytes(&key);
                }
                if let Some(ms) = prev
                    && ms >= horizon
                {
                    // A repeat does not extend the window: keep the first time.
                    dedup.insert(key.as_str(), ms).map_err(werr)?;
                    outcomes.push(AppendOutcome::Duplicate);
                    continue;
                }
                let seq = view.next_seq;
                view.next_seq += 1;
                let block = match blocks.iter().position(|(b, _)| *b == e.bus) {
                    Some(i) => &mut blocks[i].1,
                    None => {
                        blocks.push((e.bus.as_str(), BlockBuilder::new()));
                        let last = blocks.len() - 1;
                        &mut blocks[last].1
                    }
                };
                block.push(seq, ingest_ms, e.event.get().as_bytes());
                outcomes.push(AppendOutcome::Accepted(seq));
            }
            for (bus, block) in blocks {
                view.stored_events += block.len() as u64;
                view.stored_bytes += block_table::put(&mut events, bus, block).map_err(werr)?;
            }
            CommandResponse::Appended(outcomes)
        }
        Command::Checkpoint {
            now_ms,
            retention_ms,
            dedup_window_ms,
            cursors: updates,
        } => {
            if dedup_window_ms > 0 {
                let swept = sweep_dedup(txn, now_ms.saturating_sub(dedup_window_ms))?;
                view.stored_bytes = view.stored_bytes.saturating_sub(swept);
            }
            let mut cursors = txn.open_table(CURSORS).map_err(werr)?;
            for (key, seq) in updates {
                // Only known targets, and cursors never move backwards.
                if let Some(cur) = view.cursors.get_mut(&key)
                    && seq > *cur
                {
                    *cur = seq;
                    cursors.insert(key.as_str(), seq).map_err(werr)?;
                }
            }
            // Garbage-collect events every target of their bus is done with
            // and that are older than the retention.
            let horizon = now_ms.saturating_sub(retention_ms);
            let mut events = txn.open_table(EVENTS).map_err(werr)?;
            for bus in view.buses.keys() {
                let prefix = format!("{bus}/");
                let min_cursor = view
                    .cursors
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| *v)
                    .min()
                    .unwrap_or(view.next_seq);
                // Whole blocks go: every event in them below every
                // cursor and past the retention.
                let dropped = block_table::drop_done(
                    &mut events,
                    bus,
                    min_cursor,
                    |b| b.max_ingest_ms() <= horizon,
                    50_000,
                )
                .map_err(werr)?;
                view.stored_bytes = view.stored_bytes.saturating_sub(dropped.bytes);
                view.stored_events = view.stored_events.saturating_sub(dropped.items as u64);
            }
            super::links::collect_inbox(txn, &view.links, &view.cursors, &mut view.stored_bytes)?;
            CommandResponse::Ok
        }
        Command::ConfigVersion { version } => {
            view.config_version = view.config_version.max(version);
            CommandResponse::Ok
        }
        Command::LinkEnqueue {
            remote,
            items,
            specs,
        } => super::links::enqueue(
            txn,
            &mut view.links,
            &mut view.stored_bytes,
            &remote,
            &items,
            &specs,
        )?,
        Command::LinkAcked { remote, upto } => {
            super::links::acked(txn, &mut view.links, &mut view.stored_bytes, &remote, upto)?
        }
        Command::LinkReceive {
            origin,
            first_seq,
            items,
            specs,
        } => super::links::receive(txn, view, &origin, first_seq, &items, &specs)?,
    })
}
