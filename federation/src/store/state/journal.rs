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
/// The time a target's *start mark* holds: the mark written when the
/// target is created, at the cursor it starts from (the head of its bus).
/// Events before it were never the target's; collection keeps it.
pub const START_MARK: u64 = 0;

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

/// Delete the marks of cursor `key` at `from` and above (a seek moved
/// the cursor back below them); the bytes freed.
pub(crate) fn drop_marks_from(txn: &WriteTransaction, key: &str, from: u64) -> SResult<u64> {
    let mut table = txn.open_table(MARKS).map_err(werr)?;
    let mut gone = Vec::new();
    for item in table.range((key, from)..=(key, u64::MAX)).map_err(werr)? {
        let (k, _) = item.map_err(werr)?;
        gone.push(k.value().1);
    }
    for c in &gone {
        table.remove((key, *c)).map_err(werr)?;
    }
    Ok(gone.len() as u64 * mark_bytes(key))
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

/// Delete up to `limit` ([`JOURNAL_GC_BATCH`]) journal rows of events
/// ingested before `horizon` (the oldest first: the table is in time
/// order); the bytes they counted for.
pub(crate) fn collect_journal(txn: &WriteTransaction, horizon: u64, limit: usize) -> SResult<u64> {
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
        if doomed.len() >= limit {
            break;
        }
    }
    for (ms, key) in &doomed {
        table.remove((*ms, key.as_str())).map_err(werr)?;
    }
    Ok(bytes)
}

