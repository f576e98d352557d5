//! The `mqtt` target: each event published to a topic ([`mapping::to_message`]:
//! binary mode on MQTT 5, structured on MQTT 3.1.1). With QoS 1 (the
//! default) a delivery succeeds once the broker acknowledged the publish
//! (PUBACK; an MQTT 5 PUBACK with an error reason fails it); with QoS 0 once
//! it was written to the connection (at most once from there).
//!
//! One connection per target (clean session), shared by concurrent
//! deliveries: publishes are handed to it in order and matched to the
//! broker's acknowledgements by packet identifier. A connection that fails
//! fails every delivery waiting on it (they are retried by the dispatcher,
//! so the broker may see a publish twice: at least once) and is replaced on
//! the next delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strait_routing::event::Event;
use tokio::sync::oneshot;

use crate::mqtt::mapping::{self, Protocol};
use crate::mqtt::source::login;
use crate::mqtt::{
    Client, ConnectOptions, Endpoint, MqttCredentials, Polled, validate_client_id, validate_topic,
};
use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

fn default_qos() -> u8 {
    1
}

/// Settings of an `mqtt` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// The topic to publish to (no wildcards).
    pub topic: String,
    /// 1 (default): wait for the broker's PUBACK; 0: fire and forget.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// `v5` (default; binary mode) or `v3.1.1` (structured mode).
    #[serde(default)]
    pub protocol: String,
    /// The client identifier (default: a random `strait-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user name (else the credential's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The node-local credential (`mqtt.credentials`) with the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl MqttSettings {
    /// Parse and check; the normal form has defaults filled in.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Self, ConfigError> {
        let mut s: Self = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        if s.protocol.is_empty() {
            s.protocol = Protocol::default().as_str().into();
        }
        s.validate()?;
        if let Some(p) = Protocol::parse(&s.protocol) {
            s.protocol = p.as_str().into();
        }
        Ok(s)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Endpoint::parse("url", &self.url)?;
        validate_topic("topic", &self.topic, false)?;
        if self.qos > 1 {
            return Err(ConfigError::new(
                "qos",
                "must be 0 (at most once) or 1 (at least once)",
            ));
        }
        if Protocol::parse(&self.protocol).is_none() {
            return Err(ConfigError::new(
                "protocol",
                format!(
                    "{:?} is not a protocol (use \"v5\" or \"v3.1.1\")",
                    self.protocol
                ),
            ));
        }
        if let Some(id) = &self.client_id {
            validate_client_id("clientId", id)?;
        }
        if let Some(c) = &self.credential
            && !crate::sources::is_name(c)
        {
            return Err(ConfigError::new(
                "credential",
                format!("{c:?} is not a credential name"),
            ));
        }
        Ok(())
    }
}

/// Deliveries waiting on one connection.
#[derive(Default)]
struct Waiting {
    /// Handed to the connection, not yet given a packet id (in order).
    queued: VecDeque<oneshot::Sender<Result<(), DeliveryError>>>,
    /// Sent under a packet id, awaiting the PUBACK.
    sent: HashMap<u16, oneshot::Sender<Result<(), DeliveryError>>>,
    /// The connection failed: nothing more is handed to it.
    dead: bool,
}

