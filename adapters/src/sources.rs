//! What every source kind shares (their registry is
//! [`crate::SOURCE_KINDS`]): what a running source uses of the node
//! ([`SourceContext`]), what it reports ([`StatusCell`]), and the reading
//! of a definition's fields in either spelling ([`Naming`], [`Fields`]).
//!
//! A source definition is an envelope the node owns (`type`, `site`, `bus`
//! through the API; `name`, `bus` in the node's configuration) around the
//! settings of its kind. The kind reads, checks and runs those settings;
//! the node only names the bus the events go to and hands them on through
//! [`Ingest`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use strait_routing::event::{Event, EventError, json_kind};

use crate::{ConfigError, Ingest, aws_common};

/// How a definition spells its fields: snake_case in the node's YAML
/// configuration (`aws.sources`), camelCase in the API (`PUT
/// /v1/sources/{name}`, `strait apply`, and the stored form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The node's YAML configuration: `queue_url`.
    NodeConfig,
    /// The API and the stored form: `queueUrl`.
    Api,
}

/// A field of a source's settings, in both spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// In the node's configuration.
    pub config: &'static str,
    /// In the API.
    pub api: &'static str,
    /// Another name the node's configuration accepts.
    pub config_alias: Option<&'static str>,
}

impl Field {
    /// A field spelled `config` in the node's configuration and `api` in
    /// the API.
    pub const fn new(config: &'static str, api: &'static str) -> Field {
        Field {
            config,
            api,
            config_alias: None,
        }
    }

    /// The same, also accepting `alias` in the node's configuration.
    pub const fn with_alias(self, alias: &'static str) -> Field {
        Field {
            config_alias: Some(alias),
            ..self
        }
    }

    /// The field's name in `naming`.
    pub fn name(self, naming: Naming) -> &'static str {
        match naming {
            Naming::NodeConfig => self.config,
            Naming::Api => self.api,
        }
    }

    fn names(self, naming: Naming) -> impl Iterator<Item = &'static str> {
        let alias = match naming {
            Naming::NodeConfig => self.config_alias,
            Naming::Api => None,
        };
        std::iter::once(self.name(naming)).chain(alias)
    }
}

/// A definition's fields, read one by one; errors name the field as the
/// definition spells it.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    naming: Naming,
}

impl<'a> Fields<'a> {
    /// Read `map`, spelled as `naming`; every key must be one of
    /// `envelope` (the node's fields, read by the node) or of `fields`
    /// (else an error naming it and listing the allowed ones, envelope
    /// first).
    pub fn new(
        map: &'a Map<String, Value>,
        naming: Naming,
        envelope: &[&str],
        fields: &[Field],
    ) -> Result<Fields<'a>, ConfigError> {
        let known = |k: &str| {
            envelope.contains(&k) || fields.iter().any(|f| f.names(naming).any(|n| n == k))
        };
        if let Some(k) = map.keys().find(|k| !known(k)) {
            let allowed: Vec<&str> = envelope
                .iter()
                .copied()
                .chain(fields.iter().map(|f| f.name(naming)))
                .collect();
            return Err(ConfigError::new(
                k.as_str(),
                format!("unknown field (allowed: {})", allowed.join(", ")),
            ));
        }
        Ok(Fields { map, naming })
    }

    /// Read the node's fields of `map` (the envelope), leaving the check
    /// of the other keys to the kind ([`Fields::new`]).
    pub fn envelope(map: &'a Map<String, Value>, naming: Naming) -> Fields<'a> {
        Fields { map, naming }
    }

    /// The spelling read.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The value of `field` (`None` when absent or null) and the name it
    /// was found under.
    fn get(&self, field: Field) -> Option<(&'static str, &'a Value)> {
        field
            .names(self.naming)
            .find_map(|n| self.map.get(n).filter(|v| !v.is_null()).map(|v| (n, v)))
    }

    /// A string field.
    pub fn string(&self, field: Field) -> Result<Option<String>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((n, other)) => Err(ConfigError::new(
                n,
                format!("must be a string, got {}", json_kind(other)),
            )),
        }
    }

    /// A string field that must be there.
    pub fn required_string(&self, field: Field) -> Result<String, ConfigError> {
        self.string(field)?
            .ok_or_else(|| ConfigError::new(field.name(self.naming), "required field is missing"))
    }

    /// An integer field (`default` when absent).
    pub fn integer(&self, field: Field, default: i32) -> Result<i32, ConfigError> {
        match self.get(field) {
            None => Ok(default),
            Some((n, v)) => v
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(|| ConfigError::new(n, format!("must be an integer, got {v}"))),
        }
    }

    /// A boolean field (`false` when absent).
    pub fn boolean(&self, field: Field) -> Result<bool, ConfigError> {
        match self.get(field) {
            None => Ok(false),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((n, v)) => Err(ConfigError::new(
                n,
                format!("must be true or false, got {v}"),
            )),
        }
    }

    /// A field of any JSON value.
    pub fn value(&self, field: Field) -> Option<Value> {
        self.get(field).map(|(_, v)| v.clone())
    }
}

