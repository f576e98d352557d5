//! The delivery journal's side of applying a checkpoint
//! ([`crate::Command::Checkpoint`]): cursor marks, journal entries, target
//! counters, and their collection (see [`crate::journal`] and
//! `docs/architecture.md`, "Delivery journal").
//!
//! Deterministic like the rest of the apply: every time used is the
//! command's `now_ms`.

use redb::{ReadableTable, WriteTransaction};

use super::{SResult, werr};
use crate::journal::{JournalEntry, TargetCounts};
use crate::store::tables::{COUNTS, JOURNAL, MARKS};

/// Most journal rows one checkpoint deletes (the rest go at the next ones).
pub(crate) const JOURNAL_GC_BATCH: usize = 10_000;

/// Most cursor marks one checkpoint deletes.
pub(crate) const MARKS_GC_BATCH: usize = 10_000;

/// Bytes a journal row counts for in the state's size: key and value.
pub(crate) fn journal_row_bytes(key: &str, value_bytes: usize) -> u64 {
    (8 + key.len() + value_bytes) as u64
}

/// Bytes a cursor mark counts for: key and value.
pub(crate) fn mark_bytes(key: &str) -> u64 {
    (key.len() + 16) as u64
}

/// Bytes a counters row counts for: key and value.
pub(crate) fn counts_bytes(key: &str, value_bytes: usize) -> u64 {
    (key.len() + value_bytes) as u64
}

/// The journal's key of an event: "bus\u{0}source\u{0}id" (the dedup
/// index's key).
pub(crate) fn event_key(bus: &str, source: &str, id: &str) -> String {
    format!("{bus}\u{0}{source}\u{0}{id}")
}

/// Record that a checkpoint at `now_ms` moved the cursor `key` to `cursor`;
/// the bytes added.
pub(crate) fn put_mark(
    txn: &WriteTransaction,
    key: &str,
    cursor: u64,
    now_ms: u64,
) -> SResult<u64> {
    let prev = txn
        .open_table(MARKS)
        .map_err(werr)?
        .insert((key, cursor), now_ms)
        .map_err(werr)?
        .is_some();
    Ok(if prev { 0 } else { mark_bytes(key) })
}

/// Merge `entries` into the journal: each replaces the entry of the same
/// (rule, target, origin) in its event's row, or joins it. Entries older
/// than `horizon` (ingest time at the origin) are not written: the next
/// collection would delete them. `stored` follows the rows' bytes.
pub(crate) fn merge(
    txn: &WriteTransaction,
    entries: Vec<JournalEntry>,
    horizon: u64,
    stored: &mut u64,
) -> SResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(JOURNAL).map_err(werr)?;
    for e in entries {
        if e.ingest_ms < horizon {
            continue;
        }
        let key = event_key(&e.bus, &e.source, &e.id);
        let (mut row, old_bytes): (Vec<JournalEntry>, Option<usize>) =
            match table.get((e.ingest_ms, key.as_str())).map_err(werr)? {
                // A row that does not parse is replaced (what it held is lost
                // either way; the apply must not fail on it).
                Some(v) => (
                    serde_json::from_slice(v.value()).unwrap_or_default(),
                    Some(v.value().len()),
                ),
                None => (Vec::new(), None),
            };
        let ms = e.ingest_ms;
        match row
            .iter_mut()
            .find(|o| o.rule == e.rule && o.target == e.target && o.origin == e.origin)
        {
            Some(slot) => *slot = e,
            None => row.push(e),
        }
        let bytes = serde_json::to_vec(&row).map_err(werr)?;
        table
            .insert((ms, key.as_str()), bytes.as_slice())
            .map_err(werr)?;
        if let Some(old) = old_bytes {
            *stored = stored.saturating_sub(journal_row_bytes(&key, old));
        }
        *stored += journal_row_bytes(&key, bytes.len());
    }
    Ok(())
}

/// Store the counters of each target (replacing what was there).
pub(crate) fn put_counts(
    txn: &WriteTransaction,
    counts: Vec<(String, TargetCounts)>,
    stored: &mut u64,
) -> SResult<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(COUNTS).map_err(werr)?;
    for (key, c) in counts {
        let bytes = serde_json::to_vec(&c).map_err(werr)?;
        let old = table
            .insert(key.as_str(), bytes.as_slice())
            .map_err(werr)?
            .map(|v| v.value().len());
        if let Some(old) = old {
            *stored = stored.saturating_sub(counts_bytes(&key, old));
        }
        *stored += counts_bytes(&key, bytes.len());
    }
    Ok(())
}

/// Delete up to [`JOURNAL_GC_BATCH`] journal rows of events ingested
/// before `horizon` (the oldest first: the table is in time order); the
/// bytes they counted for.
pub(crate) fn collect_journal(txn: &WriteTransaction, horizon: u64) -> SResult<u64> {
    if horizon == 0 {
        return Ok(0);
    }
    let mut table = txn.open_table(JOURNAL).map_err(werr)?;
    let mut doomed: Vec<(u64, String)> = Vec::new();
    let mut bytes = 0;
    for item in table.range((0, "")..(horizon, "")).map_err(werr)? {
        let (k, v) = item.map_err(werr)?;
        let (ms, key) = k.value();
        bytes += journal_row_bytes(key, v.value().len());
        doomed.push((ms, key.to_string()));
        if doomed.len() >= JOURNAL_GC_BATCH {
            break;
        }
    }
    for (ms, key) in &doomed {
        table.remove((*ms, key.as_str())).map_err(werr)?;
    }
    Ok(bytes)
}

/// Delete the marks of each cursor in `keys` older than `horizon`, except
/// its newest, up to [`MARKS_GC_BATCH`] marks in all; the bytes they
/// counted for.
pub(crate) fn collect_marks<'k>(
    txn: &WriteTransaction,
    keys: impl IntoIterator<Item = &'k String>,
    horizon: u64,
) -> SResult<u64> {
    let mut table = txn.open_table(MARKS).map_err(werr)?;
    let mut budget = MARKS_GC_BATCH;
    let mut bytes = 0;
    for key in keys {
        if budget == 0 {
            break;
        }
        let mut doomed = Vec::new();
        // One walk from the oldest mark: the old ones, and whether a newer
        // one follows them (the newest mark stays whatever its age).
        let mut newer_follows = false;
        for item in table
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(werr)?
        {
            let (k, v) = item.map_err(werr)?;
            if v.value() >= horizon || doomed.len() > budget {
                newer_follows = true;
                break;
            }
            doomed.push(k.value().1);
        }
        if !newer_follows || doomed.len() > budget {
            doomed.pop();
        }
        budget -= doomed.len();
        for cursor in doomed {
            table.remove((key.as_str(), cursor)).map_err(werr)?;
            bytes += mark_bytes(key);
        }
    }
    Ok(bytes)
}

/// Delete every mark and the counters of the cursor `key` (its target is
/// gone); the bytes they counted for.
pub(crate) fn drop_target(txn: &WriteTransaction, key: &str) -> SResult<u64> {
    let mut bytes = 0;
    txn.open_table(MARKS)
        .map_err(werr)?
        .retain_in((key, 0)..=(key, u64::MAX), |_, _| {
            bytes += mark_bytes(key);
            false
        })
        .map_err(werr)?;
    if let Some(v) = txn
        .open_table(COUNTS)
        .map_err(werr)?
        .remove(key)
        .map_err(werr)?
    {
        bytes += counts_bytes(key, v.value().len());
    }
    Ok(bytes)
}
