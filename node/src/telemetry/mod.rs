//! Logs, traces (OTLP when configured) and Prometheus metrics.
//!
//! Traces: [`span::EventSpan`]s built on the event path and exported by
//! [`export`]; logs: `tracing` to stderr (never exported as spans).

pub mod export;
pub mod ingress;
pub mod link;
pub mod otlp;
pub mod span;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::KeyValue;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Telemetry;
use crate::trace::TraceParent;

pub use span::EventSpan;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();
static SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();

/// Flushes the spans still queued when dropped (at shutdown).
pub struct TelemetryGuard {
    exporting: bool,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if self.exporting {
            export::flush(Duration::from_secs(5));
        }
    }
}

/// Install logging (stderr, `RUST_LOG`, default `info`) and, when
/// `cfg.otlp_endpoint` is set, OTLP/HTTP export of event traces, with a
/// resource naming this process: `service.name` = `strait`,
/// `service.version`, `service.instance.id` = `site/node`, `strait.site`,
/// `strait.node`.
pub fn init(cfg: &Telemetry, site: &str, node_id: u64) -> anyhow::Result<TelemetryGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()?;
    let _ = SAMPLE_RATIO.set(cfg.sample_ratio.clamp(0.0, 1.0));
    let Some(endpoint) = cfg.otlp_endpoint.as_deref() else {
        return Ok(TelemetryGuard { exporting: false });
    };
    let resource = [
        KeyValue::new("service.name", "strait"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", format!("{site}/{node_id}")),
        KeyValue::new("strait.site", site.to_string()),
        KeyValue::new("strait.node", node_id as i64),
    ];
    let encoder = otlp::Encoder::new(&resource, &span::scope());
    let sender = otlp::Sender::new(endpoint, Duration::from_secs(5))?;
    export::start(encoder, sender)?;
    Ok(TelemetryGuard { exporting: true })
}

/// A new trace started here (no producer trace to continue), sampled at
/// `telemetry.sample_ratio` (decided from the trace id, so every node and
/// site agrees); its span id is the first span's.
pub fn new_trace() -> TraceParent {
    let mut tp = TraceParent::new_root();
    let ratio = SAMPLE_RATIO.get().copied().unwrap_or(1.0);
    if ratio < 1.0 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&tp.trace_id[8..]);
        let x = u64::from_be_bytes(head) >> 11;
        let sampled = (x as f64) < ratio * (1u64 << 53) as f64;
        tp.flags = u8::from(sampled);
    }
    tp
}

/// A 64-bit FNV-1a hash of `parts` (with separators), never zero: span ids
/// every node and site derives alike (the algorithm is fixed here, not
/// the standard library's, which may change between Rust versions).
fn derive(parts: &[&[u8]]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    if h == 0 { 1 } else { h }.to_be_bytes()
}

fn root_mark(trace_id: &[u8; 16], source: &str, id: &str) -> [u8; 8] {
    derive(&[trace_id, b"strait-root", source.as_bytes(), id.as_bytes()])
}

/// The `traceparent` for an event that arrives with no trace context at
/// all: a new trace whose first span is the event's `publish` span
/// ([`publish_span_of`] recognises it).
pub fn root_for(source: &str, id: &str) -> TraceParent {
    let mut tp = new_trace();
    tp.span_id = root_mark(&tp.trace_id, source, id);
    tp
}

/// The event's `publish` span, from the `traceparent` it carries (which
/// stays as the producer sent it, as the CloudEvents distributed tracing
/// extension requires): its context, and its parent span (`None`: the
/// trace's root). Every node and site derives the same, so deliveries
/// anywhere are children of the span the ingress exported.
pub fn publish_span_of(
    event_tp: &TraceParent,
    source: &str,
    id: &str,
) -> (TraceParent, Option<[u8; 8]>) {
    if event_tp.span_id == root_mark(&event_tp.trace_id, source, id) {
        return (*event_tp, None);
    }
    let span_id = derive(&[
        &event_tp.trace_id,
        &event_tp.span_id,
        source.as_bytes(),
        id.as_bytes(),
    ]);
    (
        TraceParent {
            span_id,
            ..*event_tp
        },
        Some(event_tp.span_id),
    )
}

/// The span a delivery of `event` is a child of: its `publish` span (see
/// [`publish_span_of`]); a new trace if it carries none.
pub fn delivery_parent(event: &strait_routing::event::Event) -> TraceParent {
    match event.str_attr("traceparent").and_then(TraceParent::parse) {
        Some(tp) => publish_span_of(&tp, event.source(), event.id()).0,
        None => root_for(event.source(), event.id()),
    }
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_span_is_found_alike_from_the_stored_event() {
        let producer =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .expect("valid");
        let (a, parent) = publish_span_of(&producer, "/src", "id-1");
        assert_eq!(
            parent,
            Some(producer.span_id),
            "a child of the producer's span"
        );
        assert_eq!(a.trace_id, producer.trace_id);
        assert_ne!(a.span_id, producer.span_id);
        // Every node derives the same id; another event, another id.
        assert_eq!(publish_span_of(&producer, "/src", "id-1").0, a);
        assert_ne!(
            publish_span_of(&producer, "/src", "id-2").0.span_id,
            a.span_id
        );
        assert_ne!(
            publish_span_of(&producer, "/other", "id-1").0.span_id,
            a.span_id
        );
    }

    #[test]
    fn an_event_without_trace_context_starts_its_trace_at_publish() {
        let root = root_for("/src", "id-1");
        let (me, parent) = publish_span_of(&root, "/src", "id-1");
        assert_eq!(parent, None, "the trace's root");
        assert_eq!(me, root, "the event names its publish span");
        // The mark belongs to that event only.
        assert!(publish_span_of(&root, "/src", "id-2").1.is_some());
    }

    #[test]
    fn derived_ids_are_fixed_across_builds() {
        // FNV-1a, not the standard library's hasher: other versions of
        // Strait (other sites) must derive the same ids.
        assert_eq!(derive(&[b"a"]), 0x089b_c907_b544_c769_u64.to_be_bytes());
    }
}
