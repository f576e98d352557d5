//! The delivery core: one target's worker (match, transform, deliver with
//! retries, dead-letter), used by the dispatcher for the targets of this
//! site's rules and by the inbound workers ([`Remote`]) for deliveries
//! other sites routed here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use opentelemetry::trace::SpanKind;
use serde_json::Value;
use strait_adapters::http::HttpTarget;
use strait_adapters::{DeliveryError, Sink};
use strait_federation::journal::{Attempt, AttemptOutcome, DeliveryStatus, JournalEntry};
use strait_federation::{AppendEntry, StoredEvent};
use strait_routing::event::Event;
use strait_routing::pattern::RuleSet;
use strait_routing::transform::{TransformContext, TransformOutput};

use super::Context;
use super::bus_target::{BusSink, Provenance};
use super::feed::{BusFeed, FeedItem, FeedRead, Unroutable};
use super::progress::{stats, with_stats};
use crate::config::bus_target::TargetKind;
use crate::config::rule::{CompiledRule, DeadLetter, RetryPolicy, RuleSpec, TargetSpec};
use crate::ingest::Outcome;
use crate::telemetry::EventSpan;
use crate::trace::TraceParent;
use crate::util::now_ms;

/// Deliveries in flight at once for a target at another site (each is
/// only a write to the outbox, group-committed).
const LINK_CONCURRENCY: usize = 4096;

/// Build the running sink of a target delivered at this site: a `bus`
/// target re-ingests here (`from` and `count_hop` as in
/// [`BusSink`]), the others are built by their adapter.
pub(super) fn build_sink(
    ctx: &Arc<Context>,
    t: &TargetSpec,
    from: Provenance,
    count_hop: bool,
) -> Result<Arc<dyn Sink>, String> {
    match TargetKind::of(&t.kind).map_err(|e| e.to_string())? {
        TargetKind::Bus => Ok(BusSink::new(
            &t.settings,
            &ctx.cfg.site,
            from,
            count_hop,
            ctx.ingest.clone(),
        )
        .map_err(|e| e.to_string())?),
        TargetKind::Adapter(kind) => kind
            .build(&t.settings, Duration::from_millis(t.timeout_ms), &ctx.sinks)
            .map_err(|e| e.to_string()),
    }
}

/// Metric handles of one target worker: labels are built once per worker,
/// not for every event.
pub(super) struct WorkerMetrics {
    matched: metrics::Counter,
    delivered: metrics::Counter,
    failed: metrics::Counter,
    retries: metrics::Counter,
    latency: metrics::Histogram,
}

impl WorkerMetrics {
    pub(super) fn new(bus: &str, rule: &str, target: &str) -> WorkerMetrics {
        let labels = [
            ("bus", bus.to_string()),
            ("rule", rule.to_string()),
            ("target", target.to_string()),
        ];
        let outcome = |o: &'static str| {
            [
                ("bus", bus.to_string()),
                ("rule", rule.to_string()),
                ("target", target.to_string()),
                ("outcome", o.to_string()),
            ]
        };
        WorkerMetrics {
            matched: metrics::counter!("strait_events_matched_total", &labels),
            delivered: metrics::counter!("strait_deliveries_total", &outcome("delivered")),
            failed: metrics::counter!("strait_deliveries_total", &outcome("failed")),
            retries: metrics::counter!("strait_delivery_retries_total", &labels),
            latency: metrics::histogram!("strait_delivery_latency_seconds", &labels),
        }
    }
}

pub(super) struct TargetWorker {
    pub(super) ctx: Arc<Context>,
    pub(super) key: String,
    pub(super) bus: String,
    pub(super) rule_name: String,
    pub(super) rule: Arc<CompiledRule>,
    pub(super) idx: usize,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) feed: Arc<BusFeed>,
    /// The rule-set version this worker's rule entered the feed with.
    pub(super) version: u64,
    /// Matched already (at the origin site): deliver without matching.
    pub(super) prematched: bool,
    /// The target lives in another site: hand the untransformed event to
    /// the link (the remote site transforms and delivers).
    pub(super) via_link: bool,
    /// The site the events come from, for deliveries made here for another
    /// site (they are always journaled).
    pub(super) origin: Option<String>,
    pub(super) metrics: WorkerMetrics,
    /// Start here rather than at the cursor (a seek moved it).
    pub(super) start_at: Option<u64>,
}

