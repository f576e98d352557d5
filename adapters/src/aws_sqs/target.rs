//! The `aws_sqs` target: events to an SQS queue (SendMessageBatch, FIFO
//! aware), its settings and the pure event → message mapping.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::Event;
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::aws_common::{self, AwsCredential, BatchLimits, Connection, Item, SendFn};
use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

/// Largest SQS message (body and attributes).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Most messages in one SendMessageBatch call.
pub const MAX_BATCH: usize = 10;

/// What the message body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// The CloudEvent in JSON structured form.
    #[default]
    Event,
    /// Only the data (a string as is, other JSON serialized, binary data as
    /// its base64 text, no data as `null`); the attributes go into message
    /// attributes `ce-id`, `ce-source`, `ce-type`, `ce-specversion`,
    /// `ce-time`, `content-type`.
    Data,
}

fn default_group_attribute() -> String {
    "source".into()
}

fn default_max_batch() -> usize {
    MAX_BATCH
}

fn default_batch_delay_ms() -> u64 {
    5
}

/// Settings of an `aws_sqs` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSqsSettings {
    /// The queue URL (a `.fifo` URL makes it a FIFO queue).
    pub queue_url: String,
    /// Name of a credential in the node's `aws.credentials`; absent: the
    /// standard AWS credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Region; else the environment's, else us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `event` (default) or `data`.
    #[serde(default)]
    pub body: BodyMode,
    /// FIFO queues: the attribute whose value is the `MessageGroupId`
    /// (default `source`; the source when the event lacks it).
    #[serde(default = "default_group_attribute")]
    pub message_group_attribute: String,
    /// Most messages per SendMessageBatch call (1-10).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long the first message of a batch waits for company, ms (0-1000).
    #[serde(default = "default_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
}

impl AwsSqsSettings {
    /// Parse and check; the normal form has defaults filled in.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Self, ConfigError> {
        let s: Self = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_queue_url("queueUrl", &self.queue_url)?;
        aws_common::validate_credential_name(self.credential.as_deref())?;
        aws_common::validate_region(self.region.as_deref())?;
        aws_common::validate_endpoint(self.endpoint.as_deref())?;
        if self.message_group_attribute.is_empty()
            || !self
                .message_group_attribute
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(ConfigError::new(
                "messageGroupAttribute",
                format!(
                    "{:?} is not a CloudEvents attribute name (a-z 0-9)",
                    self.message_group_attribute
                ),
            ));
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH {
            return Err(ConfigError::new(
                "maxBatch",
                format!("must be between 1 and {MAX_BATCH}"),
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

    /// Whether the queue is FIFO.
    pub fn fifo(&self) -> bool {
        self.queue_url.ends_with(".fifo")
    }
}

/// Check an SQS queue URL (http or https, with a path); the error names
/// `field` in the caller's words (`queueUrl` in target settings).
pub fn validate_queue_url(field: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.path().len() > 1 => Ok(()),
        _ => Err(ConfigError::new(
            field,
            format!(
                "{url:?} is not a queue URL like https://sqs.us-east-1.amazonaws.com/123456789012/orders"
            ),
        )),
    }
}

/// One message, before it becomes an SDK type.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsMessage {
    /// Body.
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<(String, String)>,
    /// FIFO: `MessageGroupId`.
    pub group_id: Option<String>,
    /// FIFO: `MessageDeduplicationId`.
    pub dedup_id: Option<String>,
}

impl SqsMessage {
    /// Size as SQS counts it: body plus each attribute's name, type and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// An SQS id (group or deduplication): the value if it is 1-128 printable
/// ASCII characters, else its SHA-256 in hex.
pub fn sqs_id(v: &str) -> String {
    if !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()) {
        v.to_string()
    } else {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(v.as_bytes()))
    }
}

