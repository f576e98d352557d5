//! AWS towards Strait (docs/adapters/aws.md):
//!
//! * the AWS-compatible ingress: `POST {aws.ingress_path}` (default `/`)
//!   speaking EventBridge's JSON 1.1 `AWSEvents.PutEvents`, SigV4-verified
//!   against `aws.ingress_keys`, so AWS SDKs (boto3 `put_events`) work
//!   unchanged against Strait;
//! * SQS sources: a task per queue long-polls, converts each message
//!   (EventBridge envelope, CloudEvent or anything) to a CloudEvent, commits
//!   it and deletes the message only after the commit ([`poll_sqs`]). Node-local
//!   sources (`aws.sources`) run on every node of the site; shared sources
//!   (`PUT /v1/sources/{name}`) run on the leader of the site they name
//!   (`crate::sources`). Both use the same poller.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strait_adapters::aws_common::Connection;
use strait_adapters::aws_eventbridge::mapping::{self, MAX_ENTRIES, MAX_REQUEST_BYTES};
use strait_adapters::aws_eventbridge::sigv4::{self, VerifyKey};
use strait_adapters::aws_sqs::source::{Provision, SqsSource};
use strait_federation::{AppendEntry, AppendOutcome};

use crate::api::read_body;
use crate::app::App;
use crate::commit::CommitError;
use crate::config::{Aws, AwsSource, Limits};
use crate::ingest::{BATCH, parse_request};
use crate::sources::StatusCell;
use strait_adapters::aws_common::AwsCredential;

/// The JSON 1.1 media type.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// The operation the ingress implements.
pub const PUT_EVENTS_TARGET: &str = "AWSEvents.PutEvents";
/// Largest request body read (entries are limited to 256 KB as AWS counts
/// them; the JSON around them is allowed this much).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Fault injection for tests only: the SQS source waits this many ms
/// between commit and delete, so a test can kill the node in between.
pub const DELETE_DELAY_ENV: &str = "STRAIT_TEST_AWS_SOURCE_DELETE_DELAY_MS";

/// Keys of the AWS ingress.
#[derive(Debug)]
pub struct AwsState {
    keys: Vec<VerifyKey>,
}

impl AwsState {
    /// Build from the config.
    pub fn from_config(cfg: &Aws) -> AwsState {
        AwsState {
            keys: cfg
                .ingress_keys
                .iter()
                .map(|k| VerifyKey {
                    access_key_id: k.access_key_id.clone(),
                    secret_access_key: k.secret_access_key.clone(),
                })
                .collect(),
        }
    }
}

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
    // One result slot per entry, in order.
    let mut out: Vec<Value> = Vec::with_capacity(entries.len());
    let mut mapped: Vec<(usize, String, Value)> = Vec::new();
    let mut ingested: std::collections::BTreeMap<String, u64> = Default::default();
    {
        let view = app.site.state.view();
        for e in entries {
            let id = uuid::Uuid::new_v4().to_string();
            let mapped_entry =
                mapping::put_entry_to_cloudevent(e, &id, &account, &verified.region, now);
            let bus = match &mapped_entry {
                Ok((bus, _)) if view.buses.contains_key(bus) => bus.as_str(),
                _ => "",
            };
            *ingested.entry(bus.to_string()).or_default() += 1;
            match mapped_entry {
                Ok((bus, _)) if !view.buses.contains_key(&bus) => out.push(json!({
                    "ErrorCode": "ResourceNotFoundException",
                    "ErrorMessage": format!("Event bus {bus} does not exist."),
                })),
                Ok((bus, ce)) => {
                    mapped.push((out.len(), bus, ce));
                    out.push(json!({"EventId": id}));
                }
                Err(r) => out.push(json!({"ErrorCode": r.code, "ErrorMessage": r.message})),
            }
        }
    }
    let mut appends = Vec::new();
    let mut slots = Vec::new();
    if !mapped.is_empty() {
        let batch: Vec<&Value> = mapped.iter().map(|(_, _, ce)| ce).collect();
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(BATCH));
        let limits = Limits {
            max_batch_events: MAX_ENTRIES,
            ..app.cfg.limits.clone()
        };
        match parse_request(&h, &body, &limits) {
            Ok(parsed) => {
                for ((slot, bus, _), (_, r)) in mapped.iter().zip(parsed) {
                    match r {
                        Ok(p) => {
                            appends.push(AppendEntry {
                                bus: bus.clone(),
                                source: p.event.source().to_string(),
                                id: p.event.id().to_string(),
                                event: p.json,
                            });
                            slots.push(*slot);
                        }
                        Err(e) => {
                            out[*slot] = json!({"ErrorCode": "InvalidArgument", "ErrorMessage": e.to_string()});
                        }
                    }
                }
            }
            Err(e) => return aws_error(500, "InternalException", e.to_string()),
        }
    }
    for (bus, n) in ingested {
        crate::api::count_ingested(&bus, n);
    }
    let outcomes = match app.committer.append(appends).await {
        Ok(o) => o,
        Err(CommitError::NotReady(m)) | Err(CommitError::Failed(m)) => {
            return aws_error(503, "ServiceUnavailable", m);
        }
        Err(e @ CommitError::StateFull(_)) => {
            return aws_error(503, "ServiceUnavailable", e.to_string());
        }
    };
    let mut committed = 0u64;
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        match outcome {
            AppendOutcome::Accepted(_) => committed += 1,
            AppendOutcome::Duplicate => {
                metrics::counter!("strait_events_duplicate_total").increment(1);
            }
            AppendOutcome::NoSuchBus => {
                out[slot] = json!({"ErrorCode": "ResourceNotFoundException", "ErrorMessage": "the event bus was deleted"});
            }
        }
    }
    metrics::counter!("strait_events_committed_total").increment(committed);
    let failed = out.iter().filter(|e| e.get("ErrorCode").is_some()).count();
    if failed > 0 {
        metrics::counter!("strait_events_rejected_total").increment(failed as u64);
    }
    let body = json!({"FailedEntryCount": failed, "Entries": out});
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(AMZ_JSON),
    );
    resp
}