/// Delivers events another site routed to a target of this site.
pub struct Remote {
    worker: Arc<TargetWorker>,
}

impl Remote {
    /// The target named by `d`, built with this node's credentials.
    pub fn build(
        ctx: &Arc<Context>,
        origin: &str,
        d: &crate::links::Delivery,
        rule_spec: &serde_json::value::RawValue,
    ) -> Result<Remote, String> {
        let spec: RuleSpec =
            serde_json::from_str(rule_spec.get()).map_err(|e| format!("rule definition: {e}"))?;
        let rule = Arc::new(spec.compile().map_err(|e| e.to_string())?);
        let idx = rule
            .spec
            .targets
            .iter()
            .position(|t| t.id == d.target)
            .ok_or_else(|| format!("rule {} has no target {}", d.rule, d.target))?;
        let t = &rule.spec.targets[idx];
        let from = Provenance {
            site: origin.to_string(),
            bus: d.bus.clone(),
            rule: d.rule.clone(),
            target: d.target.clone(),
        };
        // The link counted this hop already.
        let sink = build_sink(ctx, t, from, false)?;
        Ok(Remote {
            worker: Arc::new(TargetWorker {
                ctx: ctx.clone(),
                key: super::inbound_target_key(origin, &d.bus, &d.rule, &d.target),
                metrics: WorkerMetrics::new(&d.bus, &d.rule, &d.target),
                bus: d.bus.clone(),
                rule_name: d.rule.clone(),
                rule,
                idx,
                sink,
                feed: BusFeed::new(0, 0, RuleSet::default()),
                version: 0,
                prematched: true,
                via_link: false,
                origin: Some(origin.to_string()),
                start_at: None,
            }),
        })
    }

    /// Dead-letter a delivery from another site whose event routing
    /// cannot read (the caller reported it); `ingest_ms`: its ingest time
    /// at the origin.
    pub async fn deliver_unroutable(&self, ingest_ms: u64, u: Unroutable) {
        self.worker
            .clone()
            .process(Pending::Unroutable(0, ingest_ms, u))
            .await;
    }

    /// Deliver an event another site routed here; its delivery spans are
    /// children of `parent` (this site's `receive` span).
    pub async fn deliver_value(&self, ingest_ms: u64, value: Value, parent: Option<TraceParent>) {
        self.worker
            .clone()
            .process(Pending::Parsed {
                seq: 0,
                ingest_ms,
                value,
                parent,
            })
            .await;
    }
}

/// An event waiting to be processed by a target worker.
enum Pending {
    /// Matched by the bus feed.
    Fed(Arc<FeedItem>),
    /// Read from storage by the worker itself (it was behind the feed).
    Stored(StoredEvent),
    /// Parsed already (a delivery from another site), with the span its
    /// deliveries are children of.
    Parsed {
        seq: u64,
        ingest_ms: u64,
        value: Value,
        parent: Option<TraceParent>,
    },
    /// A delivery from another site that routing cannot read (sequence,
    /// ingest time at the origin).
    Unroutable(u64, u64, Unroutable),
}

