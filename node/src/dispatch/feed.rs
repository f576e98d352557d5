//! The bus feed: reads each committed event of a bus once, parses it once
//! and matches it once against every rule of the bus with the compiled
//! [`RuleSet`], keeping a bounded window of results in memory.
//!
//! Target workers take their events from the window, so a bus with many
//! rules costs one parse and one compiled match per event instead of one per
//! target. The feed never waits for a worker: when the window is full the
//! oldest results are dropped, and a worker that has fallen behind the
//! window reads storage and matches its own pattern until it catches up. A
//! slow target therefore still holds up nobody.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use opentelemetry::trace::SpanKind;
use serde_json::Value;
use strait_federation::{SiteState, StoredEvent};
use strait_routing::Event;
#[cfg(doc)]
use strait_routing::json::JsonError;
use strait_routing::json::{parse_event_json, unroutable_envelope};
use strait_routing::pattern::RuleSet;
use tokio::sync::watch;

use crate::telemetry::EventSpan;
use crate::trace::TraceParent;

/// Results kept per bus.
const WINDOW: usize = 8192;
/// Events read from storage per step.
const READ_BATCH: usize = 512;

/// One event as the feed saw it.
#[derive(Debug)]
pub struct FeedItem {
    /// Sequence number.
    pub seq: u64,
    /// Ingestion time, ms since the epoch.
    pub ingest_ms: u64,
    /// The event (JSON structured form), or why routing cannot read it.
    pub value: Result<Value, Arc<Unroutable>>,
    /// Names of the enabled rules it matched.
    pub rules: Vec<String>,
    /// Version of the rule set it was matched with.
    pub version: u64,
}

/// A stored event routing cannot read (see docs/operations.md, "Unroutable
/// events"): it matches nothing, so every target of the bus's enabled
/// rules dead-letters it rather than skipping it.
#[derive(Debug)]
pub struct Unroutable {
    /// Why (a [`JsonError`], or why it is not a valid CloudEvent).
    pub why: String,
    /// What the dead letters carry: the stored text and the attributes
    /// that still parse.
    pub envelope: Event,
}

impl Unroutable {
    /// Read the stored event `json` (sequence `seq` of `bus`) the way routing
    /// does; when it cannot be read, say why and build its dead-letter form.
    pub fn check(bus: &str, seq: u64, json: &[u8]) -> Result<Value, Unroutable> {
        parse_event_json(json).map_err(|error| Unroutable::new(bus, seq, json, error))
    }

    /// The stored event `json` cannot be routed, because `why`.
    pub fn new(bus: &str, seq: u64, json: &[u8], why: impl ToString) -> Unroutable {
        let envelope = unroutable_envelope(
            json,
            &format!("unroutable-{seq}"),
            &format!("/strait/buses/{bus}"),
        );
        Unroutable {
            why: why.to_string(),
            envelope,
        }
    }

    /// The dead-letter reason.
    pub fn reason(&self) -> String {
        format!("unroutable: {}", self.why)
    }

    /// Count and log it (ERROR, with the sequence, id and reason).
    pub fn report(&self, bus: &str, seq: u64) {
        metrics::counter!("strait_events_unroutable_total", "bus" => bus.to_string()).increment(1);
        tracing::error!(
            bus,
            seq,
            event_id = self.envelope.id(),
            reason = %self.why,
            "stored event cannot be routed: dead-lettered by every target of the enabled rules instead"
        );
    }
}

/// What a worker gets when it asks the feed for events from a position.
pub enum FeedRead {
    /// The position is older than the window: read storage instead.
    Behind,
    /// Results from the position on (empty: nothing new yet).
    Items(Vec<Arc<FeedItem>>),
}

struct Window {
    /// Every event of the bus with `start <= seq < tail` is in `items`.
    start: u64,
    tail: u64,
    items: VecDeque<Arc<FeedItem>>,
}

/// The feed of one bus.
pub struct BusFeed {
    window: Mutex<Window>,
    progress: watch::Sender<u64>,
    rules: RwLock<(u64, Arc<RuleSet<String>>)>,
}

impl BusFeed {
    /// A feed starting at `start`, matching with `rules` (version `version`).
    pub fn new(start: u64, version: u64, rules: RuleSet<String>) -> Arc<BusFeed> {
        Arc::new(BusFeed {
            window: Mutex::new(Window {
                start,
                tail: start,
                items: VecDeque::new(),
            }),
            progress: watch::Sender::new(start),
            rules: RwLock::new((version, Arc::new(rules))),
        })
    }

    /// Swap in a new rule set (events read from now on are matched with it).
    pub fn set_rules(&self, version: u64, rules: RuleSet<String>) {
        let mut g = match self.rules.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = (version, Arc::new(rules));
    }

