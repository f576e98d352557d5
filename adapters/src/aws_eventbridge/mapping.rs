//! CloudEvent ⇄ AWS EventBridge mappings, pure so they are unit-tested
//! (documented in docs/adapters/aws.md):
//!
//! * [`to_entry`]: a CloudEvent → one PutEvents entry (the target);
//! * [`envelope_to_cloudevent`]: the EventBridge event envelope (as an SQS
//!   target of an EventBridge rule receives it) → a CloudEvent (the source);
//! * [`put_entry_to_cloudevent`]: one entry of a PutEvents request → a
//!   CloudEvent (the AWS-compatible ingress);
//! * [`sqs_body_to_cloudevent`]: any SQS message body → a CloudEvent.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use strait_routing::event::Event;

use crate::aws_common::{traceparent_to_xray, xray_to_traceparent};

/// Largest PutEvents request, counted the way AWS counts it.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Most entries in one PutEvents request.
pub const MAX_ENTRIES: usize = 10;
/// Bytes AWS counts for a present `Time`.
pub const TIME_BYTES: usize = 14;
/// Extension carrying the AWS account of an event from AWS.
pub const ACCOUNT_EXTENSION: &str = "awsaccount";
/// Extension carrying the AWS region of an event from AWS.
pub const REGION_EXTENSION: &str = "awsregion";
/// Extension carrying the `resources` of an event from AWS, comma-separated.
pub const RESOURCES_EXTENSION: &str = "awsresources";

/// What goes into `Detail`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetailMode {
    /// The event's `data` (a JSON object as is; anything else wrapped as
    /// `{"data": ...}` / `{"data_base64": ...}`; no data: `{}`).
    #[default]
    Data,
    /// The whole CloudEvent in JSON structured form.
    Event,
}

/// One PutEvents entry, before it becomes an SDK type.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsEntry {
    /// `Source`.
    pub source: String,
    /// `DetailType`.
    pub detail_type: String,
    /// `Detail`: a JSON object, serialized.
    pub detail: String,
    /// `Time`.
    pub time: Option<DateTime<Utc>>,
    /// `Resources`.
    pub resources: Vec<String>,
    /// `EventBusName`.
    pub event_bus_name: String,
    /// `TraceHeader` (X-Ray format).
    pub trace_header: Option<String>,
}

impl AwsEntry {
    /// The entry's size as AWS computes it for the 256 KB limit: 14 bytes
    /// for `Time` if present, plus the UTF-8 bytes of `Source`,
    /// `DetailType`, `Detail` and each `Resources` entry.
    pub fn size(&self) -> usize {
        entry_size(
            self.time.is_some(),
            &self.source,
            &self.detail_type,
            &self.detail,
            &self.resources,
        )
    }
}

/// AWS's entry size calculation (see [`AwsEntry::size`]).
pub fn entry_size(
    has_time: bool,
    source: &str,
    detail_type: &str,
    detail: &str,
    resources: &[String],
) -> usize {
    let mut size = if has_time { TIME_BYTES } else { 0 };
    size += source.len() + detail_type.len() + detail.len();
    size += resources.iter().map(String::len).sum::<usize>();
    size
}

/// Options of the CloudEvent → entry mapping (from the target settings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryOptions {
    /// `EventBusName` (name or ARN).
    pub event_bus: String,
    /// `Source` instead of the event's `source`.
    pub source: Option<String>,
    /// What goes into `Detail`.
    pub detail: DetailMode,
    /// Attribute whose value (comma-separated) becomes `Resources`.
    pub resources_attribute: Option<String>,
}

