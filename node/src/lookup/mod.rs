//! "Where did my event go?": one event and what became of its deliveries,
//! read from this site's replicated state by any of its nodes
//! ([`lookup_local`]), and a bus's events, paged ([`list_local`]).
//!
//! A delivery's status comes from, in order:
//! - the delivery journal (`strait_federation::journal`): deliveries with
//!   a failed attempt, dead letters, drops, and (at the site that delivers
//!   them) deliveries made for another site;
//! - a target of this site whose cursor passed the event: delivered, at
//!   the time of the checkpoint that moved the cursor past it (its mark);
//! - a target at another site whose cursor here passed the event: handed to
//!   the link, `in-transit` (the other site knows more);
//! - otherwise `pending`.
//!
//! Nothing here knows HTTP: the API, the CLI's server side and the
//! site-to-site query answer from the same functions.

pub mod model;
pub mod sites;

use std::collections::HashMap;

use serde_json::Value;
use strait_federation::journal::{Attempt, AttemptOutcome, DeliveryStatus, JournalEntry};
use strait_federation::store::state::target_key;
use strait_federation::{EventFilter, FoundEvent, LookupError, SiteState, StoredEvent};

use crate::config::rule::RuleSpec;
pub use model::{AttemptView, DeliveryView, EventList, EventSummary, Lookup, rfc3339};

/// Events one page of [`list_local`] reads at most (it then ends with a
/// cursor to go on from).
pub const LIST_SCAN_CAP: usize = 10_000;

/// Why an event cannot be looked up (or a bus listed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupFailure {
    /// No such bus at this site.
    #[error("bus `{bus}` does not exist")]
    BusNotFound {
        /// The bus.
        bus: String,
    },
    /// No such event on the bus (never posted, or past the retention).
    #[error("no event with id `{id}`{} on bus `{bus}` (never posted here, or older than the retention)", event_source.as_ref().map(|s| format!(" and source `{s}`")).unwrap_or_default())]
    EventNotFound {
        /// The bus.
        bus: String,
        /// The source asked for.
        event_source: Option<String>,
        /// The id.
        id: String,
    },
    /// Not at this site nor at any linked site that answered; the others
    /// did not answer (see [`sites`]).
    #[error("no event with id `{id}`{} on bus `{bus}` at this site or the linked sites that answered; no answer from {}", event_source.as_ref().map(|s| format!(" and source `{s}`")).unwrap_or_default(), unreachable_sites.join(", "))]
    NotFoundAt {
        /// The bus.
        bus: String,
        /// The source asked for.
        event_source: Option<String>,
        /// The id.
        id: String,
        /// The linked sites that did not answer.
        unreachable_sites: Vec<String>,
    },
    /// Several sources posted an event with this id: the source must be
    /// named.
    #[error("events of several sources on bus `{bus}` have id `{id}` ({}): name one with `source`", sources.join(", "))]
    Ambiguous {
        /// The bus.
        bus: String,
        /// The id.
        id: String,
        /// Their sources.
        sources: Vec<String>,
    },
    /// Finding the event would read too much (see
    /// [`strait_federation::LookupError::TooManyToScan`]).
    #[error("the search read {scanned} stored rows without finding the event; name its `source`")]
    TooManyToScan {
        /// Rows read.
        scanned: u64,
    },
    /// The state could not be read.
    #[error("{0}")]
    Storage(String),
}

impl From<LookupError> for LookupFailure {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::TooManyToScan { scanned } => LookupFailure::TooManyToScan { scanned },
            LookupError::Storage(e) => LookupFailure::Storage(format!("state read failed: {e}")),
        }
    }
}

fn storage<E: std::fmt::Display>(e: E) -> LookupFailure {
    LookupFailure::Storage(format!("state read failed: {e}"))
}

