//! The Alibaba Cloud EventBridge compatible endpoints (outside the `/v1`
//! bearer-token middleware; they authenticate by signature), routed to
//! `strait_adapters::alibaba_eventbridge`; their events go through the
//! node's [`crate::ingest::Gate`]:
//!
//! * `POST /openapi/putEvents`: Alibaba's data-plane PutEvents
//!   ([`ingress::put_events`]), so the official `alibabacloud-eventbridge`
//!   SDKs work unchanged against Strait.
//! * `POST /alibaba/push/{bus}`: the URL to give an Alibaba EventBridge HTTP
//!   target ([`push::push`]); it answers as `POST /v1/buses/{bus}/events`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use strait_adapters::alibaba_eventbridge::ingress;
use strait_adapters::alibaba_eventbridge::push::{self, PushRefusal};

use super::Ingresses;
use super::body::read_body;
use super::error::ApiError;
use super::events::bus_answer;
use super::shared::bus_must_exist;
use crate::telemetry::ingress::{RequestSpan, TracedGate};

/// `POST /openapi/putEvents`.
pub async fn put_events(
    State(state): State<Arc<Ingresses>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut span = RequestSpan::post("/openapi/putEvents", &headers);
    let gate = TracedGate::new(&state.gate, &span);
    let resp = ingress::put_events(
        &state.alibaba,
        &method,
        &uri,
        &headers,
        |limit| read_body(body, limit),
        &gate,
    )
    .await;
    if span.recording() {
        gate.report(&mut span);
        span.end(resp.status().as_u16());
    }
    resp.into_response()
}

/// `POST /alibaba/push/{bus}`: what an Alibaba EventBridge HTTP target
/// sends (the complete CloudEvent, or an array of them), signature checked.
pub async fn push(
    State(state): State<Arc<Ingresses>>,
    Path(bus): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut span = RequestSpan::post("/alibaba/push/{bus}", &headers);
    if span.recording() {
        span.attr_str("messaging.destination.name", &bus);
    }
    let answer = push_in(&state, &bus, uri, &headers, body, &mut span).await;
    if span.recording() {
        let status = match &answer {
            Ok(r) => r.status(),
            Err(e) => e.status(),
        };
        span.end(status.as_u16());
    }
    answer
}

async fn push_in(
    state: &Ingresses,
    bus: &str,
    uri: Uri,
    headers: &HeaderMap,
    body: Body,
    span: &mut RequestSpan,
) -> Result<Response, ApiError> {
    let gate = &state.gate;
    bus_must_exist(&gate.state, bus)?;
    let bytes = read_body(body, gate.limits.max_request_bytes).await?;
    let traced = TracedGate::new(gate, span);
    let pushed = push::push(&state.alibaba_push, bus, &uri, headers, &bytes, &traced).await;
    traced.report(span);
    match pushed {
        Ok(answer) => Ok(bus_answer(Ok(answer))?),
        Err(PushRefusal::Ingest(e)) => bus_answer(Err(e)),
        Err(PushRefusal::Unauthorized { code, message }) => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, code, message))
        }
        Err(PushRefusal::Body {
            status,
            code,
            message,
        }) => Err(ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message,
        )),
    }
}
