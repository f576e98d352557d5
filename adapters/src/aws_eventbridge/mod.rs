//! AWS EventBridge: the `aws_eventbridge` target (PutEvents through the
//! official SDK, batched up to AWS's limits), the CloudEvent ⇄ EventBridge
//! mappings ([`mapping`]) and SigV4 request verification for the node's
//! AWS-compatible ingress ([`sigv4`]).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::Event;
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::aws_common::{self, AwsCredential, BatchLimits, Connection, Item, SendFn};
use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

pub mod control;
pub mod ingress;
pub mod mapping;
pub mod sigv4;

pub use mapping::{AwsEntry, DetailMode, EntryOptions, MAX_ENTRIES, MAX_REQUEST_BYTES};

fn default_bus() -> String {
    "default".into()
}

fn default_max_batch() -> usize {
    MAX_ENTRIES
}

fn default_batch_delay_ms() -> u64 {
    5
}

/// Settings of an `aws_eventbridge` target (the fields next to `id` and
/// `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsEventBridgeSettings {
    /// `EventBusName`: name or ARN. Default `default`.
    #[serde(default = "default_bus")]
    pub event_bus: String,
    /// Name of a credential in the node's `aws.credentials`; absent: the
    /// standard AWS credential chain of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Region; else the node's environment, else us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override (VPC endpoints, emulators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `Source` for every entry instead of the event's `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `data` (default) or `event`: what goes into `Detail`.
    #[serde(default)]
    pub detail: DetailMode,
    /// Attribute (e.g. `subject`) whose comma-separated value becomes `Resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_attribute: Option<String>,
    /// Most entries per PutEvents call (1-10).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long the first event of a batch waits for company, ms (0-1000).
    #[serde(default = "default_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
}

impl AwsEventBridgeSettings {
    /// Parse and check settings given as a JSON object; the normal form has
    /// the defaults filled in.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Self, ConfigError> {
        let s: Self = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = self.event_bus.len() <= 256
            && !self.event_bus.is_empty()
            && (self.event_bus.starts_with("arn:")
                || self
                    .event_bus
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')));
        if !name_ok {
            return Err(ConfigError::new(
                "eventBus",
                format!(
                    "{:?} is not an EventBridge bus name or ARN (1-256 characters of A-Z a-z 0-9 . _ - /)",
                    self.event_bus
                ),
            ));
        }
        aws_common::validate_credential_name(self.credential.as_deref())?;
        aws_common::validate_region(self.region.as_deref())?;
        aws_common::validate_endpoint(self.endpoint.as_deref())?;
        if let Some(s) = &self.source
            && (s.is_empty() || s.len() > 256)
        {
            return Err(ConfigError::new("source", "must be 1-256 characters"));
        }
        if let Some(a) = &self.resources_attribute
            && (a.is_empty()
                || !a
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(ConfigError::new(
                "resourcesAttribute",
                format!("{a:?} is not a CloudEvents attribute name (a-z 0-9)"),
            ));
        }
        if self.max_batch == 0 || self.max_batch > MAX_ENTRIES {
            return Err(ConfigError::new(
                "maxBatch",
                format!("must be between 1 and {MAX_ENTRIES}"),
            ));
        }
        if self.max_batch_delay_ms > 1000 {
            return Err(ConfigError::new(
                "maxBatchDelayMs",
                "must be between 0 and 1000",
            ));
        }
        Ok(())
    }

    fn entry_options(&self) -> EntryOptions {
        EntryOptions {
            event_bus: self.event_bus.clone(),
            source: self.source.clone(),
            detail: self.detail,
            resources_attribute: self.resources_attribute.clone(),
        }
    }
}

/// The running target: `deliver` maps the event, hands the entry to a
/// per-target batcher and waits for that entry's own result.
#[derive(Debug)]
pub struct AwsEventBridgeTarget {
    opts: EntryOptions,
    tx: mpsc::Sender<Item<AwsEntry>>,
}

impl AwsEventBridgeTarget {
    /// Start the batcher on the current tokio runtime. The SDK client is
    /// built on first use.
    pub fn start(
        settings: AwsEventBridgeSettings,
        credential: Option<AwsCredential>,
        timeout: Duration,
        egress: Option<Arc<crate::egress::EgressPolicy>>,
    ) -> Result<Self, ConfigError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("type", "the AWS target needs a tokio runtime"))?;
        let conn = Connection {
            region: settings.region.clone(),
            endpoint: settings.endpoint.clone(),
            credential,
            timeout: Some(timeout),
            max_attempts: 2,
            egress,
        };
        let client: Arc<OnceCell<aws_sdk_eventbridge::Client>> = Arc::new(OnceCell::new());
        let send: SendFn<AwsEntry> = Arc::new(move |entries| {
            let client = client.clone();
            let conn = conn.clone();
            Box::pin(async move {
                let c = client
                    .get_or_init(|| async {
                        aws_sdk_eventbridge::Client::new(&aws_common::sdk_config(&conn).await)
                    })
                    .await;
                put_events(c, entries).await
            })
        });
        let limits = BatchLimits {
            max_items: settings.max_batch,
            max_bytes: MAX_REQUEST_BYTES,
            max_delay: Duration::from_millis(settings.max_batch_delay_ms),
        };
        let (tx, rx) = mpsc::channel(1024);
        handle.spawn(aws_common::run_batcher(rx, limits, send));
        Ok(AwsEventBridgeTarget {
            opts: settings.entry_options(),
            tx,
        })
    }
}

