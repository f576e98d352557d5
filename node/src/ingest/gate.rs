//! The node's side of the ingresses in `strait_adapters`: a [`Gate`] is
//! the [`strait_adapters::Ingest`] they hand their events to. It reads
//! request bodies with the CloudEvents binding ([`super::parse`]), checks
//! the events an ingress built itself as that binding checks a batch's
//! members, and submits them through [`Ingest::submit`].

use std::sync::Arc;

use http::HeaderMap;
use strait_adapters::{
    Binding, BindingError, CheckedEvent, EntryRefusal, EventLimits, IngestError, IngestFuture,
    IngestOutcome, Offer, ReadEntry,
};
use strait_federation::SiteState;

use super::{
    CommitError, Entries, Entry, Ingest, Outcome, parse_batch, parse_items, parse_request_in,
    parse_structured,
};
use crate::config::Limits;
use crate::trace::TraceParent;

/// The submit path as an ingress adapter sees it.
#[derive(Clone)]
pub struct Gate {
    /// Where the events go.
    pub ingest: Ingest,
    /// The site's state (which buses exist).
    pub state: Arc<SiteState>,
    /// Event size limits.
    pub limits: Limits,
}

impl Gate {
    /// The gate of `ingest`, on the site it appends to.
    pub fn new(ingest: Ingest, limits: Limits) -> Gate {
        Gate {
            state: ingest.state(),
            ingest,
            limits,
        }
    }

    /// Read a request body's events as `binding` says; those without a
    /// `traceparent` continue `request_trace` (the HTTP `traceparent`, or
    /// the request span of an ingress that exports one).
    pub fn read_in(
        &self,
        binding: Binding,
        headers: &HeaderMap,
        body: &[u8],
        limits: &Limits,
        request_trace: Option<TraceParent>,
    ) -> Result<Vec<ReadEntry>, BindingError> {
        let parsed = match binding {
            Binding::Request => parse_request_in(headers, body, limits, request_trace),
            Binding::Structured => parse_structured(body, request_trace, limits),
            Binding::Batch => parse_batch(body, request_trace, limits),
        }?;
        Ok(read_entries(parsed))
    }

    /// The node's limits, as the ingresses in `strait_adapters` take them.
    pub fn event_limits(&self) -> EventLimits {
        EventLimits {
            max_event_bytes: self.limits.max_event_bytes,
            max_request_bytes: self.limits.max_request_bytes,
            max_batch_events: self.limits.max_batch_events,
        }
    }
}

/// Entries of the CloudEvents binding as an ingress reads them.
pub fn read_entries(parsed: Entries) -> Vec<ReadEntry> {
    parsed
        .into_iter()
        .map(|(id, r)| ReadEntry {
            id,
            event: r
                .map(|p| CheckedEvent {
                    event: p.event,
                    json: p.json,
                })
                .map_err(|e| EntryRefusal {
                    code: e.code(),
                    message: e.to_string(),
                }),
        })
        .collect()
}

impl From<CommitError> for IngestError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::NotReady(m) => IngestError::NotReady(m),
            CommitError::Failed(m) => IngestError::Failed(m),
            CommitError::StateFull(full) => IngestError::StateFull {
                message: full.to_string(),
                limit: full.limit,
                stored: full.stored,
            },
        }
    }
}

impl strait_adapters::Ingest for Gate {
    fn bus_exists(&self, bus: &str) -> bool {
        self.state.view().buses.contains_key(bus)
    }

    fn read(
        &self,
        binding: Binding,
        headers: &HeaderMap,
        body: &[u8],
        limits: &EventLimits,
    ) -> Result<Vec<ReadEntry>, BindingError> {
        let limits = Limits {
            max_event_bytes: limits.max_event_bytes,
            max_request_bytes: limits.max_request_bytes,
            max_batch_events: limits.max_batch_events,
        };
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        self.read_in(binding, headers, body, &limits, traceparent)
    }

    fn submit(&self, offers: Vec<Offer>) -> IngestFuture<'_> {
        self.submit_in(offers, None)
    }
}

impl Gate {
    /// [`strait_adapters::Ingest::submit`], with the events an ingress
    /// built itself ([`Offer::Event`]) that carry no `traceparent`
    /// continuing `request_trace` (the request span of an ingress that
    /// exports one) instead of starting a trace each.
    pub fn submit_in(
        &self,
        offers: Vec<Offer>,
        request_trace: Option<TraceParent>,
    ) -> IngestFuture<'_> {
        Box::pin(async move {
            let mut entries = Vec::with_capacity(offers.len());
            let mut invalid: Vec<Option<String>> = vec![None; offers.len()];
            let mut slots = Vec::new();
            let mut events = Vec::new();
            let mut buses = Vec::new();
            for (i, o) in offers.into_iter().enumerate() {
                match o {
                    Offer::Event { bus, event } => {
                        match serde_json::value::to_raw_value(&event) {
                            Ok(raw) => {
                                slots.push(i);
                                events.push(raw);
                            }
                            Err(e) => invalid[i] = Some(format!("cannot encode the event: {e}")),
                        }
                        entries.push(Entry::Refused { bus: bus.clone() });
                        buses.push(bus);
                    }
                    Offer::Checked { bus, event } => {
                        entries.push(super::append_entry(&event.event, event.json, bus));
                        buses.push(String::new());
                    }
                    Offer::Refused { bus } => {
                        entries.push(Entry::Refused { bus });
                        buses.push(String::new());
                    }
                }
            }
            for (slot, (_, r)) in
                slots
                    .into_iter()
                    .zip(parse_items(&events, request_trace, &self.limits))
            {
                match r {
                    Ok(p) => {
                        entries[slot] = p.into_entry(std::mem::take(&mut buses[slot]));
                    }
                    Err(e) => invalid[slot] = Some(e.to_string()),
                }
            }
            let outcomes = self.ingest.submit(entries).await?;
            Ok(outcomes
                .into_iter()
                .zip(invalid)
                .map(|(o, invalid)| match (o, invalid) {
                    (_, Some(m)) => IngestOutcome::Invalid(m),
                    (Outcome::Accepted, None) => IngestOutcome::Accepted,
                    (Outcome::Duplicate, None) => IngestOutcome::Duplicate,
                    (Outcome::NoSuchBus, None) => IngestOutcome::NoSuchBus,
                    (Outcome::Refused, None) => IngestOutcome::Refused,
                })
                .collect())
        })
    }
}
