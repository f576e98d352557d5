//! The inbound side of links: the inbox of deliveries received from other
//! sites, delivered here in order by one worker per origin site, through
//! the same delivery core as local targets ([`super::Remote`]), without
//! routing again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use opentelemetry::trace::SpanKind;
use serde_json::Value;
use serde_json::value::RawValue;
use strait_federation::link::proto::spec_hash;
use strait_federation::link::uncommitted::EarlyBatch;
use strait_federation::store::links::inbox_cursor_key;

use super::{Context, Remote, set_cursor};
use crate::dispatch::feed::Unroutable;
use crate::links::Delivery;
use crate::telemetry::EventSpan;
use crate::trace::TraceParent;
use crate::util::AbortOnDrop;

/// Deliver the inboxes of every origin site, for as long as this future
/// runs (while this node leads its site).
pub async fn run(ctx: Arc<Context>) {
    // Offered under an earlier term: read them from the inbox instead.
    ctx.early.clear_all();
    let mut links = ctx.state.subscribe_links();
    let mut early = ctx.early.subscribe();
    // Dropping the map (when this future is dropped) aborts every worker.
    let mut workers: HashMap<String, AbortOnDrop> = HashMap::new();
    loop {
        let mut origins: Vec<String> = ctx.state.view().links.inbound.keys().cloned().collect();
        // An origin's first batch may be offered before it commits.
        if ctx.cfg.federation.deliver_before_commit {
            origins.extend(ctx.cfg.federation.links.keys().cloned());
        }
        for o in origins {
            workers
                .entry(o.clone())
                .or_insert_with(|| AbortOnDrop(tokio::spawn(inbound_worker(ctx.clone(), o))));
        }
        tokio::select! {
            r = links.changed() => if r.is_err() { return },
            r = early.changed() => if r.is_err() { return },
        }
    }
}

/// Deliveries by sequence, with the early batch they come from (if any).
type Deliveries = (Vec<(u64, bytes::Bytes)>, Option<Arc<EarlyBatch>>);

/// Up to `room` deliveries from `origin` starting at `next`: from the batch
/// proposed here that holds `next` if there is one (delivered before it
/// commits), else from the committed inbox.
fn next_deliveries(
    ctx: &Context,
    origin: &str,
    next: u64,
    room: usize,
) -> Result<Deliveries, String> {
    if let Some(b) = ctx.early.take_from(origin, next) {
        let skip = (next - b.first_seq) as usize;
        let items = b
            .items
            .iter()
            .skip(skip)
            .take(room)
            .enumerate()
            .map(|(i, body)| (next + i as u64, body.clone()))
            .collect();
        metrics::counter!("strait_link_early_deliveries_total", "origin" => origin.to_string())
            .increment(b.items.len().saturating_sub(skip).min(room) as u64);
        return Ok((items, Some(b)));
    }
    let entries = ctx
        .state
        .read_inbox(origin, next, room)
        .map_err(|e| e.to_string())?;
    Ok((
        entries
            .into_iter()
            .map(|e| (e.seq, bytes::Bytes::from(e.body)))
            .collect(),
        None,
    ))
}

/// Deliver the inbox from `origin` in order, `concurrency` at a time.
async fn inbound_worker(ctx: Arc<Context>, origin: String) {
    let key = inbox_cursor_key(&origin);
    let mut links = ctx.state.subscribe_links();
    let mut early = ctx.early.subscribe();
    let start = ctx.state.view().cursors.get(&key).copied().unwrap_or(1);
    set_cursor(&ctx.progress, &key, start);
    let mut next = start;
    let mut inflight = FuturesOrdered::new();
    let mut cache: HashMap<(String, String, String, String), Arc<Remote>> = HashMap::new();
    loop {
        if inflight.len() < 256 {
            links.borrow_and_update();
            early.borrow_and_update();
            let (entries, batch) = match next_deliveries(&ctx, &origin, next, 256 - inflight.len())
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(origin, error = %e, "cannot read the inbox");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for (seq, body) in entries {
                next = seq + 1;
                let handler = prepare(&ctx, &origin, seq, &body, batch.as_deref(), &mut cache);
                inflight.push_back(async move {
                    match handler {
                        Some((remote, ingest_ms, Ok((value, parent)))) => {
                            remote.deliver_value(ingest_ms, value, parent).await
                        }
                        Some((remote, ingest_ms, Err(u))) => {
                            remote.deliver_unroutable(ingest_ms, u).await
                        }
                        None => {}
                    }
                    seq
                });
            }
        }
        if inflight.is_empty() {
            tokio::select! {
                r = links.changed() => if r.is_err() { return },
                r = early.changed() => if r.is_err() { return },
            }
            continue;
        }
        tokio::select! {
            Some(seq) = inflight.next() => {
                set_cursor(&ctx.progress, &key, seq + 1);
            }
            r = links.changed(), if inflight.len() < 256 => {
                if r.is_err() { return; }
            }
            r = early.changed(), if inflight.len() < 256 => {
                if r.is_err() { return; }
            }
        }
    }
}

