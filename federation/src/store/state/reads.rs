//! Reads of the state for the node: events of a bus, link outboxes and
//! inboxes with the definitions they refer to, counts.

use openraft::StorageError;
use redb::{ReadableDatabase, ReadableTableMetadata};

use super::{SResult, SiteState, StoredEvent, count_events, count_stored, rerr};
use crate::NodeId;
use crate::store::block_table;
use crate::store::tables::{DEDUP, EVENTS, NONCES};

fn link_err(m: String) -> StorageError<NodeId> {
    rerr(std::io::Error::other(m))
}
impl SiteState {
    /// How many signature nonces the site remembers
    /// ([`crate::Command::UseNonce`]).
    pub fn nonce_count(&self) -> SResult<u64> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let table = txn.open_table(NONCES).map_err(rerr)?;
        table.len().map_err(rerr)
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
    ) -> SResult<Vec<crate::store::links::LinkEntry>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let from =
            from.max(crate::store::links::outbox_done_below(&txn, remote).map_err(link_err)?);
        let table = txn.open_table(crate::store::tables::OUTBOX).map_err(rerr)?;
        crate::store::links::read(&table, remote, from, limit)
            .map_err(|m| rerr(std::io::Error::other(m)))
    }

    /// Up to `limit` outbox entries owed to `remote` with `seq >= from`,
    /// with the rule definitions they refer to by hash (read together, so
    /// every definition an entry names is there).
    pub fn read_outbox_with_specs(
        &self,
        remote: &str,
        from: u64,
        limit: usize,
    ) -> SResult<(
        Vec<crate::store::links::LinkEntry>,
        Vec<crate::store::links::SpecRow>,
    )> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let from =
            from.max(crate::store::links::outbox_done_below(&txn, remote).map_err(link_err)?);
        let table = txn.open_table(crate::store::tables::OUTBOX).map_err(rerr)?;
        let entries = crate::store::links::read(&table, remote, from, limit)
            .map_err(|m| rerr(std::io::Error::other(m)))?;
        let mut hashes: Vec<&str> = entries
            .iter()
            .filter_map(|e| crate::link::proto::item_spec_hash(&e.body))
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        let specs_table = txn
            .open_table(crate::store::tables::SPECS_OUT)
            .map_err(rerr)?;
        let mut specs = Vec::with_capacity(hashes.len());
        for h in hashes {
            if let Some(spec) = crate::store::links::read_spec(&specs_table, remote, h)
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
        let table = txn
            .open_table(crate::store::tables::SPECS_IN)
            .map_err(rerr)?;
        crate::store::links::read_spec(&table, origin, hash)
            .map_err(|m| rerr(std::io::Error::other(m)))
    }

    /// Up to `limit` inbox entries from `origin` with `seq >= from`.
    pub fn read_inbox(
        &self,
        origin: &str,
        from: u64,
        limit: usize,
    ) -> SResult<Vec<crate::store::links::LinkEntry>> {
        let db = self.db();
        let txn = db.begin_read().map_err(rerr)?;
        let from = from.max(crate::store::links::inbox_done_below(&txn, origin).map_err(link_err)?);
        let table = txn.open_table(crate::store::tables::INBOX).map_err(rerr)?;
        crate::store::links::read(&table, origin, from, limit)
            .map_err(|m| rerr(std::io::Error::other(m)))
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

    /// Total events stored (all buses), as kept ([`View::stored_events`](super::View::stored_events)).
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

    /// The state's size ([`View::stored_bytes`](super::View::stored_bytes)) counted row by row, as a
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