/// The event `(bus, source, id)` that entered at this site (`site`) and
/// what became of its deliveries, as far as this site knows: deliveries
/// to other sites' targets say `in-transit` once handed to the link (the
/// cross-site lookup asks those sites). With `source` `None` the event is
/// found by id alone (an error if several sources used that id).
pub fn lookup_local(
    state: &SiteState,
    site: &str,
    bus: &str,
    source: Option<&str>,
    id: &str,
) -> Result<Lookup, LookupFailure> {
    if !state.view().buses.contains_key(bus) {
        return Err(LookupFailure::BusNotFound {
            bus: bus.to_string(),
        });
    }
    let found = pick(bus, source, id, state.find_event(bus, source, id)?)?;
    let event: Value = serde_json::from_slice(&found.json)
        .map_err(|e| LookupFailure::Storage(format!("the stored event is not JSON: {e}")))?;
    let trace_id = trace_id(&event);
    let entries = state
        .journal_of(bus, &found.source, id, found.ingest_ms)
        .map_err(storage)?;
    let redrives = crate::redrive::redrive_entries(&entries)
        .map(|e| DeliveryView::from_entry(site, e))
        .collect();
    let journal: HashMap<(String, String), JournalEntry> = entries
        .into_iter()
        .filter(|e| e.origin.is_none())
        .map(|e| ((e.rule.clone(), e.target.clone()), e))
        .collect();
    let mut deliveries = Vec::new();
    for (rule, spec) in matching_rules(state, bus, &event) {
        for t in &spec.targets {
            let t_site = t.site.clone().unwrap_or_else(|| site.to_string());
            let here = t_site == site;
            let entry = journal.get(&(rule.clone(), t.id.clone()));
            let key = target_key(bus, &rule, &t.id);
            if state.mark_after(&key, found.seq).map_err(storage)?
                == Some(strait_federation::store::state::START_MARK)
            {
                // The target was created after the event: not its to deliver.
                continue;
            }
            let passed = state
                .view()
                .cursors
                .get(&key)
                .is_some_and(|c| *c > found.seq);
            let view = match entry {
                // The origin's entry of a remote target says how the
                // hand-over went (a full outbox, a hop limit).
                Some(e) if here || !passed || e.status.is_final() => {
                    let mut v = DeliveryView::from_entry(&t_site, e);
                    v.site = t_site.clone();
                    v
                }
                _ => {
                    let status = match (here, passed) {
                        (_, false) => DeliveryStatus::Pending,
                        (true, true) => DeliveryStatus::Delivered,
                        (false, true) => DeliveryStatus::InTransit,
                    };
                    let mut attempts = Vec::new();
                    if here
                        && passed
                        && let Some(ms) = state.mark_after(&key, found.seq).map_err(storage)?
                    {
                        attempts.push(AttemptView::from(&Attempt {
                            time_ms: ms,
                            outcome: AttemptOutcome::Delivered,
                            http_status: None,
                            error: None,
                        }));
                    }
                    DeliveryView {
                        site: t_site.clone(),
                        rule: rule.clone(),
                        target: t.id.clone(),
                        status,
                        attempts,
                        omitted_attempts: 0,
                        reason: None,
                    }
                }
            };
            deliveries.push(view);
        }
    }
    Ok(Lookup {
        event,
        trace_id,
        site: site.to_string(),
        bus: bus.to_string(),
        sequence: found.seq,
        ingest_time: rfc3339(found.ingest_ms),
        ingest_ms: found.ingest_ms,
        deliveries,
        redrives,
        unreachable_sites: Vec::new(),
    })
}

