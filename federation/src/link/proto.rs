//! The site-to-site link protocol, free of I/O and clocks (time is passed
//! in), in the manner of `quinn-proto`.
//!
//! A sending site numbers the deliveries it owes one remote site
//! `1, 2, 3, ...` in its replicated outbox. The link carries them in
//! **batches** `(origin, first_seq, items)`; the receiving site commits a
//! batch into its own replicated log and answers with a cumulative
//! acknowledgement `upto` (every sequence `<= upto` is committed there). The
//! receiver only ever commits the next sequence it expects, so deliveries
//! arrive in order and exactly once per origin sequence, whatever the
//! network does (loss, reordering, duplication, reconnects):
//!
//! - [`Sender`] decides what to send next within a window of unacknowledged
//!   batches, and rewinds to the first unacknowledged sequence on a
//!   disconnect, a timeout or a gap reported by the receiver;
//! - [`Receiver`] decides, for an arriving batch, which part is new, which
//!   part is a repeat, and whether it leaves a gap (then it is refused with
//!   the sequence expected, and the sender rewinds);
//! - [`encode_batch`] / [`decode_batch`] are the wire format of a batch;
//!   decoding never panics on any input.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A batch of deliveries on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The sending site.
    pub origin: String,
    /// Sequence of the first item; item `i` has `first_seq + i`.
    pub first_seq: u64,
    /// The deliveries (opaque here).
    pub items: Vec<Bytes>,
    /// Rule definitions the items refer to by hash (see [`spec_hash`]):
    /// `(hash, definition)`, each definition once per batch instead of in
    /// every delivery.
    pub specs: Vec<(Bytes, Bytes)>,
}

impl Batch {
    /// Sequence of the last item (`first_seq - 1` when empty).
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.items.len() as u64).saturating_sub(1)
    }
}

/// Why a batch could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body ended early.
    #[error("link batch truncated: {0}")]
    Truncated(&'static str),
    /// A field is out of range.
    #[error("link batch invalid: {0}")]
    Invalid(String),
}

/// Batches without rule definitions.
const VERSION_PLAIN: u8 = 1;
/// Batches followed by a rule-definition section.
const VERSION_SPECS: u8 = 2;
/// Longest rule-definition hash on the wire.
pub const MAX_HASH: usize = 64;

