//! The AWS-compatible ingress: EventBridge's JSON 1.1
//! `AWSEvents.PutEvents`, SigV4-verified against the configured keys, so AWS
//! SDKs (boto3 `put_events`) work unchanged. It is a function from a request
//! (method, URI, headers, body) to a response; the events it maps go to an
//! [`Ingest`]. The HTTP server and reading the body are the caller's.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use serde_json::{Value, json};

use super::control;
use super::mapping::{self, MAX_ENTRIES, MAX_REQUEST_BYTES};
use super::sigv4::{self, VerifyKey};
use crate::nonces::NonceStore;
use crate::{Ingest, IngestOutcome, Offer};

/// The JSON 1.1 media type.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// The operation the ingress implements.
pub const PUT_EVENTS_TARGET: &str = "AWSEvents.PutEvents";
/// Largest request body to read (entries are limited to 256 KB as AWS
/// counts them; the JSON around them is allowed this much).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the ingress checks requests against.
#[derive(Debug, Clone, Default)]
pub struct IngressConfig {
    /// The SigV4 keys requests are verified against (none: the ingress is
    /// disabled).
    pub keys: Vec<VerifyKey>,
    /// The account id events are stamped with.
    pub account_id: String,
    /// Largest accepted clock skew of a signed request.
    pub max_clock_skew_secs: u64,
    /// Where accepted signatures are remembered for twice the clock skew,
    /// so that a captured request cannot be sent again (`None`: no replay
    /// cache, AWS's own behaviour).
    pub replays: Option<Arc<dyn NonceStore>>,
}

/// The request's signature: `Signature=` of the `Authorization` header,
/// else the `X-Amz-Signature` query parameter.
fn signature_of(headers: &HeaderMap, query: &str) -> Option<String> {
    let from_header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| {
            a.split(',')
                .find_map(|p| p.trim().strip_prefix("Signature="))
                .map(str::to_string)
        });
    from_header.or_else(|| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Signature="))
            .map(str::to_string)
    })
}

/// AWS's JSON error shape, `{"__type", "message"}`, with `x-amzn-ErrorType`.
pub fn error_response(status: u16, code: &str, message: impl Into<String>) -> Response<String> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"__type": code, "message": message.into()});
    let mut resp = Response::new(body.to_string());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(AMZ_JSON),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert("x-amzn-errortype", v);
    }
    h.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or(HeaderValue::from_static("0")),
    );
    resp
}

