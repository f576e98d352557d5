//! The Raft log on redb.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{blocking, storage_err, storage_msg};
use crate::error::FederationError;
use crate::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type SResult<T> = Result<T, StorageError<NodeId>>;

/// How many recently appended entries are kept in memory, so that applying
/// them (and, in a multi-node site, replicating them) does not read them
/// back from disk and parse them again.
const CACHE_ENTRIES: usize = 64;

/// The durable Raft log of one node.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    cache: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    /// The last committed log id openraft reported, written with the next
    /// append (not in a transaction of its own on the Raft core's path).
    committed: Arc<Mutex<Option<Option<LogId<NodeId>>>>>,
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

impl LogStore {
    /// Open (or create) the log database at `path`.
    pub fn open(path: &Path) -> Result<LogStore, FederationError> {
        let db = Database::create(path).map_err(|e| FederationError::Storage {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let store = LogStore {
            db: Arc::new(db),
            cache: Arc::default(),
            committed: Arc::default(),
        };
        store.init_tables().map_err(|e| FederationError::Storage {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(store)
    }

    fn cache(&self) -> MutexGuard<'_, BTreeMap<u64, Entry<TypeConfig>>> {
        lock(&self.cache)
    }

    fn init_tables(&self) -> SResult<()> {
        let txn = self.db.begin_write().map_err(werr)?;
        txn.open_table(LOG).map_err(werr)?;
        txn.open_table(META).map_err(werr)?;
        txn.commit().map_err(werr)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> SResult<Option<T>> {
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(META).map_err(rerr)?;
        match table.get(key).map_err(rerr)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(rerr),
        }
    }

    /// Write `value` as `key` of the meta table, fsynced.
    fn write_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> SResult<()> {
        let bytes = serde_json::to_vec(value).map_err(werr)?;
        let mut txn = self.db.begin_write().map_err(werr)?;
        txn.set_durability(Durability::Immediate).map_err(werr)?;
        {
            let mut table = txn.open_table(META).map_err(werr)?;
            table.insert(key, bytes.as_slice()).map_err(werr)?;
        }
        txn.commit().map_err(werr)
    }

    /// Encode `entries`, write them in one transaction and fsync it, then
    /// keep them in the in-memory tail. Blocking: call it off the runtime
    /// (the [`RaftLogStorage::append`] implementation does).
    pub fn append_durable(&self, entries: Vec<Entry<TypeConfig>>) -> SResult<()> {
        let mut txn = self.db.begin_write().map_err(werr)?;
        txn.set_durability(Durability::Immediate).map_err(werr)?;
        if let Some(committed) = lock(&self.committed).take() {
            let bytes = serde_json::to_vec(&committed).map_err(werr)?;
            let mut meta = txn.open_table(META).map_err(werr)?;
            meta.insert("committed", bytes.as_slice()).map_err(werr)?;
        }
        {
            let mut table = txn.open_table(LOG).map_err(werr)?;
            for entry in &entries {
                let bytes = serde_json::to_vec(entry).map_err(werr)?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(werr)?;
            }
        }
        txn.commit().map_err(werr)?;
        let mut cache = self.cache();
        for entry in entries {
            cache.insert(entry.log_id.index, entry);
        }
        while cache.len() > CACHE_ENTRIES {
            cache.pop_first();
        }
        Ok(())
    }

    fn read_range(&self, start: u64, end: Bound<u64>) -> SResult<Vec<Entry<TypeConfig>>> {
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(LOG).map_err(rerr)?;
        let iter = match end {
            Bound::Included(e) => table.range(start..=e),
            Bound::Excluded(e) => table.range(start..e),
            Bound::Unbounded => table.range(start..),
        }
        .map_err(rerr)?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(rerr)?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(rerr)?;
            out.push(entry);
        }
        Ok(out)
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
        blocking(move || this.read_range(start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta("last_purged")?;
        let txn = self.db.begin_read().map_err(rerr)?;
        let table = txn.open_table(LOG).map_err(rerr)?;
        let last = match table.last().map_err(rerr)? {
            None => None,
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(rerr)?;
                Some(entry.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        let this = self.clone();
        let vote = *vote;
        blocking(move || this.write_meta("vote", &vote)).await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        self.read_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        // Not written on its own: it rides along with the next append.
        // After a crash, an older value only means a little more is
        // re-applied.
        *lock(&self.committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        if let Some(committed) = *lock(&self.committed) {
            return Ok(committed);
        }
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let this = self.clone();
        let started = std::time::Instant::now();
        let result = blocking(move || this.append_durable(entries)).await;
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
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().map_err(werr)?;
            txn.set_durability(Durability::Immediate).map_err(werr)?;
            {
                let mut table = txn.open_table(LOG).map_err(werr)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(werr)?;
            }
            txn.commit().map_err(werr)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.cache().retain(|k, _| *k > log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let bytes = serde_json::to_vec(&log_id).map_err(werr)?;
            let mut txn = db.begin_write().map_err(werr)?;
            txn.set_durability(Durability::Immediate).map_err(werr)?;
            {
                let mut meta = txn.open_table(META).map_err(werr)?;
                meta.insert("last_purged", bytes.as_slice()).map_err(werr)?;
                let mut table = txn.open_table(LOG).map_err(werr)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(werr)?;
            }
            txn.commit().map_err(werr)
        })
        .await
        .map_err(|e| {
            storage_msg(
                ErrorSubject::Logs,
                ErrorVerb::Delete,
                format!("purge up to {log_id}: {e}"),
            )
        })
    }
}
