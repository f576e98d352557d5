//! The Alibaba-compatible ingress: `POST /openapi/putEvents`, Alibaba
//! EventBridge's data-plane PutEvents, so the official
//! `alibabacloud-eventbridge` SDKs work unchanged against Strait. Requests
//! are verified against the configured AccessKeys ([`super::sign`]) and
//! their `x-acs-signature-nonce` is single use ([`NonceStore`]); the body is
//! CloudEvents (structured or batch mode), each event naming its bus in the
//! `aliyuneventbusname` extension. What exactly is verified is documented
//! in docs/adapters/alibaba.md.
//!
//! [`put_events`] is a function from a request to a response: it reads the
//! body through the caller's reader only once the headers are verified, and
//! hands the events to an [`Ingest`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use serde_json::{Value, json};

use super::sign::{self, IngressKey, SignedRequest};
use super::{BUS_EXTENSION, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_REQUEST_BYTES};
use crate::nonces::{MemoryNonces, NonceStore};
use crate::{Binding, BindingError, EventLimits, Ingest, IngestOutcome, Offer};

/// Longest accepted `x-acs-signature-nonce` (the SDKs send 32 hex digits).
pub const MAX_NONCE_LEN: usize = 128;

/// What the ingress checks requests against.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// The AccessKeys that may sign requests (none: the ingress is
    /// disabled).
    pub keys: Vec<IngressKey>,
    /// `ResourceOwnerAccountId` of the answers.
    pub account_id: String,
    /// Largest accepted distance between the `Date` header and the clock.
    pub max_clock_skew_secs: u64,
    /// Refuse a request without `x-acs-signature-nonce` (without one a
    /// captured request can be sent again within the clock skew).
    pub require_nonce: bool,
    /// Refuse a request without `Content-MD5`: the signature covers the
    /// body only through that header.
    pub require_content_md5: bool,
    /// The node's limits (the ingress applies Alibaba's where they are
    /// lower).
    pub limits: EventLimits,
}

/// The ingress: its configuration and where it remembers the nonces it
/// has accepted.
#[derive(Debug)]
pub struct Ingress {
    /// What requests are checked against.
    pub config: IngressConfig,
    nonces: Arc<dyn NonceStore>,
}

impl Ingress {
    /// An ingress that remembers nonces in this process only.
    pub fn new(config: IngressConfig) -> Ingress {
        Ingress::with_nonces(config, Arc::new(MemoryNonces::default()))
    }

    /// An ingress that remembers nonces in `nonces` (the node passes one
    /// shared by its site).
    pub fn with_nonces(config: IngressConfig, nonces: Arc<dyn NonceStore>) -> Ingress {
        Ingress { config, nonces }
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

fn json_response(status: StatusCode, body: &Value) -> Response<String> {
    let mut resp = Response::new(body.to_string());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Alibaba's error shape, as the SDK reads it (`code`, `message`,
/// `requestId`).
fn ali_error(
    status: u16,
    code: &str,
    message: impl Into<String>,
    request_id: &str,
) -> Response<String> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "requestId": request_id,
        "code": code,
        "message": message.into(),
        "httpCode": status.as_u16(),
        "success": false,
    });
    json_response(status, &body)
}

