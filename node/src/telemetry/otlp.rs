//! OTLP/HTTP protobuf encoding of spans, written straight from the spans
//! into the request body, and the request that sends it.
//!
//! The OpenTelemetry SDK's exporter first converts every span into the
//! generated protobuf structs (a copy of every attribute key and value,
//! hash maps to group spans by scope) and then encodes those. At 100 %
//! sampling that conversion was most of the cost of tracing on a busy
//! node, on the same cores as the event path. Here each span is encoded
//! once, field by field, into a reused buffer: the bytes are the same
//! `ExportTraceServiceRequest` (a test decodes them with the
//! `opentelemetry-proto` crate and compares them with the SDK's
//! conversion).
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
const HAS_IS_REMOTE: u32 = 0x100;
/// `SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const IS_REMOTE: u32 = 0x200;

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

/// Encodes batches of spans of one resource and one instrumentation scope.
pub struct Encoder {
    /// `Resource` message (its attributes), encoded once.
    resource: Vec<u8>,
    /// `InstrumentationScope` message, encoded once.
    scope: Vec<u8>,
    /// The spans of the batch being built (each a `ScopeSpans.spans` field).
    spans: Vec<u8>,
    /// One span's body, reused.
    scratch: Vec<u8>,
    /// A nested message's body, reused (attribute values, links, status).
    inner: Vec<u8>,
}

impl Encoder {
    /// An encoder for spans of the resource with `attributes`, all in the
    /// instrumentation scope `scope`.
    pub fn new(attributes: &[KeyValue], scope: &InstrumentationScope) -> Encoder {
        let mut resource = Vec::new();
        let mut inner = Vec::new();
        for kv in attributes {
            key_value(&mut resource, &mut inner, 1, kv);
        }
        let mut s = Vec::new();
        string(&mut s, 1, scope.name());
        if let Some(v) = scope.version() {
            string(&mut s, 2, v);
        }
        for kv in scope.attributes() {
            key_value(&mut s, &mut inner, 3, kv);
        }
        Encoder {
            resource,
            scope: s,
            spans: Vec::with_capacity(1 << 20),
            scratch: Vec::with_capacity(1024),
            inner: Vec::with_capacity(256),
        }
    }

    /// Add one span to the batch.
    pub fn push(&mut self, span: &SpanData) {
        let b = &mut self.scratch;
        b.clear();
        bytes(b, 1, &span.span_context.trace_id().to_bytes());
        bytes(b, 2, &span.span_context.span_id().to_bytes());
        let state = span.span_context.trace_state().header();
        if !state.is_empty() {
            string(b, 3, &state);
        }
        if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
            bytes(b, 4, &span.parent_span_id.to_bytes());
        }
        string(b, 5, &span.name);
        let kind: u64 = match span.span_kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        };
        varint_field(b, 6, kind);
        fixed64(b, 7, nanos(span.start_time));
        fixed64(b, 8, nanos(span.end_time));
        for kv in &span.attributes {
            key_value(b, &mut self.inner, 9, kv);
        }
        varint_field(b, 10, u64::from(span.dropped_attributes_count));
        for event in span.events.iter() {
            let mut e = Vec::new();
            fixed64(&mut e, 1, nanos(event.timestamp));
            string(&mut e, 2, &event.name);
            let mut inner = Vec::new();
            for kv in &event.attributes {
                key_value(&mut e, &mut inner, 3, kv);
            }
            varint_field(&mut e, 4, u64::from(event.dropped_attributes_count));
            message(b, 11, &e);
        }
        varint_field(b, 12, u64::from(span.events.dropped_count));
        for link in span.links.iter() {
            let l = &mut self.inner;
            l.clear();
            bytes(l, 1, &link.span_context.trace_id().to_bytes());
            bytes(l, 2, &link.span_context.span_id().to_bytes());
            let state = link.span_context.trace_state().header();
            if !state.is_empty() {
                string(l, 3, &state);
            }
            let mut attrs = Vec::new();
            for kv in &link.attributes {
                key_value(l, &mut attrs, 4, kv);
            }
            varint_field(l, 5, u64::from(link.dropped_attributes_count));
            fixed32(
                l,
                6,
                flags(
                    link.span_context.is_remote(),
                    link.span_context.trace_flags().to_u8(),
                ),
            );
            message(b, 13, l);
        }
        varint_field(b, 14, u64::from(span.links.dropped_count));
        {
            let s = &mut self.inner;
            s.clear();
            let code = match &span.status {
                Status::Unset => 0,
                Status::Ok => 1,
                Status::Error { description } => {
                    string(s, 2, description);
                    2
                }
            };
            varint_field(s, 3, code);
            // Always present, as the SDK's conversion writes it.
            message(b, 15, s);
        }
        fixed32(
            b,
            16,
            flags(
                span.parent_span_is_remote,
                span.span_context.trace_flags().to_u8(),
            ),
        );
        message(&mut self.spans, 2, &self.scratch);
    }

    /// Whether the batch has no span.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The `ExportTraceServiceRequest` of the spans pushed since the last
    /// call, and an empty batch.
    pub fn finish(&mut self) -> Vec<u8> {
        // ExportTraceServiceRequest { resource_spans = 1: ResourceSpans {
        //   resource = 1, scope_spans = 2: ScopeSpans { scope = 1, spans = 2 } } },
        // with every length known up front: the spans are copied once.
        let scope_spans_len = field_len(self.scope.len()) + self.spans.len();
        let resource_spans_len = field_len(self.resource.len()) + field_len(scope_spans_len);
        let mut out = Vec::with_capacity(field_len(resource_spans_len));
        tag(&mut out, 1, WIRE_LEN);
        varint(&mut out, resource_spans_len as u64);
        message(&mut out, 1, &self.resource);
        tag(&mut out, 2, WIRE_LEN);
        varint(&mut out, scope_spans_len as u64);
        message(&mut out, 1, &self.scope);
        out.extend_from_slice(&self.spans);
        self.spans.clear();
        out
    }
}

