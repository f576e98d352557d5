//! `POST /v1/buses/{bus}/events`: the CloudEvents HTTP binding.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strait_federation::AppendEntry;

use crate::app::App;
use crate::http::body::read_body;
use crate::http::error::{ApiError, ApiResult};
use crate::http::shared::bus_must_exist;
use crate::ingest::{CommitError, Entries, Entry, Outcome, RequestError, parse_request};

pub(super) async fn post(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    bus_must_exist(&app, &bus)?;
    let bytes = read_body(body, app.cfg.limits.max_request_bytes).await?;
    let span = tracing::info_span!("ingress", bus = %bus, bytes = bytes.len());
    let _g = span.enter();
    let parsed = parse_request(&headers, &bytes, &app.cfg.limits).map_err(|e| {
        let status = match e {
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    drop(_g);
    commit_parsed(&app, &bus, parsed).await
}

/// Submit parsed entries to `bus` and answer with per-entry results (the
/// commit path of `POST /v1/buses/{bus}/events`, shared with the Alibaba
/// push source).
pub(crate) async fn commit_parsed(app: &App, bus: &str, parsed: Entries) -> ApiResult<Response> {
    let total = parsed.len();
    let mut results: Vec<Value> = Vec::with_capacity(total);
    let mut entries = Vec::with_capacity(total);
    let mut first_error: Option<(StatusCode, &'static str, String)> = None;
    for (id, r) in parsed {
        match r {
            Ok(p) => {
                entries.push(Entry::Append(AppendEntry {
                    bus: bus.to_string(),
                    source: p.event.source().to_string(),
                    id: p.event.id().to_string(),
                    event: p.json,
                }));
                results.push(json!({"id": id, "status": "pending"}));
            }
            Err(e) => {
                let status = if e.code() == "EventTooLarge" {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                if first_error.is_none() {
                    first_error = Some((status, e.code(), e.to_string()));
                }
                entries.push(Entry::Refused {
                    bus: bus.to_string(),
                });
                results.push(json!({"id": id, "status": "error", "error": {"code": e.code(), "message": e.to_string()}}));
            }
        }
    }
    let outcomes = app.ingest.submit(entries).await.map_err(|e| match e {
        CommitError::NotReady(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NotReady", m),
        CommitError::Failed(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "CommitFailed", m),
        CommitError::StateFull(full) => super::error::state_full(&full),
    })?;
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for (result, outcome) in results.iter_mut().zip(outcomes) {
        let status = match outcome {
            Outcome::Accepted => {
                accepted += 1;
                "accepted"
            }
            Outcome::Duplicate => {
                duplicates += 1;
                "duplicate"
            }
            Outcome::NoSuchBus => {
                let message = format!("bus `{bus}` was deleted");
                result["error"] = json!({"code": "BusNotFound", "message": message});
                if first_error.is_none() {
                    first_error = Some((StatusCode::NOT_FOUND, "BusNotFound", message));
                }
                "error"
            }
            Outcome::Refused => continue,
        };
        result["status"] = json!(status);
    }
    let failed = total as u64 - accepted - duplicates;
    let body = json!({"accepted": accepted, "duplicates": duplicates, "failed": failed, "results": results});
    if failed == 0 {
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    if accepted + duplicates > 0 {
        return Ok((StatusCode::MULTI_STATUS, Json(body)).into_response());
    }
    let (status, code, message) = first_error.unwrap_or((
        StatusCode::BAD_REQUEST,
        "InvalidEvent",
        "no event accepted".into(),
    ));
    Err(ApiError::new(status, code, message).with_extra("results", body["results"].clone()))
}