/// A delivery ready for its target: the target, the event's ingestion
/// time, and the event with the span its deliveries are children of (or
/// why routing cannot read it).
type Prepared = (
    Arc<Remote>,
    u64,
    Result<(Value, Option<TraceParent>), Unroutable>,
);

/// Decode a delivery and find (or build) the target it names; the event
/// comes with its ingestion time. The rule definition is the delivery's own
/// (older deliveries), the one `batch` carries for its hash (a batch
/// delivered before it commits), or the one the inbox from `origin` holds.
fn prepare(
    ctx: &Arc<Context>,
    origin: &str,
    inbox_seq: u64,
    body: &[u8],
    batch: Option<&EarlyBatch>,
    cache: &mut HashMap<(String, String, String, String), Arc<Remote>>,
) -> Option<Prepared> {
    let d: Delivery = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(origin, error = %e, "undecodable delivery from another site; skipped");
            return None;
        }
    };
    let skipped = |rule: &str, target: &str, error: &str| {
        tracing::error!(
            origin,
            rule,
            target,
            error,
            "cannot deliver a delivery from another site; skipped"
        );
        metrics::counter!("strait_link_deliveries_skipped_total", "origin" => origin.to_string())
            .increment(1);
    };
    let hash = match (&d.rule_hash, &d.rule_spec) {
        (Some(h), _) => h.clone(),
        (None, Some(spec)) => spec_hash(spec.get().as_bytes()),
        (None, None) => {
            skipped(&d.rule, &d.target, "the delivery names no rule definition");
            return None;
        }
    };
    let key = (d.bus.clone(), d.rule.clone(), hash, d.target.clone());
    let remote = match cache.get(&key) {
        Some(r) => r.clone(),
        None => {
            let spec = match (&d.rule_spec, batch.and_then(|b| b.spec(&key.2))) {
                (Some(spec), _) => Ok(spec.clone()),
                // Not committed yet: the batch carries it.
                (None, Some(s)) => Ok(s.spec.clone()),
                (None, None) => match ctx.state.read_inbox_spec(origin, &key.2) {
                    Ok(Some(bytes)) => String::from_utf8(bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|s| RawValue::from_string(s).map_err(|e| e.to_string())),
                    Ok(None) => Err(format!("no rule definition {} from this site", key.2)),
                    Err(e) => Err(e.to_string()),
                },
            };
            let built = spec.and_then(|spec| Remote::build(ctx, origin, &d, &spec));
            let r = match built {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    skipped(&d.rule, &d.target, &e);
                    return None;
                }
            };
            if cache.len() > 1024 {
                cache.clear();
            }
            cache.insert(key, r.clone());
            r
        }
    };
    // An event routing cannot read is dead-lettered here, not skipped.
    let json = d.event.get().as_bytes();
    let mut event = match Unroutable::check(&d.bus, inbox_seq, json) {
        Ok(v) => v,
        Err(u) => {
            u.report(&d.bus, inbox_seq);
            return Some((remote, d.ingest_ms, Err(u)));
        }
    };
    // A redrive sends the event as stored; a link's delivery says how many
    // sites it passed.
    if origin != strait_federation::store::links::REDRIVE_ORIGIN
        && let Some(m) = event.as_object_mut()
    {
        m.insert("straithops".into(), Value::from(d.hops));
    }
    // This site's `receive` span, a child of the origin's `link send`
    // (whose context the delivery carries), parents the deliveries here;
    // the event keeps its own `traceparent`.
    let mut parent = None;
    if let Some(sent) = TraceParent::parse(&d.traceparent) {
        let (mut span, me) = EventSpan::child("receive", SpanKind::Consumer, &sent);
        if span.recording() {
            span.event_json(&event, &d.bus)
                .attr("messaging.operation.type", "receive")
                .attr_str("strait.link.origin", origin)
                .attr_str("strait.rule", &d.rule)
                .attr_str("strait.target", &d.target)
                .attr("strait.link.inbox_sequence", inbox_seq as i64)
                .end();
        }
        parent = Some(me);
    }
    Some((remote, d.ingest_ms, Ok((event, parent))))
}
