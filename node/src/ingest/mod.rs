//! Ingest: the one path from parsed events to the log. Every ingress (the
//! CloudEvents API, Alibaba PutEvents and push, AWS PutEvents), every
//! source (SQS) and every re-ingest (`bus` targets, dead letters, inbound
//! link deliveries through them) hands its entries to [`Ingest`], which
//! appends them through group commit ([`Committer`]) and counts the ingress
//! figures once, here.
//!
//! [`parse`] turns the CloudEvents HTTP binding (binary, structured, batch)
//! into validated events; it is pure.

mod commit;
mod gate;
mod parse;

use std::collections::BTreeMap;
use std::sync::Arc;

use strait_federation::{AppendEntry, AppendOutcome, SiteState};

use crate::telemetry::EventSpan;

pub use commit::{CommitError, Committer};
pub use gate::Gate;
pub use parse::{
    Entries, STRUCTURED, parse_batch, parse_items, parse_request, parse_request_in,
    parse_structured,
};

/// One entry an ingress hands to [`Ingest::submit`], in request order.
#[derive(Debug)]
pub enum Entry {
    /// A valid event to append, and its `publish` span (ended with the
    /// outcome of the append).
    Append(AppendEntry, EventSpan),
    /// An entry the ingress refused before the append (invalid, too large,
    /// no such bus): counted as received on `bus` (`""` when it names no
    /// existing bus, so that clients cannot create label values) and as
    /// rejected.
    Refused {
        /// The bus it is counted on.
        bus: String,
    },
}

/// The entry that appends `event` (its stored form `json`) to `bus`, with
/// its `publish` span started: the span's id and parent follow from the
/// event's `traceparent` ([`crate::telemetry::publish_span_of`]), so it is
/// the same whichever ingress or source read the event.
pub fn append_entry(
    event: &strait_routing::event::Event,
    json: Box<serde_json::value::RawValue>,
    bus: String,
) -> Entry {
    let mut span = EventSpan::none();
    if crate::telemetry::export::on()
        && let Some(tp) = event
            .str_attr("traceparent")
            .and_then(crate::trace::TraceParent::parse)
    {
        let (me, parent) = crate::telemetry::publish_span_of(&tp, event.source(), event.id());
        span = EventSpan::start(
            "publish",
            opentelemetry::trace::SpanKind::Producer,
            &me,
            parent,
        );
        span.event(event, &bus);
    }
    Entry::Append(
        AppendEntry {
            source: event.source().to_string(),
            id: event.id().to_string(),
            bus,
            event: json,
        },
        span,
    )
}

/// What became of one [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored.
    Accepted,
    /// A repeat of an event stored within the dedup window.
    Duplicate,
    /// The bus was deleted before the append.
    NoSuchBus,
    /// Refused by the ingress ([`Entry::Refused`]).
    Refused,
}

/// The submit handle: group commit plus the ingest figures.
#[derive(Clone)]
pub struct Ingest {
    committer: Committer,
}

impl Ingest {
    /// Submit through `committer`.
    pub fn new(committer: Committer) -> Ingest {
        Ingest { committer }
    }

    /// The site's state the entries are appended to.
    pub fn state(&self) -> Arc<SiteState> {
        self.committer.state().clone()
    }

    /// Ingress: count every entry once as received
    /// (`strait_events_ingested_total{bus}`), append the valid ones in one
    /// group commit, and count what became of them
    /// (`strait_events_committed_total`, `strait_events_duplicate_total`,
    /// `strait_events_rejected_total`). One outcome per entry, in order. A
    /// failed commit stores nothing and counts only the received entries.
    pub async fn submit(&self, entries: Vec<Entry>) -> Result<Vec<Outcome>, CommitError> {
        let mut received: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &entries {
            let bus = match e {
                Entry::Append(a, _) => a.bus.as_str(),
                Entry::Refused { bus } => bus.as_str(),
            };
            *received.entry(bus).or_default() += 1;
        }
        for (bus, n) in received {
            metrics::counter!("strait_events_ingested_total", "bus" => bus.to_string())
                .increment(n);
        }
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut appends = Vec::new();
        let mut slots = Vec::new();
        let mut spans = Vec::new();
        for (i, e) in entries.into_iter().enumerate() {
            outcomes.push(Outcome::Refused);
            if let Entry::Append(a, span) = e {
                appends.push(a);
                slots.push(i);
                spans.push(span);
            }
        }
        let appended = match self.committer.append(appends).await {
            Ok(a) => a,
            Err(e) => {
                for mut span in spans {
                    span.fail("commit_failed", e.to_string()).end();
                }
                return Err(e);
            }
        };
        let (mut accepted, mut duplicates) = (0u64, 0u64);
        for ((slot, outcome), mut span) in slots.into_iter().zip(appended).zip(spans) {
            if span.recording() {
                span.attr("messaging.operation.type", "send");
                match outcome {
                    AppendOutcome::Accepted(seq) => {
                        span.attr("strait.bus.sequence", seq as i64).ok();
                    }
                    AppendOutcome::Duplicate => {
                        span.attr("strait.duplicate", true).ok();
                    }
                    AppendOutcome::NoSuchBus => {
                        span.fail("no_such_bus", "the bus was deleted before the append");
                    }
                }
                span.end();
            }
            outcomes[slot] = match outcome {
                AppendOutcome::Accepted(_) => {
                    accepted += 1;
                    Outcome::Accepted
                }
                AppendOutcome::Duplicate => {
                    duplicates += 1;
                    Outcome::Duplicate
                }
                AppendOutcome::NoSuchBus => Outcome::NoSuchBus,
            };
        }
        metrics::counter!("strait_events_committed_total").increment(accepted);
        metrics::counter!("strait_events_duplicate_total").increment(duplicates);
        let rejected = outcomes.len() as u64 - accepted - duplicates;
        if rejected > 0 {
            metrics::counter!("strait_events_rejected_total").increment(rejected);
        }
        Ok(outcomes)
    }

    /// A re-ingest (a `bus` target, a dead letter): one entry, appended
    /// without the ingress figures (it was counted where it entered).
    pub async fn reingest(&self, entry: AppendEntry) -> Result<Outcome, CommitError> {
        let appended = self.committer.append(vec![entry]).await?;
        match appended.first() {
            Some(AppendOutcome::Accepted(_)) => Ok(Outcome::Accepted),
            Some(AppendOutcome::Duplicate) => Ok(Outcome::Duplicate),
            Some(AppendOutcome::NoSuchBus) => Ok(Outcome::NoSuchBus),
            None => Err(CommitError::Failed("no answer from the commit".into())),
        }
    }
}
