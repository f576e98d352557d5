//! The remote side of a link hop: an `inbox commit` span per delivery a
//! batch from another site brought, from the batch's arrival at this node
//! to its commit into the site's inbox, a child of the origin's
//! `link send` (whose context the delivery carries).

use std::sync::Arc;

use opentelemetry::trace::SpanKind;
use serde_json::Value;
use strait_federation::link::service::{CommitHook, InboxCommit};

use super::EventSpan;
use crate::links::Delivery;
use crate::trace::TraceParent;

/// The hook that exports the `inbox commit` spans (nothing while traces
/// are not exported, nor for deliveries whose trace is not sampled).
pub fn inbox_commit_hook() -> CommitHook {
    Arc::new(inbox_commit)
}

fn inbox_commit(c: InboxCommit<'_>) {
    if !super::export::on() {
        return;
    }
    for (i, item) in c.items.iter().enumerate() {
        let Ok(d) = serde_json::from_slice::<Delivery>(item) else {
            continue;
        };
        let Some(sent) = TraceParent::parse(&d.traceparent) else {
            continue;
        };
        let (mut span, _) = EventSpan::child("inbox commit", SpanKind::Internal, &sent);
        if !span.recording() {
            continue;
        }
        span.set_start(c.received);
        let event: Value = serde_json::from_str(d.event.get()).unwrap_or(Value::Null);
        span.event_json(&event, &d.bus)
            .attr("messaging.operation.type", "receive")
            .attr_str("strait.link.origin", c.origin)
            .attr_str("strait.rule", &d.rule)
            .attr_str("strait.target", &d.target)
            .attr(
                "strait.link.inbox_sequence",
                (c.first_seq + i as u64) as i64,
            )
            .attr("strait.link.batch.size", c.items.len() as i64)
            .ok()
            .end();
    }
}
