//! The AWS-compatible ingress (docs/adapters/aws.md): `POST
//! {aws.ingress_path}` (default `/`) speaking EventBridge's JSON 1.1
//! `AWSEvents.PutEvents`, SigV4-verified against `aws.ingress_keys`, so AWS
//! SDKs (boto3 `put_events`) work unchanged against Strait. SQS sources are
//! in `crate::sources`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strait_adapters::aws_eventbridge::mapping::{self, MAX_ENTRIES, MAX_REQUEST_BYTES};
use strait_adapters::aws_eventbridge::sigv4;
use strait_federation::AppendEntry;

use crate::app::App;
use crate::http::read_body;
use crate::ingest::{CommitError, Entry, Outcome, parse_items};

/// The JSON 1.1 media type.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// The operation the ingress implements.
pub const PUT_EVENTS_TARGET: &str = "AWSEvents.PutEvents";
/// Largest request body read (entries are limited to 256 KB as AWS counts
/// them; the JSON around them is allowed this much).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// AWS's JSON error shape, `{"__type", "message"}`, with `x-amzn-ErrorType`.
pub fn aws_error(status: u16, code: &str, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"__type": code, "message": message.into()});
    let mut resp = (status, body.to_string()).into_response();
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

fn validation(message: impl Into<String>) -> Response {
    aws_error(400, "ValidationException", message)
}

/// `POST {aws.ingress_path}`: EventBridge `PutEvents`.
pub async fn put_events(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return aws_error(
                413,
                "RequestEntityTooLarge",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    if app.aws.keys.is_empty() {
        return aws_error(
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
        body: &bytes,
    };
    let skew = app.cfg.aws.max_clock_skew_secs as i64;
    let verified = match sigv4::verify(&req, &app.aws.keys, "events", chrono::Utc::now(), skew) {
        Ok(v) => v,
        Err(e) => {
            metrics::counter!("strait_aws_auth_failures_total", "code" => e.code).increment(1);
            let status = if e.code == "MissingAuthenticationTokenException" {
                403
            } else {
                400
            };
            return aws_error(status, e.code, e.message);
        }
    };
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if target != PUT_EVENTS_TARGET {
        return aws_error(
            400,
            "UnknownOperationException",
            format!("operation {target:?} is not supported (only {PUT_EVENTS_TARGET})"),
        );
    }
    let request: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return aws_error(
                400,
                "SerializationException",
                "the body is not a JSON object",
            );
        }
    };
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
    let account = app.cfg.aws.account_id.clone();
    // One result slot and one ingest entry per request entry, in order.
    let mut out: Vec<Value> = Vec::with_capacity(entries.len());
    let mut submit: Vec<Entry> = Vec::with_capacity(entries.len());
    let mut mapped: Vec<(usize, String)> = Vec::new();
    let mut events = Vec::new();
    {
        let view = app.site.state.view();
        for e in entries {
            let id = uuid::Uuid::new_v4().to_string();
            let refused = |bus: &str| Entry::Refused {
                bus: bus.to_string(),
            };
            match mapping::put_entry_to_cloudevent(e, &id, &account, &verified.region, now) {
                Ok((bus, _)) if !view.buses.contains_key(&bus) => {
                    out.push(json!({
                        "ErrorCode": "ResourceNotFoundException",
                        "ErrorMessage": format!("Event bus {bus} does not exist."),
                    }));
                    submit.push(refused(""));
                }
                Ok((bus, ce)) => match serde_json::value::to_raw_value(&ce) {
                    Ok(raw) => {
                        mapped.push((out.len(), bus.clone()));
                        events.push(raw);
                        out.push(json!({"EventId": id}));
                        submit.push(refused(&bus));
                    }
                    Err(e) => return aws_error(500, "InternalException", e.to_string()),
                },
                Err(r) => {
                    out.push(json!({"ErrorCode": r.code, "ErrorMessage": r.message}));
                    submit.push(refused(""));
                }
            }
        }
    }
    for ((slot, bus), (_, r)) in mapped
        .into_iter()
        .zip(parse_items(&events, None, &app.cfg.limits))
    {
        match r {
            Ok(p) => {
                submit[slot] = Entry::Append(AppendEntry {
                    bus,
                    source: p.event.source().to_string(),
                    id: p.event.id().to_string(),
                    event: p.json,
                });
            }
            Err(e) => {
                out[slot] = json!({"ErrorCode": "InvalidArgument", "ErrorMessage": e.to_string()});
            }
        }
    }
    let outcomes = match app.ingest.submit(submit).await {
        Ok(o) => o,
        Err(CommitError::NotReady(m)) | Err(CommitError::Failed(m)) => {
            return aws_error(503, "ServiceUnavailable", m);
        }
    };
    for (slot, outcome) in out.iter_mut().zip(outcomes) {
        if outcome == Outcome::NoSuchBus {
            *slot = json!({"ErrorCode": "ResourceNotFoundException", "ErrorMessage": "the event bus was deleted"});
        }
    }
    let failed = out.iter().filter(|e| e.get("ErrorCode").is_some()).count();
    let body = json!({"FailedEntryCount": failed, "Entries": out});
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(AMZ_JSON),
    );
    resp
}

