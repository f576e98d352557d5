//! The spans of the ingresses: one SERVER span per request
//! ([`RequestSpan`]), which the events of the request without a trace of
//! their own continue and which links to the traces of the others, and the
//! [`TracedGate`] through which an ingress in `strait_adapters` hands its
//! events so that the request span sees them.

use std::sync::Mutex;

use http::HeaderMap;
use opentelemetry::trace::SpanKind;
use strait_adapters::{
    Binding, BindingError, EventLimits, IngestFuture, IngestOutcome, Offer, ReadEntry,
};

use super::EventSpan;
use crate::config::Limits;
use crate::ingest::Gate;
use crate::trace::TraceParent;

/// The SERVER span of one ingress request: a child of the request's HTTP
/// `traceparent` (or the root of a new trace).
pub struct RequestSpan {
    span: EventSpan,
    me: TraceParent,
    header: Option<TraceParent>,
    events: usize,
}

impl RequestSpan {
    /// Start the span of a `POST` to `route` (its name is `POST {route}`),
    /// continuing the `traceparent` of `headers`.
    pub fn post(route: &str, headers: &HeaderMap) -> RequestSpan {
        let header = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let me = header.map_or_else(super::new_trace, |h| h.child());
        let mut span = EventSpan::start(
            format!("POST {route}"),
            SpanKind::Server,
            &me,
            header.map(|h| h.span_id),
        );
        if span.recording() {
            span.attr("http.request.method", "POST")
                .attr_str("http.route", route)
                .attr("messaging.system", "strait")
                .attr("messaging.operation.type", "receive");
        }
        RequestSpan {
            span,
            me,
            header,
            events: 0,
        }
    }

    /// Whether the span records.
    pub fn recording(&self) -> bool {
        self.span.recording()
    }

    /// The trace the request's events without one of their own continue:
    /// this span when it records, else the HTTP `traceparent`.
    pub fn request_trace(&self) -> Option<TraceParent> {
        if self.span.recording() {
            Some(self.me)
        } else {
            self.header
        }
    }

    /// Set an attribute.
    pub fn attr(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.span.attr(key, value);
    }

    /// Set a string attribute from a borrowed string.
    pub fn attr_str(&mut self, key: &'static str, value: &str) {
        self.span.attr_str(key, value);
    }

    /// One event of the request, whose `traceparent` is `tp`: counted, and
    /// linked to when it is another trace's.
    pub fn event(&mut self, tp: Option<&str>) {
        if !self.span.recording() {
            return;
        }
        self.events += 1;
        if let Some(tp) = tp.and_then(TraceParent::parse)
            && tp.trace_id != self.me.trace_id
        {
            self.span.link(&tp);
        }
    }

    /// End the span with the response's HTTP `status` (a 5xx is an
    /// error).
    pub fn end(mut self, status: u16) {
        if !self.span.recording() {
            return;
        }
        self.span
            .attr("messaging.batch.message_count", self.events as i64)
            .attr("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.span.fail("http_status", format!("HTTP {status}"));
        }
        self.span.end();
    }
}

/// The node's [`Gate`] as one request's ingress sees it: events without a
/// `traceparent` continue the request span, and the span learns every
/// event (to link it).
pub struct TracedGate<'a> {
    gate: &'a Gate,
    request_trace: Option<TraceParent>,
    seen: Mutex<Vec<Option<String>>>,
}