/// The hash a delivery names its rule definition by: FNV-1a 64 of the
/// definition's bytes, 16 lowercase hex digits. Equal definitions (as
/// encoded by the origin) have equal hashes.
pub fn spec_hash(spec: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in spec {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The JSON prefix of a delivery that names its rule definition by hash:
/// `{"ruleHash":"<16 hex digits>",...`.
const HASH_PREFIX: &[u8] = b"{\"ruleHash\":\"";

/// The rule-definition hash of a delivery, read from its first member
/// without parsing the rest (`None` when it does not start with one).
pub fn item_spec_hash(item: &[u8]) -> Option<&str> {
    let rest = item.strip_prefix(HASH_PREFIX)?;
    let hash = rest.get(..16)?;
    if rest.get(16) != Some(&b'"') || !hash.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    std::str::from_utf8(hash).ok()
}
/// Longest origin site name on the wire.
pub const MAX_ORIGIN: usize = 255;
/// Most items in one batch on the wire.
pub const MAX_ITEMS: usize = 1 << 20;

/// Encode a batch: `version u8, origin_len u8, origin, first_seq u64 BE,
/// count u32 BE, then per item len u32 BE + bytes`; version 2 (when the
/// batch has rule definitions) then has `spec_count u32 BE` and per
/// definition `hash_len u8, hash, len u32 BE, bytes`.
pub fn encode_batch(b: &Batch) -> Result<Bytes, BatchError> {
    if b.origin.len() > MAX_ORIGIN {
        return Err(BatchError::Invalid(format!(
            "origin site name of {} bytes (at most {MAX_ORIGIN})",
            b.origin.len()
        )));
    }
    if b.items.len() > MAX_ITEMS {
        return Err(BatchError::Invalid(format!(
            "{} items (at most {MAX_ITEMS})",
            b.items.len()
        )));
    }
    if b.specs.len() > MAX_ITEMS {
        return Err(BatchError::Invalid(format!(
            "{} rule definitions (at most {MAX_ITEMS})",
            b.specs.len()
        )));
    }
    let size: usize = b.items.iter().map(|i| 4 + i.len()).sum::<usize>()
        + b.specs
            .iter()
            .map(|(h, d)| 5 + h.len() + d.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(2 + b.origin.len() + 16 + size);
    out.put_u8(if b.specs.is_empty() {
        VERSION_PLAIN
    } else {
        VERSION_SPECS
    });
    out.put_u8(b.origin.len() as u8);
    out.put_slice(b.origin.as_bytes());
    out.put_u64(b.first_seq);
    out.put_u32(b.items.len() as u32);
    for item in &b.items {
        let len = u32::try_from(item.len())
            .map_err(|_| BatchError::Invalid(format!("an item of {} bytes", item.len())))?;
        out.put_u32(len);
        out.put_slice(item);
    }
    if !b.specs.is_empty() {
        out.put_u32(b.specs.len() as u32);
        for (hash, spec) in &b.specs {
            if hash.len() > MAX_HASH {
                return Err(BatchError::Invalid(format!(
                    "a rule definition hash of {} bytes (at most {MAX_HASH})",
                    hash.len()
                )));
            }
            let len = u32::try_from(spec.len()).map_err(|_| {
                BatchError::Invalid(format!("a rule definition of {} bytes", spec.len()))
            })?;
            out.put_u8(hash.len() as u8);
            out.put_slice(hash);
            out.put_u32(len);
            out.put_slice(spec);
        }
    }
    Ok(out.freeze())
}

/// Decode a batch produced by [`encode_batch`].
pub fn decode_batch(mut body: Bytes) -> Result<Batch, BatchError> {
    if body.remaining() < 2 {
        return Err(BatchError::Truncated("header"));
    }
    let version = body.get_u8();
    if version != VERSION_PLAIN && version != VERSION_SPECS {
        return Err(BatchError::Invalid(format!("unknown version {version}")));
    }
    let olen = body.get_u8() as usize;
    if body.remaining() < olen + 12 {
        return Err(BatchError::Truncated("origin and sequence"));
    }
    let origin = String::from_utf8(body.split_to(olen).to_vec())
        .map_err(|_| BatchError::Invalid("origin is not UTF-8".into()))?;
    let first_seq = body.get_u64();
    if first_seq == 0 {
        return Err(BatchError::Invalid("sequences start at 1".into()));
    }
    let count = body.get_u32() as usize;
    if count > MAX_ITEMS || count > body.remaining() / 4 {
        return Err(BatchError::Invalid(format!(
            "{count} items announced in {} bytes",
            body.remaining()
        )));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        if body.remaining() < 4 {
            return Err(BatchError::Truncated("item length"));
        }
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err(BatchError::Truncated("item"));
        }
        items.push(body.split_to(len));
    }
    let mut specs = Vec::new();
    if version == VERSION_SPECS {
        if body.remaining() < 4 {
            return Err(BatchError::Truncated("rule definition count"));
        }
        let n = body.get_u32() as usize;
        if n == 0 {
            // Canonical form: a batch without definitions is version 1.
            return Err(BatchError::Invalid(
                "version 2 batch without rule definitions".into(),
            ));
        }
        if n > MAX_ITEMS || n > body.remaining() / 5 {
            return Err(BatchError::Invalid(format!(
                "{n} rule definitions announced in {} bytes",
                body.remaining()
            )));
        }
        specs.reserve(n);
        for _ in 0..n {
            if body.remaining() < 1 {
                return Err(BatchError::Truncated("rule definition hash length"));
            }
            let hlen = body.get_u8() as usize;
            if hlen > MAX_HASH {
                return Err(BatchError::Invalid(format!(
                    "a rule definition hash of {hlen} bytes (at most {MAX_HASH})"
                )));
            }
            if body.remaining() < hlen + 4 {
                return Err(BatchError::Truncated("rule definition hash"));
            }
            let hash = body.split_to(hlen);
            let len = body.get_u32() as usize;
            if body.remaining() < len {
                return Err(BatchError::Truncated("rule definition"));
            }
            specs.push((hash, body.split_to(len)));
        }
    }
    if body.has_remaining() {
        return Err(BatchError::Invalid(format!(
            "{} bytes after the last item",
            body.remaining()
        )));
    }
    if first_seq.checked_add(count as u64).is_none() {
        return Err(BatchError::Invalid("sequence overflow".into()));
    }
    Ok(Batch {
        origin,
        first_seq,
        items,
        specs,
    })
}

/// Settings of a [`Sender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Most deliveries per batch.
    pub max_batch_items: usize,
    /// Most unacknowledged batches at once.
    pub window: usize,
    /// Most unacknowledged bytes at once (a batch is always allowed when
    /// nothing is in flight, whatever its size).
    pub window_bytes: usize,
    /// Resend everything unacknowledged when the oldest batch waited this long.
    pub retransmit_after: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            max_batch_items: 2048,
            window: 64,
            window_bytes: 16 << 20,
            retransmit_after: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    last: u64,
    bytes: usize,
    sent_at: Instant,
}

/// The sending side of one link (one remote site).
#[derive(Debug, Clone)]
pub struct Sender {
    cfg: SenderConfig,
    acked: u64,
    next: u64,
    available: u64,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    rewinds: u64,
}

/// What the sender wants sent next: sequences `first..=first + max - 1`
/// (fewer if the outbox has fewer, or a byte limit applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// First sequence.
    pub first: u64,
    /// At most this many items.
    pub max_items: usize,
}