#[cfg(test)]
mod tests {
    use crate::config::{AwsIngressKey, Limits, NodeConfig};

    /// PutEvents maps each entry and then checks it as the batch ingress
    /// does: a `Detail` that parses alone but is one level too deep inside
    /// the event is that entry's error, not stored.
    #[test]
    fn a_detail_routing_cannot_read_is_refused() {
        use strait_adapters::aws_eventbridge::mapping;
        let detail = format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127));
        let entry = serde_json::json!({"Source": "app", "DetailType": "t", "Detail": detail});
        let (_, ce) = mapping::put_entry_to_cloudevent(
            &entry,
            "id1",
            "123456789012",
            "us-east-1",
            chrono::Utc::now(),
        )
        .expect("mapped");
        let raw = serde_json::value::to_raw_value(&ce).expect("json");
        let parsed = crate::ingest::parse_items(&[raw], None, &Limits::default());
        let e = parsed[0].1.as_ref().expect_err("refused");
        assert_eq!(e.code(), "UnroutableEvent", "{e}");
        assert!(e.to_string().contains("too deep"), "{e}");
    }

    fn cfg(yaml: &str) -> NodeConfig {
        let mut c: NodeConfig = serde_yaml::from_str(yaml).expect("yaml");
        c.dev = true;
        c
    }

    fn field(c: &NodeConfig) -> String {
        match c.validate().expect_err("invalid") {
            crate::config::ConfigError::InvalidAt { field, .. } => field,
            other => format!("{other}"),
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let ok = cfg(r#"
aws:
  credentials:
    main: {access_key_id: AKID, secret_access_key: s}
    prof: {profile: dev}
  ingress_keys: [{access_key_id: AKID, secret_access_key: s}]
  sources:
    - {name: q1, queue_url: "http://127.0.0.1:5000/123456789012/q1", bus: default, credentials: main, endpoint: "http://127.0.0.1:5000"}
"#);
        ok.validate().expect("valid");
        assert_eq!(ok.aws.sources[0].credential.as_deref(), Some("main"));
        assert_eq!(ok.aws.sources[0].wait_time_secs, 20);
        assert_eq!(ok.aws.ingress_path, "/");

        let mut c = ok.clone();
        c.aws.credentials.insert("bad".into(), Default::default());
        assert_eq!(field(&c), "aws.credentials.bad.access_key_id");
        let mut c = ok.clone();
        c.aws.ingress_keys.push(AwsIngressKey {
            access_key_id: "AKID".into(),
            secret_access_key: "x".into(),
        });
        assert_eq!(field(&c), "aws.ingress_keys[1].access_key_id");
        let mut c = ok.clone();
        c.aws.ingress_path = "/v1/buses".into();
        assert_eq!(field(&c), "aws.ingress_path");
        let mut c = ok.clone();
        c.aws.sources[0].credential = Some("nope".into());
        assert_eq!(field(&c), "aws.sources[0].credential");
        let mut c = ok.clone();
        c.aws.sources[0].wait_time_secs = 21;
        assert_eq!(field(&c), "aws.sources[0].wait_time_secs");
        let mut c = ok.clone();
        c.aws.sources[0].queue_url = "queue".into();
        assert_eq!(field(&c), "aws.sources[0].queue_url");
        let mut c = ok.clone();
        c.aws.sources[0].endpoint = Some("ftp://x".into());
        assert_eq!(field(&c), "aws.sources[0].endpoint");
        let mut c = ok.clone();
        c.aws.sources.push(c.aws.sources[0].clone());
        assert_eq!(field(&c), "aws.sources[1].name");
        assert!(!format!("{:?}", ok.aws).contains("secret_access_key: Some(\"s\")"));
        let bad: Result<NodeConfig, _> =
            serde_yaml::from_str("aws: {credentials: {m: {access_key: x}}}");
        assert!(bad.is_err());
    }
}
