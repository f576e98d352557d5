//! The dispatcher: reads committed events in order, matches each rule,
//! transforms and delivers to every target, with retries, dead letters and
//! progress checkpointed through Raft.
//!
//! Every target has its own worker and cursor, so a slow or dead target
//! never holds up another. Within a target, up to `concurrency` deliveries
//! run at once; the cursor only moves past an event once it is delivered or
//! dead-lettered, so a restart re-sends at most the unfinished tail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use serde_json::Value;
use strait_adapters::http::HttpTarget;
use strait_adapters::{DeliveryError, Sink};
use strait_federation::store::state::target_key;
use strait_federation::{AppendEntry, Command, StoredEvent};
use strait_routing::event::Event;
use strait_routing::pattern::RuleSet;
use strait_routing::transform::{TransformContext, TransformOutput};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::app::App;
use crate::commit::now_ms;
use crate::feed::{BusFeed, FeedItem, FeedRead, Unroutable};
use crate::spec::{CompiledRule, DeadLetter, RetryPolicy, RuleSpec};
use crate::trace::TraceParent;

/// Deliveries in flight at once for a target at another site (each is
/// only a write to the outbox, group-committed).
const LINK_CONCURRENCY: usize = 4096;

/// Live counters of one target (not replicated; the cursor is).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStats {
    /// Next sequence to process (in memory, may be ahead of the checkpoint).
    pub cursor: u64,
    /// Events delivered since this node started.
    pub delivered: u64,
    /// Events stored on the dead-letter bus or delivered to the
    /// dead-letter endpoint since this node started.
    pub dead_lettered: u64,
    /// Events given up on without a dead-letter destination (dropped, as
    /// configured) since this node started.
    pub dropped: u64,
    /// Events whose dead letter failed (so they were dropped) since this
    /// node started.
    pub dead_letter_failed: u64,
    /// Why the last dead letter failed.
    pub last_dead_letter_error: Option<String>,
    /// Failed attempts since this node started.
    pub failed_attempts: u64,
    /// Last delivery error.
    pub last_error: Option<String>,
}

/// Per-target stats shared with the API.
pub type Progress = Arc<Mutex<HashMap<String, TargetStats>>>;

/// Set the in-memory cursor of `key` (checkpointed by the leader).
pub fn set_cursor(progress: &Progress, key: &str, cursor: u64) {
    with_stats(progress, key, |s| s.cursor = cursor);
}

fn with_stats(progress: &Progress, key: &str, f: impl FnOnce(&mut TargetStats)) {
    let mut map = match progress.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    f(map.entry(key.to_string()).or_default());
}

/// Read a target's stats.
pub fn stats(progress: &Progress, key: &str) -> Option<TargetStats> {
    let map = match progress.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    map.get(key).cloned()
}

