//! `POST /v1/buses/{bus}/events`: the CloudEvents HTTP binding, read by the
//! node's [`Gate`] and posted with [`strait_adapters::post_to_bus`], whose
//! answer the Alibaba push endpoint gives too ([`bus_answer`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use strait_adapters::{Binding, BindingError, BusAnswer, IngestError, post_to_bus};

use crate::http::Ingresses;
use crate::http::body::read_body;
use crate::http::error::{ApiError, ApiResult};
use crate::http::shared::bus_must_exist;
use crate::telemetry::ingress::RequestSpan;

pub(super) async fn post(
    State(ingress): State<Arc<Ingresses>>,
    Path(bus): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let gate = &ingress.gate;
    bus_must_exist(&gate.state, &bus)?;
    let bytes = read_body(body, gate.limits.max_request_bytes).await?;
    // The request's span (SERVER): a child of the HTTP `traceparent`;
    // the events without their own trace continue it, the others are
    // linked from it.
    let mut span = RequestSpan::post("/v1/buses/{bus}/events", &headers);
    let entries = gate
        .read_in(
            Binding::Request,
            &headers,
            &bytes,
            &gate.limits,
            span.request_trace(),
        )
        .map_err(|e| {
            let status = match e {
                BindingError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                BindingError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
                BindingError::Malformed(_) => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.code(), e.to_string())
        });
    if span.recording() {
        span.attr_str("messaging.destination.name", &bus);
        span.attr("http.request.body.size", bytes.len() as i64);
        if let Ok(entries) = &entries {
            for e in entries {
                if let Ok(checked) = &e.event {
                    span.event(checked.event.str_attr("traceparent"));
                }
            }
        }
    }
    let answer = match entries {
        Ok(entries) => bus_answer(post_to_bus(gate, &bus, entries).await),
        Err(e) => Err(e),
    };
    if span.recording() {
        let status = match &answer {
            Ok(r) => r.status(),
            Err(e) => e.status(),
        };
        span.end(status.as_u16());
    }
    answer
}

/// The API's rendering of [`post_to_bus`]'s answer: the per-entry results
/// (`200` when all were stored, `207` when some were), the first entry's
/// error with the results when none was, `503` or `507` when nothing could
/// be stored.
pub(crate) fn bus_answer(answer: Result<BusAnswer, IngestError>) -> ApiResult<Response> {
    match answer {
        Ok(BusAnswer::Stored { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok((status, Json(body)).into_response())
        }
        Ok(BusAnswer::NoneStored {
            status,
            code,
            message,
            results,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            Err(ApiError::new(status, code, message).with_extra("results", results))
        }
        Err(IngestError::NotReady(m)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            m,
        )),
        Err(IngestError::Failed(m)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "CommitFailed",
            m,
        )),
        Err(IngestError::StateFull { limit, stored, .. }) => {
            Err(super::error::state_full(&strait_federation::StateFull {
                limit,
                stored,
            }))
        }
    }
}