impl Sender {
    /// A sender whose remote has acknowledged everything up to `acked`.
    pub fn new(cfg: SenderConfig, acked: u64) -> Sender {
        Sender {
            cfg,
            acked,
            next: acked + 1,
            available: acked,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            rewinds: 0,
        }
    }

    /// The outbox now holds sequences up to `last`.
    pub fn outbox_extended(&mut self, last: u64) {
        self.available = self.available.max(last);
    }

    /// Everything up to here is acknowledged by the remote site.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Deliveries in the outbox not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.available.saturating_sub(self.acked)
    }

    /// Times the sender went back to resend.
    pub fn rewinds(&self) -> u64 {
        self.rewinds
    }

    /// Unacknowledged batches on the wire.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next batch to send, if the window and the outbox allow one.
    pub fn want(&self) -> Option<Want> {
        if self.in_flight.len() >= self.cfg.window
            || (!self.in_flight.is_empty() && self.in_flight_bytes >= self.cfg.window_bytes)
            || self.next > self.available
        {
            return None;
        }
        let left = (self.available - self.next + 1).min(self.cfg.max_batch_items as u64);
        Some(Want {
            first: self.next,
            max_items: left as usize,
        })
    }

    /// Unacknowledged bytes on the wire.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// A batch `first..=last` of `bytes` went out at `now` (`first` must be
    /// what [`Sender::want`] said; anything else is ignored).
    pub fn sent(&mut self, first: u64, last: u64, bytes: usize, now: Instant) {
        if first != self.next || last < first || last > self.available {
            return;
        }
        self.in_flight.push_back(InFlight {
            last,
            bytes,
            sent_at: now,
        });
        self.in_flight_bytes += bytes;
        self.next = last + 1;
    }

    /// The remote site committed everything up to `upto`.
    pub fn on_ack(&mut self, upto: u64) {
        if upto <= self.acked {
            return;
        }
        let upto = upto.min(self.available.max(self.next.saturating_sub(1)));
        self.acked = upto;
        while let Some(f) = self.in_flight.front().copied() {
            if f.last > upto {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(f.bytes);
        }
        if self.next <= upto {
            self.next = upto + 1;
        }
    }

    /// The remote site refused a batch because it expects `expected` next:
    /// it holds everything before it; resend from there.
    pub fn on_gap(&mut self, expected: u64) {
        self.on_ack(expected.saturating_sub(1));
        self.rewind();
    }

    /// The connection dropped: what was in flight may be lost; resend from
    /// the first unacknowledged sequence.
    pub fn on_disconnect(&mut self) {
        self.rewind();
    }

    /// Rewind if the oldest unacknowledged batch has waited too long;
    /// returns whether it did.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        let stale = self
            .in_flight
            .front()
            .is_some_and(|f| now.saturating_duration_since(f.sent_at) >= self.cfg.retransmit_after);
        if stale {
            self.rewind();
        }
        stale
    }

    fn rewind(&mut self) {
        if !self.in_flight.is_empty() || self.next != self.acked + 1 {
            self.rewinds += 1;
        }
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.next = self.acked + 1;
    }
}