/// The answer to a body larger than [`MAX_BODY_BYTES`].
pub fn too_large() -> Response<String> {
    error_response(
        413,
        "RequestEntityTooLarge",
        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn validation(message: impl Into<String>) -> Response<String> {
    error_response(400, "ValidationException", message)
}

/// `PutEvents`: verify, map each entry to a CloudEvent, hand them to
/// `ingest` and answer with one result per entry, in order (the other
/// operations are refused as unknown: see [`handle`]).
pub async fn put_events(
    cfg: &IngressConfig,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    ingest: &dyn Ingest,
) -> Response<String> {
    handle(cfg, method, uri, headers, body, ingest, &control::NoControl).await
}

/// The SigV4 endpoint: verify the request, then run the operation its
/// `X-Amz-Target` names: `PutEvents` into `ingest`, the control
/// operations of [`control::OPERATIONS`] on `view`; any other is an
/// `UnknownOperationException`.
pub async fn handle(
    cfg: &IngressConfig,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    ingest: &dyn Ingest,
    view: &dyn control::ControlView,
) -> Response<String> {
    if cfg.keys.is_empty() {
        return error_response(
            403,
            "AccessDeniedException",
            "the AWS-compatible ingress is disabled on this node: no aws.ingress_keys are configured",
        );
    }
    let req = sigv4::Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    };
    let skew = cfg.max_clock_skew_secs as i64;
    let verified = match sigv4::verify(&req, &cfg.keys, "events", chrono::Utc::now(), skew) {
        Ok(v) => v,
        Err(e) => {
            metrics::counter!("strait_aws_auth_failures_total", "code" => e.code).increment(1);
            let status = if e.code == "MissingAuthenticationTokenException" {
                403
            } else {
                400
            };
            return error_response(status, e.code, e.message);
        }
    };
    if let Some(store) = &cfg.replays {
        let Some(sig) = signature_of(headers, uri.query().unwrap_or("")) else {
            return error_response(400, "IncompleteSignatureException", "no signature found");
        };
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let until = now_ms.saturating_add(2 * cfg.max_clock_skew_secs.saturating_mul(1000));
        let used = store
            .use_once(
                format!("sigv4:{}:{sig}", verified.access_key_id),
                uuid::Uuid::new_v4().to_string(),
                now_ms,
                until,
            )
            .await;
        match used {
            Ok(true) => {}
            Ok(false) => {
                metrics::counter!("strait_aws_auth_failures_total", "code" => "ReplayedRequest")
                    .increment(1);
                return error_response(
                    400,
                    "InvalidSignatureException",
                    "this signature was already used: a request is accepted once (aws.replay_cache); sign it again",
                );
            }
            Err(e) => return error_response(503, "ServiceUnavailable", e.to_string()),
        }
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let op = target.strip_prefix("AWSEvents.").unwrap_or("");
    let control = control::operation(op);
    if target != PUT_EVENTS_TARGET && control.is_none() {
        let known: Vec<&str> = std::iter::once("PutEvents")
            .chain(control::OPERATIONS.iter().map(|(n, _)| *n))
            .collect();
        return error_response(
            400,
            "UnknownOperationException",
            format!(
                "operation {target:?} is not supported (supported: {})",
                known.join(", ")
            ),
        );
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error_response(
                400,
                "SerializationException",
                "the body is not a JSON object",
            );
        }
    };
    if let Some(run) = control {
        let scope = control::Scope {
            region: verified.region.clone(),
            account: cfg.account_id.clone(),
        };
        return match control::run(run, &scope, view, &request).await {
            Ok(v) => json_response(&v),
            Err(e) => error_response(e.status, e.code, e.message),
        };
    }
    let Some(entries) = request.get("Entries").and_then(Value::as_array) else {
        return validation(
            "1 validation error detected: Value null at 'entries' failed to satisfy constraint: Member must not be null",
        );
    };
    if entries.is_empty() || entries.len() > MAX_ENTRIES {
        let bound = if entries.is_empty() {
            "greater than or equal to 1"
        } else {
            "less than or equal to 10"
        };
        return validation(format!(
            "1 validation error detected: Value at 'entries' failed to satisfy constraint: Member must have length {bound}"
        ));
    }
    let total: usize = entries.iter().map(mapping::put_entry_size).sum();
    if total > MAX_REQUEST_BYTES {
        return validation(format!(
            "Total size of the entries in the request is over the limit ({total} bytes > {MAX_REQUEST_BYTES} bytes)."
        ));
    }
    let now = chrono::Utc::now();
    // One result slot and one offer per request entry, in order.
    let mut out: Vec<Value> = Vec::with_capacity(entries.len());
    let mut offers: Vec<Offer> = Vec::with_capacity(entries.len());
    for e in entries {
        let id = uuid::Uuid::new_v4().to_string();
        match mapping::put_entry_to_cloudevent(e, &id, &cfg.account_id, &verified.region, now) {
            Ok((bus, _)) if !ingest.bus_exists(&bus) => {
                out.push(json!({
                    "ErrorCode": "ResourceNotFoundException",
                    "ErrorMessage": format!("Event bus {bus} does not exist."),
                }));
                offers.push(Offer::Refused { bus: String::new() });
            }
            Ok((bus, event)) => {
                out.push(json!({"EventId": id}));
                offers.push(Offer::Event { bus, event });
            }
            Err(r) => {
                out.push(json!({"ErrorCode": r.code, "ErrorMessage": r.message}));
                offers.push(Offer::Refused { bus: String::new() });
            }
        }
    }
    let outcomes = match ingest.submit(offers).await {
        Ok(o) => o,
        Err(e) => return error_response(503, "ServiceUnavailable", e.to_string()),
    };
    for (slot, outcome) in out.iter_mut().zip(outcomes) {
        match outcome {
            IngestOutcome::Invalid(m) => {
                *slot = json!({"ErrorCode": "InvalidArgument", "ErrorMessage": m});
            }
            IngestOutcome::NoSuchBus => {
                *slot = json!({"ErrorCode": "ResourceNotFoundException", "ErrorMessage": "the event bus was deleted"});
            }
            IngestOutcome::Accepted | IngestOutcome::Duplicate | IngestOutcome::Refused => {}
        }
    }
    let failed = out.iter().filter(|e| e.get("ErrorCode").is_some()).count();
    json_response(&json!({"FailedEntryCount": failed, "Entries": out}))
}

/// A 200 answer with a JSON 1.1 body.
fn json_response(body: &Value) -> Response<String> {
    let mut resp = Response::new(body.to_string());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(AMZ_JSON),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::fake::Fake;

    fn cfg() -> IngressConfig {
        IngressConfig {
            keys: vec![VerifyKey {
                access_key_id: "AKIDSTRAIT".into(),
                secret_access_key: "s3cret".into(),
            }],
            account_id: "123456789012".into(),
            max_clock_skew_secs: 300,
            replays: None,
        }
    }

    /// A PutEvents request signed now with the test key.
    fn signed(body: &[u8]) -> HeaderMap {
        let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("localhost"));
        headers.insert("content-type", HeaderValue::from_static(AMZ_JSON));
        headers.insert("x-amz-target", HeaderValue::from_static(PUT_EVENTS_TARGET));
        headers.insert("x-amz-date", HeaderValue::from_str(&date).expect("date"));
        let req = sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        };
        let names = ["content-type", "host", "x-amz-date", "x-amz-target"];
        let sig = sigv4::signature(&req, &names, "s3cret", &date, "us-east-1", "events");
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDSTRAIT/{}/us-east-1/events/aws4_request, SignedHeaders={}, Signature={sig}",
            &date[..8],
            names.join(";")
        );
        headers.insert("authorization", HeaderValue::from_str(&auth).expect("auth"));
        headers
    }

    async fn call(cfg: &IngressConfig, body: &Value, ingest: &Fake) -> (StatusCode, Value) {
        let bytes = body.to_string().into_bytes();
        let headers = signed(&bytes);
        let uri: Uri = "/".parse().expect("uri");
        let resp = put_events(cfg, &Method::POST, &uri, &headers, &bytes, ingest).await;
        let status = resp.status();
        (
            status,
            serde_json::from_str(resp.body()).expect("json answer"),
        )
    }

    /// Every entry gets its slot, in order: stored, no such bus (before and
    /// after the submit), invalid, and a mapping error; only mapped events
    /// on existing buses are offered as events.
    #[tokio::test]
    async fn each_entry_answers_in_its_slot() {
        let entry = |bus: &str, source: &str| json!({"Source": source, "DetailType": "t", "Detail": "{}", "EventBusName": bus});
        let body = json!({"Entries": [
            entry("default", "app"),
            entry("nope", "app"),
            entry("gone", "app"),
            entry("default", "bad"),
            {"Source": "app"},
        ]});
        let fake = Fake::default();
        let (status, v) = call(&cfg(), &body, &fake).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["FailedEntryCount"], 4, "{v}");
        let e = &v["Entries"];
        assert!(e[0]["EventId"].is_string(), "{v}");
        assert_eq!(e[1]["ErrorCode"], "ResourceNotFoundException", "{v}");
        assert_eq!(e[2]["ErrorMessage"], "the event bus was deleted", "{v}");
        assert_eq!(e[3]["ErrorCode"], "InvalidArgument", "{v}");
        assert_eq!(e[3]["ErrorMessage"], "not storable", "{v}");
        assert!(e[4]["ErrorCode"].is_string(), "{v}");
        let offered = fake.offered.lock().expect("lock").clone();
        assert_eq!(
            offered,
            [
                "event:default",
                "refused:",
                "event:gone",
                "event:default",
                "refused:"
            ]
        );
    }

    /// Nothing stored: 503; no keys: the ingress is disabled (403).
    #[tokio::test]
    async fn an_unavailable_ingest_and_a_disabled_ingress_refuse() {
        let body = json!({"Entries": [{"Source": "app", "DetailType": "t", "Detail": "{}"}]});
        let down = Fake {
            down: true,
            ..Fake::default()
        };
        let (status, v) = call(&cfg(), &body, &down).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["__type"], "ServiceUnavailable", "{v}");
        let disabled = IngressConfig::default();
        let (status, v) = call(&disabled, &body, &Fake::default()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["__type"], "AccessDeniedException", "{v}");
    }

    /// With the replay cache on, the same signed request is accepted once;
    /// a request signed again is accepted. Without it both are.
    #[tokio::test]
    async fn the_replay_cache_accepts_a_signature_once() {
        let body = json!({"Entries": [{"Source": "app", "DetailType": "t", "Detail": "{}"}]});
        let bytes = body.to_string().into_bytes();
        let headers = signed(&bytes);
        let uri: Uri = "/".parse().expect("uri");
        let fake = Fake::default();
        let send = |cfg: IngressConfig, headers: HeaderMap| {
            let bytes = bytes.clone();
            let uri = uri.clone();
            let fake = &fake;
            async move {
                let resp = put_events(&cfg, &Method::POST, &uri, &headers, &bytes, fake).await;
                let status = resp.status();
                let v: Value = serde_json::from_str(resp.body()).expect("json answer");
                (status, v)
            }
        };
        let (status, v) = send(cfg(), headers.clone()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let (status, v) = send(cfg(), headers.clone()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "without the cache a replay passes: {v}"
        );
        let mut on = cfg();
        on.replays = Some(Arc::new(crate::nonces::MemoryNonces::default()));
        let (status, v) = send(on.clone(), headers.clone()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let (status, v) = send(on.clone(), headers.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["__type"], "InvalidSignatureException", "{v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains("already used"),
            "{v}"
        );
        // The signature is read from the Authorization header.
        assert_eq!(
            signature_of(&headers, ""),
            headers
                .get("authorization")
                .and_then(|a| a.to_str().ok())
                .and_then(|a| a.rsplit("Signature=").next())
                .map(str::to_string)
        );
    }
}