/// Bytes of a length-delimited field (tag below 16) whose body is `len`
/// bytes.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let mut f = u32::from(trace_flags) | HAS_IS_REMOTE;
    if parent_is_remote {
        f |= IS_REMOTE;
    }
    f
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn tag(b: &mut Vec<u8>, field: u32, wire: u32) {
    varint(b, u64::from((field << 3) | wire));
}

/// A varint field, left out when 0 (proto3).
fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, WIRE_VARINT);
        varint(b, v);
    }
}

/// A fixed64 field, left out when 0 (proto3).
fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, WIRE_FIXED64);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// A fixed32 field, left out when 0 (proto3).
fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, WIRE_FIXED32);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// A bytes field, left out when empty (proto3).
fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        message(b, field, v);
    }
}

/// A string field, left out when empty (proto3).
fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
}

/// A length-delimited field, written even when empty (a present message).
fn message(b: &mut Vec<u8>, field: u32, body: &[u8]) {
    tag(b, field, WIRE_LEN);
    varint(b, body.len() as u64);
    b.extend_from_slice(body);
}

/// A `KeyValue` message as field `field` of `b`; `scratch` is reused.
fn key_value(b: &mut Vec<u8>, scratch: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    scratch.clear();
    string(scratch, 1, kv.key.as_str());
    let mut value = Vec::new();
    any_value(&mut value, &kv.value);
    message(scratch, 2, &value);
    message(b, field, scratch);
}

/// The body of an `AnyValue` for `v`.
fn any_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => {
            // A oneof member is written even when empty.
            message(b, 1, s.as_str().as_bytes());
        }
        Value::Bool(x) => {
            tag(b, 2, WIRE_VARINT);
            varint(b, u64::from(*x));
        }
        Value::I64(x) => {
            tag(b, 3, WIRE_VARINT);
            varint(b, *x as u64);
        }
        Value::F64(x) => {
            tag(b, 4, WIRE_FIXED64);
            b.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Array(a) => {
            // ArrayValue { values = 1 (AnyValue) }
            let mut arr = Vec::new();
            let mut one = Vec::new();
            let mut each = |v: Value| {
                one.clear();
                any_value(&mut one, &v);
                message(&mut arr, 1, &one);
            };
            match a {
                Array::Bool(xs) => xs.iter().for_each(|x| each(Value::Bool(*x))),
                Array::I64(xs) => xs.iter().for_each(|x| each(Value::I64(*x))),
                Array::F64(xs) => xs.iter().for_each(|x| each(Value::F64(*x))),
                Array::String(xs) => xs.iter().for_each(|x| each(Value::String(x.clone()))),
                // A kind this encoder does not know (the enum is
                // non-exhaustive): its text, rather than nothing.
                other => each(Value::String(other.to_string().into())),
            }
            message(b, 5, &arr);
        }
        // Likewise for value kinds added later.
        other => message(b, 1, other.as_str().as_bytes()),
    }
}

