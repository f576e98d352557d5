//! The `kafka` target: each event produced to a topic in binary mode
//! ([`mapping::to_record`]) by an idempotent producer (`acks=all`,
//! `enable.idempotence`: the producer's own retries never write a record
//! twice); a delivery succeeds once the broker acknowledged the record.
//! The key is the event's `partitionkey`, or what the target's `key`
//! JSONPath selects.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_json_path::JsonPath;
use strait_routing::event::Event;

use crate::kafka::DropOffThread;
use crate::kafka::mapping;
use crate::kafka::source::{validate_brokers, validate_topic};
use crate::{ConfigError, DeliveryError, DeliveryFuture, Sink};

/// Settings of a `kafka` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic to produce to.
    pub topic: String,
    /// A JSONPath (RFC 9535) into the event whose first match is the record
    /// key (a string as is, anything else as JSON); absent or no match: the
    /// event's `partitionkey`, else no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KafkaSettings {
    /// Parse and check.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Self, ConfigError> {
        let s: Self = serde_json::from_value(Value::Object(settings.clone()))
            .map_err(|e| ConfigError::new("settings", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_brokers("brokers", &self.brokers)?;
        validate_topic("topic", &self.topic)?;
        if let Some(k) = &self.key {
            JsonPath::parse(k).map_err(|e| {
                ConfigError::new("key", format!("{k:?} is not a valid JSONPath: {e}"))
            })?;
        }
        Ok(())
    }
}

/// A running `kafka` target: one idempotent producer (made again after a
/// fatal error, such as a broker that lost the producer's state).
pub struct KafkaTarget {
    settings: KafkaSettings,
    key: Option<JsonPath>,
    timeout: Duration,
    producer: RwLock<Arc<DropOffThread<FutureProducer>>>,
}

fn producer_for(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<FutureProducer, ConfigError> {
    ClientConfig::new()
        .set("bootstrap.servers", settings.brokers.join(","))
        .set("client.id", "strait")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            timeout.as_millis().max(1000).to_string(),
        )
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "3")
        .create()
        .map_err(|e| ConfigError::new("brokers", format!("Kafka producer: {e}")))
}

impl KafkaTarget {
    /// A target producing by `settings`, each delivery bounded by `timeout`.
    pub fn new(settings: KafkaSettings, timeout: Duration) -> Result<KafkaTarget, ConfigError> {
        settings.validate()?;
        let key = match &settings.key {
            Some(k) => Some(
                JsonPath::parse(k)
                    .map_err(|e| ConfigError::new("key", format!("not a JSONPath: {e}")))?,
            ),
            None => None,
        };
        let producer = RwLock::new(Arc::new(DropOffThread::new(producer_for(
            &settings, timeout,
        )?)));
        Ok(KafkaTarget {
            settings,
            key,
            timeout,
            producer,
        })
    }

    fn key_of(&self, event: &Event) -> Option<String> {
        let path = self.key.as_ref()?;
        let v = event.to_value();
        path.query(&v).first().map(|k| match k {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    async fn produce(&self, event: &Event) -> Result<(), DeliveryError> {
        let out = mapping::to_record(event, self.key_of(event));
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (k, v) in &out.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.settings.topic)
            .payload(&out.value)
            .headers(headers);
        if let Some(k) = &out.key {
            record = record.key(k);
        }
        let producer = match self.producer.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let sent = producer.send(record, self.timeout).await;
        if let Err((e, _)) = &sent {
            // A producer that failed for good, or whose records time out
            // (a broker restarted without the producer's state answers
            // UNKNOWN_PRODUCER_ID to every record, which librdkafka retries
            // until the record times out): start a new one.
            let fatal = producer.client().fatal_error();
            let timed_out =
                e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
            if fatal.is_some() || timed_out {
                tracing::warn!(topic = %self.settings.topic, error = %e, fatal = ?fatal, "Kafka producer made again");
                if let Ok(fresh) = producer_for(&self.settings, self.timeout) {
                    let old = {
                        let mut slot = match self.producer.write() {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                        Arc::ptr_eq(&slot, &producer).then(|| {
                            std::mem::replace(&mut *slot, Arc::new(DropOffThread::new(fresh)))
                        })
                    };
                    // (Dropped off the async threads by `DropOffThread`.)
                    drop(old);
                }
            }
        }
        sent.map(|_| ()).map_err(|(e, _)| {
            let msg = format!(
                "producing to {} at {}: {e}",
                self.settings.topic,
                self.settings.brokers.join(",")
            );
            // A record the broker will never take (too large, ...).
            match e.rdkafka_error_code() {
                Some(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                    | rdkafka::types::RDKafkaErrorCode::InvalidRecord
                    | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed,
                ) => DeliveryError::Permanent(msg),
                _ => DeliveryError::Retryable(msg),
            }
        })
    }
}

impl Sink for KafkaTarget {
    fn deliver<'a>(&'a self, event: &'a Event, _traceparent: &'a str) -> DeliveryFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout + Duration::from_secs(1), self.produce(event))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(DeliveryError::Retryable(format!(
                    "producing to {} timed out after {:?}",
                    self.settings.topic, self.timeout
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: Value) -> Result<KafkaSettings, ConfigError> {
        KafkaSettings::from_settings(v.as_object().expect("object"))
    }

    #[test]
    fn settings_are_checked() {
        let s = settings(json!({"brokers": ["h:9092"], "topic": "out", "key": "$.data.id"}))
            .expect("valid");
        assert_eq!(s.key.as_deref(), Some("$.data.id"));
        for (v, field) in [
            (json!({"brokers": ["h"], "topic": "t"}), "brokers"),
            (json!({"brokers": ["h:1"], "topic": "a/b"}), "topic"),
            (
                json!({"brokers": ["h:1"], "topic": "t", "key": "data.id"}),
                "key",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "acks": 1}),
                "settings",
            ),
        ] {
            assert_eq!(settings(v.clone()).expect_err("bad").field, field, "{v}");
        }
    }

    #[test]
    fn the_key_is_selected_by_jsonpath_or_is_the_partition_key() {
        let target = KafkaTarget::new(
            settings(json!({"brokers": ["127.0.0.1:1"], "topic": "t", "key": "$.data.id"}))
                .expect("valid"),
            Duration::from_secs(1),
        )
        .expect("producer");
        let ev = |data: Value| {
            Event::from_structured(json!({"specversion": "1.0", "id": "1", "source": "/s",
                "type": "t", "partitionkey": "pk", "data": data}))
            .expect("valid")
        };
        assert_eq!(target.key_of(&ev(json!({"id": "a"}))).as_deref(), Some("a"));
        assert_eq!(target.key_of(&ev(json!({"id": 7}))).as_deref(), Some("7"));
        let none = ev(json!({}));
        assert_eq!(target.key_of(&none), None);
        assert_eq!(
            mapping::to_record(&none, target.key_of(&none))
                .key
                .as_deref(),
            Some(&b"pk"[..])
        );
    }
}
