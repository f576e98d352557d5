//! The AWS-compatible ingress (docs/adapters/aws.md): `POST
//! {aws.ingress_path}` (default `/`) routed to
//! [`strait_adapters::aws_eventbridge::ingress::put_events`], which speaks
//! EventBridge's JSON 1.1 `AWSEvents.PutEvents`; its events go through the
//! node's [`crate::ingest::Gate`]. SQS sources are in `crate::sources`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use strait_adapters::aws_eventbridge::control::{
    BusInfo, Change, ChangeError, ChangeFuture, ControlView, RuleInfo,
};
use strait_adapters::aws_eventbridge::ingress::{self, MAX_BODY_BYTES};

use super::Ingresses;
use super::body::read_body;
use crate::archive::{self, OpError};
use crate::replay;
use crate::telemetry::ingress::{RequestSpan, TracedGate};
use crate::util::now_ms;

/// `POST {aws.ingress_path}`: EventBridge `PutEvents` and the control
/// operations (buses, rules, archives and replays: see
/// [`strait_adapters::aws_eventbridge::control::OPERATIONS`]).
pub async fn put_events(
    State(state): State<Arc<Ingresses>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The request's span (SERVER): the entries without a `TraceHeader`
    // continue it, the others are linked from it.
    let mut span = RequestSpan::post(uri.path(), &headers);
    if span.recording() {
        span.attr("rpc.system", "aws-api");
        span.attr("rpc.service", "AWSEvents");
        let op = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.strip_prefix("AWSEvents."))
            .unwrap_or("PutEvents")
            .to_string();
        span.attr("rpc.method", op);
    }
    let bytes = match read_body(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let resp = ingress::too_large();
            span.end(resp.status().as_u16());
            return resp.into_response();
        }
    };
    let gate = TracedGate::new(&state.gate, &span);
    let view = StateView(&state.gate.state, &state.writer);
    let resp = ingress::handle(&state.aws, &method, &uri, &headers, &bytes, &gate, &view).await;
    if span.recording() {
        gate.report(&mut span);
        span.end(resp.status().as_u16());
    }
    resp.into_response()
}

/// The site's buses, rules, archives and replays as the AWS control
/// operations read them, and the writer their changes go through.
struct StateView<'a>(&'a strait_federation::SiteState, &'a crate::cluster::Writer);

/// A native archive or replay refusal as the AWS adapter maps it.
fn change_error(e: OpError) -> ChangeError {
    match e {
        OpError::Invalid { code, .. } => ChangeError::Invalid {
            code: code.to_string(),
            message: e.to_string(),
        },
        OpError::NotFound { message, .. } => ChangeError::NotFound(message),
        OpError::Conflict { code, message } => match code {
            "ArchiveExists" | "ReplayExists" => ChangeError::Exists(message),
            "ReplayFinished" => ChangeError::IllegalState(message),
            _ => ChangeError::Unavailable(message),
        },
        OpError::Write(w) => ChangeError::Unavailable(w.to_string()),
    }
}

impl StateView<'_> {
    async fn change(&self, change: Change) -> Result<Value, OpError> {
        let (state, writer) = (self.0, self.1);
        match change {
            Change::PutArchive {
                bus,
                name,
                body,
                must_be_new,
            } => {
                let input = archive::parse_archive(&body)?;
                archive::put_archive(state, writer, &bus, &name, input, must_be_new).await
            }
            Change::DeleteArchive { bus, name } => {
                archive::delete_archive(writer, &bus, &name).await?;
                Ok(Value::Null)
            }
            Change::StartReplay { name, body } => {
                let input = replay::parse_replay(&body, now_ms())?;
                replay::start_replay(state, writer, &name, input).await
            }
            Change::CancelReplay { name } => replay::cancel_replay(state, writer, &name).await,
        }
    }
}

impl ControlView for StateView<'_> {
    fn buses(&self) -> Vec<BusInfo> {
        self.0
            .view()
            .buses
            .iter()
            .map(|(name, spec)| BusInfo {
                name: name.clone(),
                description: text(spec, "description"),
            })
            .collect()
    }

    fn rules(&self, bus: &str) -> Option<Vec<RuleInfo>> {
        let view = self.0.view();
        if !view.buses.contains_key(bus) {
            return None;
        }
        Some(
            view.rules
                .iter()
                .filter(|((b, _), _)| b == bus)
                .map(|((b, name), spec)| RuleInfo {
                    bus: b.clone(),
                    name: name.clone(),
                    pattern: spec.get("pattern").cloned().unwrap_or(Value::Null),
                    enabled: spec.get("enabled").and_then(Value::as_bool).unwrap_or(true),
                    description: text(spec, "description"),
                })
                .collect(),
        )
    }

    fn archives(&self) -> Vec<Value> {
        archive::list_archives(self.0, None)
    }

    fn replays(&self) -> Vec<Value> {
        replay::list_replays(self.0, None, None)
    }

    fn apply(&self, change: Change) -> ChangeFuture<'_> {
        Box::pin(async move { self.change(change).await.map_err(change_error) })
    }
}

fn text(spec: &Value, field: &str) -> String {
    spec.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
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
        assert_eq!(ok.aws.sources[0].sqs.credential.as_deref(), Some("main"));
        assert_eq!(ok.aws.sources[0].sqs.wait_time_secs, 20);
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
        c.aws.sources[0].sqs.credential = Some("nope".into());
        assert_eq!(field(&c), "aws.sources[0].credential");
        let mut c = ok.clone();
        c.aws.sources[0].sqs.wait_time_secs = 21;
        assert_eq!(field(&c), "aws.sources[0].wait_time_secs");
        let mut c = ok.clone();
        c.aws.sources[0].sqs.queue_url = "queue".into();
        assert_eq!(field(&c), "aws.sources[0].queue_url");
        let mut c = ok.clone();
        c.aws.sources[0].sqs.endpoint = Some("ftp://x".into());
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