/// Sends encoded requests to an OTLP/HTTP endpoint.
pub struct Sender {
    /// Built on the first send, on the export thread: a blocking client
    /// runs a runtime of its own, which must not be made or dropped inside
    /// the node's async context.
    client: std::cell::OnceCell<reqwest::blocking::Client>,
    timeout: Duration,
    endpoint: String,
    headers: reqwest::header::HeaderMap,
}

impl Sender {
    /// A sender to `endpoint` (the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`) with the headers of
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`
    /// (`key=value,key2=value2`).
    pub fn new(endpoint: &str, timeout: Duration) -> anyhow::Result<Sender> {
        let parsed = reqwest::Url::parse(endpoint)
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("telemetry.otlp_endpoint {endpoint:?}: the scheme must be http or https");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        let env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
            .unwrap_or_default();
        for pair in env.split(',').filter(|p| !p.trim().is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                anyhow::bail!("OTEL_EXPORTER_OTLP_HEADERS: {pair:?} is not key=value");
            };
            let name = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: header {k:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v.trim())
                .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: value of {k:?}: {e}"))?;
            headers.insert(name, value);
        }
        Ok(Sender {
            client: std::cell::OnceCell::new(),
            timeout,
            endpoint: endpoint.to_string(),
            headers,
        })
    }

    /// POST one encoded request; an error names the endpoint and why.
    pub fn send(&self, body: Vec<u8>) -> Result<(), String> {
        let client = match self.client.get() {
            Some(c) => c,
            None => {
                let c = reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(|e| format!("OTLP client: {e}"))?;
                self.client.get_or_init(|| c)
            }
        };
        let resp = client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .map_err(|e| format!("POST {}: {e}", self.endpoint))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {}: HTTP {}", self.endpoint, resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    fn span(n: u8, parent: Option<u8>, status: Status, kind: SpanKind) -> SpanData {
        let mut links = SpanLinks::default();
        if n.is_multiple_of(2) {
            links.links.push(Link::with_context(SpanContext::new(
                TraceId::from_bytes([9; 16]),
                SpanId::from_bytes([n; 8]),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )));
        }
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([n; 16]),
                SpanId::from_bytes([n.wrapping_add(1); 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent.map_or(SpanId::INVALID, |p| SpanId::from_bytes([p; 8])),
            parent_span_is_remote: parent.is_some(),
            span_kind: kind,
            name: format!("span {n}").into(),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000 + u64::from(n)),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_500_000 + u64::from(n)),
            attributes: vec![
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
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status,
            instrumentation_scope: InstrumentationScope::builder("strait")
                .with_version("1.2.3")
                .build(),
        }
    }

    #[test]
    fn the_bytes_decode_to_what_the_sdk_would_send() {
        let resource_attrs = [
            KeyValue::new("service.name", "strait"),
            KeyValue::new("strait.site", "idc"),
            KeyValue::new("strait.node", 3_i64),
        ];
        let spans = vec![
            span(1, None, Status::Unset, SpanKind::Server),
            span(2, Some(1), Status::Ok, SpanKind::Producer),
            span(
                3,
                Some(2),
                Status::error("retries exhausted; last error: HTTP 503"),
                SpanKind::Client,
            ),
            span(200, Some(3), Status::Unset, SpanKind::Consumer),
            span(5, Some(3), Status::Unset, SpanKind::Internal),
        ];
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(resource_attrs)
            .build();
        // In the resource's own order (it keeps them in a map).
        let attrs: Vec<KeyValue> = resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let scope = spans[0].instrumentation_scope.clone();
        let mut enc = Encoder::new(&attrs, &scope);
        for s in &spans {
            enc.push(s);
        }
        assert!(!enc.is_empty());
        let body = enc.finish();
        assert!(enc.is_empty(), "finish empties the batch");
        let ours = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");

        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(ours, theirs);
        // And byte for byte, as prost encodes the SDK's conversion.
        assert_eq!(body, theirs.encode_to_vec());
    }

    #[test]
    fn a_second_batch_holds_only_its_own_spans() {
        let scope = InstrumentationScope::builder("strait").build();
        let mut enc = Encoder::new(&[], &scope);
        enc.push(&span(1, None, Status::Unset, SpanKind::Server));
        let _ = enc.finish();
        enc.push(&span(2, None, Status::Unset, SpanKind::Server));
        let req = ExportTraceServiceRequest::decode(enc.finish().as_slice()).expect("decodes");
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "span 2");
    }

    #[test]
    fn bad_endpoints_and_headers_are_named() {
        let e = Sender::new("ftp://x/v1/traces", Duration::from_secs(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("ftp://x/v1/traces") && e.contains("scheme"),
            "{e}"
        );
        let e = Sender::new("not a url", Duration::from_secs(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    }
}
