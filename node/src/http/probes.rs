//! `/healthz`, `/readyz` and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use strait_federation::SiteFailure;

use crate::cluster::Health;
use crate::http::error::{ApiError, failure_error};

/// Liveness: 503 once the node's Raft stopped on its own (a restart is
/// what it needs).
pub(super) async fn healthz(State(health): State<Health>) -> Response {
    match health.failure() {
        Some(f) => not_serving(&f),
        None => Json(json!({"status": "ok"})).into_response(),
    }
}

/// `503` with the failure's code and message (for `/healthz` and `/readyz`).
fn not_serving(f: &SiteFailure) -> Response {
    failure_error(f)
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .into_response()
}

pub(super) async fn readyz(State(health): State<Health>) -> Response {
    if let Some(f) = health.failure() {
        return not_serving(&f);
    }
    match health.leader() {
        Some(l) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "leader": l})),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            "no Raft leader yet",
        )
        .into_response(),
    }
}

pub(super) async fn metrics(State(metrics): State<PrometheusHandle>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}