impl<'a> TracedGate<'a> {
    /// The gate of `span`'s request.
    pub fn new(gate: &'a Gate, span: &RequestSpan) -> TracedGate<'a> {
        TracedGate {
            gate,
            request_trace: span.request_trace(),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Option<String>>> {
        match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Tell `span` of every event offered through this gate.
    pub fn report(&self, span: &mut RequestSpan) {
        for tp in self.seen().iter() {
            span.event(tp.as_deref());
        }
    }
}

impl strait_adapters::Ingest for TracedGate<'_> {
    fn bus_exists(&self, bus: &str) -> bool {
        strait_adapters::Ingest::bus_exists(self.gate, bus)
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
        self.gate
            .read_in(binding, headers, body, &limits, self.request_trace)
    }

    fn submit(&self, offers: Vec<Offer>) -> IngestFuture<'_> {
        {
            let mut seen = self.seen();
            for o in &offers {
                match o {
                    Offer::Checked { event, .. } => {
                        seen.push(event.event.str_attr("traceparent").map(str::to_string));
                    }
                    Offer::Event { event, .. } => seen.push(
                        event
                            .get("traceparent")
                            .and_then(serde_json::Value::as_str)
                            .map(str::to_string),
                    ),
                    Offer::Refused { .. } => {}
                }
            }
        }
        self.gate.submit_in(offers, self.request_trace)
    }
}

/// The node's [`Gate`] as a source sees it: each event the source offers
/// gets a CONSUMER `receive` span that continues the trace of the message
/// (the `traceparent` the source mapped, e.g. from SQS's `AWSTraceHeader`,
/// or a new trace), and the event continues that span; the span ends with
/// the outcome of the commit.
pub struct SourceGate {
    gate: Gate,
    /// The source's name (`strait.source`).
    name: String,
    /// `messaging.system` of what it reads (`aws_sqs`).
    system: &'static str,
    /// What it reads from (`messaging.destination.name`: the queue).
    from: String,
}

impl SourceGate {
    /// The gate of source `name`, reading from `from` of `system`.
    pub fn new(gate: Gate, name: &str, system: &'static str, from: &str) -> SourceGate {
        SourceGate {
            gate,
            name: name.to_string(),
            system,
            from: from.to_string(),
        }
    }

    /// The `receive` span of `event` (offered for `bus`), its
    /// `traceparent` set to the span's when the span records.
    fn receive_span(&self, event: &mut serde_json::Value, bus: &str) -> EventSpan {
        if !super::export::on() {
            return EventSpan::none();
        }
        let message = event
            .get("traceparent")
            .and_then(serde_json::Value::as_str)
            .and_then(TraceParent::parse);
        let me = message.map_or_else(super::new_trace, |m| m.child());
        let mut span = EventSpan::start(
            "receive",
            SpanKind::Consumer,
            &me,
            message.map(|m| m.span_id),
        );
        if !span.recording() {
            return span;
        }
        let attr = |k: &str| event.get(k).and_then(serde_json::Value::as_str);
        span.attr("messaging.system", self.system)
            .attr("messaging.operation.type", "receive")
            .attr_str("messaging.destination.name", &self.from)
            .attr_str("strait.source", &self.name)
            .attr_str("strait.bus", bus)
            .attr("cloudevents.event_id", attr("id").unwrap_or("").to_string())
            .attr(
                "cloudevents.event_source",
                attr("source").unwrap_or("").to_string(),
            );
        if let Some(t) = attr("type") {
            span.attr_str("cloudevents.event_type", t);
        }
        if let Some(m) = event.as_object_mut() {
            m.insert(
                "traceparent".into(),
                serde_json::Value::String(me.to_string()),
            );
        }
        span
    }
}

impl strait_adapters::Ingest for SourceGate {
    fn bus_exists(&self, bus: &str) -> bool {
        strait_adapters::Ingest::bus_exists(&self.gate, bus)
    }

    fn read(
        &self,
        binding: Binding,
        headers: &HeaderMap,
        body: &[u8],
        limits: &EventLimits,
    ) -> Result<Vec<ReadEntry>, BindingError> {
        strait_adapters::Ingest::read(&self.gate, binding, headers, body, limits)
    }

    fn submit(&self, mut offers: Vec<Offer>) -> IngestFuture<'_> {
        let spans: Vec<EventSpan> = offers
            .iter_mut()
            .map(|o| match o {
                Offer::Event { bus, event } => self.receive_span(event, bus),
                _ => EventSpan::none(),
            })
            .collect();
        Box::pin(async move {
            let r = strait_adapters::Ingest::submit(&self.gate, offers).await;
            for (i, mut span) in spans.into_iter().enumerate() {
                if !span.recording() {
                    continue;
                }
                match r.as_ref().map(|o| o.get(i)) {
                    Ok(Some(IngestOutcome::Accepted)) => {
                        span.ok();
                    }
                    Ok(Some(IngestOutcome::Duplicate)) => {
                        span.attr("strait.duplicate", true).ok();
                    }
                    Ok(Some(IngestOutcome::Invalid(m))) => {
                        span.fail("invalid_event", m.clone());
                    }
                    Ok(Some(IngestOutcome::NoSuchBus | IngestOutcome::Refused) | None) => {
                        span.fail("no_such_bus", "the source's bus does not exist");
                    }
                    Err(e) => {
                        span.fail("commit_failed", e.to_string());
                    }
                }
                span.end();
            }
            r
        })
    }
}
