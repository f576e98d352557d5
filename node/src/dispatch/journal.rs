//! The delivery journal on the leader: entries written by the target
//! workers ([`JournalBuffer::record`]) wait here until the checkpointer
//! replicates them with the next [`strait_federation::Command::Checkpoint`]
//! (see `strait_federation::journal` for what is written and when).
//!
//! An entry is keyed by its event, rule, target and origin, so the attempts
//! of one delivery update one entry in place. The buffer is bounded: past
//! [`JournalBuffer::capacity`] the oldest entry is dropped (counted in
//! `strait_journal_dropped_total`), so a target failing for every event
//! cannot grow the leader's memory while checkpoints cannot be written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use strait_federation::journal::JournalEntry;

/// Entries the leader holds at most between two checkpoints.
pub const JOURNAL_BUFFER_ENTRIES: usize = 100_000;

/// What identifies one delivery in the journal.
type Key = (String, String, String, u64, String, String, Option<String>);

fn key_of(e: &JournalEntry) -> Key {
    (
        e.bus.clone(),
        e.source.clone(),
        e.id.clone(),
        e.ingest_ms,
        e.rule.clone(),
        e.target.clone(),
        e.origin.clone(),
    )
}

/// The counters key of deliveries made here for the site `origin` to
/// `target` of its rule `bus/rule` (the inbox-side target key; this
/// site's own targets count under their cursor key,
/// [`strait_federation::store::state::target_key`]).
pub fn inbound_target_key(origin: &str, bus: &str, rule: &str, target: &str) -> String {
    format!(
        "{}/{bus}/{rule}/{target}",
        strait_federation::store::links::inbox_cursor_key(origin)
    )
}

#[derive(Default)]
struct Inner {
    /// Entries by delivery, with their place in `order`.
    entries: HashMap<Key, (u64, JournalEntry)>,
    /// Keys in the order they were first recorded (oldest first).
    order: BTreeMap<u64, Key>,
    next: u64,
}

/// Journal entries waiting for the next checkpoint (see the module docs).
pub struct JournalBuffer {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl JournalBuffer {
    /// An empty buffer holding at most `capacity` entries.
    pub fn new(capacity: usize) -> JournalBuffer {
        JournalBuffer {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Record the current state of one delivery (replacing what was
    /// recorded for it and not yet replicated).
    pub fn record(&self, entry: JournalEntry) {
        let key = key_of(&entry);
        let mut g = self.lock();
        if let Some(slot) = g.entries.get_mut(&key) {
            slot.1 = entry;
            return;
        }
        let mut dropped = 0u64;
        while g.entries.len() >= self.capacity {
            let Some((_, oldest)) = g.order.pop_first() else {
                break;
            };
            g.entries.remove(&oldest);
            dropped += 1;
        }
        if dropped > 0 {
            metrics::counter!("strait_journal_dropped_total").increment(dropped);
        }
        let n = g.next;
        g.next += 1;
        g.order.insert(n, key.clone());
        g.entries.insert(key, (n, entry));
    }

    /// Take every entry, oldest first.
    pub fn drain(&self) -> Vec<JournalEntry> {
        let mut g = self.lock();
        let order = std::mem::take(&mut g.order);
        let mut entries = std::mem::take(&mut g.entries);
        order
            .into_values()
            .filter_map(|k| entries.remove(&k).map(|(_, e)| e))
            .collect()
    }

    /// Put back entries a checkpoint could not write, unless a newer
    /// state of the same delivery was recorded meanwhile; over the
    /// capacity, the oldest go.
    pub fn restore(&self, entries: Vec<JournalEntry>) {
        for e in entries {
            let present = self.lock().entries.contains_key(&key_of(&e));
            if !present {
                self.record(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::journal::{Attempt, AttemptOutcome, DeliveryStatus};

    fn entry(id: &str, status: DeliveryStatus) -> JournalEntry {
        JournalEntry {
            bus: "b".into(),
            source: "/s".into(),
            id: id.into(),
            ingest_ms: 1,
            rule: "r".into(),
            target: "t".into(),
            origin: None,
            status,
            attempts: vec![Attempt {
                time_ms: 2,
                outcome: AttemptOutcome::Failed,
                http_status: Some(503),
                error: None,
            }],
            omitted_attempts: 0,
            reason: None,
        }
    }

    #[test]
    fn a_delivery_updates_in_place_and_the_oldest_go_first() {
        let b = JournalBuffer::new(2);
        b.record(entry("1", DeliveryStatus::Retrying));
        b.record(entry("2", DeliveryStatus::Retrying));
        b.record(entry("1", DeliveryStatus::Delivered));
        assert_eq!(b.lock().entries.len(), 2, "updated in place");
        b.record(entry("3", DeliveryStatus::Retrying));
        let got: Vec<(String, DeliveryStatus)> =
            b.drain().into_iter().map(|e| (e.id, e.status)).collect();
        assert_eq!(
            got,
            vec![
                ("2".to_string(), DeliveryStatus::Retrying),
                ("3".to_string(), DeliveryStatus::Retrying)
            ],
            "1 was the oldest"
        );
        assert!(b.drain().is_empty());
    }

    #[test]
    fn restored_entries_do_not_replace_newer_ones() {
        let b = JournalBuffer::new(10);
        b.record(entry("1", DeliveryStatus::Retrying));
        b.record(entry("2", DeliveryStatus::Retrying));
        let failed = b.drain();
        b.record(entry("1", DeliveryStatus::Delivered));
        b.restore(failed);
        let mut got: Vec<(String, DeliveryStatus)> =
            b.drain().into_iter().map(|e| (e.id, e.status)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("1".to_string(), DeliveryStatus::Delivered),
                ("2".to_string(), DeliveryStatus::Retrying)
            ]
        );
    }

    #[test]
    fn inbound_keys_name_the_origin_and_the_target() {
        assert_eq!(
            inbound_target_key("idc", "b", "r", "t"),
            "link-in/idc/b/r/t"
        );
    }
}