/// Delete the marks of each cursor in `keys` older than `horizon`, except
/// its newest, up to `limit` ([`MARKS_GC_BATCH`]) marks in all; the bytes
/// they counted for.
pub(crate) fn collect_marks<'k>(
    txn: &WriteTransaction,
    keys: impl IntoIterator<Item = &'k String>,
    horizon: u64,
    limit: usize,
) -> SResult<u64> {
    let mut table = txn.open_table(MARKS).map_err(werr)?;
    let mut budget = limit;
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
            if v.value() == START_MARK {
                continue;
            }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::journal::DeliveryStatus;

    fn db(dir: &tempfile::TempDir) -> anyhow::Result<Database> {
        let db = Database::create(dir.path().join("t.redb"))?;
        let txn = db.begin_write()?;
        crate::store::tables::create_tables(&txn)?;
        txn.commit()?;
        Ok(db)
    }

    fn entry(
        id: &str,
        ms: u64,
        rule: &str,
        target: &str,
        origin: Option<&str>,
        n: u32,
    ) -> JournalEntry {
        JournalEntry {
            bus: "b".into(),
            source: "/s".into(),
            id: id.into(),
            ingest_ms: ms,
            rule: rule.into(),
            target: target.into(),
            origin: origin.map(str::to_string),
            status: DeliveryStatus::Retrying,
            attempts: vec![],
            omitted_attempts: n,
            reason: None,
        }
    }

    fn row(db: &Database, ms: u64, id: &str) -> anyhow::Result<Vec<JournalEntry>> {
        let txn = db.begin_read()?;
        let t = txn.open_table(JOURNAL)?;
        Ok(match t.get((ms, event_key("b", "/s", id).as_str()))? {
            Some(v) => serde_json::from_slice(v.value())?,
            None => Vec::new(),
        })
    }

    fn marks(db: &Database, key: &str) -> anyhow::Result<Vec<(u64, u64)>> {
        let txn = db.begin_read()?;
        let t = txn.open_table(MARKS)?;
        let mut out = Vec::new();
        for item in t.range((key, 0)..=(key, u64::MAX))? {
            let (k, v) = item?;
            out.push((k.value().1, v.value()));
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever the checkpoints' entries, an event's row holds the last
        /// entry of each (rule, target, origin), in the order each first
        /// came, and the kept size is the row's.
        #[test]
        fn merge_keeps_the_last_entry_per_rule_target_origin(
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..2, 0u8..3, 0u8..3), 0..6), 1..5)
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let db = db(&dir).expect("db");
            let mut model: Vec<JournalEntry> = Vec::new();
            let mut stored = 0u64;
            let mut n = 0u32;
            for batch in batches {
                let txn = db.begin_write().expect("txn");
                let mut entries = Vec::new();
                for (r, t, o) in batch {
                    n += 1;
                    let origin = ["aws", "idc"].get(usize::from(o)).copied();
                    let e = entry("e", 5, &format!("r{r}"), &format!("t{t}"), origin, n);
                    match model.iter_mut().find(|m| {
                        m.rule == e.rule && m.target == e.target && m.origin == e.origin
                    }) {
                        Some(m) => *m = e.clone(),
                        None => model.push(e.clone()),
                    }
                    entries.push(e);
                }
                merge(&txn, entries, 0, &mut stored).expect("merge");
                txn.commit().expect("commit");
            }
            let got = row(&db, 5, "e").expect("row");
            prop_assert_eq!(&got, &model);
            let want = if model.is_empty() {
                0
            } else {
                journal_row_bytes(
                    &event_key("b", "/s", "e"),
                    serde_json::to_vec(&model).expect("json").len(),
                )
            };
            prop_assert_eq!(stored, want);
        }
    }

    #[test]
    fn journal_collection_is_bounded_and_oldest_first() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = db(&dir)?;
        let mut stored = 0;
        let txn = db.begin_write()?;
        let entries = (0..10u64)
            .map(|i| entry(&format!("e{i}"), 100 + i, "r", "t", None, 0))
            .collect();
        merge(&txn, entries, 0, &mut stored)?;
        // Below the horizon: not written.
        merge(
            &txn,
            vec![entry("x", 10, "r", "t", None, 0)],
            50,
            &mut stored,
        )?;
        txn.commit()?;
        assert!(row(&db, 10, "x")?.is_empty());
        let txn = db.begin_write()?;
        // Rows before 108: eight, at most three per call.
        let mut gone = collect_journal(&txn, 108, 3)?;
        assert!(row(&db, 102, "e2")?.len() == 1, "not committed yet");
        txn.commit()?;
        assert!(row(&db, 102, "e2")?.is_empty());
        assert_eq!(row(&db, 103, "e3")?.len(), 1);
        for _ in 0..3 {
            let txn = db.begin_write()?;
            gone += collect_journal(&txn, 108, 3)?;
            txn.commit()?;
        }
        assert!(row(&db, 107, "e7")?.is_empty());
        assert_eq!(row(&db, 108, "e8")?.len(), 1);
        let one = journal_row_bytes(
            &event_key("b", "/s", "e0"),
            serde_json::to_vec(&row(&db, 108, "e8")?)?.len(),
        );
        assert_eq!(gone, 8 * one);
        assert_eq!(stored - gone, 2 * one);
        Ok(())
    }

    #[test]
    fn mark_collection_keeps_each_cursors_newest_within_a_bound() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = db(&dir)?;
        let txn = db.begin_write()?;
        for c in 1..=5u64 {
            put_mark(&txn, "a", c, c * 10)?;
        }
        put_mark(&txn, "b", 1, 10)?;
        put_mark(&txn, "b", 2, 20)?;
        put_mark(&txn, "c", 9, 90)?;
        txn.commit()?;
        let keys: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // Everything is older than 1000; at most two per call.
        let txn = db.begin_write()?;
        let gone = collect_marks(&txn, &keys, 1_000, 2)?;
        txn.commit()?;
        assert_eq!(gone, 2 * mark_bytes("a"));
        assert_eq!(marks(&db, "a")?, vec![(3, 30), (4, 40), (5, 50)]);
        let txn = db.begin_write()?;
        collect_marks(&txn, &keys, 1_000, 100)?;
        txn.commit()?;
        assert_eq!(marks(&db, "a")?, vec![(5, 50)]);
        assert_eq!(marks(&db, "b")?, vec![(2, 20)]);
        assert_eq!(marks(&db, "c")?, vec![(9, 90)]);
        // Younger than the horizon: kept.
        let txn = db.begin_write()?;
        put_mark(&txn, "a", 6, 2_000)?;
        put_mark(&txn, "a", 7, 3_000)?;
        collect_marks(&txn, &keys, 1_500, 100)?;
        txn.commit()?;
        assert_eq!(marks(&db, "a")?, vec![(6, 2_000), (7, 3_000)]);
        // A dropped target loses them all.
        let txn = db.begin_write()?;
        assert_eq!(drop_target(&txn, "a")?, 2 * mark_bytes("a"));
        txn.commit()?;
        assert!(marks(&db, "a")?.is_empty());
        Ok(())
    }
}