struct Worker {
    rule_json: Value,
    handle: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run the dispatcher until the process stops: only while this node leads
/// its site, so every target has exactly one active dispatcher. It starts
/// once a quorum has confirmed this node's leadership (not merely when
/// Raft says it leads: a restarted old leader resumes its stale term for a
/// moment, see [`strait_federation::Site::wait_confirmed_leading`]). A new
/// leader resumes every target from its replicated checkpoint; deliveries
/// that were in flight on the old leader may repeat (same event id).
pub async fn run(app: Arc<App>) {
    loop {
        if !app.site.wait_confirmed_leading().await {
            return;
        }
        tracing::info!(
            node = app.site.node_id,
            "leading the site: dispatcher started"
        );
        metrics::counter!("strait_dispatcher_starts_total").increment(1);
        if let Err(e) = crate::app::ensure_buses(&app.writer, &app.site, &app.cfg.buses).await {
            tracing::warn!(error = %e, "cannot create the configured buses");
        }
        tokio::select! {
            _ = lead(app.clone()) => return,
            _ = app.site.wait_leading(false) => {}
        }
        tracing::info!(
            node = app.site.node_id,
            "no longer leading: dispatcher stopped"
        );
        // Forget in-memory progress: the next term starts from checkpoints.
        match app.progress.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }
}

/// The dispatcher of a leader: feeds and workers follow the replicated
/// rules; everything stops when this future is dropped.
async fn lead(app: Arc<App>) {
    let state = app.site.state.clone();
    let mut config_rx = state.subscribe_config();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut feeds: HashMap<String, Feed> = HashMap::new();
    let mut version = 0u64;
    let _checkpointer = AbortOnDrop(tokio::spawn(checkpointer(app.clone())));
    let _inbound = AbortOnDrop(tokio::spawn(crate::links::run_inbound(app.clone())));
    let _import = AbortOnDrop(tokio::spawn(crate::control::import_loop(app.clone())));
    loop {
        config_rx.borrow_and_update();
        version += 1;
        reconcile(&app, &mut workers, &mut feeds, version);
        if config_rx.changed().await.is_err() {
            break;
        }
    }
}

struct Feed {
    feed: Arc<BusFeed>,
    handle: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// One compiled rule set per bus (enabled rules only), keyed by rule name.
fn rule_sets(rules: &[(String, String, Arc<CompiledRule>)]) -> HashMap<String, RuleSet<String>> {
    let mut sets: HashMap<String, RuleSet<String>> = HashMap::new();
    for (bus, name, rule) in rules {
        let set = sets.entry(bus.clone()).or_default();
        if rule.spec.enabled {
            set.insert(name.clone(), rule.pattern.clone());
        }
    }
    sets
}

fn reconcile(
    app: &Arc<App>,
    workers: &mut HashMap<String, Worker>,
    feeds: &mut HashMap<String, Feed>,
    version: u64,
) {
    let rules: Vec<((String, String), Value)> = {
        let view = app.site.state.view();
        view.rules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut wanted = HashMap::new();
    let mut compiled_rules = Vec::new();
    for ((bus, rule_name), json) in rules {
        // Stored rules were validated and normalized on write: parse and compile once.
        let parsed = serde_json::from_value::<RuleSpec>(json.clone())
            .map_err(|e| e.to_string())
            .and_then(|s| s.compile().map_err(|e| e.to_string()));
        let compiled = match parsed {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(bus, rule = rule_name, error = %e, "stored rule does not compile; skipping");
                continue;
            }
        };
        compiled_rules.push((bus.clone(), rule_name.clone(), compiled.clone()));
        for (idx, t) in compiled.spec.targets.iter().enumerate() {
            let key = target_key(&bus, &rule_name, &t.id);
            wanted.insert(
                key,
                (
                    bus.clone(),
                    rule_name.clone(),
                    compiled.clone(),
                    idx,
                    json.clone(),
                ),
            );
        }
    }
    // One feed per bus, rules or not (so every event is read once and
    // counted as matched, unmatched or unroutable); it starts at the oldest
    // cursor of the bus.
    let mut sets = rule_sets(&compiled_rules);
    for bus in app.site.state.view().buses.keys() {
        sets.entry(bus.clone()).or_default();
    }
    feeds.retain(|bus, f| {
        let keep = sets.contains_key(bus);
        if !keep {
            f.handle.abort();
        }
        keep
    });
    for (bus, set) in sets.drain() {
        if let Some(f) = feeds.get(&bus) {
            f.feed.set_rules(version, set);
            continue;
        }
        let start = {
            let view = app.site.state.view();
            let prefix = format!("{bus}/");
            view.cursors
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, c)| *c)
                .min()
                .unwrap_or(view.next_seq)
        };
        let feed = BusFeed::new(start, version, set);
        let handle = tokio::spawn(crate::feed::run(
            app.site.state.clone(),
            bus.clone(),
            feed.clone(),
        ));
        feeds.insert(bus, Feed { feed, handle });
    }
    workers.retain(|key, w| {
        let keep = wanted
            .get(key)
            .is_some_and(|(_, _, _, _, json)| *json == w.rule_json);
        if !keep {
            w.handle.abort();
        }
        keep
    });
    for (key, (bus, rule_name, compiled, idx, json)) in wanted {
        if workers.contains_key(&key) {
            continue;
        }
        let t = &compiled.spec.targets[idx];
        let remote_site = t.site.clone().filter(|s| *s != app.cfg.site);
        let sink: Arc<dyn Sink> = if let Some(remote) = &remote_site {
            Arc::new(crate::links::LinkSink {
                remote: remote.clone(),
                bus: bus.clone(),
                rule: rule_name.clone(),
                spec: match serde_json::value::to_raw_value(&json) {
                    Ok(spec) => Arc::new(strait_federation::LinkSpec {
                        hash: strait_federation::link::proto::spec_hash(spec.get().as_bytes()),
                        spec,
                    }),
                    Err(e) => {
                        tracing::error!(target_key = key, error = %e, "rule cannot be encoded; not dispatching to it");
                        continue;
                    }
                },
                target: t.id.clone(),
                outbox: app.outbox.clone(),
                state: app.site.state.clone(),
                limit: app.cfg.federation.max_outbox,
            })
        } else {
            let from = crate::bus_target::Provenance {
                site: app.cfg.site.clone(),
                bus: bus.clone(),
                rule: rule_name.clone(),
                target: t.id.clone(),
            };
            match build_sink(app, t, from, true) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(target_key = key, error = %e, "target cannot be built; not dispatching to it");
                    continue;
                }
            }
        };
        let Some(feed) = feeds.get(&bus).map(|f| f.feed.clone()) else {
            continue;
        };
        let worker = TargetWorker {
            app: app.clone(),
            key: key.clone(),
            metrics: WorkerMetrics::new(&bus, &rule_name, &t.id),
            bus,
            rule_name,
            rule: compiled,
            idx,
            sink,
            feed,
            version,
            prematched: false,
            via_link: remote_site.is_some(),
        };
        let handle = tokio::spawn(worker.run());
        workers.insert(
            key,
            Worker {
                rule_json: json,
                handle,
            },
        );
    }
}

