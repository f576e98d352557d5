//! The node's side of the vendor ingresses and sources in
//! `strait_adapters`: a [`Gate`] is the [`strait_adapters::Ingest`] they
//! hand their events to,
//! which checks each event as the CloudEvents binding does and submits them
//! through [`Ingest::submit`].

use std::sync::Arc;

use strait_adapters::{IngestFuture, IngestOutcome, Offer};
use strait_federation::SiteState;

use super::{Entry, Ingest, Outcome, parse_items};
use crate::config::Limits;

/// The submit path as an ingress adapter sees it.
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
}

impl strait_adapters::Ingest for Gate {
    fn bus_exists(&self, bus: &str) -> bool {
        self.state.view().buses.contains_key(bus)
    }

    fn submit(&self, offers: Vec<Offer>) -> IngestFuture<'_> {
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
                    Offer::Refused { bus } => {
                        entries.push(Entry::Refused { bus });
                        buses.push(String::new());
                    }
                }
            }
            for (slot, (_, r)) in slots
                .into_iter()
                .zip(parse_items(&events, None, &self.limits))
            {
                match r {
                    Ok(p) => {
                        entries[slot] = p.into_entry(std::mem::take(&mut buses[slot]));
                    }
                    Err(e) => invalid[slot] = Some(e.to_string()),
                }
            }
            let outcomes = self.ingest.submit(entries).await.map_err(|e| match e {
                super::CommitError::NotReady(m) | super::CommitError::Failed(m) => m,
                e @ super::CommitError::StateFull(_) => e.to_string(),
            })?;
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
