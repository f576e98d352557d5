//! The conservation check: what producers were told against what receivers
//! saw.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::events::SentEvent;
use crate::receiver::DeliveredEvent;

/// What a producer sent and what it was told about each event.
///
/// An event is in exactly one of three states: acknowledged (`accepted` or
/// `duplicate`), rejected (a definite error: it must never be delivered), or
/// in doubt (no answer, a transport error, a 5xx: it may or may not be
/// delivered). Recording a send puts the event in doubt until an answer
/// comes; an acknowledgement is final.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    sent: BTreeMap<String, SentEvent>,
    acked: BTreeSet<String>,
    rejected: BTreeSet<String>,
    in_doubt: BTreeSet<String>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// The event is about to be sent (again); until an answer it is in doubt.
    pub fn record_sent(&mut self, ev: &SentEvent) {
        self.sent.insert(ev.id.clone(), ev.clone());
        if !self.acked.contains(&ev.id) {
            self.rejected.remove(&ev.id);
            self.in_doubt.insert(ev.id.clone());
        }
    }

    /// The node answered `accepted` or `duplicate`.
    pub fn record_acked(&mut self, id: &str) {
        self.in_doubt.remove(id);
        self.rejected.remove(id);
        self.acked.insert(id.to_string());
    }

    /// The node rejected the event for good (it was not stored).
    pub fn record_rejected(&mut self, id: &str) {
        if !self.acked.contains(id) {
            self.in_doubt.remove(id);
            self.rejected.insert(id.to_string());
        }
    }

    /// No definite answer (transport error, timeout, 5xx).
    pub fn record_in_doubt(&mut self, id: &str) {
        if !self.acked.contains(id) {
            self.rejected.remove(id);
            self.in_doubt.insert(id.to_string());
        }
    }

    /// The event sent under this id.
    pub fn sent(&self, id: &str) -> Option<&SentEvent> {
        self.sent.get(id)
    }

    /// Every event sent.
    pub fn all_sent(&self) -> impl Iterator<Item = &SentEvent> {
        self.sent.values()
    }

    /// Acknowledged ids.
    pub fn acked(&self) -> &BTreeSet<String> {
        &self.acked
    }

    /// Rejected ids.
    pub fn rejected(&self) -> &BTreeSet<String> {
        &self.rejected
    }

    /// Ids in doubt.
    pub fn in_doubt(&self) -> &BTreeSet<String> {
        &self.in_doubt
    }
}

/// The outcome of [`check_conservation`].
#[derive(Debug, Default, Clone)]
pub struct ConservationReport {
    /// Acknowledged events.
    pub acked: usize,
    /// Rejected events.
    pub rejected: usize,
    /// Events in doubt.
    pub in_doubt: usize,
    /// Requests carrying a CloudEvent the receivers saw (attempts included).
    pub received: usize,
    /// Distinct ids delivered (answered 2xx).
    pub delivered_unique: usize,
    /// Successful deliveries beyond the first per id (at-least-once repeats).
    pub redelivered: usize,
    /// In-doubt events that were delivered (allowed).
    pub in_doubt_delivered: usize,
    /// (a) Acknowledged but never delivered: a lost event.
    pub lost: Vec<String>,
    /// (b) Delivered but never sent by anyone.
    pub unknown: Vec<String>,
    /// Delivered although the node rejected it.
    pub rejected_delivered: Vec<String>,
    /// (c) Delivered with other data or attributes than were sent: id and why.
    pub corrupted: Vec<(String, String)>,
}

impl ConservationReport {
    /// No loss, nothing unknown, nothing rejected delivered, no corruption.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
            && self.unknown.is_empty()
            && self.rejected_delivered.is_empty()
            && self.corrupted.is_empty()
    }

    /// `Err` with the whole report unless [`is_ok`](Self::is_ok).
    pub fn ensure_ok(&self) -> anyhow::Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            anyhow::bail!("conservation violated:\n{self}")
        }
    }
}

fn sample<T: fmt::Debug>(v: &[T]) -> String {
    let shown: Vec<&T> = v.iter().take(10).collect();
    if v.len() > shown.len() {
        format!("{shown:?} and {} more", v.len() - shown.len())
    } else {
        format!("{shown:?}")
    }
}

impl fmt::Display for ConservationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "acked {}, rejected {}, in doubt {} (of which delivered {}); received {} requests, {} distinct ids delivered, {} redeliveries",
            self.acked,
            self.rejected,
            self.in_doubt,
            self.in_doubt_delivered,
            self.received,
            self.delivered_unique,
            self.redelivered
        )?;
        if !self.lost.is_empty() {
            writeln!(
                f,
                "LOST (acknowledged, never delivered): {} {}",
                self.lost.len(),
                sample(&self.lost)
            )?;
        }
        if !self.unknown.is_empty() {
            writeln!(
                f,
                "UNKNOWN (delivered, never sent): {} {}",
                self.unknown.len(),
                sample(&self.unknown)
            )?;
        }
        if !self.rejected_delivered.is_empty() {
            writeln!(
                f,
                "REJECTED BUT DELIVERED: {} {}",
                self.rejected_delivered.len(),
                sample(&self.rejected_delivered)
            )?;
        }
        if !self.corrupted.is_empty() {
            writeln!(
                f,
                "CORRUPTED: {} {}",
                self.corrupted.len(),
                sample(&self.corrupted)
            )?;
        }
        Ok(())
    }
}