/// Build the running sink of a target delivered at this site: a `bus`
/// target re-ingests here (`from` and `count_hop` as in
/// [`crate::bus_target::BusSink`]), the others are built by their adapter.
fn build_sink(
    app: &Arc<App>,
    t: &crate::spec::TargetSpec,
    from: crate::bus_target::Provenance,
    count_hop: bool,
) -> Result<Arc<dyn Sink>, String> {
    if t.kind == crate::bus_target::KIND {
        let s = crate::bus_target::BusSink::new(
            &t.settings,
            &app.cfg.site,
            from,
            count_hop,
            app.committer.clone(),
        )
        .map_err(|e| e.to_string())?;
        return Ok(s);
    }
    strait_adapters::build_target(
        &t.kind,
        &t.settings,
        Duration::from_millis(t.timeout_ms),
        &app.sinks,
    )
    .map_err(|e| e.to_string())
}

/// Metric handles of one target worker: labels are built once per worker,
/// not for every event.
struct WorkerMetrics {
    matched: metrics::Counter,
    delivered: metrics::Counter,
    failed: metrics::Counter,
    retries: metrics::Counter,
    latency: metrics::Histogram,
}

impl WorkerMetrics {
    fn new(bus: &str, rule: &str, target: &str) -> WorkerMetrics {
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

struct TargetWorker {
    app: Arc<App>,
    key: String,
    bus: String,
    rule_name: String,
    rule: Arc<CompiledRule>,
    idx: usize,
    sink: Arc<dyn Sink>,
    feed: Arc<BusFeed>,
    /// The rule-set version this worker's rule entered the feed with.
    version: u64,
    /// Matched already (at the origin site): deliver without matching.
    prematched: bool,
    /// The target lives in another site: hand the untransformed event to
    /// the link (the remote site transforms and delivers).
    via_link: bool,
    metrics: WorkerMetrics,
}

/// Delivers events another site routed to a target of this site.
pub struct Remote {
    worker: Arc<TargetWorker>,
}

impl Remote {
    /// The target named by `d`, built with this node's credentials.
    pub fn build(
        app: &Arc<App>,
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
        let from = crate::bus_target::Provenance {
            site: origin.to_string(),
            bus: d.bus.clone(),
            rule: d.rule.clone(),
            target: d.target.clone(),
        };
        // The link counted this hop already.
        let sink = build_sink(app, t, from, false)?;
        Ok(Remote {
            worker: Arc::new(TargetWorker {
                app: app.clone(),
                key: strait_federation::store::links::inbox_cursor_key(origin),
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
            }),
        })
    }

    /// Transform and deliver one event (retries, dead letters) to the target.
    pub async fn deliver(&self, event: StoredEvent) {
        self.worker.clone().process(Pending::Stored(event)).await;
    }

    /// Dead-letter a delivery from another site whose event routing
    /// cannot read (the caller reported it).
    pub async fn deliver_unroutable(&self, u: Unroutable) {
        self.worker.clone().process(Pending::Unroutable(0, u)).await;
    }

    /// [`Remote::deliver`] for an event already parsed.
    pub async fn deliver_value(&self, ingest_ms: u64, value: Value) {
        self.worker
            .clone()
            .process(Pending::Parsed {
                seq: 0,
                ingest_ms,
                value,
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
    /// Parsed already (a delivery from another site).
    Parsed {
        seq: u64,
        ingest_ms: u64,
        value: Value,
    },
    /// A delivery from another site that routing cannot read.
    Unroutable(u64, Unroutable),
}

impl TargetWorker {
    async fn run(self) {
        let this = Arc::new(self);
        let state = this.app.site.state.clone();
        let mut head_rx = state.subscribe_head();
        let mut feed_rx = this.feed.subscribe();
        let replicated = state.view().cursors.get(&this.key).copied();
        let Some(replicated) = replicated else {
            return;
        };
        let start = stats(&this.app.progress, &this.key)
            .map(|s| s.cursor.max(replicated))
            .unwrap_or(replicated);
        with_stats(&this.app.progress, &this.key, |s| s.cursor = start);
        let mut concurrency = this.rule.spec.targets[this.idx].concurrency;
        if this.via_link {
            // Enqueueing is a Raft write: let the outbox batch many at once.
            // The deliveries in flight bound the deliveries per outbox
            // commit, so this bounds the link's throughput to about
            // LINK_CONCURRENCY per commit latency.
            concurrency = concurrency.max(LINK_CONCURRENCY);
        }
        let read_batch = this.app.cfg.dispatch.read_batch;
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
                    with_stats(&this.app.progress, &this.key, |s| s.cursor = seq + 1);
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

    /// Match, transform, deliver with retries; returns the event's seq once
    /// it is finished (delivered, dead-lettered or not matched).
    async fn process(self: Arc<Self>, pending: Pending) -> u64 {
        // `decided`: the feed already matched this event against this rule.
        let (seq, ingest_ms, value, decided) = match pending {
            Pending::Fed(item) => {
                let v = match &item.value {
                    Ok(v) => v,
                    // Counted and logged by the feed.
                    Err(u) => return self.unroutable(item.seq, u).await,
                };
                // The feed's verdict holds unless it used an older rule set
                // than the one this worker's rule entered with.
                let current = item.version >= self.version;
                if current && !item.rules.contains(&self.rule_name) {
                    return item.seq;
                }
                (item.seq, item.ingest_ms, v.clone(), current)
            }
            Pending::Unroutable(seq, u) => return self.unroutable(seq, &u).await,
            Pending::Parsed {
                seq,
                ingest_ms,
                value,
            } => (seq, ingest_ms, value, false),
            // The feed read (and reported) it already.
            Pending::Stored(stored) => match Unroutable::check(&self.bus, stored.seq, &stored.json)
            {
                Ok(v) => (stored.seq, stored.ingest_ms, v, false),
                Err(u) => return self.unroutable(stored.seq, &u).await,
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
                return self.unroutable(seq, &u).await;
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
                self.dead_letter(original, format!("transform failed: {e}"), 0)
                    .await;
                return seq;
            }
        };
        let event = replaced.as_ref().unwrap_or(&original);
        let parent = event
            .str_attr("traceparent")
            .and_then(TraceParent::parse)
            .unwrap_or_else(TraceParent::new_root);
        let policy: &RetryPolicy = &target.retry;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let span = tracing::info_span!(
                "deliver",
                bus = %self.bus,
                rule = %self.rule_name,
                target = %target.id,
                event_id = %event.id(),
                attempt,
                trace_id = %parent.trace_id_hex(),
            );
            crate::telemetry::link_to_trace(&span, &parent);
            let tp = crate::telemetry::traceparent_for(&span, &parent);
            let started = Instant::now();
            let result = self
                .sink
                .deliver(event, &tp.to_string())
                .instrument(span.clone())
                .await;
            self.metrics.latency.record(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(_) => {
                    self.metrics.delivered.increment(1);
                    with_stats(&self.app.progress, &self.key, |s| s.delivered += 1);
                    return seq;
                }
                Err(e) => e,
            };
            span.in_scope(|| tracing::info!(error = %err, "delivery attempt failed"));
            self.metrics.failed.increment(1);
            with_stats(&self.app.progress, &self.key, |s| {
                s.failed_attempts += 1;
                s.last_error = Some(err.to_string());
            });
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
                self.dead_letter(original, why, attempt).await;
                return seq;
            }
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
        match self.app.site.state.read_events(&self.bus, seq, 1) {
            Ok(mut evs) if evs.first().is_some_and(|e| e.seq == seq) => evs.swap_remove(0).json,
            _ => Vec::new(),
        }
    }

    /// A stored event routing cannot read: it cannot be matched, so rather
    /// than skip it every enabled rule's targets dead-letter it.
    async fn unroutable(&self, seq: u64, u: &Unroutable) -> u64 {
        if self.prematched || self.rule.spec.enabled {
            self.dead_letter(u.envelope.clone(), u.reason(), 0).await;
        }
        seq
    }

    /// Give up on an event: dead-letter it (or drop it when there is no
    /// dead letter) and count the outcome.
    async fn dead_letter(&self, event: Event, reason: String, attempts: u32) {
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
        match self.send_dead_letter(event, &reason, attempts).await {
            DeadLetterOutcome::Stored(kind) => {
                with_stats(&self.app.progress, &self.key, |s| s.dead_lettered += 1);
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
                with_stats(&self.app.progress, &self.key, |s| s.dropped += 1);
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
                with_stats(&self.app.progress, &self.key, |s| {
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
                    match self.app.committer.append(vec![entry.clone()]).await {
                        Ok(outcomes) => {
                            return if outcomes.first()
                                == Some(&strait_federation::AppendOutcome::NoSuchBus)
                            {
                                DeadLetterOutcome::Failed(format!(
                                    "dead-letter bus `{bus}` does not exist at site {:?}",
                                    self.app.cfg.site
                                ))
                            } else {
                                DeadLetterOutcome::Stored("bus")
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
                    self.app.sinks.http.clone(),
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
                        Ok(_) => return DeadLetterOutcome::Stored("http"),
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
    /// Stored on the bus (`"bus"`) or delivered to the endpoint (`"http"`).
    Stored(&'static str),
    /// The rule has no dead letter: dropped, as configured.
    NoDestination,
    /// The dead letter failed (why): the event is dropped.
    Failed(String),
}

/// Periodically write target cursors through Raft (which also collects
/// delivered events past retention) and publish lag gauges.
async fn checkpointer(app: Arc<App>) {
    let interval = Duration::from_millis(app.cfg.dispatch.checkpoint_interval_ms);
    let mut last_sent: HashMap<String, u64> = HashMap::new();
    let mut last_gc = Instant::now();
    let mut last_lag = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let cursors: Vec<(String, u64)> = {
            let view = app.site.state.view();
            let map = match app.progress.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            map.iter()
                .filter(|(k, s)| view.cursors.get(*k).is_some_and(|c| s.cursor > *c))
                .map(|(k, s)| (k.clone(), s.cursor))
                .collect()
        };
        let changed: Vec<(String, u64)> = cursors
            .into_iter()
            .filter(|(k, c)| last_sent.get(k) != Some(c))
            .collect();
        let gc_due = last_gc.elapsed() >= Duration::from_secs(10);
        if !changed.is_empty() || gc_due {
            let cmd = Command::Checkpoint {
                now_ms: now_ms(),
                retention_ms: app.cfg.retention_secs.saturating_mul(1000),
                dedup_window_ms: app.cfg.dedup_window_secs.saturating_mul(1000),
                cursors: changed.clone(),
            };
            match app.writer.write(cmd).await {
                Ok(_) => {
                    for (k, c) in changed {
                        last_sent.insert(k, c);
                    }
                    if gc_due {
                        last_gc = Instant::now();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "checkpoint not written"),
            }
        }
        if last_lag.elapsed() >= Duration::from_secs(1) {
            last_lag = Instant::now();
            publish_lag(&app);
        }
    }
}

fn publish_lag(app: &App) {
    let keys: Vec<(String, u64)> = {
        let map = match app.progress.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.iter().map(|(k, s)| (k.clone(), s.cursor)).collect()
    };
    for (key, cursor) in keys {
        let mut parts = key.splitn(3, '/');
        let (Some(bus), Some(rule), Some(target)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let lag = app
            .site
            .state
            .count_events_from(bus, cursor, 1_000_000)
            .unwrap_or(0);
        metrics::gauge!("strait_target_lag_events", "bus" => bus.to_string(), "rule" => rule.to_string(), "target" => target.to_string()).set(lag as f64);
    }
    if let Ok(n) = app.site.state.stored_events() {
        metrics::gauge!("strait_events_stored").set(n as f64);
    }
}
