//! Strait adapters: one module per external system, each whole (its
//! targets, ingress and sources with their settings).
//!
//! Each adapter keeps its configuration checks pure and apart from building
//! the running piece, the way Vector separates config validation from
//! component construction. The kinds are registered once: target kinds in
//! [`TARGET_KINDS`], source kinds in [`SOURCE_KINDS`]; nothing else matches
//! on their names.
//! [`http`], the webhook / CloudEvents HTTP sink; [`alibaba_eventbridge`],
//! Alibaba Cloud EventBridge PutEvents, its ingress and push endpoint;
//! [`aws_eventbridge`], AWS EventBridge PutEvents and its ingress;
//! [`aws_sqs`], the SQS target and source; [`nats`], the NATS source and
//! target; [`kafka`], the Kafka source and target ([`sources`]: what
//! source kinds share).
//! target; [`mqtt`], the MQTT source and target ([`sources`]: what source kinds share).
//!
//! The ingresses are functions from an HTTP request to a response (no HTTP
//! server here); they hand their events to an [`Ingest`] ([`ingest`]), the
//! counterpart of [`Sink`], which the node implements.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use strait_routing::event::Event;

pub mod alibaba_eventbridge;
pub mod aws_common;
pub mod aws_eventbridge;
pub mod aws_sqs;
pub mod egress;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod nonces;
pub mod peer;
pub mod sources;

pub use sources::{Field, Fields, Naming, SourceContext, SourceFuture, SourceStatus, StatusCell};

pub use ingest::{
    Binding, BindingError, BusAnswer, CheckedEvent, EntryRefusal, EventLimits, Ingest, IngestError,
    IngestFuture, IngestOutcome, Offer, ReadEntry, post_to_bus,
};

/// How a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying (network error, timeout, 5xx, 408, 429, throttling).
    #[error("{0}")]
    Retryable(String),
    /// Retrying will not help (4xx, validation): dead-letter at once.
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable(_))
    }

    /// The HTTP status the target answered, when the failure was an
    /// answer: every adapter names it in its message as `HTTP <status>`
    /// (`HTTP 503 from http://...`, `PutEvents: HTTP 400 Code: ...`).
    pub fn http_status(&self) -> Option<u16> {
        let (DeliveryError::Retryable(m) | DeliveryError::Permanent(m)) = self;
        m.match_indices("HTTP ").find_map(|(at, _)| {
            let rest = &m[at + 5..];
            let digits: &str = rest.get(..3)?;
            let after = rest[3..].chars().next();
            let is_status = digits.bytes().all(|b| b.is_ascii_digit())
                && after.is_none_or(|c| !c.is_ascii_alphanumeric());
            is_status.then(|| digits.parse().ok()).flatten()
        })
    }
}

/// A target definition problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Field inside the target definition (`endpoint`, `headers`, ...).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A new error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Check that `url` is an http or https URL (an endpoint); the error names
/// `field`.
pub fn http_url(field: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let u = reqwest::Url::parse(url)
        .map_err(|err| ConfigError::new(field, format!("{url:?} is not a valid URL: {err}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(ConfigError::new(
            field,
            format!(
                "scheme {:?} is not supported (use http or https)",
                u.scheme()
            ),
        ));
    }
    Ok(u)
}

/// Boxed future returned by [`Sink::deliver`].
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// A running target: delivers one (already transformed) event per call.
pub trait Sink: Send + Sync + 'static {
    /// Deliver `event`; `traceparent` is the W3C context of this attempt.
    fn deliver<'a>(&'a self, event: &'a Event, traceparent: &'a str) -> DeliveryFuture<'a>;

    /// Deliver `event`, which was first ingested at `ingest_ms` (ms since
    /// the epoch, at the site it entered): a sink that passes the event on
    /// to another site carries that time along. The others just
    /// [`Sink::deliver`].
    fn deliver_ingested<'a>(
        &'a self,
        event: &'a Event,
        traceparent: &'a str,
        ingest_ms: u64,
    ) -> DeliveryFuture<'a> {
        let _ = ingest_ms;
        self.deliver(event, traceparent)
    }
}

