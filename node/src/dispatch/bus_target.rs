//! The `bus` target: re-ingest the (transformed) event on a bus, committed
//! into the delivering site's log and routed again by that site's rules.
//!
//! `{"type": "bus", "bus": "audit"}` re-ingests at the site where the event
//! entered; with `"site": "aws"` the delivery crosses the link first and the
//! AWS site re-ingests it (its inbox worker builds this sink).
//!
//! Every re-ingested event carries its provenance as extension attributes:
//!
//! * `straithops` — how many times it has been passed on (each link
//!   crossing and each same-site re-ingest counts one; a bus target at
//!   another site is one hop, the link's). At [`MAX_HOPS`] it is not passed
//!   on again: the delivery fails permanently with a hop-limit reason and
//!   goes to the rule's dead letter, so loops (bus targets pointing at each
//!   other, at one site or across sites) stop.
//! * `straitorigin` — the site where the event first entered (kept from hop
//!   to hop).
//! * `straitvia` — `site/bus/rule/target` of the rule target that passed it
//!   on last.
//!
//! The dedup key of a re-ingest is the event's `source` and `id` plus the
//! `straitvia` and hop count, so the same forward repeated (a retried
//! attempt, a resent link batch, a leader change) is stored once, while a
//! loop's later rounds (a higher hop count) are not mistaken for repeats.

use std::sync::Arc;

use opentelemetry::trace::SpanKind;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use strait_adapters::{DeliveryError, DeliveryFuture, Sink};
use strait_federation::AppendEntry;
use strait_routing::event::Event;

use crate::config::bus_target::{BusSettings, BusTargetError};
use crate::ingest::{Ingest, Outcome};
use crate::links::hops::{HOPS_ATTR, MAX_HOPS, ORIGIN_ATTR, VIA_ATTR, hop_limit_error, hops_of};
use crate::telemetry::EventSpan;
use crate::trace::TraceParent;

/// Where a re-ingest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The site whose rule passed the event on.
    pub site: String,
    /// That rule's bus.
    pub bus: String,
    /// The rule.
    pub rule: String,
    /// The target.
    pub target: String,
}

impl Provenance {
    /// `site/bus/rule/target`.
    pub fn via(&self) -> String {
        format!("{}/{}/{}/{}", self.site, self.bus, self.rule, self.target)
    }
}

/// The event to re-ingest and its append entry: provenance attributes set,
/// hops counted (`count_hop`: false when the link already counted this hop).
pub fn reingest_entry(
    event: &Event,
    bus: &str,
    from: &Provenance,
    count_hop: bool,
    traceparent: &str,
) -> Result<AppendEntry, DeliveryError> {
    let hops = hops_of(event);
    let hops = if count_hop {
        if hops >= MAX_HOPS {
            return Err(hop_limit_error(hops));
        }
        hops + 1
    } else {
        hops
    };
    let mut ev = event.clone();
    let via = from.via();
    ev.set_attr(HOPS_ATTR, Value::from(hops));
    if ev.str_attr(ORIGIN_ATTR).is_none() {
        ev.set_attr(ORIGIN_ATTR, Value::String(from.site.clone()));
    }
    ev.set_attr(VIA_ATTR, Value::String(via.clone()));
    if !traceparent.is_empty() {
        ev.set_attr("traceparent", Value::String(traceparent.to_string()));
    }
    let json = String::from_utf8(ev.to_json_bytes())
        .map_err(|e| DeliveryError::Permanent(format!("cannot encode the event: {e}")))?;
    // A transform can make an event deeper than routing reads: refuse it
    // here (dead letter) rather than store what the bus cannot route.
    strait_routing::json::check_event_json(json.as_bytes()).map_err(|e| {
        DeliveryError::Permanent(format!("the event cannot be routed on bus `{bus}`: {e}"))
    })?;
    let raw = RawValue::from_string(json)
        .map_err(|e| DeliveryError::Permanent(format!("cannot encode the event: {e}")))?;
    Ok(AppendEntry {
        bus: bus.to_string(),
        source: ev.source().to_string(),
        id: format!("{}\u{1f}{via}\u{1f}{hops}", ev.id()),
        event: raw,
    })
}

/// A running `bus` target.
pub struct BusSink {
    /// The bus to re-ingest on.
    pub bus: String,
    /// This site.
    pub site: String,
    /// Where the events come from.
    pub from: Provenance,
    /// Count a hop here (false for a delivery that crossed a link: the
    /// link counted it).
    pub count_hop: bool,
    /// The submit path of this node.
    pub ingest: Ingest,
}

impl BusSink {
    /// Build from a target's settings.
    pub fn new(
        settings: &Map<String, Value>,
        site: &str,
        from: Provenance,
        count_hop: bool,
        ingest: Ingest,
    ) -> Result<Arc<BusSink>, BusTargetError> {
        let s = BusSettings::from_settings(settings)?;
        Ok(Arc::new(BusSink {
            bus: s.bus,
            site: site.to_string(),
            from,
            count_hop,
            ingest,
        }))
    }
}

