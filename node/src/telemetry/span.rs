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

use opentelemetry::trace::SpanKind;
use opentelemetry::{InstrumentationScope, Value};

use super::otlp;
use crate::trace::TraceParent;

/// One span of an event's trace (see the module documentation).
///
/// A recording span is its OTLP `Span` message, encoded as it is built:
/// ids, name, kind and times when it starts, each attribute when it is
/// set, links and status when it ends. Ending it hands one buffer to the
/// export thread, which only copies it into the request; the event path
/// makes two allocations per span instead of one per attribute, and the
/// export thread reads one contiguous buffer (reading many small
/// allocations made on another core, and freeing them there, was most of
/// its cost).
#[derive(Debug, Default)]
pub struct EventSpan(Option<Box<Open>>);

/// A recording span (see [`EventSpan`]).
#[derive(Debug)]
struct Open {
    /// The `Span` message so far: fields 1 to 9 (ids, name, kind, times,
    /// attributes), in field order, as protobuf encoders write them.
    buf: Vec<u8>,
    /// Where the start time's 8 bytes are in `buf`.
    start_at: usize,
    /// Where the end time's 8 bytes are in `buf` (written when it ends).
    end_at: usize,
    start: SystemTime,
    /// Spans of other traces this one links to (written when it ends,
    /// after the attributes, as field order wants).
    links: Vec<TraceParent>,
    status: Status,
    parent_is_remote: bool,
}

#[derive(Debug)]
enum Status {
    Unset,
    Ok,
    Error(String),
}

/// A span's body takes about 400 bytes with an event's attributes.
const SPAN_CAPACITY: usize = 512;

impl Open {
    fn new(
        name: &str,
        kind: SpanKind,
        me: &TraceParent,
        parent: Option<[u8; 8]>,
        now: SystemTime,
    ) -> Open {
        let mut buf = Vec::with_capacity(SPAN_CAPACITY);
        otlp::bytes(&mut buf, 1, &me.trace_id);
        otlp::bytes(&mut buf, 2, &me.span_id);
        if let Some(p) = parent {
            otlp::bytes(&mut buf, 4, &p);
        }
        otlp::string(&mut buf, 5, name);
        otlp::varint_field(&mut buf, 6, otlp::kind(kind));
        let start_at = otlp::fixed64_slot(&mut buf, 7, otlp::nanos(now));
        let end_at = otlp::fixed64_slot(&mut buf, 8, otlp::nanos(now));
        Open {
            buf,
            start_at,
            end_at,
            start: now,
            links: Vec::new(),
            status: Status::Unset,
            parent_is_remote: parent.is_some(),
        }
    }

