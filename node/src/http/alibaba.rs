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

use crate::app::App;
use crate::http::events::bus_answer;
use crate::http::{ApiError, bus_must_exist, read_body};

/// `POST /openapi/putEvents`.
pub async fn put_events(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let gate = app.gate();
    ingress::put_events(
        &app.alibaba,
        &method,
        &uri,
        &headers,
        |limit| read_body(body, limit),
        &gate,
    )
    .await
    .into_response()
}

/// `POST /alibaba/push/{bus}`: what an Alibaba EventBridge HTTP target
/// sends (the complete CloudEvent, or an array of them), signature checked.
pub async fn push(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    bus_must_exist(&app, &bus)?;
    let bytes = read_body(body, app.cfg.limits.max_request_bytes).await?;
    let gate = app.gate();
    match push::push(&app.alibaba_push, &bus, &uri, &headers, &bytes, &gate).await {
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
