//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use strait_federation::SiteFailure;

use crate::app::App;
use crate::http::error::{ApiError, failure_error};

/// Liveness: 503 once the node's Raft stopped on its own (a restart is
/// what it needs).
pub(super) async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.failure() {
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

pub(super) async fn readyz(State(app): State<Arc<App>>) -> Response {
    if let Some(f) = app.failure() {
        return not_serving(&f);
    }
    let leader = app.site.raft.metrics().borrow().current_leader;
    match leader {
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

pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