/// Compare a ledger with what receivers saw (every request carrying a
/// CloudEvent; failed attempts count for corruption and unknown ids, only 2xx
/// answers count as deliveries).
pub fn check_conservation(ledger: &Ledger, received: &[DeliveredEvent]) -> ConservationReport {
    let mut report = ConservationReport {
        acked: ledger.acked().len(),
        rejected: ledger.rejected().len(),
        in_doubt: ledger.in_doubt().len(),
        received: received.len(),
        ..ConservationReport::default()
    };
    let mut delivered: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    let mut corrupted = BTreeMap::new();
    for ev in received {
        let Some(sent) = ledger.sent(&ev.id) else {
            unknown.insert(ev.id.clone());
            continue;
        };
        if let Some(why) = difference(sent, ev) {
            corrupted.entry(ev.id.clone()).or_insert(why);
        }
        if ev.succeeded() {
            *delivered.entry(ev.id.as_str()).or_insert(0) += 1;
        }
    }
    report.delivered_unique = delivered.len();
    report.redelivered = delivered.values().map(|n| n - 1).sum();
    report.in_doubt_delivered = ledger
        .in_doubt()
        .iter()
        .filter(|id| delivered.contains_key(id.as_str()))
        .count();
    report.lost = ledger
        .acked()
        .iter()
        .filter(|id| !delivered.contains_key(id.as_str()))
        .cloned()
        .collect();
    report.rejected_delivered = ledger
        .rejected()
        .iter()
        .filter(|id| received.iter().any(|e| &e.id == *id))
        .cloned()
        .collect();
    report.unknown = unknown.into_iter().collect();
    report.corrupted = corrupted.into_iter().collect();
    report
}

/// Why a delivered event is not the one sent, if it is not.
pub fn difference(sent: &SentEvent, got: &DeliveredEvent) -> Option<String> {
    if got.attr("source") != Some(sent.source.as_str()) {
        return Some(format!(
            "source {:?}, sent {:?}",
            got.attr("source"),
            sent.source
        ));
    }
    if got.attr("type") != Some(sent.event_type.as_str()) {
        return Some(format!(
            "type {:?}, sent {:?}",
            got.attr("type"),
            sent.event_type
        ));
    }
    for (k, v) in &sent.extensions {
        if got.attr(k) != Some(v.as_str()) {
            return Some(format!("extension {k} {:?}, sent {v:?}", got.attr(k)));
        }
    }
    if !sent.payload.matches(&got.data) {
        return Some(format!(
            "data differs: sent {} bytes ({}), got {} bytes ({:?}): {:?}",
            sent.payload.bytes().len(),
            sent.payload.content_type(),
            got.data.len(),
            got.content_type,
            String::from_utf8_lossy(&got.data[..got.data.len().min(80)])
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Payload;
    use std::time::Instant;

    fn delivered(ev: &SentEvent, data: Vec<u8>, status: u16) -> DeliveredEvent {
        let mut attributes = BTreeMap::new();
        attributes.insert("id".to_string(), ev.id.clone());
        attributes.insert("source".to_string(), ev.source.clone());
        attributes.insert("type".to_string(), ev.event_type.clone());
        DeliveredEvent {
            id: ev.id.clone(),
            attributes,
            content_type: Some(ev.payload.content_type().into()),
            data,
            structured: false,
            status,
            at: Instant::now(),
            seq: 0,
        }
    }

    #[test]
    fn finds_loss_unknown_and_corruption() {
        let a = SentEvent::new("a", "s", "t", Payload::Text("hello".into()));
        let b = SentEvent::new("b", "s", "t", Payload::Binary(vec![1, 2, 3]));
        let c = SentEvent::new("c", "s", "t", Payload::Json(serde_json::json!({"x": 1})));
        let d = SentEvent::new("d", "s", "t", Payload::Text("in doubt".into()));
        let mut l = Ledger::new();
        for e in [&a, &b, &c, &d] {
            l.record_sent(e);
        }
        l.record_acked("a");
        l.record_acked("b");
        l.record_acked("c");
        let ghost = SentEvent::new("ghost", "s", "t", Payload::Text(String::new()));
        let got = vec![
            delivered(&a, b"hello".to_vec(), 500),
            delivered(&a, b"hello".to_vec(), 200),
            delivered(&a, b"hello".to_vec(), 200),
            delivered(&b, vec![1, 2, 4], 200),
            delivered(&ghost, Vec::new(), 200),
            delivered(&d, b"in doubt".to_vec(), 200),
        ];
        let r = check_conservation(&l, &got);
        assert_eq!(r.lost, vec!["c".to_string()]);
        assert_eq!(r.unknown, vec!["ghost".to_string()]);
        assert_eq!(r.corrupted.len(), 1);
        assert_eq!(r.corrupted[0].0, "b");
        assert_eq!(r.redelivered, 1);
        assert_eq!(r.in_doubt_delivered, 1);
        assert!(!r.is_ok());
        let ok = check_conservation(
            &l,
            &[
                delivered(&a, b"hello".to_vec(), 200),
                delivered(&b, vec![1, 2, 3], 200),
                delivered(&c, br#"{ "x" : 1 }"#.to_vec(), 200),
            ],
        );
        assert!(ok.is_ok(), "{ok}");
    }
}
