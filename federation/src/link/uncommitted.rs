//! Deliveries a receiving leader has proposed but not yet committed, handed
//! to its inbound worker at once ("deliver before commit").
//!
//! A batch on a link is already durable at the sending site: it sits in
//! that site's replicated outbox until this site acknowledges it, and
//! sequence `n` from an origin always names the same delivery. So the
//! receiving leader need not wait for its own log and state to reach the
//! disk before delivering: it proposes the batch, offers it here, and the
//! inbound worker delivers from here when the batch continues exactly where
//! the worker stands. The acknowledgement to the sender still waits for the
//! commit. If the proposal is lost (leader change, crash), the sender sends
//! the batch again and it may be delivered twice — the at-least-once
//! guarantee, never a loss. A disk stall at the receiving site then delays
//! the acknowledgement, not the delivery.
//!
//! Bounded: at most [`EarlyInbox::MAX_BATCHES`] batches and
//! [`EarlyInbox::MAX_BYTES`] bytes per origin; older batches are dropped
//! first, and the worker reads those from the committed inbox as before.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::command::LinkSpec;

/// One proposed batch: deliveries `first_seq ..` from one origin, with the
/// rule definitions they name by hash.
#[derive(Debug)]
pub struct EarlyBatch {
    /// Sequence of the first item.
    pub first_seq: u64,
    /// The deliveries (JSON), in order.
    pub items: Vec<Bytes>,
    /// Rule definitions the items name by hash.
    pub specs: Vec<LinkSpec>,
}

impl EarlyBatch {
    /// Sequence of the last item (`first_seq - 1` when empty).
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.items.len() as u64).saturating_sub(1)
    }

    fn bytes(&self) -> usize {
        self.items.iter().map(Bytes::len).sum::<usize>()
            + self
                .specs
                .iter()
                .map(|s| s.hash.len() + s.spec.get().len())
                .sum::<usize>()
    }

    /// The rule definition named `hash`, if this batch carries it.
    pub fn spec(&self, hash: &str) -> Option<&LinkSpec> {
        self.specs.iter().find(|s| s.hash == hash)
    }
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Arc<EarlyBatch>>,
    bytes: usize,
}

/// Proposed-but-uncommitted batches per origin (see the module docs).
pub struct EarlyInbox {
    queues: Mutex<HashMap<String, Queue>>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for EarlyInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.lock();
        let mut d = f.debug_map();
        for (origin, q) in m.iter() {
            d.entry(origin, &(q.batches.len(), q.bytes));
        }
        d.finish()
    }
}

impl Default for EarlyInbox {
    fn default() -> Self {
        EarlyInbox {
            queues: Mutex::new(HashMap::new()),
            version: watch::channel(0).0,
        }
    }
}

impl EarlyInbox {
    /// Most batches kept per origin.
    pub const MAX_BATCHES: usize = 128;
    /// Most bytes kept per origin.
    pub const MAX_BYTES: usize = 32 << 20;

    /// An empty inbox.
    pub fn new() -> Arc<EarlyInbox> {
        Arc::new(EarlyInbox::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Offer a batch that was just proposed. Batches of one origin are
    /// offered in sequence order (the receiving lane proposes them so).
    pub fn offer(&self, origin: &str, batch: EarlyBatch) {
        if batch.items.is_empty() {
            return;
        }
        {
            let mut m = self.lock();
            let q = m.entry(origin.to_string()).or_default();
            q.bytes += batch.bytes();
            q.batches.push_back(Arc::new(batch));
            while q.batches.len() > Self::MAX_BATCHES
                || (q.bytes > Self::MAX_BYTES && q.batches.len() > 1)
            {
                if let Some(old) = q.batches.pop_front() {
                    q.bytes -= old.bytes();
                }
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// The batch holding sequence `next` from `origin`, if one was offered;
    /// batches wholly before `next` are forgotten.
    pub fn take_from(&self, origin: &str, next: u64) -> Option<Arc<EarlyBatch>> {
        let mut m = self.lock();
        let q = m.get_mut(origin)?;
        while let Some(b) = q.batches.front() {
            if b.last_seq() < next {
                let bytes = b.bytes();
                q.batches.pop_front();
                q.bytes -= bytes;
            } else {
                break;
            }
        }
        q.batches
            .iter()
            .find(|b| b.first_seq <= next && next <= b.last_seq())
            .cloned()
    }

    /// Forget everything from `origin` (this node stopped leading, or a
    /// proposal failed: later batches are sent again).
    pub fn clear(&self, origin: &str) {
        self.lock().remove(origin);
    }

    /// Forget everything.
    pub fn clear_all(&self) {
        self.lock().clear();
    }

    /// Changes whenever a batch is offered.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, n: usize) -> EarlyBatch {
        EarlyBatch {
            first_seq: first,
            items: (0..n)
                .map(|i| Bytes::from(format!("{{\"i\":{}}}", first + i as u64)))
                .collect(),
            specs: Vec::new(),
        }
    }

    #[test]
    fn takes_the_batch_holding_the_next_sequence_and_forgets_older_ones() {
        let e = EarlyInbox::default();
        assert!(e.take_from("idc", 1).is_none());
        e.offer("idc", batch(1, 10));
        e.offer("idc", batch(11, 5));
        assert_eq!(e.take_from("idc", 1).map(|b| b.first_seq), Some(1));
        assert_eq!(e.take_from("idc", 7).map(|b| b.first_seq), Some(1));
        assert_eq!(e.take_from("idc", 11).map(|b| b.first_seq), Some(11));
        // The first batch is gone once the worker is past it.
        assert!(e.take_from("idc", 5).is_none());
        assert!(e.take_from("idc", 16).is_none());
        assert!(e.take_from("aws", 1).is_none());
    }

    #[test]
    fn a_gap_is_never_bridged() {
        let e = EarlyInbox::default();
        e.offer("idc", batch(20, 5));
        // The worker stands at 12: 12..19 must come from the committed
        // inbox, not be skipped.
        assert!(e.take_from("idc", 12).is_none());
        assert_eq!(e.take_from("idc", 20).map(|b| b.first_seq), Some(20));
    }

    #[test]
    fn bounded_per_origin_and_clearable() {
        let e = EarlyInbox::default();
        for k in 0..(EarlyInbox::MAX_BATCHES as u64 + 10) {
            e.offer("idc", batch(1 + k * 2, 2));
        }
        // The oldest ten are dropped.
        assert!(e.take_from("idc", 1).is_none());
        assert!(e.take_from("idc", 21).is_some());
        let big = EarlyBatch {
            first_seq: 1,
            items: vec![Bytes::from(vec![b'x'; EarlyInbox::MAX_BYTES / 2 + 1])],
            specs: Vec::new(),
        };
        e.offer("aws", big);
        let big2 = EarlyBatch {
            first_seq: 2,
            items: vec![Bytes::from(vec![b'x'; EarlyInbox::MAX_BYTES / 2 + 1])],
            specs: Vec::new(),
        };
        e.offer("aws", big2);
        assert!(e.take_from("aws", 1).is_none());
        assert!(e.take_from("aws", 2).is_some());
        e.clear("idc");
        assert!(e.take_from("idc", 300).is_none());
        e.clear_all();
        assert!(e.take_from("aws", 2).is_none());
    }

    #[tokio::test]
    async fn offering_wakes_subscribers() {
        let e = EarlyInbox::default();
        let mut rx = e.subscribe();
        rx.borrow_and_update();
        e.offer("idc", batch(1, 1));
        assert!(rx.has_changed().unwrap_or(false));
    }
}
