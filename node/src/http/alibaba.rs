//! Alibaba Cloud EventBridge compatibility endpoints (outside the `/v1`
//! bearer-token middleware; they authenticate by signature):
//!
//! * `POST /openapi/putEvents` — Alibaba's data-plane PutEvents, so the
//!   official `alibabacloud-eventbridge` SDKs work unchanged against Strait.
//! * `POST /alibaba/push/{bus}` — the URL to give an Alibaba EventBridge HTTP
//!   target; verifies `x-eventbridge-signature` and the replay window.
//!
//! What exactly is verified is documented in docs/adapters/alibaba.md.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use strait_adapters::alibaba_eventbridge::sign::{self, SignedRequest};
use strait_adapters::alibaba_eventbridge::{
    BUS_EXTENSION, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_REQUEST_BYTES,
};

use crate::app::App;
use crate::config::Limits;
use crate::http::{ApiError, bus_must_exist, commit_parsed, read_body};
use crate::ingest::{
    CommitError, Entry, Outcome, RequestError, parse_batch, parse_request, parse_structured,
};
use crate::trace::TraceParent;
use crate::util::now_ms;

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

/// Alibaba's error shape, as the SDK reads it (`code`, `message`, `requestId`).
fn ali_error(status: u16, code: &str, message: impl Into<String>, request_id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "requestId": request_id,
        "code": code,
        "message": message.into(),
        "httpCode": status.as_u16(),
        "success": false,
    });
    (status, Json(body)).into_response()
}

