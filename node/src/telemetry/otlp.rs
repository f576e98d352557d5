//! OTLP/HTTP protobuf encoding of spans, written straight from the spans
//! into the request body, and the request that sends it.
//!
//! The OpenTelemetry SDK's exporter first converts every span into the
//! generated protobuf structs (a copy of every attribute key and value,
//! hash maps to group spans by scope) and then encodes those. At 100 %
//! sampling that conversion was most of the cost of tracing on a busy
//! node, on the same cores as the event path. Here each span is encoded
//! once, field by field, as it is built ([`super::span::EventSpan`]), and
//! the export thread copies finished spans into the request: the bytes
//! are the same `ExportTraceServiceRequest` (a test in `span.rs` decodes
//! them with the `opentelemetry-proto` crate and compares them, byte for
//! byte, with prost's encoding of the SDK's conversion).
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};

use crate::trace::TraceParent;

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
}

impl Encoder {
    /// An encoder for spans of the resource with `attributes`, all in the
    /// instrumentation scope `scope`.
    pub fn new(attributes: &[KeyValue], scope: &InstrumentationScope) -> Encoder {
        let mut resource = Vec::new();
        for kv in attributes {
            key_value(&mut resource, 1, kv);
        }
        let mut s = Vec::new();
        string(&mut s, 1, scope.name());
        if let Some(v) = scope.version() {
            string(&mut s, 2, v);
        }
        for kv in scope.attributes() {
            key_value(&mut s, 3, kv);
        }
        Encoder {
            resource,
            scope: s,
            spans: Vec::with_capacity(1 << 20),
        }
    }

    /// Add one span, a finished `Span` message (see
    /// [`super::span::EventSpan`]), to the batch.
    pub fn push(&mut self, span: &[u8]) {
        message(&mut self.spans, 2, span);
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

pub(super) fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let mut f = u32::from(trace_flags) | HAS_IS_REMOTE;
    if parent_is_remote {
        f |= IS_REMOTE;
    }
    f
}

pub(super) fn nanos(t: SystemTime) -> u64 {
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
pub(super) fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, WIRE_VARINT);
        varint(b, v);
    }
}

/// A fixed32 field, left out when 0 (proto3).
pub(super) fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, WIRE_FIXED32);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// A bytes field, left out when empty (proto3).
pub(super) fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        message(b, field, v);
    }
}

/// A string field, left out when empty (proto3).
pub(super) fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
}

/// A length-delimited field, written even when empty (a present message).
fn message(b: &mut Vec<u8>, field: u32, body: &[u8]) {
    tag(b, field, WIRE_LEN);
    varint(b, body.len() as u64);
    b.extend_from_slice(body);
}

/// A `KeyValue` message as field `field` of `b`.
fn key_value(b: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    attribute(b, field, kv.key.as_str(), &kv.value);
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

/// `Span.SpanKind`'s number for `kind`.
pub(super) fn kind(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// A fixed64 field that is always written (a time set later): where its
/// 8 bytes are.
pub(super) fn fixed64_slot(b: &mut Vec<u8>, field: u32, v: u64) -> usize {
    tag(b, field, WIRE_FIXED64);
    let at = b.len();
    b.extend_from_slice(&v.to_le_bytes());
    at
}

/// A `Span.Link` to the (remote) span `to`, as field `field`.
pub(super) fn link(b: &mut Vec<u8>, field: u32, to: &TraceParent) {
    // trace_id (1), span_id (2), flags (6: fixed32, never 0 here).
    let len = field_len(to.trace_id.len()) + field_len(to.span_id.len()) + 5;
    tag(b, field, WIRE_LEN);
    varint(b, len as u64);
    bytes(b, 1, &to.trace_id);
    bytes(b, 2, &to.span_id);
    fixed32(b, 6, flags(true, to.flags));
}

/// A `Status` message (always present, as the SDK's conversion writes
/// it) with `code` and, for errors, `message`.
pub(super) fn status(b: &mut Vec<u8>, field: u32, code: u64, message: Option<&str>) {
    let msg_len = message
        .filter(|m| !m.is_empty())
        .map_or(0, |m| field_len(m.len()));
    let code_len = if code == 0 { 0 } else { 1 + varint_len(code) };
    tag(b, field, WIRE_LEN);
    varint(b, (msg_len + code_len) as u64);
    if let Some(m) = message {
        string(b, 2, m);
    }
    varint_field(b, 3, code);
}

/// A `KeyValue` with a string value as field `field`, written in place.
pub(super) fn string_attribute(b: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    // AnyValue { string_value = 1 } is written even when empty (a oneof).
    let any_len = field_len(value.len());
    let key_len = if key.is_empty() {
        0
    } else {
        field_len(key.len())
    };
    tag(b, field, WIRE_LEN);
    varint(b, (key_len + field_len(any_len)) as u64);
    string(b, 1, key);
    tag(b, 2, WIRE_LEN);
    varint(b, any_len as u64);
    message(b, 1, value.as_bytes());
}

/// A `KeyValue` of any value as field `field`.
pub(super) fn attribute(b: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    if let Value::String(s) = value {
        return string_attribute(b, field, key, s.as_str());
    }
    let mut kv = Vec::new();
    string(&mut kv, 1, key);
    let mut any = Vec::new();
    any_value(&mut any, value);
    message(&mut kv, 2, &any);
    message(b, field, &kv);
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    /// A span message with only a name.
    fn named(name: &str) -> Vec<u8> {
        let mut b = Vec::new();
        string(&mut b, 5, name);
        b
    }

    #[test]
    fn a_second_batch_holds_only_its_own_spans() {
        let scope = InstrumentationScope::builder("strait").build();
        let mut enc = Encoder::new(&[], &scope);
        enc.push(&named("span 1"));
        let _ = enc.finish();
        enc.push(&named("span 2"));
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