/// One connection and what waits on it.
struct Link {
    client: Client,
    waiting: Arc<Mutex<Waiting>>,
    /// Orders hand-overs (queue entry and channel send together).
    order: tokio::sync::Mutex<()>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(w: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    match w.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A running `mqtt` target.
pub struct MqttTarget {
    settings: MqttSettings,
    protocol: Protocol,
    options: ConnectOptions,
    broker: String,
    timeout: Duration,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl MqttTarget {
    /// A target publishing by `settings` (its password from `credentials`),
    /// each delivery bounded by `timeout`.
    pub fn new(
        settings: MqttSettings,
        timeout: Duration,
        credentials: &MqttCredentials,
    ) -> Result<MqttTarget, ConfigError> {
        settings.validate()?;
        let endpoint = Endpoint::parse("url", &settings.url)?;
        let protocol = Protocol::parse(&settings.protocol).unwrap_or_default();
        let (username, password) = login(
            settings.username.as_deref(),
            settings.credential.as_deref(),
            credentials,
        )?;
        let client_id = settings.client_id.clone().unwrap_or_else(|| {
            format!(
                "strait-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            )
        });
        Ok(MqttTarget {
            broker: endpoint.uri(),
            options: ConnectOptions {
                endpoint,
                protocol,
                client_id,
                username,
                password,
                persistent: false,
                session_expiry: 0,
                manual_acks: false,
                inflight: 100,
                keep_alive: Duration::from_secs(30),
                connect_timeout: timeout,
            },
            protocol,
            settings,
            timeout,
            link: tokio::sync::Mutex::new(None),
        })
    }

    /// The live connection, made anew when there is none or it failed.
    async fn link(&self) -> Result<Arc<Link>, DeliveryError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref()
            && !lock(&l.waiting).dead
        {
            return Ok(l.clone());
        }
        let (client, mut conn) = crate::mqtt::connect(&self.options, 256)
            .map_err(|e| DeliveryError::Retryable(format!("MQTT {}: {e}", self.broker)))?;
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let w = waiting.clone();
        let broker = self.broker.clone();
        let task = tokio::spawn(async move {
            loop {
                match conn.poll().await {
                    Ok(Polled::Sent { pkid }) => {
                        let mut w = lock(&w);
                        if let Some(tx) = w.queued.pop_front() {
                            if pkid == 0 {
                                let _ = tx.send(Ok(()));
                            } else {
                                w.sent.insert(pkid, tx);
                            }
                        }
                    }
                    Ok(Polled::Acked { pkid, refused }) => {
                        if let Some(tx) = lock(&w).sent.remove(&pkid) {
                            let _ = tx.send(match refused {
                                None => Ok(()),
                                Some(why) => Err(DeliveryError::Permanent(format!(
                                    "the MQTT broker {broker} refused the publish: {why}"
                                ))),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Fail everything waiting: the dispatcher retries on
                        // a new connection.
                        let mut w = lock(&w);
                        w.dead = true;
                        let why = format!("MQTT connection to {broker}: {e}");
                        let w = &mut *w;
                        for tx in w.queued.drain(..).chain(w.sent.drain().map(|(_, t)| t)) {
                            let _ = tx.send(Err(DeliveryError::Retryable(why.clone())));
                        }
                        return;
                    }
                }
            }
        });
        let link = Arc::new(Link {
            client,
            waiting,
            order: tokio::sync::Mutex::new(()),
            _task: AbortOnDrop(task),
        });
        *guard = Some(link.clone());
        Ok(link)
    }

    async fn publish(&self, event: &Event) -> Result<(), DeliveryError> {
        let out = mapping::to_message(event, self.protocol);
        let link = self.link().await?;
        let (tx, rx) = oneshot::channel();
        {
            let _order = link.order.lock().await;
            {
                let mut w = lock(&link.waiting);
                if w.dead {
                    return Err(DeliveryError::Retryable(format!(
                        "MQTT connection to {} failed",
                        self.broker
                    )));
                }
                w.queued.push_back(tx);
            }
            if let Err(e) = link
                .client
                .publish(&self.settings.topic, self.settings.qos, out)
                .await
            {
                // The request did not reach the connection: take our place
                // back out of the queue (the last one: we hold the order).
                lock(&link.waiting).queued.pop_back();
                return Err(DeliveryError::Retryable(format!(
                    "MQTT publish to {} at {}: {e}",
                    self.settings.topic, self.broker
                )));
            }
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Retryable(format!(
                "MQTT connection to {} closed",
                self.broker
            ))),
        }
    }
}

impl Sink for MqttTarget {
    fn deliver<'a>(&'a self, event: &'a Event, _traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.publish(event)).await {
                Ok(r) => r,
                Err(_) => Err(DeliveryError::Retryable(format!(
                    "MQTT publish to {} at {} timed out after {:?}",
                    self.settings.topic, self.broker, self.timeout
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: Value) -> Result<MqttSettings, ConfigError> {
        MqttSettings::from_settings(v.as_object().expect("object"))
    }

    #[test]
    fn settings_are_checked() {
        let s = settings(json!({"url": "mqtt://h:1883", "topic": "out/x"})).expect("valid");
        assert_eq!((s.qos, s.protocol.as_str()), (1, "v5"));
        let s = settings(json!({"url": "mqtt://h", "topic": "o", "qos": 0, "protocol": "3.1.1"}))
            .expect("valid");
        assert_eq!(s.protocol, "v3.1.1", "normal form");
        for (v, field) in [
            (json!({"url": "mqtt://h", "topic": "a/+"}), "topic"),
            (json!({"url": "https://h", "topic": "a"}), "url"),
            (json!({"url": "mqtt://h", "topic": "a", "qos": 2}), "qos"),
            (
                json!({"url": "mqtt://h", "topic": "a", "protocol": "v4"}),
                "protocol",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "subject": "x"}),
                "settings",
            ),
        ] {
            assert_eq!(settings(v.clone()).expect_err("bad").field, field, "{v}");
        }
        let none: MqttCredentials = Arc::default();
        let e = MqttTarget::new(
            settings(json!({"url": "mqtt://h", "topic": "a", "credential": "nope"}))
                .expect("valid"),
            Duration::from_secs(1),
            &none,
        )
        .err()
        .expect("unknown credential");
        assert_eq!(e.field, "credential");
    }
}