/// Map a CloudEvent to an SQS message. Pure.
pub fn to_message(event: &Event, s: &AwsSqsSettings, traceparent: &str) -> SqsMessage {
    let mut attributes = Vec::new();
    let body = match s.body {
        BodyMode::Event => String::from_utf8_lossy(&event.to_json_bytes()).into_owned(),
        BodyMode::Data => {
            for (attr, name) in [
                ("id", "ce-id"),
                ("source", "ce-source"),
                ("type", "ce-type"),
                ("specversion", "ce-specversion"),
                ("time", "ce-time"),
                ("datacontenttype", "content-type"),
            ] {
                if let Some(v) = event.str_attr(attr) {
                    attributes.push((name.to_string(), v.to_string()));
                }
            }
            match (event.get("data"), event.get("data_base64")) {
                (Some(Value::String(t)), _) => t.clone(),
                (Some(v), _) => v.to_string(),
                (None, Some(Value::String(b))) => b.clone(),
                _ => "null".into(),
            }
        }
    };
    let tp = if traceparent.is_empty() {
        event.str_attr("traceparent").unwrap_or("")
    } else {
        traceparent
    };
    if !tp.is_empty() {
        attributes.push(("traceparent".into(), tp.to_string()));
    }
    let (group_id, dedup_id) = if s.fifo() {
        let group = event
            .str_attr(&s.message_group_attribute)
            .unwrap_or_else(|| event.source());
        (Some(sqs_id(group)), Some(sqs_id(event.id())))
    } else {
        (None, None)
    };
    SqsMessage {
        body,
        attributes,
        group_id,
        dedup_id,
    }
}

/// The running target.
#[derive(Debug)]
pub struct AwsSqsTarget {
    settings: AwsSqsSettings,
    tx: mpsc::Sender<Item<SqsMessage>>,
}

impl AwsSqsTarget {
    /// Start the batcher on the current tokio runtime.
    pub fn start(
        settings: AwsSqsSettings,
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
        let client: Arc<OnceCell<aws_sdk_sqs::Client>> = Arc::new(OnceCell::new());
        let queue_url = settings.queue_url.clone();
        let send: SendFn<SqsMessage> = Arc::new(move |msgs| {
            let client = client.clone();
            let conn = conn.clone();
            let queue_url = queue_url.clone();
            Box::pin(async move {
                let c = client
                    .get_or_init(|| async {
                        aws_sdk_sqs::Client::new(&aws_common::sdk_config(&conn).await)
                    })
                    .await;
                send_batch(c, &queue_url, msgs).await
            })
        });
        let limits = BatchLimits {
            max_items: settings.max_batch,
            max_bytes: MAX_MESSAGE_BYTES,
            max_delay: Duration::from_millis(settings.max_batch_delay_ms),
        };
        let (tx, rx) = mpsc::channel(1024);
        handle.spawn(aws_common::run_batcher(rx, limits, send));
        Ok(AwsSqsTarget { settings, tx })
    }
}

impl Sink for AwsSqsTarget {
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let msg = to_message(event, &self.settings, traceparent);
            let size = msg.size();
            if size > MAX_MESSAGE_BYTES {
                return Err(DeliveryError::Permanent(format!(
                    "message too large for SQS: {size} bytes (body and attributes), above the limit of {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Item {
                    payload: msg,
                    size,
                    reply,
                })
                .await
                .map_err(|_| DeliveryError::Retryable("the SQS batcher stopped".into()))?;
            rx.await
                .map_err(|_| DeliveryError::Retryable("the SQS batcher dropped the event".into()))?
        })
    }
}

fn sdk_entry(i: usize, m: SqsMessage) -> Result<SendMessageBatchRequestEntry, DeliveryError> {
    let mut b = SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(m.body)
        .set_message_group_id(m.group_id)
        .set_message_deduplication_id(m.dedup_id);
    for (k, v) in m.attributes {
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .map_err(|e| DeliveryError::Permanent(format!("SQS message attribute {k}: {e}")))?;
        b = b.message_attributes(k, value);
    }
    b.build()
        .map_err(|e| DeliveryError::Permanent(format!("SQS message: {e}")))
}

