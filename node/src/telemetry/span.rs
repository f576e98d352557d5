//! Spans about events, built by hand and handed to the exporter
//! ([`super::export`]) when they end.
//!
//! Strait does not export its `tracing` spans: they carry subscriber
//! internals and cannot take the ids the event path needs. An [`EventSpan`]
//! is plain data (ids, times, attributes from the OpenTelemetry CloudEvents
//! and messaging conventions) that can be held across awaits and ended
//! later; it costs nothing when traces are not exported or the trace is not
//! sampled (the W3C `sampled` flag, decided where the trace starts).
//!
//! The rule that keeps every trace one connected tree: **the `traceparent`
//! an event carries always names a span that is exported** (or the
//! producer's own span). Ingress writes the id of the event's `publish`
//! span into the event; a delivery attempt sends its own id on; the remote
//! site of a link replaces it with its `receive` span.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::trace::TraceParent;

/// One span of an event's trace (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct EventSpan(Option<Box<SpanData>>);

impl EventSpan {
    /// A span that records nothing.
    pub fn none() -> EventSpan {
        EventSpan(None)
    }

    /// Start the span `me` (its trace, its own id, its flags) now, as a
    /// child of span `parent` of the same trace (`None`: the trace's root).
    /// Records only while traces are exported and `me` is sampled.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        me: &TraceParent,
        parent: Option<[u8; 8]>,
    ) -> EventSpan {
        if !super::export::on() || me.flags & 1 == 0 {
            return EventSpan(None);
        }
        let now = SystemTime::now();
        EventSpan(Some(Box::new(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(me.trace_id),
                SpanId::from_bytes(me.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: parent.is_some(),
            span_kind: kind,
            name: name.into(),
            start_time: now,
            end_time: now,
            attributes: Vec::with_capacity(12),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope(),
        })))
    }

    /// Start a child of `parent` with a new span id; the returned
    /// `traceparent` names the new span (send it on).
    pub fn child(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &TraceParent,
    ) -> (EventSpan, TraceParent) {
        let me = parent.child();
        (EventSpan::start(name, kind, &me, Some(parent.span_id)), me)
    }

    /// Set the span's start time (a span about something that began
    /// before it was created: a link batch's arrival).
    pub fn set_start(&mut self, at: SystemTime) -> &mut Self {
        if let Some(d) = &mut self.0 {
            d.start_time = at;
        }
        self
    }

    /// Whether this span records (and will be exported when ended).
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// Set an attribute.
    pub fn attr(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        if let Some(d) = &mut self.0 {
            d.attributes.push(KeyValue::new(key, value));
        }
        self
    }

    /// The CloudEvents and messaging attributes of `event` on `bus`.
    pub fn event(&mut self, event: &strait_routing::event::Event, bus: &str) -> &mut Self {
        self.event_fields(
            event.id(),
            event.source(),
            event.event_type(),
            event.str_attr("subject"),
            bus,
        )
    }

    /// [`EventSpan::event`] from the attributes themselves (an event not
    /// parsed into an [`strait_routing::event::Event`]).
    pub fn event_fields(
        &mut self,
        id: &str,
        source: &str,
        event_type: &str,
        subject: Option<&str>,
        bus: &str,
    ) -> &mut Self {
        if let Some(d) = &mut self.0 {
            d.attributes.extend([
                KeyValue::new("cloudevents.event_id", id.to_string()),
                KeyValue::new("cloudevents.event_source", source.to_string()),
                KeyValue::new("cloudevents.event_type", event_type.to_string()),
                KeyValue::new("cloudevents.event_spec_version", "1.0"),
                KeyValue::new("messaging.system", "strait"),
                KeyValue::new("messaging.destination.name", bus.to_string()),
                KeyValue::new("messaging.message.id", id.to_string()),
            ]);
            if let Some(subject) = subject {
                d.attributes.push(KeyValue::new(
                    "cloudevents.event_subject",
                    subject.to_string(),
                ));
            }
        }
        self
    }

    /// [`EventSpan::event`] from an event's structured JSON (read where the
    /// event is not parsed into an [`strait_routing::event::Event`]).
    pub fn event_json(&mut self, event: &serde_json::Value, bus: &str) -> &mut Self {
        if self.0.is_none() {
            return self;
        }
        let attr = |k: &str| event.get(k).and_then(serde_json::Value::as_str);
        self.event_fields(
            attr("id").unwrap_or(""),
            attr("source").unwrap_or(""),
            attr("type").unwrap_or(""),
            attr("subject"),
            bus,
        )
    }

    /// Link this span to another trace's span (a batch request to the
    /// events it carried).
    pub fn link(&mut self, to: &TraceParent) -> &mut Self {
        if let Some(d) = &mut self.0 {
            d.links.links.push(Link::with_context(SpanContext::new(
                TraceId::from_bytes(to.trace_id),
                SpanId::from_bytes(to.span_id),
                TraceFlags::new(to.flags),
                true,
                TraceState::default(),
            )));
        }
        self
    }

    /// Mark the span failed: status `Error` with `message`, and
    /// `error.type` = `kind`.
    pub fn fail(&mut self, kind: &'static str, message: impl Into<String>) -> &mut Self {
        if let Some(d) = &mut self.0 {
            d.attributes.push(KeyValue::new("error.type", kind));
            d.status = Status::error(message.into());
        }
        self
    }

    /// Mark the span successful (status `Ok`).
    pub fn ok(&mut self) -> &mut Self {
        if let Some(d) = &mut self.0 {
            d.status = Status::Ok;
        }
        self
    }

    /// End the span now and hand it to the exporter (never blocks: a full
    /// export queue drops it and counts it). A span dropped without `end`
    /// is not exported.
    pub fn end(&mut self) {
        if let Some(mut d) = self.0.take() {
            d.end_time = SystemTime::now().max(d.start_time);
            super::export::submit(d);
        }
    }
}

/// The instrumentation scope of every span Strait exports.
pub(super) fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("strait")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}