/// Map a CloudEvent to a PutEvents entry. `traceparent` is the W3C context
/// of this attempt; it becomes the X-Ray `TraceHeader`.
pub fn to_entry(event: &Event, opts: &EntryOptions, traceparent: &str) -> AwsEntry {
    let detail = match opts.detail {
        DetailMode::Event => event.to_value(),
        DetailMode::Data => match (event.get("data"), event.get("data_base64")) {
            (Some(Value::Object(o)), _) => Value::Object(o.clone()),
            (Some(Value::Null), _) | (None, None) => json!({}),
            (Some(other), _) => json!({ "data": other }),
            (None, Some(b64)) => json!({ "data_base64": b64 }),
        },
    };
    let resources = opts
        .resources_attribute
        .as_deref()
        .and_then(|a| event.str_attr(a))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let time = event
        .str_attr("time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let trace = if traceparent.is_empty() {
        event.str_attr("traceparent").unwrap_or("")
    } else {
        traceparent
    };
    AwsEntry {
        source: opts
            .source
            .clone()
            .unwrap_or_else(|| event.source().to_string()),
        detail_type: event.event_type().to_string(),
        detail: detail.to_string(),
        time,
        resources,
        event_bus_name: opts.event_bus.clone(),
        trace_header: traceparent_to_xray(trace),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn put_resources(ce: &mut Map<String, Value>, resources: Option<&Value>) {
    if let Some(Value::Array(rs)) = resources {
        let joined: Vec<&str> = rs.iter().filter_map(Value::as_str).collect();
        if !joined.is_empty() {
            ce.insert(RESOURCES_EXTENSION.into(), json!(joined.join(",")));
        }
    }
}

/// The EventBridge event envelope (`version`, `id`, `detail-type`,
/// `source`, `account`, `time`, `region`, `resources`, `detail`) → a
/// CloudEvent (JSON structured form). The `id` is kept, so the same AWS
/// event polled twice is dropped by the node's (bus, source, id) dedup.
pub fn envelope_to_cloudevent(env: &Value, trace_header: Option<&str>) -> Result<Value, String> {
    let s = |k: &str| env.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let id = s("id").ok_or("the EventBridge event has no `id`")?;
    let source = s("source").ok_or("the EventBridge event has no `source`")?;
    let detail_type = s("detail-type").ok_or("the EventBridge event has no `detail-type`")?;
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(id));
    ce.insert("source".into(), json!(source));
    ce.insert("type".into(), json!(detail_type));
    if let Some(t) = s("time") {
        match DateTime::parse_from_rfc3339(t) {
            Ok(t) => {
                ce.insert("time".into(), json!(rfc3339(t.with_timezone(&Utc))));
            }
            Err(_) => {
                return Err(format!(
                    "the EventBridge event's `time` {t:?} is not RFC 3339"
                ));
            }
        }
    }
    if let Some(a) = s("account") {
        ce.insert(ACCOUNT_EXTENSION.into(), json!(a));
    }
    if let Some(r) = s("region") {
        ce.insert(REGION_EXTENSION.into(), json!(r));
    }
    put_resources(&mut ce, env.get("resources"));
    if let Some(tp) = trace_header.and_then(xray_to_traceparent) {
        ce.insert("traceparent".into(), json!(tp));
    }
    ce.insert("datacontenttype".into(), json!("application/json"));
    ce.insert(
        "data".into(),
        env.get("detail").cloned().unwrap_or_else(|| json!({})),
    );
    Ok(Value::Object(ce))
}

/// Why a PutEvents entry is rejected (AWS's per-entry `ErrorCode`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EntryReject {
    /// `ErrorCode`.
    pub code: &'static str,
    /// `ErrorMessage`.
    pub message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> EntryReject {
    EntryReject {
        code,
        message: message.into(),
    }
}

/// The bus name of an `EventBusName` (name or ARN); `default` when absent.
pub fn bus_name(event_bus_name: Option<&str>) -> &str {
    match event_bus_name {
        None | Some("") => "default",
        Some(n) if n.starts_with("arn:") => n.rsplit('/').next().unwrap_or(n),
        Some(n) => n,
    }
}

/// A PutEvents request entry (JSON 1.1 form: `Source`, `DetailType`,
/// `Detail`, `Resources`, `Time` in epoch seconds, `EventBusName`,
/// `TraceHeader`) → (bus, CloudEvent). `id` is the `EventId` Strait assigns.
pub fn put_entry_to_cloudevent(
    entry: &Value,
    id: &str,
    account: &str,
    region: &str,
    now: DateTime<Utc>,
) -> Result<(String, Value), EntryReject> {
    let Some(obj) = entry.as_object() else {
        return Err(reject("InvalidArgument", "the entry is not a JSON object"));
    };
    let s = |k: &str| obj.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let (Some(source), Some(detail_type), Some(detail)) =
        (s("Source"), s("DetailType"), s("Detail"))
    else {
        return Err(reject(
            "InvalidArgument",
            "Parameters Source, DetailType and Detail must be specified.",
        ));
    };
    let detail: Value = match serde_json::from_str(detail) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(reject("MalformedDetail", "Detail is malformed.")),
    };
    let time = match obj.get("Time") {
        None | Some(Value::Null) => now,
        Some(v) => {
            let parsed = match v {
                Value::Number(n) => n.as_f64().and_then(|secs| {
                    DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)
                }),
                Value::String(t) => DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
                    .or_else(|| {
                        t.parse::<f64>().ok().and_then(|secs| {
                            DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)
                        })
                    }),
                _ => None,
            };
            parsed.ok_or_else(|| reject("InvalidArgument", "Time is not a valid timestamp."))?
        }
    };
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(id));
    ce.insert("source".into(), json!(source));
    ce.insert("type".into(), json!(detail_type));
    ce.insert("time".into(), json!(rfc3339(time)));
    ce.insert(ACCOUNT_EXTENSION.into(), json!(account));
    ce.insert(REGION_EXTENSION.into(), json!(region));
    put_resources(&mut ce, obj.get("Resources"));
    if let Some(tp) = s("TraceHeader").and_then(xray_to_traceparent) {
        ce.insert("traceparent".into(), json!(tp));
    }
    ce.insert("datacontenttype".into(), json!("application/json"));
    ce.insert("data".into(), detail);
    Ok((bus_name(s("EventBusName")).to_string(), Value::Object(ce)))
}