/// Start one polling task per node-local SQS source (`aws.sources`; their
/// status is not reported by the API, which shows shared sources).
pub fn spawn_sources(app: &Arc<App>) {
    for src in &app.cfg.aws.sources {
        let credential = src
            .credential
            .as_ref()
            .and_then(|n| app.cfg.aws.credentials.get(n).cloned());
        let conn = connection(src, credential);
        tokio::spawn(poll_sqs(
            app.clone(),
            src.clone(),
            conn,
            crate::sources::StatusCell::default(),
        ));
    }
}

/// The connection settings of an SQS source with its (resolved) credential.
pub fn connection(src: &AwsSource, credential: Option<AwsCredential>) -> Connection {
    Connection {
        region: src.region.clone(),
        endpoint: src.endpoint.clone(),
        credential,
        timeout: Some(Duration::from_secs(src.wait_time_secs as u64 + 10)),
        max_attempts: 1,
    }
}

/// Poll one SQS queue into `src.bus` until the task is aborted: receive,
/// convert, commit, then delete what was committed. Progress and the last
/// error go to `status`.
pub async fn poll_sqs(app: Arc<App>, src: AwsSource, conn: Connection, status: StatusCell) {
    let name = src.name.clone();
    let mut client = SqsSource::connect(&conn, &src.queue_url).await;
    let mut backoff = Duration::from_millis(200);
    let grow = |b: Duration| (b * 2).min(Duration::from_secs(30));
    if src.provision {
        let p = Provision {
            event_bus: src.event_bus.clone(),
            rule_name: src
                .rule_name
                .clone()
                .unwrap_or_else(|| format!("strait-{name}")),
            event_pattern: src
                .event_pattern
                .clone()
                .unwrap_or_else(|| json!({"source": [{"prefix": ""}]})),
        };
        loop {
            match client.provision(&p).await {
                Ok(()) => {
                    tracing::info!(source = %name, queue = client.queue_url(), rule = %p.rule_name, "provisioned SQS queue and EventBridge rule");
                    break;
                }
                Err(e) => {
                    status.update(|s| s.last_error = Some(format!("provisioning failed: {e}")));
                    tracing::warn!(source = %name, error = %e, "provisioning failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = grow(backoff);
                }
            }
        }
        backoff = Duration::from_millis(200);
    }
    let delete_delay = std::env::var(DELETE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let queue = client.queue_url().to_string();
    tracing::info!(source = %name, queue = %queue, bus = %src.bus, "SQS source started");
    loop {
        let msgs = match client
            .receive(
                src.max_messages,
                src.wait_time_secs,
                src.visibility_timeout_secs,
            )
            .await
        {
            Ok(m) => {
                backoff = Duration::from_millis(200);
                status.update(|s| {
                    s.last_error = None;
                    s.received += m.len() as u64;
                });
                m
            }
            Err(e) => {
                status.update(|s| s.last_error = Some(format!("SQS receive failed: {e}")));
                metrics::counter!("strait_aws_source_errors_total", "source" => name.clone())
                    .increment(1);
                tracing::warn!(source = %name, error = %e, "SQS receive failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = grow(backoff);
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        metrics::counter!("strait_aws_source_received_total", "source" => name.clone())
            .increment(msgs.len() as u64);
        crate::api::count_ingested(&src.bus, msgs.len() as u64);
        let mut ces = Vec::new();
        let mut receipts = Vec::new();
        for m in &msgs {
            match mapping::sqs_body_to_cloudevent(
                &m.body,
                &m.message_id,
                &queue,
                m.trace_header.as_deref(),
            ) {
                Ok(ce) => {
                    ces.push(ce);
                    receipts.push(m.receipt_handle.clone());
                }
                Err(e) => {
                    status.update(|s| s.rejected += 1);
                    metrics::counter!("strait_aws_source_rejected_total", "source" => name.clone())
                        .increment(1);
                    tracing::warn!(source = %name, message_id = %m.message_id, error = %e, "SQS message is not a valid event; left on the queue (use a redrive policy)");
                }
            }
        }
        let body = serde_json::to_vec(&ces).unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(BATCH));
        let limits = Limits {
            max_batch_events: 10,
            ..app.cfg.limits.clone()
        };
        let parsed = match parse_request(&h, &body, &limits) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "SQS messages could not be parsed");
                continue;
            }
        };
        let mut appends = Vec::new();
        let mut pending = Vec::new();
        for (receipt, (id, r)) in receipts.into_iter().zip(parsed) {
            match r {
                Ok(p) => {
                    appends.push(AppendEntry {
                        bus: src.bus.clone(),
                        source: p.event.source().to_string(),
                        id: p.event.id().to_string(),
                        event: p.json,
                    });
                    pending.push(receipt);
                }
                Err(e) => {
                    status.update(|s| s.rejected += 1);
                    metrics::counter!("strait_aws_source_rejected_total", "source" => name.clone())
                        .increment(1);
                    tracing::warn!(source = %name, event_id = ?id, error = %e, "event from SQS is not a valid CloudEvent; left on the queue");
                }
            }
        }
        // While the commit runs, keep the messages invisible (extend at half
        // the visibility timeout), so a slow commit is not re-delivered.
        let commit = app.committer.append(appends);
        tokio::pin!(commit);
        let half = Duration::from_millis((src.visibility_timeout_secs as u64 * 500).max(500));
        let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let committed = loop {
            tokio::select! {
                r = &mut commit => break r,
                _ = extend.tick() => {
                    if let Err(e) = client.extend_visibility(&pending, src.visibility_timeout_secs).await {
                        tracing::warn!(source = %name, error = %e, "extending the visibility timeout failed");
                    }
                }
            }
        };
        let outcomes = match committed {
            Ok(o) => o,
            Err(e) => {
                status.update(|s| s.last_error = Some(format!("commit failed: {e}")));
                tracing::warn!(source = %name, error = %e, "commit failed; the messages become visible again after the visibility timeout");
                tokio::time::sleep(backoff).await;
                backoff = grow(backoff);
                continue;
            }
        };
        let mut delete = Vec::new();
        for (receipt, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                AppendOutcome::Accepted(_) => {
                    metrics::counter!("strait_events_committed_total").increment(1);
                    status.update(|s| s.committed += 1);
                    delete.push(receipt);
                }
                AppendOutcome::Duplicate => {
                    metrics::counter!("strait_events_duplicate_total").increment(1);
                    delete.push(receipt);
                }
                AppendOutcome::NoSuchBus => {
                    status.update(|s| {
                        s.last_error = Some(format!(
                            "bus `{}` does not exist at this site; messages left on the queue",
                            src.bus
                        ))
                    });
                    tracing::warn!(source = %name, bus = %src.bus, "the source's bus does not exist; messages left on the queue");
                }
            }
        }
        if let Some(d) = delete_delay {
            // Fault injection (tests): delete later, off the polling loop.
            let client = client.clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                delete_committed(&client, &name, &delete).await;
            });
        } else {
            delete_committed(&client, &name, &delete).await;
        }
    }
}

/// Delete messages whose events are committed.
async fn delete_committed(client: &SqsSource, name: &str, receipts: &[String]) {
    match client.delete(receipts).await {
        Ok(n) => {
            metrics::counter!("strait_aws_source_deleted_total", "source" => name.to_string())
                .increment(n as u64);
        }
        Err(e) => {
            tracing::warn!(source = %name, error = %e, "SQS delete failed; the messages come back and are dropped as duplicates");
        }
    }
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
        let body = serde_json::to_vec(&vec![ce]).expect("json");
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(crate::ingest::BATCH),
        );
        let parsed = crate::ingest::parse_request(&h, &body, &Limits::default()).expect("parsed");
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