impl Sink for AwsEventBridgeTarget {
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let entry = mapping::to_entry(event, &self.opts, traceparent);
            let size = entry.size();
            if size > MAX_REQUEST_BYTES {
                return Err(DeliveryError::Permanent(format!(
                    "entry too large for AWS EventBridge: {size} bytes (Time, Source, DetailType, Detail and Resources as AWS counts them), above the PutEvents limit of {MAX_REQUEST_BYTES} bytes"
                )));
            }
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Item {
                    payload: entry,
                    size,
                    reply,
                })
                .await
                .map_err(|_| {
                    DeliveryError::Retryable("the AWS EventBridge batcher stopped".into())
                })?;
            rx.await.map_err(|_| {
                DeliveryError::Retryable("the AWS EventBridge batcher dropped the event".into())
            })?
        })
    }
}

fn sdk_entry(e: AwsEntry) -> PutEventsRequestEntry {
    let mut b = PutEventsRequestEntry::builder()
        .source(e.source)
        .detail_type(e.detail_type)
        .detail(e.detail)
        .event_bus_name(e.event_bus_name)
        .set_trace_header(e.trace_header);
    if let Some(t) = e.time {
        b = b.time(aws_smithy_types::DateTime::from_millis(
            t.timestamp_millis(),
        ));
    }
    for r in e.resources {
        b = b.resources(r);
    }
    b.build()
}

/// Map the per-entry results of a PutEvents answer: only failed entries
/// fail, with retryable codes (throttling, internal) retried.
pub fn map_result_entries(
    n: usize,
    failed_count: i32,
    entries: &[(Option<String>, Option<String>)],
) -> Vec<Result<(), DeliveryError>> {
    (0..n)
        .map(|i| match entries.get(i) {
            Some((Some(code), message)) if !code.is_empty() => {
                let msg = format!(
                    "AWS EventBridge rejected the entry: {code}: {}",
                    message.as_deref().unwrap_or("")
                );
                Err(if aws_common::retryable_code(code) {
                    DeliveryError::Retryable(msg)
                } else {
                    DeliveryError::Permanent(msg)
                })
            }
            Some(_) => Ok(()),
            None if failed_count == 0 => Ok(()),
            None => Err(DeliveryError::Retryable(format!(
                "AWS EventBridge answered FailedEntryCount {failed_count} without a result for this entry"
            ))),
        })
        .collect()
}