    fn current_rules(&self) -> (u64, Arc<RuleSet<String>>) {
        let g = match self.rules.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        (g.0, g.1.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        match self.window.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Bumped whenever the feed has read further.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Up to `max` results with `seq >= from`.
    pub fn take(&self, from: u64, max: usize) -> FeedRead {
        let w = self.lock();
        if from < w.start {
            return FeedRead::Behind;
        }
        let first = w.items.partition_point(|i| i.seq < from);
        FeedRead::Items(w.items.iter().skip(first).take(max).cloned().collect())
    }

    fn push(&self, items: Vec<Arc<FeedItem>>, tail: u64) {
        let mut w = self.lock();
        w.items.extend(items);
        while w.items.len() > WINDOW {
            if let Some(old) = w.items.pop_front() {
                w.start = old.seq + 1;
            }
        }
        w.tail = tail;
        drop(w);
        self.progress.send_replace(tail);
    }

    fn tail(&self) -> u64 {
        self.lock().tail
    }
}

/// Read, parse and match the bus's events for as long as the feed lives.
pub async fn run(state: Arc<SiteState>, bus: String, feed: Arc<BusFeed>) {
    let unmatched = metrics::counter!("strait_events_unmatched_total", "bus" => bus.clone());
    let mut head_rx = state.subscribe_head();
    loop {
        head_rx.borrow_and_update();
        let from = feed.tail();
        let events: Vec<StoredEvent> = match state.read_events(&bus, from, READ_BATCH) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(bus, error = %e, "feed: reading events failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.seq) else {
            if head_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let (version, rules) = feed.current_rules();
        let items = events
            .into_iter()
            .map(|ev| {
                let value = Unroutable::check(&bus, ev.seq, &ev.json).map_err(Arc::new);
                let matched = match &value {
                    Ok(v) => {
                        let span = route_span(v, &bus);
                        let matched = rules.matches(v);
                        if span.recording() {
                            end_route_span(span, &matched);
                        }
                        matched
                    }
                    Err(u) => {
                        u.report(&bus, ev.seq);
                        Vec::new()
                    }
                };
                if value.is_ok() && matched.is_empty() {
                    unmatched.increment(1);
                }
                Arc::new(FeedItem {
                    seq: ev.seq,
                    ingest_ms: ev.ingest_ms,
                    value,
                    rules: matched,
                    version,
                })
            })
            .collect();
        feed.push(items, last + 1);
        tokio::task::yield_now().await;
    }
}

/// The `route` span of event `v` of `bus` (the rule matching at the
/// origin, a child of the event's `publish` span), started now; nothing
/// (not even the `traceparent` parsed) while traces are not exported, and
/// a span that records nothing when the event's trace is not sampled.
fn route_span(v: &Value, bus: &str) -> EventSpan {
    if !crate::telemetry::export::on() {
        return EventSpan::none();
    }
    let attr = |k: &str| v.get(k).and_then(Value::as_str);
    let Some(tp) = attr("traceparent").and_then(TraceParent::parse) else {
        return EventSpan::none();
    };
    if tp.flags & 1 == 0 {
        return EventSpan::none();
    }
    let (id, source) = (attr("id").unwrap_or(""), attr("source").unwrap_or(""));
    let (publish, _) = crate::telemetry::publish_span_of(&tp, source, id);
    let (mut span, _) = EventSpan::child("route", SpanKind::Internal, &publish);
    span.event_json(v, bus)
        .attr("messaging.operation.type", "process");
    span
}

/// End a `route` span: the names (`strait.rules`) and number
/// (`strait.rules.matched`) of the rules the event matched.
fn end_route_span(mut span: EventSpan, matched: &[String]) {
    span.attr("strait.rules.matched", matched.len() as i64);
    if !matched.is_empty() {
        let names: Vec<opentelemetry::StringValue> =
            matched.iter().map(|r| r.clone().into()).collect();
        span.attr(
            "strait.rules",
            opentelemetry::Value::Array(opentelemetry::Array::String(names)),
        );
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64) -> Arc<FeedItem> {
        Arc::new(FeedItem {
            seq,
            ingest_ms: 0,
            value: Ok(Value::Null),
            rules: Vec::new(),
            version: 0,
        })
    }

    #[test]
    fn window_slides_and_reports_behind() {
        let feed = BusFeed::new(10, 0, RuleSet::new());
        assert!(matches!(feed.take(10, 5), FeedRead::Items(v) if v.is_empty()));
        assert!(matches!(feed.take(3, 5), FeedRead::Behind));
        // Sequence numbers are site-wide, so a bus sees gaps.
        feed.push(vec![item(10), item(14), item(20)], 21);
        match feed.take(11, 5) {
            FeedRead::Items(v) => {
                assert_eq!(v.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![14, 20])
            }
            FeedRead::Behind => panic!("inside the window"),
        }
        let many: Vec<_> = (21..21 + WINDOW as u64).map(item).collect();
        feed.push(many, 21 + WINDOW as u64);
        assert!(matches!(feed.take(20, 5), FeedRead::Behind));
        assert!(matches!(feed.take(21, 1), FeedRead::Items(v) if v.len() == 1 && v[0].seq == 21));
    }
}