impl Sink for BusSink {
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let entry = reingest_entry(event, &self.bus, &self.from, self.count_hop, traceparent)?;
            // The re-ingested event names this attempt's span: its `publish`
            // span on the new bus is this attempt's child.
            let mut span = match TraceParent::parse(traceparent) {
                Some(tp) => {
                    let (me, parent) =
                        crate::telemetry::publish_span_of(&tp, event.source(), event.id());
                    let mut span = EventSpan::start("publish", SpanKind::Producer, &me, parent);
                    span.event(event, &self.bus)
                        .attr("messaging.operation.type", "send");
                    span
                }
                None => EventSpan::none(),
            };
            let outcome = self
                .ingest
                .reingest(entry)
                .await
                .map_err(|e| DeliveryError::Retryable(e.to_string()))?;
            if matches!(outcome, Outcome::Accepted | Outcome::Duplicate) {
                span.ok().end();
            }
            match outcome {
                Outcome::Accepted => {
                    metrics::counter!("strait_bus_target_reingested_total", "bus" => self.bus.clone())
                        .increment(1);
                    Ok(())
                }
                Outcome::Duplicate => Ok(()),
                Outcome::NoSuchBus | Outcome::Refused => Err(DeliveryError::Permanent(format!(
                    "bus {:?} does not exist at site {}",
                    self.bus, self.site
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from() -> Provenance {
        Provenance {
            site: "idc".into(),
            bus: "a".into(),
            rule: "r".into(),
            target: "t".into(),
        }
    }

    fn event(hops: Option<Value>) -> Event {
        let mut v = json!({"specversion": "1.0", "id": "e1", "source": "/s", "type": "t"});
        if let Some(h) = hops {
            v[HOPS_ATTR] = h;
        }
        Event::from_structured(v).expect("event")
    }

    fn decode(entry: &AppendEntry) -> Value {
        serde_json::from_str(entry.event.get()).expect("json")
    }

    #[test]
    fn a_reingest_counts_a_hop_and_names_its_provenance() {
        let e = reingest_entry(&event(None), "b", &from(), true, "").expect("entry");
        let v = decode(&e);
        assert_eq!(v[HOPS_ATTR], json!(1));
        assert_eq!(v[ORIGIN_ATTR], json!("idc"));
        assert_eq!(v[VIA_ATTR], json!("idc/a/r/t"));
        assert_eq!(e.bus, "b");
        // The origin is kept from the first hop; the link-counted hop is not counted again.
        let mut ev = event(Some(json!("3")));
        ev.set_attr(ORIGIN_ATTR, json!("aws"));
        let e2 = reingest_entry(&ev, "b", &from(), false, "").expect("entry");
        let v2 = decode(&e2);
        assert_eq!(v2[HOPS_ATTR], json!(3));
        assert_eq!(v2[ORIGIN_ATTR], json!("aws"));
        // Each round of a loop has its own dedup key; a repeat has the same one.
        assert_ne!(e.id, e2.id);
        let again = reingest_entry(&event(None), "b", &from(), true, "").expect("entry");
        assert_eq!(e.id, again.id);
    }

    /// A transform can deepen data past what routing reads: the re-ingest
    /// fails permanently (dead letter) instead of storing an event the bus
    /// cannot route.
    #[test]
    fn an_event_routing_cannot_read_is_not_reingested() {
        // The event object is one level, so this is one too many.
        let depth = strait_routing::json::MAX_JSON_DEPTH;
        let mut data = json!(1);
        for _ in 0..depth {
            data = json!([data]);
        }
        let mut ev = event(None);
        ev.replace_data(data.clone(), "application/json");
        match reingest_entry(&ev, "b", &from(), true, "") {
            Err(DeliveryError::Permanent(m)) => {
                assert!(m.contains("cannot be routed on bus `b`"), "{m}");
                assert!(m.contains("too deep"), "{m}");
            }
            other => panic!("unexpected {other:?}"),
        }
        ev.replace_data(data[0].clone(), "application/json");
        assert!(reingest_entry(&ev, "b", &from(), true, "").is_ok());
    }

    /// A same-site loop (bus a → bus b → bus a ...): each re-ingest counts
    /// one hop, and the re-ingest that would exceed the limit fails
    /// permanently (so the event is dead-lettered) after MAX_HOPS rounds.
    #[test]
    fn a_same_site_loop_stops_at_the_hop_limit() {
        let mut ev = event(None);
        let mut reingests = 0;
        let err = loop {
            match reingest_entry(&ev, "b", &from(), true, "") {
                Ok(entry) => {
                    reingests += 1;
                    ev = Event::from_structured(decode(&entry)).expect("event");
                    assert!(reingests <= MAX_HOPS, "the loop did not stop");
                }
                Err(e) => break e,
            }
        };
        assert_eq!(reingests, MAX_HOPS);
        match err {
            DeliveryError::Permanent(m) => assert!(m.contains("hop limit"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