async fn put_events(
    client: &aws_sdk_eventbridge::Client,
    entries: Vec<AwsEntry>,
) -> Vec<Result<(), DeliveryError>> {
    let n = entries.len();
    metrics::counter!("strait_aws_eventbridge_put_events_calls_total").increment(1);
    metrics::counter!("strait_aws_eventbridge_put_events_entries_total").increment(n as u64);
    let req = client
        .put_events()
        .set_entries(Some(entries.into_iter().map(sdk_entry).collect()));
    match req.send().await {
        Ok(out) => {
            let results: Vec<(Option<String>, Option<String>)> = out
                .entries()
                .iter()
                .map(|e| {
                    (
                        e.error_code().map(str::to_string),
                        e.error_message().map(str::to_string),
                    )
                })
                .collect();
            let mapped = map_result_entries(n, out.failed_entry_count(), &results);
            let failed = mapped.iter().filter(|r| r.is_err()).count();
            if failed > 0 {
                metrics::counter!("strait_aws_eventbridge_failed_entries_total")
                    .increment(failed as u64);
            }
            mapped
        }
        Err(e) => {
            let err = aws_common::classify_sdk_error("AWS EventBridge PutEvents", &e);
            tracing::debug!(error = %err, "PutEvents failed");
            metrics::counter!("strait_aws_eventbridge_put_events_errors_total").increment(1);
            (0..n).map(|_| Err(err.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Map<String, Value> {
        json!({"eventBus": "orders", "credential": "main", "endpoint": "http://127.0.0.1:5000", "region": "us-east-1"})
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn settings_normal_form_and_errors() {
        let s = AwsEventBridgeSettings::from_settings(&settings()).expect("valid");
        assert_eq!(s.max_batch, 10);
        assert_eq!(s.detail, DetailMode::Data);
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["maxBatch"], 10);
        assert_eq!(v["detail"], "data");
        let empty = Map::new();
        let s = AwsEventBridgeSettings::from_settings(&empty).expect("defaults");
        assert_eq!(s.event_bus, "default");
        for (k, v, field) in [
            ("maxBatch", json!(11), "maxBatch"),
            ("maxBatch", json!(0), "maxBatch"),
            ("eventBus", json!("bad bus!"), "eventBus"),
            ("region", json!("Mars"), "region"),
            ("endpoint", json!("nope"), "endpoint"),
            ("credential", json!(""), "credential"),
            (
                "resourcesAttribute",
                json!("Sub-ject"),
                "resourcesAttribute",
            ),
            ("maxBatchDelayMs", json!(5000), "maxBatchDelayMs"),
        ] {
            let mut bad = settings();
            bad.insert(k.into(), v);
            assert_eq!(
                AwsEventBridgeSettings::from_settings(&bad)
                    .expect_err(k)
                    .field,
                field
            );
        }
        let mut bad = settings();
        bad.insert("secretAccessKey".into(), json!("x"));
        let e = AwsEventBridgeSettings::from_settings(&bad).expect_err("unknown");
        assert!(e.message.contains("secretAccessKey"), "{e}");
        let mut bad = settings();
        bad.insert("detail".into(), json!("everything"));
        assert!(AwsEventBridgeSettings::from_settings(&bad).is_err());
    }

    #[test]
    fn result_entries() {
        let r = map_result_entries(
            3,
            2,
            &[
                (None, None),
                (
                    Some("ThrottlingException".into()),
                    Some("Rate exceeded".into()),
                ),
                (Some("MalformedDetail".into()), Some("bad".into())),
            ],
        );
        assert!(r[0].is_ok());
        assert!(r[1].as_ref().is_err_and(DeliveryError::is_retryable));
        assert!(r[2].as_ref().is_err_and(|e| !e.is_retryable()));
        let r = map_result_entries(2, 0, &[]);
        assert!(r.iter().all(Result::is_ok));
        let r = map_result_entries(2, 1, &[]);
        assert!(
            r.iter()
                .all(|x| x.as_ref().is_err_and(DeliveryError::is_retryable))
        );
    }

    #[tokio::test]
    async fn oversized_entry_is_permanent_without_a_call() {
        let s = AwsEventBridgeSettings::from_settings(&settings()).expect("valid");
        let t = AwsEventBridgeTarget::start(s, None, Duration::from_secs(1), None).expect("start");
        let big = Event::from_structured(json!({"specversion": "1.0", "id": "1", "source": "s",
            "type": "t", "data": {"x": "y".repeat(MAX_REQUEST_BYTES)}}))
        .expect("event");
        let e = t.deliver(&big, "").await.expect_err("too large");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("262144"), "{e}");
    }

    #[tokio::test]
    async fn batcher_sends_full_batches() {
        use std::sync::Mutex;
        let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
        let seen = sizes.clone();
        let send: SendFn<usize> = Arc::new(move |batch: Vec<usize>| {
            let seen = seen.clone();
            Box::pin(async move {
                if let Ok(mut s) = seen.lock() {
                    s.push(batch.len());
                }
                batch.iter().map(|_| Ok(())).collect()
            })
        });
        let (tx, rx) = mpsc::channel(64);
        let limits = BatchLimits {
            max_items: 10,
            max_bytes: 1000,
            max_delay: Duration::from_millis(50),
        };
        let mut waits = Vec::new();
        for i in 0..25 {
            let (reply, r) = oneshot::channel();
            tx.send(Item {
                payload: i,
                size: 10,
                reply,
            })
            .await
            .expect("queued");
            waits.push(r);
        }
        tokio::spawn(aws_common::run_batcher(rx, limits, send));
        for w in waits {
            assert!(w.await.expect("reply").is_ok());
        }
        let mut got = sizes.lock().map(|s| s.clone()).unwrap_or_default();
        got.sort();
        assert_eq!(got, vec![5, 10, 10]);
    }

    #[test]
    fn sdk_entry_carries_every_field() {
        let e = AwsEntry {
            source: "s".into(),
            detail_type: "t".into(),
            detail: "{}".into(),
            time: chrono::DateTime::from_timestamp(1_700_000_000, 0),
            resources: vec!["r".into()],
            event_bus_name: "b".into(),
            trace_header: Some("Root=1-a-b".into()),
        };
        let s = sdk_entry(e);
        assert_eq!(s.source(), Some("s"));
        assert_eq!(s.detail_type(), Some("t"));
        assert_eq!(s.event_bus_name(), Some("b"));
        assert_eq!(s.resources(), ["r".to_string()]);
        assert_eq!(s.trace_header(), Some("Root=1-a-b"));
        assert_eq!(s.time().map(|t| t.secs()), Some(1_700_000_000));
    }
}