/// Header names (lower case, as [`HeaderMap`] has them) and their values
/// as text, as the signature checks read them.
pub(super) fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
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

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `PutEvents`: verify the signature and the nonce, then read the body
/// with `read_body` (given the most bytes to read; an error is answered as
/// a body too large), check its `Content-MD5`, read its CloudEvents, hand
/// those naming an existing bus to `ingest` and answer with one
/// `EntryList` slot per event, in order.
pub async fn put_events<R, F, E>(
    ingress: &Ingress,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    read_body: R,
    ingest: &dyn Ingest,
) -> Response<String>
where
    R: FnOnce(usize) -> F,
    F: Future<Output = Result<Bytes, E>>,
{
    let rid = request_id();
    let cfg = &ingress.config;
    if cfg.keys.is_empty() {
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
        headers: header_map(headers),
        query: query_map(uri),
    };
    let now = (now_ms() / 1000) as i64;
    let skew = cfg.max_clock_skew_secs;
    let key = match sign::verify_request(&req, &cfg.keys, now, skew) {
        Ok(k) => k,
        Err(e) => {
            metrics::counter!("strait_alibaba_auth_failures_total", "code" => e.code).increment(1);
            return ali_error(e.status, e.code, e.message, &rid);
        }
    };
    if cfg.require_content_md5 && !req.headers.contains_key("content-md5") {
        metrics::counter!("strait_alibaba_auth_failures_total", "code" => "MissingContentMD5")
            .increment(1);
        return ali_error(
            400,
            "MissingContentMD5",
            "the Content-MD5 header is required on this node (alibaba.require_content_md5): the signature covers the body only through it",
            &rid,
        );
    }
    match req.headers.get("x-acs-signature-nonce") {
        None if cfg.require_nonce => {
            metrics::counter!("strait_alibaba_auth_failures_total", "code" => "MissingSignatureNonce")
                .increment(1);
            return ali_error(
                400,
                "MissingSignatureNonce",
                "the x-acs-signature-nonce header is required on this node (alibaba.require_nonce): without it a captured request could be sent again",
                &rid,
            );
        }
        None => {}
        Some(nonce) if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN => {
            return ali_error(
                400,
                "InvalidSignatureNonce",
                format!("the x-acs-signature-nonce must be 1 to {MAX_NONCE_LEN} characters"),
                &rid,
            );
        }
        Some(nonce) => {
            let now_ms = now_ms();
            let until = now_ms.saturating_add(2 * skew.saturating_mul(1000));
            let used = ingress
                .nonces
                .use_once(
                    format!("alibaba:{}:{nonce}", key.access_key_id),
                    rid.clone(),
                    now_ms,
                    until,
                )
                .await;
            match used {
                Ok(true) => {}
                Ok(false) => {
                    metrics::counter!("strait_alibaba_auth_failures_total", "code" => "SignatureNonceUsed")
                        .increment(1);
                    return ali_error(
                        403,
                        "SignatureNonceUsed",
                        "the x-acs-signature-nonce was already used (replayed request)",
                        &rid,
                    );
                }
                Err(e) => return ali_error(503, "ServiceUnavailable", e.to_string(), &rid),
            }
        }
    }
    let limit = MAX_REQUEST_BYTES.min(cfg.limits.max_request_bytes);
    let Ok(bytes) = read_body(limit).await else {
        return ali_error(
            413,
            "RequestTooLarge",
            format!("the request body is larger than {limit} bytes (PutEvents limit)"),
            &rid,
        );
    };
    if let Err(e) = sign::check_content_md5(&req, &bytes) {
        return ali_error(e.status, e.code, e.message, &rid);
    }
    let limits = EventLimits {
        max_event_bytes: MAX_EVENT_BYTES.min(cfg.limits.max_event_bytes),
        max_request_bytes: limit,
        max_batch_events: MAX_BATCH_EVENTS,
    };
    let read = match ingest.read(Binding::Request, headers, &bytes, &limits) {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = match &e {
                BindingError::TooManyEvents(_) => (400, "TooManyEvents"),
                BindingError::UnsupportedMediaType(_) => (415, "UnsupportedMediaType"),
                BindingError::Malformed(_) => (400, "MalformedRequest"),
            };
            let message = match &e {
                BindingError::TooManyEvents(m) => {
                    format!(
                        "{m} (Alibaba EventBridge takes at most {MAX_BATCH_EVENTS} events per PutEvents call)"
                    )
                }
                other => other.to_string(),
            };
            return ali_error(status, code, message, &rid);
        }
    };
    // One EntryList slot and one offer per event, in order.
    let mut entries_out: Vec<Value> = Vec::with_capacity(read.len());
    let mut offers = Vec::with_capacity(read.len());
    for entry in read {
        let mut slot = json!({"EventId": entry.id.unwrap_or_default()});
        let refusal = match entry.event {
            Ok(checked) => {
                if let Some(tp) = checked.event.str_attr("traceparent") {
                    slot["TraceId"] = json!(tp.split('-').nth(1).unwrap_or(""));
                }
                match checked.event.str_attr(BUS_EXTENSION) {
                    None => Some((
                        "EventBusNotSpecified",
                        format!(
                            "the `{BUS_EXTENSION}` extension is missing: it names the event bus"
                        ),
                    )),
                    Some(bus) if !ingest.bus_exists(bus) => Some((
                        "EventBusNotExist",
                        format!("the event bus `{bus}` does not exist"),
                    )),
                    Some(bus) => {
                        offers.push(Offer::Checked {
                            bus: bus.to_string(),
                            event: checked,
                        });
                        None
                    }
                }
            }
            Err(e) => Some((e.code, e.message)),
        };
        if let Some((code, message)) = refusal {
            slot["ErrorCode"] = json!(code);
            slot["ErrorMessage"] = json!(message);
            // Counted on no bus: it names none that exists.
            offers.push(Offer::Refused { bus: String::new() });
        }
        entries_out.push(slot);
    }
    let outcomes = match ingest.submit(offers).await {
        Ok(o) => o,
        Err(e) => return ali_error(503, "ServiceUnavailable", e.to_string(), &rid),
    };
    for (slot, outcome) in entries_out.iter_mut().zip(outcomes) {
        match outcome {
            IngestOutcome::NoSuchBus => {
                slot["ErrorCode"] = json!("EventBusNotExist");
                slot["ErrorMessage"] = json!("the event bus was deleted");
            }
            IngestOutcome::Invalid(m) => {
                slot["ErrorCode"] = json!("InvalidArgument");
                slot["ErrorMessage"] = json!(m);
            }
            IngestOutcome::Accepted | IngestOutcome::Duplicate | IngestOutcome::Refused => {}
        }
    }
    let failed = entries_out
        .iter()
        .filter(|e| e.get("ErrorCode").is_some())
        .count();
    let body = json!({
        "RequestId": rid,
        "ResourceOwnerAccountId": cfg.account_id,
        "FailedEntryCount": failed,
        "EntryList": entries_out,
    });
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::ingest::fake::Fake;

    #[test]
    fn query_is_split() {
        let uri: Uri = "/openapi/putEvents?b=2&a=1&c".parse().expect("uri");
        let q = query_map(&uri);
        assert_eq!(q.get("a").map(String::as_str), Some("1"));
        assert_eq!(q.get("c").map(String::as_str), Some(""));
    }

    fn ingress(keys: bool) -> Ingress {
        Ingress::new(IngressConfig {
            keys: if keys {
                vec![IngressKey {
                    access_key_id: "AKID".into(),
                    access_key_secret: "s3cret".into(),
                    security_token: None,
                }]
            } else {
                Vec::new()
            },
            account_id: "acct".into(),
            max_clock_skew_secs: 900,
            require_nonce: true,
            require_content_md5: false,
            limits: EventLimits {
                max_event_bytes: 1 << 20,
                max_request_bytes: 4 << 20,
                max_batch_events: 1000,
            },
        })
    }

    /// A PutEvents request signed now with the test key, as the SDK signs.
    fn signed(body: &[u8], nonce: &str) -> HeaderMap {
        signed_with(body, Some(nonce), true)
    }

    /// As [`signed`], with or without a nonce and `Content-MD5`.
    fn signed_with(body: &[u8], nonce: Option<&str>, md5: bool) -> HeaderMap {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let mut headers = HeaderMap::new();
        let mut set = |k: &'static str, v: &str| {
            headers.insert(k, HeaderValue::from_str(v).expect("header"));
        };
        set("content-type", "application/cloudevents-batch+json");
        if md5 {
            set("content-md5", &sign::content_md5(body));
        }
        set("date", &date);
        set("host", "localhost");
        set("x-acs-signature-method", "HMAC-SHA1");
        set("x-acs-signature-version", "1.0");
        if let Some(nonce) = nonce {
            set("x-acs-signature-nonce", nonce);
        }
        let req = SignedRequest {
            method: "POST".into(),
            pathname: super::super::PUT_EVENTS_PATH.into(),
            headers: header_map(&headers),
            query: BTreeMap::new(),
        };
        let sig = sign::signature(&sign::string_to_sign(&req), "s3cret");
        let auth = sign::authorization("AKID", &sig);
        headers.insert(
            "authorization",
            HeaderValue::from_str(&auth).expect("header"),
        );
        headers
    }

    /// One call; `body_read` says whether the body was asked for.
    async fn call(
        ingress: &Ingress,
        headers: &HeaderMap,
        body: &[u8],
        fits: bool,
        fake: &Fake,
        body_read: &AtomicBool,
    ) -> (StatusCode, Value) {
        let uri: Uri = super::super::PUT_EVENTS_PATH.parse().expect("uri");
        let bytes = Bytes::copy_from_slice(body);
        let read = |_limit: usize| async move {
            body_read.store(true, Ordering::SeqCst);
            if fits { Ok(bytes) } else { Err(()) }
        };
        let resp = put_events(ingress, &Method::POST, &uri, headers, read, fake).await;
        let status = resp.status();
        assert_eq!(
            resp.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        (status, serde_json::from_str(resp.body()).expect("json"))
    }

    fn event(id: &str, bus: Option<&str>) -> Value {
        let mut e = json!({"specversion": "1.0", "id": id, "source": "/s", "type": "t"});
        if let Some(b) = bus {
            e[BUS_EXTENSION] = json!(b);
        }
        e
    }

    /// One slot per event, in order: stored, a duplicate (not an error),
    /// no bus named, a bus that does not exist, a bus deleted before the
    /// append, an invalid event; only events for existing buses are offered.
    #[tokio::test]
    async fn each_event_answers_in_its_slot() {
        let mut invalid = event("bad", Some("default"));
        invalid.as_object_mut().expect("object").remove("type");
        let body = json!([
            event("a", Some("default")),
            event("dup", Some("default")),
            event("b", None),
            event("c", Some("nope")),
            event("d", Some("gone")),
            invalid,
        ])
        .to_string();
        let fake = Fake::default();
        let read = AtomicBool::new(false);
        let headers = signed(body.as_bytes(), "n1");
        let (status, v) = call(
            &ingress(true),
            &headers,
            body.as_bytes(),
            true,
            &fake,
            &read,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["FailedEntryCount"], 4, "{v}");
        assert_eq!(v["ResourceOwnerAccountId"], "acct", "{v}");
        let e = &v["EntryList"];
        assert_eq!(e[0], json!({"EventId": "a"}), "{v}");
        assert_eq!(e[1], json!({"EventId": "dup"}), "{v}");
        assert_eq!(e[2]["ErrorCode"], "EventBusNotSpecified", "{v}");
        assert_eq!(e[3]["ErrorCode"], "EventBusNotExist", "{v}");
        assert_eq!(e[4]["ErrorMessage"], "the event bus was deleted", "{v}");
        assert_eq!(e[5]["EventId"], "bad", "{v}");
        assert!(e[5]["ErrorCode"].is_string(), "{v}");
        let offered = fake.offered.lock().expect("lock").clone();
        assert_eq!(
            offered,
            [
                "checked:default",
                "checked:default",
                "refused:",
                "refused:",
                "checked:gone",
                "refused:"
            ]
        );
    }

    /// The headers are checked before the body is read: no keys (403), no
    /// signature (400), a replayed nonce (403); then a body over the limit
    /// (413), a body that is not the one signed (400); and a store that is
    /// down (503).
    #[tokio::test]
    async fn refusals_come_before_the_body_where_they_can() {
        let body = json!([event("a", Some("default"))]).to_string();
        let body = body.as_bytes();
        let fake = Fake::default();
        let on = ingress(true);
        let read = AtomicBool::new(false);
        let headers = signed(body, "n2");
        let (status, v) = call(&ingress(false), &headers, body, true, &fake, &read).await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::FORBIDDEN, &json!("AccessDenied"))
        );
        let (status, v) = call(&on, &HeaderMap::new(), body, true, &fake, &read).await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::BAD_REQUEST, &json!("MissingAuthorization"))
        );
        assert!(!read.load(Ordering::SeqCst), "the body was not read");
        let (status, v) = call(&on, &headers, body, false, &fake, &read).await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::PAYLOAD_TOO_LARGE, &json!("RequestTooLarge"))
        );
        assert!(read.load(Ordering::SeqCst));
        let (status, v) = call(&on, &headers, body, true, &fake, &read).await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::FORBIDDEN, &json!("SignatureNonceUsed"))
        );
        let headers = signed(b"[]", "n3");
        let (status, v) = call(&on, &headers, body, true, &fake, &read).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(fake.offered.lock().expect("lock").is_empty());
        let down = Fake {
            down: true,
            ..Fake::default()
        };
        let headers = signed(body, "n4");
        let (status, v) = call(&on, &headers, body, true, &down, &read).await;
        assert_eq!(
            (status, &v["code"], &v["message"]),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &json!("ServiceUnavailable"),
                &json!("no leader")
            )
        );
    }

    /// A request without a nonce is refused where nonces are required and
    /// accepted where they are not; one without `Content-MD5` is refused
    /// where the body must be signed. Neither reads the body.
    #[tokio::test]
    async fn nonce_and_content_md5_can_be_required() {
        let body = json!([event("a", Some("default"))]).to_string();
        let body = body.as_bytes();
        let fake = Fake::default();
        let read = AtomicBool::new(false);
        let required = ingress(true);
        let (status, v) = call(
            &required,
            &signed_with(body, None, true),
            body,
            true,
            &fake,
            &read,
        )
        .await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::BAD_REQUEST, &json!("MissingSignatureNonce"))
        );
        assert!(!read.load(Ordering::SeqCst), "the body was not read");
        let long = "n".repeat(MAX_NONCE_LEN + 1);
        let (status, v) = call(
            &required,
            &signed_with(body, Some(&long), true),
            body,
            true,
            &fake,
            &read,
        )
        .await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::BAD_REQUEST, &json!("InvalidSignatureNonce"))
        );
        let mut cfg = ingress(true).config;
        cfg.require_nonce = false;
        cfg.require_content_md5 = true;
        let relaxed = Ingress::new(cfg);
        let (status, v) = call(
            &relaxed,
            &signed_with(body, None, false),
            body,
            true,
            &fake,
            &read,
        )
        .await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::BAD_REQUEST, &json!("MissingContentMD5"))
        );
        assert!(!read.load(Ordering::SeqCst), "the body was not read");
        let (status, v) = call(
            &relaxed,
            &signed_with(body, None, true),
            body,
            true,
            &fake,
            &read,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        // The same request twice without a nonce: nothing to tell them apart.
        let (status, v) = call(
            &relaxed,
            &signed_with(body, None, true),
            body,
            true,
            &fake,
            &read,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
}