/// Whether `name` is a name Strait accepts for a bus, rule or credential:
/// 1-64 characters of `A-Z a-z 0-9 . _ -`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `deadLetterBus`: where a source sends the messages it cannot turn into
/// events (see [`rejected_event`]); absent: they are dropped and counted.
pub const DEAD_LETTER_BUS: Field = Field::new("dead_letter_bus", "deadLetterBus");
/// `nonCloudEvents`: `"wrap"` (default) or `"reject"` (see [`NonCloudEvents`]).
pub const NON_CLOUD_EVENTS: Field = Field::new("non_cloud_events", "nonCloudEvents");

/// What a source does with a message that is not a CloudEvent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonCloudEvents {
    /// Wrap it as the data of a new event (the default).
    #[default]
    Wrap,
    /// Refuse it: it is dead-lettered (or dropped) as poison.
    Reject,
}

impl NonCloudEvents {
    /// Read `nonCloudEvents` from `fields` (default [`NonCloudEvents::Wrap`]).
    pub fn read(fields: &Fields<'_>) -> Result<NonCloudEvents, ConfigError> {
        match fields.string(NON_CLOUD_EVENTS)?.as_deref() {
            None | Some("wrap") => Ok(NonCloudEvents::Wrap),
            Some("reject") => Ok(NonCloudEvents::Reject),
            Some(other) => Err(ConfigError::new(
                NON_CLOUD_EVENTS.name(fields.naming()),
                format!("must be \"wrap\" or \"reject\", got {other:?}"),
            )),
        }
    }

    /// Its spelling in a definition.
    pub fn as_str(self) -> &'static str {
        match self {
            NonCloudEvents::Wrap => "wrap",
            NonCloudEvents::Reject => "reject",
        }
    }
}

/// Read `deadLetterBus` from `fields`: a bus name or nothing.
pub fn read_dead_letter_bus(fields: &Fields<'_>) -> Result<Option<String>, ConfigError> {
    match fields.string(DEAD_LETTER_BUS)? {
        None => Ok(None),
        Some(b) if is_name(&b) => Ok(Some(b)),
        Some(b) => Err(ConfigError::new(
            DEAD_LETTER_BUS.name(fields.naming()),
            format!("{b:?} is not a bus name (1-64 of A-Z a-z 0-9 . _ -)"),
        )),
    }
}

/// The `type` of the event a source makes of a message it refused.
pub const REJECTED_TYPE: &str = "strait.source.rejected";

/// The dead letter of a message a source could not turn into an event:
/// type [`REJECTED_TYPE`], `source` = `from` (the broker URI and
/// topic/subject), `id` = the message's own deterministic id (so a message
/// read again is deduplicated), the raw payload as `data_base64`, and the
/// extensions `deadletterreason` and `deadlettersource` (the Strait
/// source's name). Submit it to the source's `deadLetterBus` in the same
/// batch as the good events, so the offset or ack moves past it only once
/// it is committed. Empty `from` or `id` are replaced, so it does not
/// fail for any input (the `Result` is `from_structured`'s).
pub fn rejected_event(
    source: &str,
    from: &str,
    id: &str,
    payload: &[u8],
    reason: &str,
) -> Result<Event, EventError> {
    use base64::Engine as _;
    let from = if from.is_empty() {
        "strait:source"
    } else {
        from
    };
    let id = if id.is_empty() { "unknown" } else { id };
    let mut reason: String = reason.chars().take(1024).collect();
    reason.retain(|c| c != '\r' && c != '\n');
    let value = json!({
        "specversion": "1.0",
        "id": id,
        "source": from,
        "type": REJECTED_TYPE,
        "datacontenttype": "application/octet-stream",
        "data_base64": base64::engine::general_purpose::STANDARD.encode(payload),
        "deadletterreason": reason,
        "deadlettersource": source,
    });
    Event::from_structured(value)
}

/// What a source reports on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// It runs on this node.
    pub running: bool,
    /// The last problem (cleared by the next successful receive).
    pub last_error: Option<String>,
    /// Messages received by this node.
    pub received: u64,
    /// Events committed (new, not duplicates) by this node.
    pub committed: u64,
    /// Messages left where they are because they are not valid events.
    pub rejected: u64,
}

