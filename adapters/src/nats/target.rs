//! The `nats` target: each event published to a subject in binary mode
//! ([`mapping::to_message`]); with `jetstream: true` the publish waits for
//! the stream's ack and carries `Nats-Msg-Id` = the event id, so a retried
//! delivery is dropped by the stream's duplicate window.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::Event;
use tokio::sync::OnceCell;

use crate::nats::mapping;
use crate::nats::source::{broker_uri, validate_subject};
use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

/// Settings of a `nats` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsSettings {
    /// `nats://host:port` (or `tls://`).
    pub url: String,
    /// The subject to publish to (no wildcards).
    pub subject: String,
    /// Publish to JetStream and wait for its ack (else core NATS: at most
    /// once once it left the node).
    #[serde(default)]
    pub jetstream: bool,
}

impl NatsSettings {
    /// Parse and check; the normal form has defaults filled in.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Self, ConfigError> {
        let s: Self = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        broker_uri("url", &self.url)?;
        validate_subject("subject", &self.subject, false)
    }
}

/// A running `nats` target: one connection, made on first use.
pub struct NatsTarget {
    settings: NatsSettings,
    broker: String,
    timeout: Duration,
    client: OnceCell<(async_nats::Client, async_nats::jetstream::Context)>,
}

impl NatsTarget {
    /// A target publishing by `settings`, each delivery bounded by `timeout`.
    pub fn new(settings: NatsSettings, timeout: Duration) -> Result<NatsTarget, ConfigError> {
        let broker = broker_uri("url", &settings.url)?;
        Ok(NatsTarget {
            settings,
            broker,
            timeout,
            client: OnceCell::new(),
        })
    }

    /// The connection and its JetStream context (made on first use; the
    /// client reconnects by itself afterwards).
    async fn client(
        &self,
    ) -> Result<&(async_nats::Client, async_nats::jetstream::Context), DeliveryError> {
        self.client
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(self.timeout)
                    .connect(self.settings.url.as_str())
                    .await
                    .map_err(|e| {
                        DeliveryError::Retryable(format!(
                            "connecting to {} failed: {e}",
                            self.broker
                        ))
                    })?;
                let js = async_nats::jetstream::new(client.clone());
                Ok((client, js))
            })
            .await
    }

    async fn publish(&self, event: &Event) -> Result<(), DeliveryError> {
        let out = mapping::to_message(event);
        let mut headers = HeaderMap::new();
        for (k, v) in out.headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| {
                DeliveryError::Permanent(format!("header {k:?} cannot be sent: {e}"))
            })?;
            headers.insert(name, v);
        }
        let (client, js) = self.client().await?;
        let subject = self.settings.subject.clone();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DeliveryError::Retryable(format!("{what} {subject} at {}: {e}", self.broker))
        };
        if self.settings.jetstream {
            headers.insert("Nats-Msg-Id", event.id());
            let ack = js
                .publish_with_headers(subject.clone(), headers, out.payload.into())
                .await
                .map_err(|e| fail("JetStream publish to", &e))?;
            ack.await.map_err(|e| fail("no JetStream ack from", &e))?;
        } else {
            client
                .publish_with_headers(subject.clone(), headers, out.payload.into())
                .await
                .map_err(|e| fail("publish to", &e))?;
            client.flush().await.map_err(|e| fail("flush to", &e))?;
        }
        Ok(())
    }
}

impl Sink for NatsTarget {
    fn deliver<'a>(&'a self, event: &'a Event, _traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.publish(event)).await {
                Ok(r) => r,
                Err(_) => Err(DeliveryError::Retryable(format!(
                    "NATS publish to {} at {} timed out after {:?}",
                    self.settings.subject, self.broker, self.timeout
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: Value) -> Result<NatsSettings, ConfigError> {
        NatsSettings::from_settings(v.as_object().expect("object"))
    }

    #[test]
    fn settings_are_checked() {
        let s = settings(json!({"url": "nats://h:4222", "subject": "out"})).expect("valid");
        assert!(!s.jetstream);
        assert_eq!(
            settings(json!({"url": "nats://h", "subject": "a.*"}))
                .expect_err("wildcard")
                .field,
            "subject"
        );
        assert_eq!(
            settings(json!({"url": "https://h", "subject": "a"}))
                .expect_err("scheme")
                .field,
            "url"
        );
        assert_eq!(
            settings(json!({"url": "nats://h", "subject": "a", "stream": "x"}))
                .expect_err("unknown")
                .field,
            "settings"
        );
    }
}