/// Shared resources for building targets: clients and node-local secrets.
#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// The node's pooled HTTP client.
    pub http: http::HttpClient,
    /// Alibaba Cloud credentials by name (node config `alibaba.credentials`).
    pub alibaba_credentials: alibaba_eventbridge::Credentials,
    /// AWS credentials by name (node config `aws.credentials`).
    pub aws_credentials: aws_common::AwsCredentials,
    /// A target without `credential` and without a `default` credential
    /// uses the standard AWS chain (dev mode only).
    pub aws_chain_fallback: bool,
    /// Connections of HTTP targets by name (node config `connections`).
    pub connections: http::Connections,
    /// MQTT credentials by name (node config `mqtt.credentials`).
    pub mqtt_credentials: mqtt::MqttCredentials,
}

/// One kind of target this build knows: the `type` a rule target names,
/// the check of its settings and the constructor of its running sink.
/// [`TARGET_KINDS`] is the registry; nothing else matches on type names.
pub struct TargetKind {
    /// The `type` of a rule target.
    pub name: &'static str,
    /// Whether a delivery hands the event to a messaging system (a PRODUCER
    /// span in traces) rather than sending a request its receiver answers
    /// (a CLIENT span).
    pub messaging: bool,
    /// The settings in normal form (defaults filled in), as they are stored.
    normalize: Normalize,
    /// The running target.
    build: Build,
    /// The checks that depend on the delivering node (credentials,
    /// connections, egress), without starting anything.
    check: Check,
}

/// A kind's settings check: its settings struct as JSON.
type Normalize = fn(&Map<String, Value>) -> Result<serde_json::Result<Value>, ConfigError>;
/// A kind's check against the delivering node.
type Check = fn(&Map<String, Value>, &SinkContext) -> Result<(), ConfigError>;
/// A kind's constructor.
type Build = fn(&Map<String, Value>, Duration, &SinkContext) -> Result<Arc<dyn Sink>, ConfigError>;

/// Every target kind of this build.
pub const TARGET_KINDS: &[TargetKind] = &[
    TargetKind {
        name: "http",
        messaging: false,
        normalize: |m| Ok(serde_json::to_value(http::HttpSettings::from_settings(m)?)),
        build: build_http,
        check: |m, ctx| http::HttpSettings::from_settings(m)?.check_here(ctx),
    },
    TargetKind {
        name: "alibaba_eventbridge",
        messaging: true,
        normalize: |m| {
            Ok(serde_json::to_value(
                alibaba_eventbridge::AlibabaSettings::from_settings(m)?,
            ))
        },
        build: build_alibaba,
        check: |m, ctx| {
            let s = alibaba_eventbridge::AlibabaSettings::from_settings(m)?;
            alibaba_credential(&s, ctx).map(|_| ())
        },
    },
    TargetKind {
        name: "aws_eventbridge",
        messaging: true,
        normalize: |m| {
            Ok(serde_json::to_value(
                aws_eventbridge::AwsEventBridgeSettings::from_settings(m)?,
            ))
        },
        build: build_aws_eventbridge,
        check: |m, ctx| {
            let s = aws_eventbridge::AwsEventBridgeSettings::from_settings(m)?;
            aws_common::resolve_for(
                ctx,
                s.credential.as_deref(),
                s.endpoint.as_deref(),
                s.region.as_deref(),
            )
            .map(|_| ())
        },
    },
    TargetKind {
        name: "aws_sqs",
        messaging: true,
        normalize: |m| {
            Ok(serde_json::to_value(
                aws_sqs::AwsSqsSettings::from_settings(m)?,
            ))
        },
        build: build_aws_sqs,
        check: |m, ctx| {
            let s = aws_sqs::AwsSqsSettings::from_settings(m)?;
            aws_common::resolve_for(
                ctx,
                s.credential.as_deref(),
                s.endpoint.as_deref(),
                s.region.as_deref(),
            )
            .map(|_| ())
        },
    },
    TargetKind {
        name: "nats",
        messaging: true,
        normalize: |m| Ok(serde_json::to_value(nats::NatsSettings::from_settings(m)?)),
        build: |m, timeout, _| {
            Ok(Arc::new(nats::NatsTarget::new(
                nats::NatsSettings::from_settings(m)?,
                timeout,
            )?))
        },
        check: |m, _| nats::NatsSettings::from_settings(m).map(|_| ()),
    },
    TargetKind {
        name: "kafka",
        messaging: true,
        normalize: |m| {
            Ok(serde_json::to_value(kafka::KafkaSettings::from_settings(
                m,
            )?))
        },
        build: |m, timeout, _| {
            Ok(Arc::new(kafka::KafkaTarget::new(
                kafka::KafkaSettings::from_settings(m)?,
                timeout,
            )?))
        },
        check: |m, _| kafka::KafkaSettings::from_settings(m).map(|_| ()),
    },
    TargetKind {
        name: "mqtt",
        messaging: true,
        normalize: |m| Ok(serde_json::to_value(mqtt::MqttSettings::from_settings(m)?)),
        build: |m, timeout, ctx| {
            Ok(Arc::new(mqtt::MqttTarget::new(
                mqtt::MqttSettings::from_settings(m)?,
                timeout,
                &ctx.mqtt_credentials,
            )?))
        },
        check: |m, _| mqtt::MqttSettings::from_settings(m).map(|_| ()),
    },
];