async fn send_batch(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    msgs: Vec<SqsMessage>,
) -> Vec<Result<(), DeliveryError>> {
    let n = msgs.len();
    let mut results: Vec<Option<Result<(), DeliveryError>>> = vec![None; n];
    let mut entries = Vec::with_capacity(n);
    for (i, m) in msgs.into_iter().enumerate() {
        match sdk_entry(i, m) {
            Ok(e) => entries.push(e),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    if !entries.is_empty() {
        metrics::counter!("strait_aws_sqs_send_calls_total").increment(1);
        match client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for ok in out.successful() {
                    if let Ok(i) = ok.id().parse::<usize>()
                        && i < n
                    {
                        results[i] = Some(Ok(()));
                    }
                }
                for f in out.failed() {
                    if let Ok(i) = f.id().parse::<usize>()
                        && i < n
                    {
                        let msg = format!(
                            "SQS rejected the message: {}: {}",
                            f.code(),
                            f.message().unwrap_or("")
                        );
                        results[i] = Some(Err(
                            if f.sender_fault() && !aws_common::retryable_code(f.code()) {
                                DeliveryError::Permanent(msg)
                            } else {
                                DeliveryError::Retryable(msg)
                            },
                        ));
                    }
                }
            }
            Err(e) => {
                let err = aws_common::classify_sdk_error("SQS SendMessageBatch", &e);
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(err.clone()));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(DeliveryError::Retryable(
                    "SQS answered without a result for this message".into(),
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(url: &str) -> AwsSqsSettings {
        AwsSqsSettings::from_settings(
            json!({"queueUrl": url, "endpoint": "http://127.0.0.1:5000"})
                .as_object()
                .expect("object"),
        )
        .expect("valid")
    }

    #[test]
    fn settings_errors_name_the_field() {
        let s = settings("http://127.0.0.1:5000/123456789012/q");
        assert_eq!(s.max_batch, 10);
        assert!(!s.fifo());
        for (k, v, field) in [
            ("queueUrl", json!("not a url"), "queueUrl"),
            ("queueUrl", json!("http://h/"), "queueUrl"),
            ("maxBatch", json!(11), "maxBatch"),
            (
                "messageGroupAttribute",
                json!("Group"),
                "messageGroupAttribute",
            ),
            ("region", json!("x y"), "region"),
        ] {
            let mut m = json!({"queueUrl": "http://h/1/q"})
                .as_object()
                .cloned()
                .expect("object");
            m.insert(k.into(), v);
            assert_eq!(AwsSqsSettings::from_settings(&m).expect_err(k).field, field);
        }
        let e = AwsSqsSettings::from_settings(&Map::new()).expect_err("missing");
        assert!(e.message.contains("queueUrl"), "{e}");
    }

    #[test]
    fn messages() {
        let e = Event::from_structured(json!({"specversion": "1.0", "id": "e1", "source": "/s",
            "type": "t", "tenant": "acme", "datacontenttype": "application/json", "data": {"a": 1}}))
        .expect("event");
        let tp = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
        let m = to_message(&e, &settings("http://h/1/q"), tp);
        let v: Value = serde_json::from_str(&m.body).expect("json");
        assert_eq!(v["id"], "e1");
        assert_eq!(
            m.attributes,
            vec![("traceparent".to_string(), tp.to_string())]
        );
        assert!(m.group_id.is_none() && m.dedup_id.is_none());
        let mut s = settings("http://h/1/q.fifo");
        s.body = BodyMode::Data;
        s.message_group_attribute = "tenant".into();
        let m = to_message(&e, &s, "");
        assert_eq!(m.body, r#"{"a":1}"#);
        assert_eq!(m.group_id.as_deref(), Some("acme"));
        assert_eq!(m.dedup_id.as_deref(), Some("e1"));
        assert!(
            m.attributes
                .contains(&("ce-type".to_string(), "t".to_string()))
        );
        assert_eq!(
            m.size(),
            m.body.len()
                + m.attributes
                    .iter()
                    .map(|(k, v)| k.len() + 6 + v.len())
                    .sum::<usize>()
        );
        s.message_group_attribute = "missing".into();
        assert_eq!(to_message(&e, &s, "").group_id.as_deref(), Some("/s"));
        assert_eq!(sqs_id(&"x".repeat(200)).len(), 64);
        assert_eq!(sqs_id("a b").len(), 64);
    }
}