    /// The finished `Span` message, ended at `end` (not before its start).
    fn finish(mut self, end: SystemTime) -> Vec<u8> {
        let end = otlp::nanos(end.max(self.start));
        self.buf[self.end_at..self.end_at + 8].copy_from_slice(&end.to_le_bytes());
        for to in &self.links {
            otlp::link(&mut self.buf, 13, to);
        }
        let (code, message) = match &self.status {
            Status::Unset => (0, None),
            Status::Ok => (1, None),
            Status::Error(m) => (2, Some(m.as_str())),
        };
        otlp::status(&mut self.buf, 15, code, message);
        otlp::fixed32(&mut self.buf, 16, otlp::flags(self.parent_is_remote, 1));
        self.buf
    }
}

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
        EventSpan(Some(Box::new(Open::new(
            &name.into(),
            kind,
            me,
            parent,
            SystemTime::now(),
        ))))
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
        if let Some(o) = &mut self.0 {
            o.start = at;
            let at = o.start_at;
            o.buf[at..at + 8].copy_from_slice(&otlp::nanos(o.start).to_le_bytes());
        }
        self
    }

    /// Whether this span records (and will be exported when ended).
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// Set an attribute.
    pub fn attr(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        if let Some(o) = &mut self.0 {
            otlp::attribute(&mut o.buf, 9, key, &value.into());
        }
        self
    }

    /// Set a string attribute from a borrowed string (nothing copied when
    /// the span does not record).
    pub fn attr_str(&mut self, key: &'static str, value: &str) -> &mut Self {
        if let Some(o) = &mut self.0 {
            otlp::string_attribute(&mut o.buf, 9, key, value);
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
        if let Some(o) = &mut self.0 {
            let b = &mut o.buf;
            otlp::string_attribute(b, 9, "cloudevents.event_id", id);
            otlp::string_attribute(b, 9, "cloudevents.event_source", source);
            otlp::string_attribute(b, 9, "cloudevents.event_type", event_type);
            otlp::string_attribute(b, 9, "cloudevents.event_spec_version", "1.0");
            otlp::string_attribute(b, 9, "messaging.system", "strait");
            otlp::string_attribute(b, 9, "messaging.destination.name", bus);
            otlp::string_attribute(b, 9, "messaging.message.id", id);
            if let Some(subject) = subject {
                otlp::string_attribute(b, 9, "cloudevents.event_subject", subject);
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
        if let Some(o) = &mut self.0 {
            o.links.push(*to);
        }
        self
    }

    /// Mark the span failed: status `Error` with `message`, and
    /// `error.type` = `kind`.
    pub fn fail(&mut self, kind: &'static str, message: impl Into<String>) -> &mut Self {
        if let Some(o) = &mut self.0 {
            otlp::string_attribute(&mut o.buf, 9, "error.type", kind);
            o.status = Status::Error(message.into());
        }
        self
    }

    /// Mark the span successful (status `Ok`).
    pub fn ok(&mut self) -> &mut Self {
        if let Some(o) = &mut self.0 {
            o.status = Status::Ok;
        }
        self
    }

    /// End the span now and hand it to the exporter (never blocks: a full
    /// export queue drops it and counts it). A span dropped without `end`
    /// is not exported.
    pub fn end(&mut self) {
        if let Some(o) = self.0.take() {
            super::export::submit(o.finish(SystemTime::now()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        Link, SpanContext, SpanId, Status as SdkStatus, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    /// Span `n` built the way the event path builds it, and the SDK's
    /// `SpanData` for the same span.
    fn span(n: u8, parent: Option<u8>, status: u8, kind: SpanKind) -> (Vec<u8>, SpanData) {
        let me = TraceParent {
            trace_id: [n; 16],
            span_id: [n.wrapping_add(1); 8],
            flags: 1,
        };
        let start = at(1_700_000_000_000_000_000 + u64::from(n));
        let end = at(1_700_000_000_000_500_000 + u64::from(n));
        let link_to = TraceParent {
            trace_id: [9; 16],
            span_id: [n; 8],
            flags: 1,
        };
        let name = format!("span {n}");
        let mut ours = EventSpan(Some(Box::new(Open::new(
            &name,
            kind.clone(),
            &me,
            parent.map(|p| [p; 8]),
            at(1),
        ))));
        ours.set_start(start);
        if n.is_multiple_of(2) {
            ours.link(&link_to);
        }
        ours.attr_str("cloudevents.event_id", &format!("id-{n}"))
            .attr("strait.delivery.attempt", i64::from(n))
            .attr("negative", -5_i64)
            .attr("flag", n.is_multiple_of(3))
            .attr("ratio", 0.25)
            .attr("empty", "")
            .attr(
                "list",
                Value::Array(Array::String(vec!["a".into(), "é".into()])),
            );
        let mut attributes = vec![
            KeyValue::new("cloudevents.event_id", format!("id-{n}")),
            KeyValue::new("strait.delivery.attempt", i64::from(n)),
            KeyValue::new("negative", -5_i64),
            KeyValue::new("flag", n.is_multiple_of(3)),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("empty", ""),
            KeyValue::new(
                "list",
                Value::Array(Array::String(vec!["a".into(), "é".into()])),
            ),
        ];
        let sdk_status = match status {
            0 => SdkStatus::Unset,
            1 => {
                ours.ok();
                SdkStatus::Ok
            }
            _ => {
                ours.fail("http_status", "retries exhausted; last error: HTTP 503");
                attributes.push(KeyValue::new("error.type", "http_status"));
                SdkStatus::error("retries exhausted; last error: HTTP 503")
            }
        };
        let mut links = SpanLinks::default();
        if n.is_multiple_of(2) {
            links.links.push(Link::with_context(SpanContext::new(
                TraceId::from_bytes(link_to.trace_id),
                SpanId::from_bytes(link_to.span_id),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )));
        }
        let sdk = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(me.trace_id),
                SpanId::from_bytes(me.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent.map_or(SpanId::INVALID, |p| SpanId::from_bytes([p; 8])),
            parent_span_is_remote: parent.is_some(),
            span_kind: kind,
            name: name.into(),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: sdk_status,
            instrumentation_scope: scope(),
        };
        let encoded = ours.0.take().map(|o| o.finish(end)).unwrap_or_default();
        (encoded, sdk)
    }

    #[test]
    fn the_bytes_decode_to_what_the_sdk_would_send() {
        let resource_attrs = [
            KeyValue::new("service.name", "strait"),
            KeyValue::new("strait.site", "idc"),
            KeyValue::new("strait.node", 3_i64),
        ];
        let (ours, theirs): (Vec<_>, Vec<_>) = [
            span(1, None, 0, SpanKind::Server),
            span(2, Some(1), 1, SpanKind::Producer),
            span(3, Some(2), 2, SpanKind::Client),
            span(200, Some(3), 0, SpanKind::Consumer),
            span(5, Some(3), 0, SpanKind::Internal),
        ]
        .into_iter()
        .unzip();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(resource_attrs)
            .build();
        // In the resource's own order (it keeps them in a map).
        let attrs: Vec<KeyValue> = resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let mut enc = otlp::Encoder::new(&attrs, &scope());
        for s in &ours {
            enc.push(s);
        }
        assert!(!enc.is_empty());
        let body = enc.finish();
        assert!(enc.is_empty(), "finish empties the batch");
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                theirs,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(decoded, theirs);
        // And byte for byte, as prost encodes the SDK's conversion.
        assert_eq!(body, theirs.encode_to_vec());
    }

    #[test]
    fn a_span_never_ends_before_it_starts() {
        let me = TraceParent {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 1,
        };
        let open = Open::new("x", SpanKind::Internal, &me, None, at(5_000));
        let body = open.finish(at(1_000));
        let req =
            opentelemetry_proto::tonic::trace::v1::Span::decode(body.as_slice()).expect("decodes");
        assert_eq!(req.start_time_unix_nano, 5_000);
        assert_eq!(req.end_time_unix_nano, 5_000);
    }
}
