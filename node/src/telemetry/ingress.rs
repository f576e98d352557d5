//! The spans of the ingresses: one SERVER span per request
//! ([`RequestSpan`]), which the events of the request without a trace of
//! their own continue and which links to the traces of the others, and the
//! [`TracedGate`] through which an ingress in `strait_adapters` hands its
//! events so that the request span sees them.

use std::sync::Mutex;

use http::HeaderMap;
use opentelemetry::trace::SpanKind;
use strait_adapters::{Binding, BindingError, EventLimits, IngestFuture, Offer, ReadEntry};

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
                .attr("http.route", route.to_string())
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