/// What to do with an arriving batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Items from index `skip` on are new and start at the next expected
    /// sequence: commit them, then acknowledge the batch's last sequence.
    Fresh {
        /// Items already committed at the head of the batch.
        skip: usize,
    },
    /// Everything in it is committed already: acknowledge `upto` again.
    Repeat {
        /// What to acknowledge.
        upto: u64,
    },
    /// It starts after a sequence not yet received: refuse, asking for `expected`.
    Gap {
        /// The next sequence this side needs.
        expected: u64,
    },
}

/// The receiving side of one link (one origin site): the highest sequence
/// committed, contiguous from 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receiver {
    committed: u64,
}

impl Receiver {
    /// A receiver that has committed everything up to `committed`.
    pub fn new(committed: u64) -> Receiver {
        Receiver { committed }
    }

    /// Highest sequence committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Classify a batch of `count` items starting at `first`.
    pub fn admit(&self, first: u64, count: usize) -> Admit {
        let last = (first + count as u64).saturating_sub(1);
        if count == 0 || last <= self.committed {
            return Admit::Repeat {
                upto: self.committed,
            };
        }
        if first > self.committed + 1 {
            return Admit::Gap {
                expected: self.committed + 1,
            };
        }
        Admit::Fresh {
            skip: (self.committed + 1 - first) as usize,
        }
    }

