//! `POST /v1/buses/{bus}/events`: the CloudEvents HTTP binding.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::app::App;
use crate::http::body::read_body;
use crate::http::error::{ApiError, ApiResult};
use crate::http::shared::bus_must_exist;
use crate::ingest::{CommitError, Entries, Entry, Outcome, RequestError, parse_request_in};
use crate::telemetry::EventSpan;
use crate::trace::TraceParent;
use opentelemetry::trace::SpanKind;

pub(super) async fn post(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    bus_must_exist(&app, &bus)?;
    let bytes = read_body(body, app.cfg.limits.max_request_bytes).await?;
    // The request's span (SERVER): a child of the HTTP `traceparent`;
    // the events without their own trace continue it, the others are
    // linked from it.
    let header = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let me = header.map_or_else(crate::telemetry::new_trace, |h| h.child());
    let mut span = EventSpan::start(
        "POST /v1/buses/{bus}/events",
        SpanKind::Server,
        &me,
        header.map(|h| h.span_id),
    );
    let request_trace = if span.recording() { Some(me) } else { header };
    let parsed = parse_request_in(&headers, &bytes, &app.cfg.limits, request_trace).map_err(|e| {
        let status = match e {
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    });
    if span.recording() {
        span.attr("http.request.method", "POST")
            .attr("http.route", "/v1/buses/{bus}/events")
            .attr("messaging.system", "strait")
            .attr("messaging.operation.type", "receive")
            .attr("messaging.destination.name", bus.clone())
            .attr("http.request.body.size", bytes.len() as i64);
        if let Ok(parsed) = &parsed {
            span.attr("messaging.batch.message_count", parsed.len() as i64);
            for (_, p) in parsed {
                if let Ok(p) = p
                    && let Some(tp) = p.event.str_attr("traceparent").and_then(TraceParent::parse)
                    && tp.trace_id != me.trace_id
                {
                    span.link(&tp);
                }
            }
        }
    }
    let answer = match parsed {
        Ok(parsed) => commit_parsed(&app, &bus, parsed).await,
        Err(e) => Err(e),
    };
    if span.recording() {
        let status = match &answer {
            Ok(r) => r.status(),
            Err(e) => e.status(),
        };
        span.attr("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.fail("http_status", status.to_string());
        }
        span.end();
    }
    answer
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
                entries.push(p.into_entry(bus.to_string()));
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