/// Lower-case header names (HeaderMap already has them) and string values.
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.insert(name.as_str().to_string(), v);
    }
    out
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(q) = uri.query() {
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// `POST /openapi/putEvents`.
pub async fn put_events(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = request_id();
    let state = &app.alibaba;
    if state.ingress_keys.is_empty() {
        return ali_error(
            403,
            "AccessDenied",
            "the Alibaba-compatible ingress is disabled on this node: no alibaba.ingress_keys are configured",
            &rid,
        );
    }
    let req = SignedRequest {
        method: method.as_str().to_string(),
        pathname: uri.path().to_string(),
        headers: header_map(&headers),
        query: query_map(&uri),
    };
    let now = (now_ms() / 1000) as i64;
    let skew = app.cfg.alibaba.max_clock_skew_secs;
    if let Err(e) = sign::verify_request(&req, &state.ingress_keys, now, skew) {
        metrics::counter!("strait_alibaba_auth_failures_total", "code" => e.code).increment(1);
        return ali_error(e.status, e.code, e.message, &rid);
    }
    if let Some(nonce) = req.headers.get("x-acs-signature-nonce")
        && !state.fresh_nonce(nonce, now, now.saturating_add(2 * skew as i64))
    {
        return ali_error(
            403,
            "SignatureNonceUsed",
            "the x-acs-signature-nonce was already used (replayed request)",
            &rid,
        );
    }
    let limit = MAX_REQUEST_BYTES.min(app.cfg.limits.max_request_bytes);
    let bytes = match read_body(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ali_error(
                413,
                "RequestTooLarge",
                format!("the request body is larger than {limit} bytes (PutEvents limit)"),
                &rid,
            );
        }
    };
    if let Err(e) = sign::check_content_md5(&req, &bytes) {
        return ali_error(e.status, e.code, e.message, &rid);
    }
    let limits = Limits {
        max_event_bytes: MAX_EVENT_BYTES.min(app.cfg.limits.max_event_bytes),
        max_request_bytes: limit,
        max_batch_events: MAX_BATCH_EVENTS,
    };
    let parsed = match parse_request(&headers, &bytes, &limits) {
        Ok(p) => p,
        Err(e) => {
            let (status, code) = match &e {
                RequestError::TooManyEvents(_) => (400, "TooManyEvents"),
                RequestError::UnsupportedMediaType(_) => (415, "UnsupportedMediaType"),
                RequestError::Malformed(_) => (400, "MalformedRequest"),
            };
            let message = match &e {
                RequestError::TooManyEvents(m) => {
                    format!(
                        "{m} (Alibaba EventBridge takes at most {MAX_BATCH_EVENTS} events per PutEvents call)"
                    )
                }
                other => other.to_string(),
            };
            return ali_error(status, code, message, &rid);
        }
    };
    // One EntryList slot per input, in order.
    let mut entries_out: Vec<Value> = Vec::with_capacity(parsed.len());
    let mut entries = Vec::with_capacity(parsed.len());
    {
        let view = app.site.state.view();
        for (id, r) in parsed {
            let mut entry = json!({"EventId": id.clone().unwrap_or_default()});
            let refusal = match r {
                Ok(p) => {
                    if let Some(tp) = p.event.str_attr("traceparent") {
                        entry["TraceId"] = json!(tp.split('-').nth(1).unwrap_or(""));
                    }
                    match p.event.str_attr(BUS_EXTENSION).map(str::to_string) {
                        None => Some((
                            "EventBusNotSpecified",
                            format!(
                                "the `{BUS_EXTENSION}` extension is missing: it names the event bus"
                            ),
                        )),
                        Some(bus) if !view.buses.contains_key(&bus) => Some((
                            "EventBusNotExist",
                            format!("the event bus `{bus}` does not exist"),
                        )),
                        Some(bus) => {
                            entries.push(p.into_entry(bus));
                            None
                        }
                    }
                }
                Err(e) => Some((e.code(), e.to_string())),
            };
            if let Some((code, message)) = refusal {
                entry["ErrorCode"] = json!(code);
                entry["ErrorMessage"] = json!(message);
                // Counted on no bus: it names none that exists.
                entries.push(Entry::Refused { bus: String::new() });
            }
            entries_out.push(entry);
        }
    }
    let outcomes = match app.ingest.submit(entries).await {
        Ok(o) => o,
        Err(CommitError::NotReady(m)) | Err(CommitError::Failed(m)) => {
            return ali_error(503, "ServiceUnavailable", m, &rid);
        }
        Err(e @ CommitError::StateFull(_)) => {
            return ali_error(503, "ServiceUnavailable", e.to_string(), &rid);
        }
    };
    for (entry, outcome) in entries_out.iter_mut().zip(outcomes) {
        if outcome == Outcome::NoSuchBus {
            entry["ErrorCode"] = json!("EventBusNotExist");
            entry["ErrorMessage"] = json!("the event bus was deleted");
        }
    }
    let failed = entries_out
        .iter()
        .filter(|e| e.get("ErrorCode").is_some())
        .count();
    let body = json!({
        "RequestId": rid,
        "ResourceOwnerAccountId": app.cfg.alibaba.account_id,
        "FailedEntryCount": failed,
        "EntryList": entries_out,
    });
    (StatusCode::OK, Json(body)).into_response()
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
    let push_cfg = &app.cfg.alibaba.push;
    if push_cfg.require_signature {
        let h = header_map(&headers);
        let base = match &push_cfg.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!(
                "http://{}",
                h.get("host").map(String::as_str).unwrap_or("localhost")
            ),
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = format!("{base}{path}");
        sign::verify_push(
            &url,
            &h,
            &bytes,
            &app.alibaba.push_keys,
            now_ms() as i64,
            push_cfg.max_age_secs,
        )
        .map_err(|e| {
            metrics::counter!("strait_alibaba_push_rejected_total").increment(1);
            let code = match e {
                sign::PushError::Malformed(_) => "InvalidSignature",
                sign::PushError::Expired(_) => "RequestExpired",
                sign::PushError::UntrustedKey(_) => "UntrustedSigningKey",
                sign::PushError::BadSignature(_) => "SignatureDoesNotMatch",
            };
            ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
        })?;
    }
    // Alibaba pushes the event as JSON (`application/json`): one event
    // object, or an array when the target batches.
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let parsed = match first {
        Some(b'[') => parse_batch(&bytes, traceparent, &app.cfg.limits),
        Some(b'{') => parse_structured(&bytes, traceparent, &app.cfg.limits),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "MalformedRequest",
                "the body must be a CloudEvent in JSON form or an array of them (configure the Alibaba HTTP target to push the complete event)",
            ));
        }
    }
    .map_err(|e| {
        let status = match e {
            RequestError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    // commit_parsed counts them as ingested.
    commit_parsed(&app, &bus, parsed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_split() {
        let uri: Uri = "/openapi/putEvents?b=2&a=1&c".parse().expect("uri");
        let q = query_map(&uri);
        assert_eq!(q.get("a").map(String::as_str), Some("1"));
        assert_eq!(q.get("c").map(String::as_str), Some(""));
    }
}
