//! Logs, traces (OTLP when configured) and Prometheus metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::trace::TraceParent;

static OTEL_ON: OnceLock<bool> = OnceLock::new();
static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Keeps the OTLP pipeline alive; flushes on drop.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // The exporter uses a blocking client: shut it down off the runtime.
            let _ = std::thread::spawn(move || p.shutdown()).join();
        }
    }
}

/// Install logging (stderr, `RUST_LOG`, default `info`) and, when an
/// endpoint is given, OTLP/HTTP trace export.
pub fn init(otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut provider = None;
    match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()?;
            let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("strait")
                        .build(),
                )
                .build();
            let tracer = p.tracer("strait");
            tracing_subscriber::registry()
                .with(filter)
                .with(fmt)
                .with(tracing_opentelemetry::layer().with_tracer(tracer))
                .try_init()?;
            provider = Some(p);
            let _ = OTEL_ON.set(true);
        }
        None => {
            tracing_subscriber::registry()
                .with(filter)
                .with(fmt)
                .try_init()?;
            let _ = OTEL_ON.set(false);
        }
    }
    Ok(TelemetryGuard { provider })
}

fn otel_on() -> bool {
    OTEL_ON.get().copied().unwrap_or(false)
}

/// Make `span` a child of the event's trace (when exporting traces).
pub fn link_to_trace(span: &tracing::Span, tp: &TraceParent) {
    if !otel_on() {
        return;
    }
    let sc = SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}

/// The `traceparent` to send for work done inside `span`: the span's own id
/// when traces are exported, else a fresh child of `parent`.
pub fn traceparent_for(span: &tracing::Span, parent: &TraceParent) -> TraceParent {
    if otel_on() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return TraceParent {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                flags: sc.trace_flags().to_u8(),
            };
        }
    }
    parent.child()
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