impl TargetWorker {
    pub(super) async fn run(self) {
        let this = Arc::new(self);
        let state = this.ctx.state.clone();
        let mut head_rx = state.subscribe_head();
        let mut feed_rx = this.feed.subscribe();
        let replicated = state.view().cursors.get(&this.key).copied();
        let Some(replicated) = replicated else {
            return;
        };
        let start = match this.start_at {
            Some(s) => s,
            None => stats(&this.ctx.progress, &this.key)
                .map(|s| s.cursor.max(replicated))
                .unwrap_or(replicated),
        };
        with_stats(&this.ctx.progress, &this.key, |s| s.cursor = start);
        let concurrency = this.concurrency();
        let read_batch = this.ctx.cfg.dispatch.read_batch;
        let mut next_read = start;
        let mut buffer: std::collections::VecDeque<Pending> = Default::default();
        let mut inflight = FuturesOrdered::new();
        loop {
            if buffer.is_empty() && inflight.len() < concurrency {
                head_rx.borrow_and_update();
                feed_rx.borrow_and_update();
                match this.feed.take(next_read, read_batch) {
                    FeedRead::Items(items) => {
                        if let Some(last) = items.last() {
                            next_read = last.seq + 1;
                        }
                        buffer.extend(items.into_iter().map(Pending::Fed));
                    }
                    // Behind the feed's window: read storage ourselves.
                    FeedRead::Behind => match state.read_events(&this.bus, next_read, read_batch) {
                        Ok(evs) => {
                            if let Some(last) = evs.last() {
                                next_read = last.seq + 1;
                            }
                            buffer.extend(evs.into_iter().map(Pending::Stored));
                        }
                        Err(e) => {
                            tracing::error!(target_key = this.key, error = %e, "reading events failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                }
            }
            while inflight.len() < concurrency {
                let Some(ev) = buffer.pop_front() else { break };
                let w = this.clone();
                inflight.push_back(async move { w.process(ev).await });
            }
            if inflight.is_empty() {
                if buffer.is_empty() {
                    tokio::select! {
                        r = head_rx.changed() => if r.is_err() { return; },
                        r = feed_rx.changed() => if r.is_err() { return; },
                    }
                }
                continue;
            }
            tokio::select! {
                Some(seq) = inflight.next() => {
                    with_stats(&this.ctx.progress, &this.key, |s| s.cursor = seq + 1);
                }
                r = head_rx.changed(), if buffer.is_empty() && inflight.len() < concurrency => {
                    if r.is_err() { return; }
                }
                r = feed_rx.changed(), if buffer.is_empty() && inflight.len() < concurrency => {
                    if r.is_err() { return; }
                }
            }
        }
    }

    /// How many deliveries may be in flight at once.
    pub(super) fn concurrency(&self) -> usize {
        let concurrency = self
            .rule
            .spec
            .targets
            .get(self.idx)
            .map_or(1, |t| t.concurrency);
        if self.via_link {
            // Enqueueing is a Raft write: let the outbox batch many at once.
            // The deliveries in flight bound the deliveries per outbox
            // commit, so this bounds the link's throughput to about
            // LINK_CONCURRENCY per commit latency.
            concurrency.max(LINK_CONCURRENCY)
        } else {
            concurrency
        }
    }

    /// Match (unless prematched), transform and deliver an event read
    /// elsewhere (a replay's); returns once it is finished.
    pub(super) async fn deliver_parsed(self: Arc<Self>, ingest_ms: u64, value: Value) {
        self.process(Pending::Parsed {
            seq: 0,
            ingest_ms,
            value,
            parent: None,
        })
        .await;
    }

    /// Match, transform, deliver with retries; returns the event's seq once
    /// it is finished (delivered, dead-lettered or not matched).
    async fn process(self: Arc<Self>, pending: Pending) -> u64 {
        // `decided`: the feed already matched this event against this rule.
        let mut link_parent = None;
        let (seq, ingest_ms, value, decided) = match pending {
            Pending::Fed(item) => {
                let v = match &item.value {
                    Ok(v) => v,
                    // Counted and logged by the feed.
                    Err(u) => return self.unroutable(item.seq, item.ingest_ms, u).await,
                };
                // The feed's verdict holds unless it used an older rule set
                // than the one this worker's rule entered with.
                let current = item.version >= self.version;
                if current && !item.rules.contains(&self.rule_name) {
                    return item.seq;
                }
                (item.seq, item.ingest_ms, v.clone(), current)
            }
            Pending::Unroutable(seq, ingest_ms, u) => {
                return self.unroutable(seq, ingest_ms, &u).await;
            }
            Pending::Parsed {
                seq,
                ingest_ms,
                value,
                parent,
            } => {
                link_parent = parent;
                (seq, ingest_ms, value, false)
            }
            // The feed read (and reported) it already.
            Pending::Stored(stored) => match Unroutable::check(&self.bus, stored.seq, &stored.json)
            {
                Ok(v) => (stored.seq, stored.ingest_ms, v, false),
                Err(u) => return self.unroutable(stored.seq, stored.ingest_ms, &u).await,
            },
        };
        if !self.prematched
            && (!self.rule.spec.enabled || (!decided && !self.rule.pattern.matches(&value)))
        {
            return seq;
        }
        let target = &self.rule.spec.targets[self.idx];
        let transform = if self.via_link {
            None
        } else {
            self.rule.transforms[self.idx].as_ref()
        };
        // Transform from the parsed value first: the event then takes the
        // value without a copy (and the original is copied only when a
        // transform replaces the data).
        let transformed = transform.map(|tr| {
            let ingestion_time = chrono::DateTime::from_timestamp_millis(ingest_ms as i64)
                .unwrap_or_default()
                .to_rfc3339();
            let rule_id = format!("{}/{}", self.bus, self.rule_name);
            let ctx = TransformContext {
                rule_name: &self.rule_name,
                rule_id: &rule_id,
                ingestion_time: &ingestion_time,
            };
            tr.apply(&value, &ctx)
        });
        let original = match Event::from_structured(value) {
            Ok(e) => e,
            Err(e) => {
                // JSON, but not a CloudEvent (not written by this ingress):
                // counted and dead-lettered like JSON routing cannot read.
                let json = self.stored_json(seq);
                let why = format!("not a valid CloudEvent: {e}");
                let u = Unroutable::new(&self.bus, seq, &json, why);
                u.report(&self.bus, seq);
                return self.unroutable(seq, ingest_ms, &u).await;
            }
        };
        self.metrics.matched.increment(1);
        let replaced = match transformed {
            None | Some(Ok(TransformOutput::Original)) => None,
            Some(Ok(TransformOutput::Json(v))) => {
                let mut e = original.clone();
                e.replace_data(v, "application/json");
                Some(e)
            }
            Some(Ok(TransformOutput::Text(s))) => {
                let mut e = original.clone();
                e.replace_data(Value::String(s), "text/plain; charset=utf-8");
                Some(e)
            }
            Some(Err(e)) => {
                let why = format!("transform failed: {e}");
                self.dead_letter(original, why, 0, ingest_ms, None).await;
                return seq;
            }
        };
        let event = replaced.as_ref().unwrap_or(&original);
        // Deliveries are children of the event's `publish` span, or of this
        // site's `receive` span for a delivery from another site.
        let parent = link_parent.unwrap_or_else(|| crate::telemetry::delivery_parent(&original));
        let policy: &RetryPolicy = &target.retry;
        // The journal entry of this delivery: from the first failure on, or
        // from the start for a delivery made here for another site.
        let mut journal = self
            .origin
            .is_some()
            .then(|| self.journal_entry(&original, ingest_ms));
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let (name, kind) = if self.via_link {
                ("link send", SpanKind::Producer)
            } else if matches!(
                TargetKind::of(&target.kind),
                Ok(TargetKind::Adapter(k)) if !k.messaging
            ) {
                ("deliver", SpanKind::Client)
            } else {
                ("deliver", SpanKind::Producer)
            };
            let (mut span, tp) = EventSpan::child(name, kind, &parent);
            if span.recording() {
                span.event(event, &self.bus)
                    .attr("messaging.operation.type", "send")
                    .attr_str("strait.rule", &self.rule_name)
                    .attr_str("strait.target", &target.id)
                    .attr_str("strait.target.type", &target.kind)
                    .attr("strait.delivery.attempt", i64::from(attempt));
                if let Some(site) = &target.site {
                    span.attr_str("strait.target.site", site);
                }
            }
            let started = Instant::now();
            let result = self
                .sink
                .deliver_ingested(event, &tp.to_string(), ingest_ms)
                .await;
            self.metrics.latency.record(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(_) => {
                    span.ok().end();
                    self.metrics.delivered.increment(1);
                    with_stats(&self.ctx.progress, &self.key, |s| s.delivered += 1);
                    if let Some(mut entry) = journal {
                        entry.push_attempt(Attempt {
                            time_ms: now_ms(),
                            outcome: AttemptOutcome::Delivered,
                            http_status: None,
                            error: None,
                        });
                        // Handed to the link: the remote site delivers it.
                        entry.status = if self.via_link {
                            DeliveryStatus::InTransit
                        } else {
                            DeliveryStatus::Delivered
                        };
                        self.ctx.journal.record(entry);
                    }
                    return seq;
                }
                Err(e) => e,
            };
            span.fail(
                if err.is_retryable() {
                    "retryable"
                } else {
                    "permanent"
                },
                err.to_string(),
            )
            .end();
            tracing::info!(
                bus = %self.bus,
                rule = %self.rule_name,
                target = %target.id,
                event_id = %event.id(),
                attempt,
                error = %err,
                "delivery attempt failed"
            );
            self.metrics.failed.increment(1);
            with_stats(&self.ctx.progress, &self.key, |s| {
                s.failed_attempts += 1;
                s.last_error = Some(err.to_string());
            });
            let entry = journal.get_or_insert_with(|| self.journal_entry(&original, ingest_ms));
            entry.push_attempt(Attempt {
                time_ms: now_ms(),
                outcome: AttemptOutcome::Failed,
                http_status: err.http_status(),
                error: Some(err.to_string()),
            });
            entry.status = DeliveryStatus::Retrying;
            let age_ms = now_ms().saturating_sub(ingest_ms);
            let too_old = age_ms >= policy.max_event_age_seconds.saturating_mul(1000);
            if !err.is_retryable() || attempt >= policy.max_attempts || too_old {
                let why = match &err {
                    DeliveryError::Permanent(m) => format!("permanent failure: {m}"),
                    DeliveryError::Retryable(m) if too_old => {
                        format!("maximum event age exceeded; last error: {m}")
                    }
                    DeliveryError::Retryable(m) => format!("retries exhausted; last error: {m}"),
                };
                self.dead_letter(original, why, attempt, ingest_ms, journal)
                    .await;
                return seq;
            }
            self.ctx.journal.record(entry.clone());
            self.metrics.retries.increment(1);
            tokio::time::sleep(policy.backoff(attempt)).await;
        }
    }

    /// The stored text of this bus's event `seq` (empty for a delivery from
    /// another site, or if it is gone).
    fn stored_json(&self, seq: u64) -> Vec<u8> {
        if self.prematched {
            return Vec::new();
        }
        match self.ctx.state.read_events(&self.bus, seq, 1) {
            Ok(mut evs) if evs.first().is_some_and(|e| e.seq == seq) => evs.swap_remove(0).json,
            _ => Vec::new(),
        }
    }

    /// A stored event routing cannot read: it cannot be matched, so rather
    /// than skip it every enabled rule's targets dead-letter it.
    async fn unroutable(&self, seq: u64, ingest_ms: u64, u: &Unroutable) -> u64 {
        if self.prematched || self.rule.spec.enabled {
            self.dead_letter(u.envelope.clone(), u.reason(), 0, ingest_ms, None)
                .await;
        }
        seq
    }

    /// A journal entry for delivering `event` (ingested at the origin at
    /// `ingest_ms`) to this worker's target, with no attempt yet.
    fn journal_entry(&self, event: &Event, ingest_ms: u64) -> JournalEntry {
        JournalEntry {
            bus: self.bus.clone(),
            source: event.source().to_string(),
            id: event.id().to_string(),
            ingest_ms,
            rule: self.rule_name.clone(),
            target: self.rule.spec.targets[self.idx].id.clone(),
            origin: self.origin.clone(),
            status: DeliveryStatus::Pending,
            attempts: Vec::new(),
            omitted_attempts: 0,
            reason: None,
        }
    }

    /// Give up on an event: dead-letter it (or drop it when there is no
    /// dead letter), count the outcome and journal it (`journal`: the
    /// delivery's entry so far, with its attempts).
    async fn dead_letter(
        &self,
        event: Event,
        reason: String,
        attempts: u32,
        ingest_ms: u64,
        journal: Option<JournalEntry>,
    ) {
        let mut entry = journal.unwrap_or_else(|| self.journal_entry(&event, ingest_ms));
        let target = &self.rule.spec.targets[self.idx];
        let labels = |outcome: &'static str| {
            [
                ("bus", self.bus.clone()),
                ("rule", self.rule_name.clone()),
                ("target", target.id.clone()),
                ("outcome", outcome.to_string()),
            ]
        };
        let event_id = event.id().to_string();
        let parent = crate::telemetry::delivery_parent(&event);
        let (mut span, _) = EventSpan::child("dead-letter", SpanKind::Producer, &parent);
        if span.recording() {
            span.event(&event, &self.bus)
                .attr("messaging.operation.type", "send")
                .attr_str("strait.rule", &self.rule_name)
                .attr_str("strait.target", &target.id)
                .attr("strait.delivery.attempts", i64::from(attempts))
                .fail("dead_lettered", reason.clone());
        }
        let outcome = self.send_dead_letter(event, &reason, attempts).await;
        span.attr(
            "strait.dead_letter.outcome",
            match &outcome {
                DeadLetterOutcome::Stored(kind) => *kind,
                DeadLetterOutcome::NoDestination => "dropped",
                DeadLetterOutcome::Failed(_) => "failed",
            },
        )
        .end();
        (entry.status, entry.reason) = match &outcome {
            DeadLetterOutcome::Stored(_) => (DeliveryStatus::DeadLettered, Some(reason.clone())),
            DeadLetterOutcome::NoDestination => (
                DeliveryStatus::Dropped,
                Some(format!("{reason} (no dead-letter destination)")),
            ),
            DeadLetterOutcome::Failed(error) => (
                DeliveryStatus::Dropped,
                Some(format!("{reason}; the dead letter failed: {error}")),
            ),
        };
        if let Some(r) = entry.reason.as_mut() {
            strait_federation::journal::truncate_at_char(
                r,
                strait_federation::journal::MAX_ERROR_BYTES,
            );
        }
        self.ctx.journal.record(entry);
        match outcome {
            DeadLetterOutcome::Stored(kind) => {
                with_stats(&self.ctx.progress, &self.key, |s| s.dead_lettered += 1);
                metrics::counter!("strait_dead_lettered_total", &labels(kind)).increment(1);
            }
            DeadLetterOutcome::NoDestination => {
                tracing::warn!(
                    bus = self.bus,
                    rule = self.rule_name,
                    target = target.id,
                    event_id,
                    reason,
                    "event dropped: no dead-letter destination"
                );
                with_stats(&self.ctx.progress, &self.key, |s| s.dropped += 1);
                metrics::counter!("strait_dead_lettered_total", &labels("dropped")).increment(1);
            }
            DeadLetterOutcome::Failed(error) => {
                tracing::error!(
                    bus = self.bus,
                    rule = self.rule_name,
                    target = target.id,
                    event_id,
                    reason,
                    error,
                    "dead letter failed; event dropped"
                );
                with_stats(&self.ctx.progress, &self.key, |s| {
                    s.dead_letter_failed += 1;
                    s.last_dead_letter_error = Some(error);
                });
                metrics::counter!("strait_dead_lettered_total", &labels("dropped")).increment(1);
                metrics::counter!(
                    "strait_dead_letter_failures_total",
                    "bus" => self.bus.clone(),
                    "rule" => self.rule_name.clone(),
                    "target" => target.id.clone()
                )
                .increment(1);
            }
        }
    }

    /// Store the event on the dead-letter bus or post it to the
    /// dead-letter endpoint, with the `deadletter*` extensions.
    async fn send_dead_letter(
        &self,
        mut event: Event,
        reason: &str,
        attempts: u32,
    ) -> DeadLetterOutcome {
        let target = &self.rule.spec.targets[self.idx];
        let dl = target
            .dead_letter
            .clone()
            .or_else(|| self.rule.spec.dead_letter.clone());
        let Some(dl) = dl else {
            return DeadLetterOutcome::NoDestination;
        };
        if event.get("deadletterreason").is_some() && matches!(dl, DeadLetter::Bus { .. }) {
            return DeadLetterOutcome::Failed(
                "the event was already dead-lettered once (loop guard)".into(),
            );
        }
        event.set_attr("deadletterreason", Value::String(reason.to_string()));
        event.set_attr("deadletterattempts", Value::from(attempts));
        event.set_attr(
            "deadletterrule",
            Value::String(format!("{}/{}", self.bus, self.rule_name)),
        );
        event.set_attr("deadlettertarget", Value::String(target.id.clone()));
        let kind = dl.kind();
        match dl {
            DeadLetter::Bus { bus } => {
                let json = event.to_json_bytes();
                let raw = match String::from_utf8(json)
                    .ok()
                    .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
                {
                    Some(r) => r,
                    None => {
                        return DeadLetterOutcome::Failed(
                            "the event cannot be written as JSON".into(),
                        );
                    }
                };
                let entry = AppendEntry {
                    bus: bus.clone(),
                    source: event.source().to_string(),
                    id: event.id().to_string(),
                    event: raw,
                };
                // Keep trying: the event is only finished once it is stored.
                loop {
                    match self.ctx.ingest.reingest(entry.clone()).await {
                        Ok(outcome) => {
                            return if outcome == Outcome::NoSuchBus {
                                DeadLetterOutcome::Failed(format!(
                                    "dead-letter bus `{bus}` does not exist at site {:?}",
                                    self.ctx.cfg.site
                                ))
                            } else {
                                DeadLetterOutcome::Stored(kind)
                            };
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "dead-letter append failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            DeadLetter::Http(settings) => {
                let policy = RetryPolicy {
                    max_attempts: 5,
                    max_event_age_seconds: 3600,
                    initial_backoff_ms: 200,
                    max_backoff_ms: 5_000,
                };
                let endpoint = settings.endpoint.clone();
                let t = HttpTarget::new(
                    self.ctx.sinks.http.clone(),
                    settings,
                    Duration::from_secs(10),
                );
                let parent = event
                    .str_attr("traceparent")
                    .and_then(TraceParent::parse)
                    .unwrap_or_else(TraceParent::new_root);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match t.deliver(&event, &parent.child().to_string()).await {
                        Ok(_) => return DeadLetterOutcome::Stored(kind),
                        Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                            tokio::time::sleep(policy.backoff(attempt)).await;
                        }
                        Err(e) => {
                            return DeadLetterOutcome::Failed(format!(
                                "dead-letter delivery to {endpoint} failed: {e}"
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// What became of a dead letter.
enum DeadLetterOutcome {
    /// Stored on the bus or delivered to the endpoint (the dead letter's
    /// [`DeadLetter::kind`]).
    Stored(&'static str),
    /// The rule has no dead letter: dropped, as configured.
    NoDestination,
    /// The dead letter failed (why): the event is dropped.
    Failed(String),
}
