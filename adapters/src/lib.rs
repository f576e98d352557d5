//! Strait adapters: one module per external system.
//!
//! Each adapter keeps its configuration checks pure ([`validate_target`])
//! and apart from building the running piece ([`build_target`]), the way
//! Vector separates config validation from component construction; the
//! target kinds are registered once, in [`TARGET_KINDS`]:
//! [`http`], the webhook / CloudEvents HTTP sink; [`alibaba_eventbridge`],
//! Alibaba Cloud EventBridge PutEvents, its ingress and push endpoint;
//! [`aws_eventbridge`], AWS EventBridge PutEvents and its ingress;
//! [`aws_sqs`], the SQS target and source.
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
pub mod http;
pub mod ingest;
pub mod peer;

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
}

/// One kind of target this build knows: the `type` a rule target names,
/// the check of its settings and the constructor of its running sink.
/// [`TARGET_KINDS`] is the registry; nothing else matches on type names.
pub struct TargetKind {
    /// The `type` of a rule target.
    pub name: &'static str,
    /// The settings in normal form (defaults filled in), as they are stored.
    normalize: Normalize,
    /// The running target.
    build: Build,
}

/// A kind's settings check: its settings struct as JSON.
type Normalize = fn(&Map<String, Value>) -> Result<serde_json::Result<Value>, ConfigError>;
/// A kind's constructor.
type Build = fn(&Map<String, Value>, Duration, &SinkContext) -> Result<Arc<dyn Sink>, ConfigError>;

/// Every target kind of this build.
pub const TARGET_KINDS: &[TargetKind] = &[
    TargetKind {
        name: "http",
        normalize: |m| Ok(serde_json::to_value(http::HttpSettings::from_settings(m)?)),
        build: build_http,
    },
    TargetKind {
        name: "alibaba_eventbridge",
        normalize: |m| {
            Ok(serde_json::to_value(
                alibaba_eventbridge::AlibabaSettings::from_settings(m)?,
            ))
        },
        build: build_alibaba,
    },
    TargetKind {
        name: "aws_eventbridge",
        normalize: |m| {
            Ok(serde_json::to_value(
                aws_eventbridge::AwsEventBridgeSettings::from_settings(m)?,
            ))
        },
        build: build_aws_eventbridge,
    },
    TargetKind {
        name: "aws_sqs",
        normalize: |m| {
            Ok(serde_json::to_value(
                aws_sqs::AwsSqsSettings::from_settings(m)?,
            ))
        },
        build: build_aws_sqs,
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

/// Check a target's type-specific settings (pure) and return them in
/// normal form (defaults filled in), as they are stored.
pub fn validate_target(
    kind: &str,
    settings: &Map<String, Value>,
) -> Result<Map<String, Value>, ConfigError> {
    TargetKind::find(kind)?.validate(settings)
}

/// Build the running target.
pub fn build_target(
    kind: &str,
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    TargetKind::find(kind)
        .map_err(|_| ConfigError::new("type", format!("unknown target type {kind:?}")))?
        .build(settings, timeout, ctx)
}

fn build_http(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    Ok(Arc::new(http::HttpTarget::new(
        ctx.http.clone(),
        http::HttpSettings::from_settings(settings)?,
        timeout,
    )))
}

fn build_alibaba(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    let s = alibaba_eventbridge::AlibabaSettings::from_settings(settings)?;
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
    Ok(Arc::new(alibaba_eventbridge::AlibabaTarget::start(
        ctx.http.client(),
        s,
        credential,
        timeout,
    )?))
}

fn build_aws_eventbridge(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    let s = aws_eventbridge::AwsEventBridgeSettings::from_settings(settings)?;
    let credential = aws_common::resolve_credential(&ctx.aws_credentials, s.credential.as_deref())?;
    Ok(Arc::new(aws_eventbridge::AwsEventBridgeTarget::start(
        s, credential, timeout,
    )?))
}

fn build_aws_sqs(
    settings: &Map<String, Value>,
    timeout: Duration,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, ConfigError> {
    let s = aws_sqs::AwsSqsSettings::from_settings(settings)?;
    let credential = aws_common::resolve_credential(&ctx.aws_credentials, s.credential.as_deref())?;
    Ok(Arc::new(aws_sqs::AwsSqsTarget::start(
        s, credential, timeout,
    )?))
}