    /// Sequences up to `upto` are committed.
    pub fn on_committed(&mut self, upto: u64) {
        self.committed = self.committed.max(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, n: usize) -> Batch {
        Batch {
            origin: "idc".into(),
            first_seq: first,
            items: (0..n)
                .map(|i| Bytes::from(format!("d{}", first + i as u64)))
                .collect(),
            specs: Vec::new(),
        }
    }

    #[test]
    fn batches_with_rule_definitions_round_trip() {
        let b = Batch {
            specs: vec![
                (Bytes::from("0123456789abcdef"), Bytes::from("{\"a\":1}")),
                (Bytes::from("fedcba9876543210"), Bytes::new()),
            ],
            ..batch(3, 2)
        };
        let enc = encode_batch(&b).expect("encode");
        assert_eq!(enc[0], VERSION_SPECS);
        assert_eq!(decode_batch(enc.clone()).expect("decode"), b);
        for cut in 0..enc.len() {
            assert!(decode_batch(enc.slice(..cut)).is_err(), "cut at {cut}");
        }
        let long_hash = Batch {
            specs: vec![(Bytes::from("h".repeat(MAX_HASH + 1)), Bytes::new())],
            ..batch(1, 1)
        };
        assert!(encode_batch(&long_hash).is_err());
        // Without definitions the first version is kept.
        assert_eq!(
            encode_batch(&batch(1, 1)).expect("encode")[0],
            VERSION_PLAIN
        );
    }

    #[test]
    fn deliveries_name_their_rule_definition_by_a_leading_hash() {
        let h = spec_hash(br#"{"pattern":{}}"#);
        assert_eq!(h.len(), 16);
        assert_eq!(h, spec_hash(br#"{"pattern":{}}"#));
        assert_ne!(h, spec_hash(br#"{"pattern":{"a":1}}"#));
        let item = format!(r#"{{"ruleHash":"{h}","bus":"b"}}"#);
        assert_eq!(item_spec_hash(item.as_bytes()), Some(h.as_str()));
        for bad in [
            r#"{"bus":"b","ruleHash":"0123456789abcdef"}"#,
            r#"{"ruleHash":"0123456789abcde"}"#,
            r#"{"ruleHash":"0123456789abcdeg","bus":"b"}"#,
            r#"{"ruleHash":"0123456789abcdef0"}"#,
            "",
        ] {
            assert_eq!(item_spec_hash(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let b = batch(7, 3);
        let enc = encode_batch(&b).expect("encode");
        assert_eq!(decode_batch(enc.clone()).expect("decode"), b);
        assert_eq!(b.last_seq(), 9);
        for cut in 0..enc.len() {
            assert!(decode_batch(enc.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut extra = BytesMut::from(&enc[..]);
        extra.put_u8(0);
        assert!(decode_batch(extra.freeze()).is_err());
        let zero = encode_batch(&batch(0, 1)).expect("encode");
        assert!(decode_batch(zero).is_err());
        let long = Batch {
            origin: "x".repeat(300),
            ..batch(1, 0)
        };
        assert!(encode_batch(&long).is_err());
    }

    #[test]
    fn receiver_commits_in_order_and_refuses_gaps() {
        let mut r = Receiver::new(10);
        assert_eq!(r.admit(5, 3), Admit::Repeat { upto: 10 });
        assert_eq!(r.admit(13, 2), Admit::Gap { expected: 11 });
        assert_eq!(r.admit(9, 4), Admit::Fresh { skip: 2 });
        assert_eq!(r.admit(11, 1), Admit::Fresh { skip: 0 });
        r.on_committed(12);
        assert_eq!(r.committed(), 12);
        r.on_committed(3);
        assert_eq!(r.committed(), 12);
        assert_eq!(r.admit(13, 0), Admit::Repeat { upto: 12 });
    }

    #[test]
    fn sender_windows_acks_and_rewinds() {
        let cfg = SenderConfig {
            max_batch_items: 10,
            window: 2,
            window_bytes: 1 << 20,
            retransmit_after: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let mut s = Sender::new(cfg, 0);
        assert_eq!(s.want(), None);
        s.outbox_extended(25);
        assert_eq!(s.backlog(), 25);
        assert_eq!(
            s.want(),
            Some(Want {
                first: 1,
                max_items: 10
            })
        );
        s.sent(1, 10, 100, t0);
        s.sent(11, 20, 100, t0);
        assert_eq!(s.want(), None, "window full");
        s.on_ack(10);
        assert_eq!(s.in_flight(), 1);
        assert_eq!(
            s.want(),
            Some(Want {
                first: 21,
                max_items: 5
            })
        );
        // The second batch is lost: a timeout resends from 11.
        assert!(!s.on_tick(t0 + Duration::from_millis(500)));
        assert!(s.on_tick(t0 + Duration::from_secs(2)));
        assert_eq!(s.want().map(|w| w.first), Some(11));
        // A gap report moves the ack forward and rewinds.
        s.sent(11, 20, 100, t0);
        s.on_gap(16);
        assert_eq!(s.acked(), 15);
        assert_eq!(s.want().map(|w| w.first), Some(16));
        s.on_disconnect();
        assert_eq!(s.want().map(|w| w.first), Some(16));
        assert!(s.rewinds() >= 2);
        // A stale ack changes nothing.
        s.on_ack(3);
        assert_eq!(s.acked(), 15);
    }

    #[test]
    fn sender_bounds_the_bytes_in_flight() {
        let cfg = SenderConfig {
            max_batch_items: 10,
            window: 100,
            window_bytes: 1000,
            retransmit_after: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let mut s = Sender::new(cfg, 0);
        s.outbox_extended(100);
        // One batch larger than the byte window still goes when nothing is
        // in flight.
        s.sent(1, 10, 5000, t0);
        assert_eq!(s.want(), None, "byte window full");
        s.on_ack(10);
        assert_eq!(s.in_flight_bytes(), 0);
        s.sent(11, 20, 600, t0);
        assert_eq!(s.want().map(|w| w.first), Some(21));
        s.sent(21, 30, 600, t0);
        assert_eq!(s.in_flight_bytes(), 1200);
        assert_eq!(s.want(), None);
        s.on_disconnect();
        assert_eq!(s.in_flight_bytes(), 0);
        assert_eq!(s.want().map(|w| w.first), Some(11));
    }
}