/// Size of a PutEvents request entry (JSON 1.1 form) the way AWS counts it.
pub fn put_entry_size(entry: &Value) -> usize {
    let s = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("");
    let resources: Vec<String> = entry
        .get("Resources")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    entry_size(
        entry.get("Time").is_some_and(|t| !t.is_null()),
        s("Source"),
        s("DetailType"),
        s("Detail"),
        &resources,
    )
}

/// An SQS message body → a CloudEvent: an EventBridge envelope (what an
/// EventBridge rule's SQS target sends) via [`envelope_to_cloudevent`]; a
/// CloudEvent in JSON structured form as is (with the message's
/// `AWSTraceHeader` as its `traceparent` when it has none); anything else wrapped (`id` =
/// SQS message id, `source` = the queue, `type` = `aws.sqs.message`).
pub fn sqs_body_to_cloudevent(
    body: &str,
    message_id: &str,
    queue: &str,
    trace_header: Option<&str>,
) -> Result<Value, String> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if let Some(v @ Value::Object(_)) = &parsed {
        if v.get("specversion").is_some() {
            // Its own trace context wins; else the message's.
            let mut ce = v.clone();
            if ce.get("traceparent").is_none()
                && let Some(tp) = trace_header.and_then(xray_to_traceparent)
            {
                ce["traceparent"] = json!(tp);
            }
            return Ok(ce);
        }
        if v.get("detail-type").is_some() && v.get("source").is_some() {
            return envelope_to_cloudevent(v, trace_header);
        }
    }
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(message_id));
    ce.insert("source".into(), json!(queue));
    ce.insert("type".into(), json!("aws.sqs.message"));
    if let Some(tp) = trace_header.and_then(xray_to_traceparent) {
        ce.insert("traceparent".into(), json!(tp));
    }
    match parsed {
        Some(v) => {
            ce.insert("datacontenttype".into(), json!("application/json"));
            ce.insert("data".into(), v);
        }
        None => {
            ce.insert("datacontenttype".into(), json!("text/plain"));
            ce.insert("data".into(), json!(body));
        }
    }
    Ok(Value::Object(ce))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: Value) -> Event {
        Event::from_structured(v).expect("event")
    }

    const TP: &str = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";

    #[test]
    fn cloudevent_to_entry() {
        let e = event(json!({
            "specversion": "1.0", "id": "e1", "source": "/orders", "type": "order.created",
            "time": "2026-01-02T03:04:05Z", "subject": "arn:aws:s3:::a, arn:aws:s3:::b",
            "datacontenttype": "application/json", "data": {"n": 1}
        }));
        let opts = EntryOptions {
            event_bus: "bus1".into(),
            resources_attribute: Some("subject".into()),
            ..Default::default()
        };
        let a = to_entry(&e, &opts, TP);
        assert_eq!(a.source, "/orders");
        assert_eq!(a.detail_type, "order.created");
        assert_eq!(a.detail, r#"{"n":1}"#);
        assert_eq!(a.resources, vec!["arn:aws:s3:::a", "arn:aws:s3:::b"]);
        assert_eq!(a.event_bus_name, "bus1");
        assert_eq!(
            a.trace_header.as_deref(),
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
        );
        assert_eq!(
            a.time.map(|t| t.timestamp()),
            Some(
                DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                    .expect("t")
                    .timestamp()
            )
        );
        assert_eq!(
            a.size(),
            14 + "/orders".len() + "order.created".len() + 7 + 14 + 14
        );

        let text = event(
            json!({"specversion": "1.0", "id": "e2", "source": "s", "type": "t",
            "datacontenttype": "text/plain", "data": "hi"}),
        );
        let a = to_entry(&text, &opts, "");
        assert_eq!(a.detail, r#"{"data":"hi"}"#);
        assert!(a.time.is_none() && a.resources.is_empty() && a.trace_header.is_none());
        assert_eq!(a.size(), 1 + 1 + 13);
        let none = event(json!({"specversion": "1.0", "id": "e3", "source": "s", "type": "t"}));
        assert_eq!(to_entry(&none, &opts, "").detail, "{}");
        let whole = EntryOptions {
            detail: DetailMode::Event,
            source: Some("custom.src".into()),
            ..opts.clone()
        };
        let a = to_entry(&none, &whole, "");
        assert_eq!(a.source, "custom.src");
        let d: Value = serde_json::from_str(&a.detail).expect("json");
        assert_eq!(d["id"], "e3");
    }

    #[test]
    fn entry_size_counts_like_aws() {
        assert_eq!(entry_size(false, "", "", "", &[]), 0);
        assert_eq!(entry_size(true, "", "", "", &[]), 14);
        // multi-byte characters count in UTF-8 bytes
        assert_eq!(
            entry_size(false, "é", "t", "{}", &["r".into()]),
            2 + 1 + 2 + 1
        );
        let e = json!({"Source": "s", "DetailType": "tt", "Detail": "{}", "Time": 1, "Resources": ["abc"]});
        assert_eq!(put_entry_size(&e), 14 + 1 + 2 + 2 + 3);
    }

    #[test]
    fn envelope_to_ce() {
        let env = json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
            "account": "111122223333", "time": "2017-12-22T18:43:48Z", "region": "us-west-1",
            "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
            "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}
        });
        let ce = envelope_to_cloudevent(
            &env,
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
        )
        .expect("ce");
        assert_eq!(ce["id"], "6a7e8feb-b491-4cf7-a9f1-bf3703467718");
        assert_eq!(ce["source"], "aws.ec2");
        assert_eq!(ce["type"], "EC2 Instance State-change Notification");
        assert_eq!(ce["time"], "2017-12-22T18:43:48Z");
        assert_eq!(ce["awsaccount"], "111122223333");
        assert_eq!(ce["awsregion"], "us-west-1");
        assert_eq!(
            ce["awsresources"],
            "arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"
        );
        assert_eq!(ce["data"]["state"], "terminated");
        assert_eq!(ce["traceparent"], TP);
        assert!(Event::from_structured(ce).is_ok());
        assert!(envelope_to_cloudevent(&json!({"source": "x", "detail-type": "y"}), None).is_err());
    }

    #[test]
    fn put_entry_to_ce() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("now");
        let entry = json!({"Source": "my.app", "DetailType": "thing", "Detail": "{\"a\":1}",
            "Resources": ["r1", "r2"], "Time": 1_600_000_000, "EventBusName": "arn:aws:events:us-east-1:1:event-bus/orders",
            "TraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"});
        let (bus, ce) =
            put_entry_to_cloudevent(&entry, "id1", "000000000000", "eu-west-1", now).expect("ok");
        assert_eq!(bus, "orders");
        assert_eq!(ce["time"], "2020-09-13T12:26:40Z");
        assert_eq!(ce["awsresources"], "r1,r2");
        assert_eq!(ce["awsregion"], "eu-west-1");
        assert_eq!(ce["traceparent"], TP);
        assert_eq!(ce["data"]["a"], 1);
        assert!(Event::from_structured(ce).is_ok());
        let (bus, ce) = put_entry_to_cloudevent(
            &json!({"Source": "s", "DetailType": "t", "Detail": "{}"}),
            "id2",
            "a",
            "r",
            now,
        )
        .expect("ok");
        assert_eq!(bus, "default");
        assert_eq!(ce["time"], "2023-11-14T22:13:20Z");
        let e = put_entry_to_cloudevent(
            &json!({"Source": "s", "DetailType": "t", "Detail": "[1]"}),
            "x",
            "a",
            "r",
            now,
        )
        .expect_err("array detail");
        assert_eq!(e.code, "MalformedDetail");
        let e =
            put_entry_to_cloudevent(&json!({"Source": "s", "Detail": "{}"}), "x", "a", "r", now)
                .expect_err("no type");
        assert_eq!(e.code, "InvalidArgument");
    }

    #[test]
    fn sqs_bodies() {
        let ce = sqs_body_to_cloudevent("plain text", "m1", "https://q/1/q", None).expect("ce");
        assert_eq!(ce["id"], "m1");
        assert_eq!(ce["data"], "plain text");
        let ce = sqs_body_to_cloudevent(
            r#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#,
            "m1",
            "q",
            None,
        )
        .expect("ce");
        assert_eq!(ce["id"], "x");
        let ce = sqs_body_to_cloudevent(
            r#"{"id":"x","source":"s","detail-type":"t","detail":{}}"#,
            "m1",
            "q",
            None,
        )
        .expect("ce");
        assert_eq!(ce["type"], "t");
        let ce = sqs_body_to_cloudevent(r#"{"k":1}"#, "m2", "q", None).expect("ce");
        assert_eq!(ce["data"]["k"], 1);
    }

    #[test]
    fn a_cloudevent_from_sqs_continues_the_message_trace_unless_it_has_its_own() {
        let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let bare = r#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#;
        let ce = sqs_body_to_cloudevent(bare, "m1", "q", Some(xray)).expect("ce");
        assert_eq!(ce["traceparent"], TP);
        let own = r#"{"specversion":"1.0","id":"x","source":"s","type":"t","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        let ce = sqs_body_to_cloudevent(own, "m1", "q", Some(xray)).expect("ce");
        assert_eq!(
            ce["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