impl TargetKind {
    /// The kind named `name`, or a `type` error that lists the known ones.
    pub fn find(name: &str) -> Result<&'static TargetKind, ConfigError> {
        TARGET_KINDS.iter().find(|k| k.name == name).ok_or_else(|| {
            ConfigError::new(
                "type",
                format!(
                    "unknown target type {name:?} (supported: {})",
                    TARGET_KINDS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Check a target's settings (pure) and return them in normal form
    /// (defaults filled in), as they are stored.
    pub fn validate(
        &self,
        settings: &Map<String, Value>,
    ) -> Result<Map<String, Value>, ConfigError> {
        match (self.normalize)(settings)? {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ConfigError::new("settings", "settings must be an object")),
            Err(e) => Err(ConfigError::new("settings", e.to_string())),
        }
    }

    /// Check what depends on the delivering node `ctx` (its credentials,
    /// connections and egress policy) without starting anything; the
    /// error names the field.
    pub fn check_here(
        &self,
        settings: &Map<String, Value>,
        ctx: &SinkContext,
    ) -> Result<(), ConfigError> {
        (self.check)(settings, ctx)
    }

    /// Build the running target.
    pub fn build(
        &self,
        settings: &Map<String, Value>,
        timeout: Duration,
        ctx: &SinkContext,
    ) -> Result<Arc<dyn Sink>, ConfigError> {
        (self.build)(settings, timeout, ctx)
    }
}

fn build_http(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    Ok(Arc::new(http::HttpTarget::build(
        ctx,
        http::HttpSettings::from_settings(settings)?,
        timeout,
    )?))
}

fn build_alibaba(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    let s = alibaba_eventbridge::AlibabaSettings::from_settings(settings)?;
    let credential = alibaba_credential(&s, ctx)?;
    Ok(Arc::new(alibaba_eventbridge::AlibabaTarget::start(
        ctx.http.client(),
        s,
        credential,
        timeout,
    )?))
}

/// The credential of an Alibaba target, checked against the endpoint and
/// region it is bound to, and the endpoint against the egress policy.
fn alibaba_credential(
    s: &alibaba_eventbridge::AlibabaSettings,
    ctx: &SinkContext,
) -> Result<alibaba_eventbridge::Credential, ConfigError> {
    let credential = ctx
        .alibaba_credentials
        .get(&s.credential)
        .cloned()
        .ok_or_else(|| {
            ConfigError::new(
                "credential",
                format!(
                    "{:?} is not in this node's alibaba.credentials",
                    s.credential
                ),
            )
        })?;
    credential.check_use(&s.credential, s.endpoint.as_deref(), s.region_id.as_deref())?;
    if let Some(e) = &s.endpoint {
        ctx.http.policy().check_endpoint("endpoint", e)?;
    }
    Ok(credential)
}

fn build_aws_eventbridge(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    let s = aws_eventbridge::AwsEventBridgeSettings::from_settings(settings)?;
    let credential = aws_common::resolve_for(
        ctx,
        s.credential.as_deref(),
        s.endpoint.as_deref(),
        s.region.as_deref(),
    )?;
    Ok(Arc::new(aws_eventbridge::AwsEventBridgeTarget::start(
        s,
        credential,
        timeout,
        Some(ctx.http.policy_arc()),
    )?))
}

fn build_aws_sqs(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    let s = aws_sqs::AwsSqsSettings::from_settings(settings)?;
    let credential = aws_common::resolve_for(
        ctx,
        s.credential.as_deref(),
        s.endpoint.as_deref(),
        s.region.as_deref(),
    )?;
    Ok(Arc::new(aws_sqs::AwsSqsTarget::start(
        s,
        credential,
        timeout,
        Some(ctx.http.policy_arc()),
    )?))
}

/// A kind's settings check: the settings in the API's spelling, in normal
/// form (defaults filled in). Keys of `envelope` are the node's.
type SourceNormalize = fn(&Map<String, Value>, &[&str]) -> Result<Map<String, Value>, ConfigError>;

/// A kind's constructor: the source `name` into `bus`.
type SourceBuild = fn(
    &str,
    &str,
    &Map<String, Value>,
    &SourceContext,
    StatusCell,
) -> Result<SourceFuture, ConfigError>;

/// One kind of source this build knows: the `type` a source definition
/// names, the check of its settings and the constructor of the running
/// source. [`SOURCE_KINDS`] is the registry; nothing else matches on type
/// names.
pub struct SourceKind {
    /// The `type` of a source definition.
    pub name: &'static str,
    normalize: SourceNormalize,
    build: SourceBuild,
}

/// Every source kind of this build.
pub const SOURCE_KINDS: &[SourceKind] = &[
    SourceKind {
        name: aws_sqs::source::KIND,
        normalize: aws_sqs::source::normalize,
        build: aws_sqs::source::build,
    },
    SourceKind {
        name: nats::source::KIND,
        normalize: nats::source::normalize,
        build: nats::source::build,
    },
    SourceKind {
        name: kafka::source::KIND,
        normalize: kafka::source::normalize,
        build: kafka::source::build,
    },
    SourceKind {
        name: mqtt::source::KIND,
        normalize: mqtt::source::normalize,
        build: mqtt::source::build,
    },
];

impl SourceKind {
    /// The kind named `name`, or a `type` error that lists the known ones.
    pub fn find(name: &str) -> Result<&'static SourceKind, ConfigError> {
        SOURCE_KINDS.iter().find(|k| k.name == name).ok_or_else(|| {
            ConfigError::new(
                "type",
                format!(
                    "{name:?} is not a source type (known: {})",
                    SOURCE_KINDS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Check a definition's settings (pure; the API's spelling; keys of
    /// `envelope` are the node's and skipped) and return them in normal
    /// form (defaults filled in), as they are stored. Errors name the
    /// field as the API spells it.
    pub fn normalize(
        &self,
        settings: &Map<String, Value>,
        envelope: &[&str],
    ) -> Result<Map<String, Value>, ConfigError> {
        (self.normalize)(settings, envelope)
    }

    /// Build the source `name`, committing to `bus`, from stored settings:
    /// resolves what it needs of this node (a credential missing here is
    /// an error saying so). Nothing runs until the future is polled.
    pub fn build(
        &self,
        name: &str,
        bus: &str,
        settings: &Map<String, Value>,
        ctx: &SourceContext,
        status: StatusCell,
    ) -> Result<SourceFuture, ConfigError> {
        (self.build)(name, bus, settings, ctx, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_status_is_read_from_the_message() {
        let e = DeliveryError::Retryable("HTTP 503 from http://x: busy".into());
        assert_eq!(e.http_status(), Some(503));
        let e = DeliveryError::Permanent("PutEvents: HTTP 400 Bad: no".into());
        assert_eq!(e.http_status(), Some(400));
        let e = DeliveryError::Retryable("connection failed: refused (HTTP 5000x)".into());
        assert_eq!(e.http_status(), None);
        let e = DeliveryError::Retryable("timed out".into());
        assert_eq!(e.http_status(), None);
        let e = DeliveryError::Retryable("ends with HTTP 429".into());
        assert_eq!(e.http_status(), Some(429));
    }

    #[test]
    fn kinds_are_found_by_name() {
        assert_eq!(SourceKind::find("aws_sqs").map(|k| k.name), Ok("aws_sqs"));
        assert_eq!(SourceKind::find("nats").map(|k| k.name), Ok("nats"));
        assert_eq!(SourceKind::find("kafka").map(|k| k.name), Ok("kafka"));
        let e = SourceKind::find("amqp")
            .map(|k| k.name)
            .expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "type: \"amqp\" is not a source type (known: aws_sqs, nats, kafka, mqtt)"
        );
    }
}