/// The deliveries this site (`site`) made, or is making, for the site
/// `origin` of its event `(bus, source, id)` ingested there at
/// `origin_ingest_ms` (from the journal: such deliveries are always
/// recorded).
pub fn deliveries_here(
    state: &SiteState,
    site: &str,
    origin: &str,
    bus: &str,
    source: &str,
    id: &str,
    origin_ingest_ms: u64,
) -> Result<Vec<DeliveryView>, LookupFailure> {
    let mut out: Vec<DeliveryView> = state
        .journal_of(bus, source, id, origin_ingest_ms)
        .map_err(storage)?
        .iter()
        .filter(|e| e.origin.as_deref() == Some(origin))
        .map(|e| DeliveryView::from_entry(site, e))
        .collect();
    out.sort_by(|a, b| (&a.rule, &a.target).cmp(&(&b.rule, &b.target)));
    Ok(out)
}

/// The one event of `found` the lookup is about: the latest when one
/// source posted the id again after its dedup window.
fn pick(
    bus: &str,
    source: Option<&str>,
    id: &str,
    mut found: Vec<FoundEvent>,
) -> Result<FoundEvent, LookupFailure> {
    let mut sources: Vec<String> = found.iter().map(|f| f.source.clone()).collect();
    sources.sort();
    sources.dedup();
    if sources.len() > 1 {
        return Err(LookupFailure::Ambiguous {
            bus: bus.to_string(),
            id: id.to_string(),
            sources,
        });
    }
    found.sort_by_key(|f| f.seq);
    found.pop().ok_or_else(|| LookupFailure::EventNotFound {
        bus: bus.to_string(),
        event_source: source.map(str::to_string),
        id: id.to_string(),
    })
}

/// The trace of `event`'s spans: its `traceparent`'s trace, or the one
/// Strait derives when it carries none.
fn trace_id(event: &Value) -> String {
    match strait_routing::event::Event::from_structured(event.clone()) {
        Ok(e) => crate::telemetry::delivery_parent(&e).trace_id_hex(),
        Err(_) => event
            .get("traceparent")
            .and_then(Value::as_str)
            .and_then(crate::trace::TraceParent::parse)
            .map(|t| t.trace_id_hex())
            .unwrap_or_default(),
    }
}

/// The enabled rules of `bus` whose pattern matches `event`, by name.
fn matching_rules(state: &SiteState, bus: &str, event: &Value) -> Vec<(String, RuleSpec)> {
    let rules: Vec<(String, Value)> = state
        .view()
        .rules
        .iter()
        .filter(|((b, _), _)| b == bus)
        .map(|((_, r), v)| (r.clone(), v.clone()))
        .collect();
    let mut out = Vec::new();
    for (name, json) in rules {
        let compiled = serde_json::from_value::<RuleSpec>(json)
            .map_err(|e| e.to_string())
            .and_then(|s| s.compile().map_err(|e| e.to_string()));
        match compiled {
            Ok(c) if c.spec.enabled && c.pattern.matches(event) => out.push((name, c.spec)),
            Ok(_) => {}
            Err(e) => tracing::warn!(bus, rule = name, error = %e, "stored rule does not compile"),
        }
    }
    out
}

/// A page of `bus`'s events that pass `filter`, from `cursor` (a previous
/// page's `nextCursor`) up, at most `limit`.
pub fn list_local(
    state: &SiteState,
    bus: &str,
    filter: &EventFilter,
    cursor: Option<u64>,
    limit: usize,
) -> Result<EventList, LookupFailure> {
    if !state.view().buses.contains_key(bus) {
        return Err(LookupFailure::BusNotFound {
            bus: bus.to_string(),
        });
    }
    let page = state
        .list_events(bus, filter, cursor.unwrap_or(0), limit, LIST_SCAN_CAP)
        .map_err(storage)?;
    Ok(EventList {
        events: page.events.iter().map(summary).collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    })
}

fn summary(e: &StoredEvent) -> EventSummary {
    let v: Value = serde_json::from_slice(&e.json).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    EventSummary {
        id: s("id").unwrap_or_default(),
        source: s("source").unwrap_or_default(),
        event_type: s("type").unwrap_or_default(),
        subject: s("subject"),
        time: s("time"),
        sequence: e.seq,
        ingest_time: rfc3339(e.ingest_ms),
    }
}