impl SourceStatus {
    /// The `status` object of `GET /v1/sources/{name}`.
    pub fn to_json(&self) -> Value {
        json!({
            "running": self.running,
            "lastError": self.last_error,
            "received": self.received,
            "committed": self.committed,
            "rejected": self.rejected,
        })
    }
}

/// A source's status, shared between the running source and the API.
#[derive(Debug, Clone, Default)]
pub struct StatusCell(Arc<Mutex<SourceStatus>>);

impl StatusCell {
    fn lock(&self) -> MutexGuard<'_, SourceStatus> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Change the status.
    pub fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        f(&mut self.lock());
    }

    /// A copy of the status.
    pub fn get(&self) -> SourceStatus {
        self.lock().clone()
    }
}

/// What a running source uses of the node.
#[derive(Clone)]
pub struct SourceContext {
    /// Where it hands its events.
    pub ingest: Arc<dyn Ingest>,
    /// AWS credentials by name (node config `aws.credentials`).
    pub aws_credentials: aws_common::AwsCredentials,
    /// A source without `credential` and without a `default` credential
    /// uses the standard AWS chain (dev mode only).
    pub aws_chain_fallback: bool,
    /// Kafka SASL credentials by name (node config `kafka.credentials`).
    pub kafka_credentials: crate::kafka::KafkaCredentials,
    /// MQTT credentials by name (node config `mqtt.credentials`).
    pub mqtt_credentials: crate::mqtt::MqttCredentials,
    /// This node in messages (`node 1 at site aws`).
    pub node: String,
}

/// A source, built and ready to run: it runs until the future is dropped.
pub type SourceFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

#[cfg(test)]
mod tests {
    use super::*;

    const A: Field = Field::new("queue_url", "queueUrl");
    const B: Field = Field::new("credential", "credential").with_alias("credentials");

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn rejected_event_keeps_the_payload_and_reason() {
        let e = rejected_event(
            "src",
            "nats://h:4222/a.b",
            "m-1",
            b"\xff\x00junk",
            "bad\nthing",
        )
        .expect("valid");
        assert_eq!(e.event_type(), REJECTED_TYPE);
        assert_eq!(e.id(), "m-1");
        assert_eq!(e.source(), "nats://h:4222/a.b");
        assert_eq!(e.str_attr("deadletterreason"), Some("badthing"));
        assert_eq!(e.str_attr("deadlettersource"), Some("src"));
        assert_eq!(e.str_attr("data_base64"), Some("/wBqdW5r"));
        let e = rejected_event("", "", "", b"", "").expect("empty inputs still make an event");
        assert_eq!(e.id(), "unknown");
    }

    #[test]
    fn non_cloud_events_and_dead_letter_bus_are_checked() {
        let m = map(json!({"nonCloudEvents": "reject", "deadLetterBus": "dlq"}));
        let f = Fields::envelope(&m, Naming::Api);
        assert_eq!(
            NonCloudEvents::read(&f).expect("ok"),
            NonCloudEvents::Reject
        );
        assert_eq!(
            read_dead_letter_bus(&f).expect("ok").as_deref(),
            Some("dlq")
        );
        let m = map(json!({"nonCloudEvents": "drop", "deadLetterBus": "a b"}));
        let f = Fields::envelope(&m, Naming::Api);
        assert_eq!(
            NonCloudEvents::read(&f).expect_err("bad").field,
            "nonCloudEvents"
        );
        assert_eq!(
            read_dead_letter_bus(&f).expect_err("bad").field,
            "deadLetterBus"
        );
    }

    #[test]
    fn fields_are_read_in_either_spelling() {
        let m = map(json!({"queue_url": "u", "credentials": "c", "name": "n"}));
        let f = Fields::new(&m, Naming::NodeConfig, &["name"], &[A, B]).expect("known");
        assert_eq!(f.required_string(A).expect("there"), "u");
        assert_eq!(f.string(B).expect("alias"), Some("c".into()));
        let e = Fields::new(&m, Naming::Api, &["name"], &[A, B]).expect_err("snake in the API");
        assert_eq!(e.field, "queue_url");
        assert_eq!(
            e.message,
            "unknown field (allowed: name, queueUrl, credential)"
        );
        let m = map(json!({"queueUrl": 7}));
        let f = Fields::new(&m, Naming::Api, &[], &[A, B]).expect("known");
        assert_eq!(
            f.string(A).expect_err("number").to_string(),
            "queueUrl: must be a string, got a number"
        );
        assert_eq!(
            f.required_string(B).expect_err("missing").field,
            "credential"
        );
    }
}
