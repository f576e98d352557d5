//! The `mqtt` source: its settings ([`MqttSourceConfig`]) and the reader
//! ([`run`]).
//!
//! QoS 1 (the default): a persistent session (clean session off; MQTT 5:
//! clean start off and a session expiry), messages acknowledged by hand
//! only once their events are committed (or found duplicates): at least
//! once. The broker holds what arrives while no node reads (up to its
//! queue limit) and sends again, under the same packet identifiers, what
//! was read but not acknowledged; a wrapped message's id is
//! [`mapping::message_id`] of it, so that redelivery is dropped as a
//! duplicate. The broker sends at most `maxMessages` unacknowledged
//! messages (MQTT 5 receive maximum; MQTT 3.1.1: the broker's own
//! in-flight limit): the bound on what the source holds.
//!
//! QoS 0: a clean session, at most once (what arrives while the node is
//! down, or between a reconnect and the subscription, is lost); wrapped
//! messages get random ids.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::mqtt::mapping::{self, Incoming, Mode, Protocol, Wrap};
use crate::mqtt::{
    ConnectOptions, Endpoint, MqttCredentials, Polled, Received, validate_client_id, validate_topic,
};
use crate::sources::{
    DEAD_LETTER_BUS, Field, Fields, NON_CLOUD_EVENTS, Naming, NonCloudEvents, SourceContext,
    SourceFuture, StatusCell, is_name, read_dead_letter_bus, rejected_event,
};
use crate::{ConfigError, Ingest, IngestOutcome, Offer};

/// The `type` of an MQTT source.
pub const KIND: &str = "mqtt";

/// Fault injection for tests only: the source waits this many ms between
/// commit and ack, so a test can kill the node in between.
const ACK_DELAY_ENV: &str = "STRAIT_TEST_MQTT_ACK_DELAY_MS";

const URL: Field = Field::new("url", "url");
const TOPIC: Field = Field::new("topic", "topic");
const QOS: Field = Field::new("qos", "qos");
const CLIENT_ID: Field = Field::new("client_id", "clientId");
const USERNAME: Field = Field::new("username", "username");
const CREDENTIAL: Field = Field::new("credential", "credential");
const PROTOCOL: Field = Field::new("protocol", "protocol");
const EVENT_TYPE: Field = Field::new("event_type", "eventType");
const MAX_MESSAGES: Field = Field::new("max_messages", "maxMessages");
const SESSION_EXPIRY_SECS: Field = Field::new("session_expiry_secs", "sessionExpirySecs");

/// The settings of an MQTT source, in the order they are written.
pub const FIELDS: &[Field] = &[
    URL,
    TOPIC,
    QOS,
    CLIENT_ID,
    USERNAME,
    CREDENTIAL,
    PROTOCOL,
    EVENT_TYPE,
    NON_CLOUD_EVENTS,
    DEAD_LETTER_BUS,
    MAX_MESSAGES,
    SESSION_EXPIRY_SECS,
];

/// Batches committing at once.
const COMMITS_IN_FLIGHT: usize = 2;

/// The `type` of a wrapped message when `eventType` is not set.
pub const DEFAULT_EVENT_TYPE: &str = "io.mqtt.message";
const DEFAULT_MAX_MESSAGES: i32 = 100;
/// A week: how long the broker keeps the session (and queues messages)
/// while no node reads (MQTT 5).
const DEFAULT_SESSION_EXPIRY_SECS: i32 = 7 * 24 * 3600;

/// The settings of an MQTT source (see docs/adapters/mqtt.md).
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSourceConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// The topic filter (`+` and `#` allowed).
    pub topic: String,
    /// 1: at least once (persistent session, ack after commit); 0: at
    /// most once.
    pub qos: i32,
    /// The client identifier, which names the broker's session (default
    /// `strait-<source name>`).
    pub client_id: Option<String>,
    /// The user name (else the credential's).
    pub username: Option<String>,
    /// The node-local credential (`mqtt.credentials`) with the password.
    pub credential: Option<String>,
    /// MQTT 5 (binary and structured mode) or 3.1.1 (structured only).
    pub protocol: Protocol,
    /// The `type` of wrapped messages.
    pub event_type: String,
    /// Wrap or refuse messages that are not CloudEvents.
    pub non_cloud_events: NonCloudEvents,
    /// Where poison messages go (else they are dropped, counted).
    pub dead_letter_bus: Option<String>,
    /// Most unacknowledged messages the broker sends, and the most read
    /// and committed together (1-1000).
    pub max_messages: i32,
    /// MQTT 5, QoS 1: how long the broker keeps the session after a
    /// disconnect, seconds (60 up to 2^32-1).
    pub session_expiry_secs: i64,
}

impl MqttSourceConfig {
    /// Read the settings (types only; [`Self::validate`] checks values).
    pub fn read(fields: &Fields<'_>) -> Result<MqttSourceConfig, ConfigError> {
        let naming = fields.naming();
        let protocol = match fields.string(PROTOCOL)? {
            None => Protocol::default(),
            Some(p) => Protocol::parse(&p).ok_or_else(|| {
                ConfigError::new(
                    PROTOCOL.name(naming),
                    format!("{p:?} is not a protocol (use \"v5\" or \"v3.1.1\")"),
                )
            })?,
        };
        let session_expiry_secs = match fields.value(SESSION_EXPIRY_SECS) {
            None => i64::from(DEFAULT_SESSION_EXPIRY_SECS),
            Some(v) => v.as_i64().ok_or_else(|| {
                ConfigError::new(
                    SESSION_EXPIRY_SECS.name(naming),
                    format!("must be an integer, got {v}"),
                )
            })?,
        };
        Ok(MqttSourceConfig {
            url: fields.required_string(URL)?,
            topic: fields.required_string(TOPIC)?,
            qos: fields.integer(QOS, 1)?,
            client_id: fields.string(CLIENT_ID)?,
            username: fields.string(USERNAME)?,
            credential: fields.string(CREDENTIAL)?,
            protocol,
            event_type: fields
                .string(EVENT_TYPE)?
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into()),
            non_cloud_events: NonCloudEvents::read(fields)?,
            dead_letter_bus: read_dead_letter_bus(fields)?,
            max_messages: fields.integer(MAX_MESSAGES, DEFAULT_MAX_MESSAGES)?,
            session_expiry_secs,
        })
    }

    /// Read and check `map`, spelled as `naming`; keys of `envelope` are
    /// the node's.
    pub fn parse(
        map: &Map<String, Value>,
        naming: Naming,
        envelope: &[&str],
    ) -> Result<MqttSourceConfig, ConfigError> {
        let c = Self::read(&Fields::new(map, naming, envelope, FIELDS)?)?;
        c.validate(naming)?;
        Ok(c)
    }

    /// Check every value (pure). Errors name the field as `naming` spells it.
    pub fn validate(&self, naming: Naming) -> Result<(), ConfigError> {
        let field = |f: Field| f.name(naming);
        Endpoint::parse(field(URL), &self.url)?;
        validate_topic(field(TOPIC), &self.topic, true)?;
        if !(0..=1).contains(&self.qos) {
            return Err(ConfigError::new(
                field(QOS),
                "must be 0 (at most once) or 1 (at least once)",
            ));
        }
        if let Some(id) = &self.client_id {
            validate_client_id(field(CLIENT_ID), id)?;
        }
        if let Some(u) = &self.username
            && u.is_empty()
        {
            return Err(ConfigError::new(field(USERNAME), "must not be empty"));
        }
        if let Some(c) = &self.credential
            && !is_name(c)
        {
            return Err(ConfigError::new(
                field(CREDENTIAL),
                format!("{c:?} is not a credential name (1-64 characters of A-Z a-z 0-9 . _ -)"),
            ));
        }
        if self.event_type.is_empty() {
            return Err(ConfigError::new(field(EVENT_TYPE), "must not be empty"));
        }
        if let Some(b) = &self.dead_letter_bus
            && !is_name(b)
        {
            return Err(ConfigError::new(
                field(DEAD_LETTER_BUS),
                format!("{b:?} is not a bus name (1-64 of A-Z a-z 0-9 . _ -)"),
            ));
        }
        if !(1..=1000).contains(&self.max_messages) {
            return Err(ConfigError::new(
                field(MAX_MESSAGES),
                "must be between 1 and 1000",
            ));
        }
        if !(60..=i64::from(u32::MAX)).contains(&self.session_expiry_secs) {
            return Err(ConfigError::new(
                field(SESSION_EXPIRY_SECS),
                format!("must be between 60 and {}", u32::MAX),
            ));
        }
        Ok(())
    }

    /// The settings spelled as `naming`, in [`FIELDS`] order.
    pub fn to_map(&self, naming: Naming) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |f: Field, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(f.name(naming).into(), v);
            }
        };
        put(URL, Some(json!(self.url)));
        put(TOPIC, Some(json!(self.topic)));
        put(QOS, Some(json!(self.qos)));
        put(CLIENT_ID, self.client_id.as_ref().map(|s| json!(s)));
        put(USERNAME, self.username.as_ref().map(|s| json!(s)));
        put(CREDENTIAL, self.credential.as_ref().map(|s| json!(s)));
        put(PROTOCOL, Some(json!(self.protocol.as_str())));
        put(EVENT_TYPE, Some(json!(self.event_type)));
        put(
            NON_CLOUD_EVENTS,
            Some(json!(self.non_cloud_events.as_str())),
        );
        put(
            DEAD_LETTER_BUS,
            self.dead_letter_bus.as_ref().map(|s| json!(s)),
        );
        put(MAX_MESSAGES, Some(json!(self.max_messages)));
        if self.qos == 1 && self.protocol == Protocol::V5 {
            put(SESSION_EXPIRY_SECS, Some(json!(self.session_expiry_secs)));
        }
        m
    }

    /// The client identifier of source `name`.
    pub fn client_id_of(&self, name: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("strait-{name}"))
    }
}

/// The user name and password of a definition (`username`, `credential`)
/// from the node's credentials; an error names the field.
pub fn login(
    username: Option<&str>,
    credential: Option<&str>,
    credentials: &MqttCredentials,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let Some(name) = credential else {
        return Ok((username.map(str::to_string), None));
    };
    let c = credentials.get(name).ok_or_else(|| {
        ConfigError::new(
            "credential",
            format!("{name:?} is not in this node's mqtt.credentials"),
        )
    })?;
    let user = username.map(str::to_string).or_else(|| c.username.clone());
    if user.is_none() {
        return Err(ConfigError::new(
            "username",
            format!(
                "a password without a user name: give `username` or mqtt.credentials.{name}.username"
            ),
        ));
    }
    Ok((user, Some(c.password.clone())))
}

/// [`crate::SourceKind::normalize`] of `mqtt`.
pub(crate) fn normalize(
    settings: &Map<String, Value>,
    envelope: &[&str],
) -> Result<Map<String, Value>, ConfigError> {
    Ok(MqttSourceConfig::parse(settings, Naming::Api, envelope)?.to_map(Naming::Api))
}

/// [`crate::SourceKind::build`] of `mqtt`.
pub(crate) fn build(
    name: &str,
    bus: &str,
    settings: &Map<String, Value>,
    ctx: &SourceContext,
    status: StatusCell,
) -> Result<SourceFuture, ConfigError> {
    let config = MqttSourceConfig::parse(settings, Naming::Api, &[])?;
    let (username, password) = login(
        config.username.as_deref(),
        config.credential.as_deref(),
        &ctx.mqtt_credentials,
    )?;
    Ok(Box::pin(run(
        name.to_string(),
        bus.to_string(),
        config,
        username,
        password,
        ctx.ingest.clone(),
        status,
    )))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the source shares between its steps.
struct Reader {
    name: String,
    bus: String,
    config: MqttSourceConfig,
    wrap: Wrap,
    ingest: Arc<dyn Ingest>,
    status: StatusCell,
    ack_delay: Option<Duration>,
}

/// Read `config`'s topic into `bus` until the future is dropped,
/// reconnecting with backoff. Progress and the last error go to `status`.
pub async fn run(
    name: String,
    bus: String,
    config: MqttSourceConfig,
    username: Option<String>,
    password: Option<String>,
    ingest: Arc<dyn Ingest>,
    status: StatusCell,
) {
    let endpoint = match Endpoint::parse(URL.api, &config.url) {
        Ok(e) => e,
        Err(e) => {
            status.update(|s| s.last_error = Some(e.to_string()));
            return;
        }
    };
    let options = ConnectOptions {
        protocol: config.protocol,
        client_id: config.client_id_of(&name),
        username,
        password,
        persistent: config.qos == 1,
        session_expiry: u32::try_from(config.session_expiry_secs).unwrap_or(u32::MAX),
        manual_acks: true,
        inflight: u16::try_from(config.max_messages).unwrap_or(100),
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        endpoint: endpoint.clone(),
    };
    let reader = Reader {
        wrap: Wrap {
            broker: endpoint.uri(),
            event_type: config.event_type.clone(),
        },
        name,
        bus,
        config,
        ingest,
        status,
        ack_delay: std::env::var(ACK_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis),
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        let err = reader.session(&options).await;
        reader.status.update(|s| s.last_error = Some(err.clone()));
        metrics::counter!("strait_mqtt_source_errors_total", "source" => reader.name.clone())
            .increment(1);
        tracing::warn!(source = %reader.name, error = %err, "MQTT source failed; reconnecting");
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

impl Reader {
    /// One connection: read and commit until it fails (the error).
    async fn session(&self, options: &ConnectOptions) -> String {
        let max = self.config.max_messages as usize;
        let (client, mut conn) = match crate::mqtt::connect(options, max + 16) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // QoS 1: the poller must never wait on the committer (which waits
        // for the poller to send its acks); what it can hold is bounded by
        // the broker's in-flight window (at most 65535 packet ids). QoS 0
        // has no acks: a small channel makes the connection the buffer.
        let capacity = if self.config.qos == 0 { max } else { 1 << 16 };
        let (tx, mut rx) = mpsc::channel::<Result<Received, String>>(capacity);
        let uri = self.wrap.broker.clone();
        let topic = self.config.topic.clone();
        let qos = self.config.qos as u8;
        let resubscribe = self.config.protocol == Protocol::V5 || qos == 0;
        let (name, bus) = (self.name.clone(), self.bus.clone());
        let status = self.status.clone();
        let sub_client = client.clone();
        let _poller = AbortOnDrop(tokio::spawn(async move {
            loop {
                let polled = conn.poll().await;
                let sent = match polled {
                    Ok(Polled::Connected { session_present }) => {
                        status.update(|s| s.last_error = None);
                        tracing::info!(source = %name, broker = %uri, topic = %topic, bus = %bus,
                            session_present, qos, "MQTT source connected");
                        // A kept session keeps its subscription: MQTT 3.1.1
                        // would send the retained messages again.
                        if (resubscribe || !session_present)
                            && let Err(e) = sub_client.subscribe(&topic, qos).await
                        {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        continue;
                    }
                    Ok(Polled::Subscribed { refused: Some(why) }) => Err(format!(
                        "the broker refused the subscription to {topic:?}: {why}"
                    )),
                    Ok(Polled::Message(m)) => Ok(m),
                    Ok(_) => continue,
                    Err(e) => Err(format!("MQTT connection to {uri}: {e}")),
                };
                let stop = sent.is_err();
                if tx.send(sent).await.is_err() || stop {
                    return;
                }
            }
        }));
        // Up to COMMITS_IN_FLIGHT batches commit at once (the node groups
        // them); their acks go out in the order the messages came.
        let mut in_flight = FuturesOrdered::new();
        loop {
            tokio::select! {
                done = in_flight.next(), if !in_flight.is_empty() => {
                    let acks: Vec<u16> = match done {
                        Some(Ok(acks)) => acks,
                        Some(Err(e)) => return e,
                        None => continue,
                    };
                    if acks.is_empty() {
                        continue;
                    }
                    match self.ack_delay {
                        Some(d) => {
                            // Fault injection (tests): ack later, off the loop.
                            let client = client.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(d).await;
                                for pkid in acks {
                                    let _ = client.ack(pkid).await;
                                }
                            });
                        }
                        None => {
                            for pkid in acks {
                                if let Err(e) = client.ack(pkid).await {
                                    return format!("acknowledging: {e}");
                                }
                            }
                        }
                    }
                }
                m = rx.recv(), if in_flight.len() < COMMITS_IN_FLIGHT => {
                    let first = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return e,
                        None => return "the MQTT connection ended".into(),
                    };
                    let mut batch = vec![first];
                    while batch.len() < max {
                        match rx.try_recv() {
                            Ok(Ok(m)) => batch.push(m),
                            // Messages of a connection that failed are not
                            // acknowledged: the broker sends them again on
                            // the next one.
                            Ok(Err(e)) => return e,
                            Err(_) => break,
                        }
                    }
                    in_flight.push_back(async move { self.commit(&batch).await });
                }
            }
        }
    }

    /// Each message of `batch` with its id, as an event or as poison
    /// (why).
    fn prepare(&self, batch: &[Received]) -> Vec<(String, Result<Value, String>)> {
        batch
            .iter()
            .map(|r| {
                let msg = Incoming {
                    topic: &r.topic,
                    content_type: r.content_type.as_deref(),
                    user_properties: &r.user_properties,
                    payload: &r.payload,
                };
                let id = if r.qos >= 1 {
                    mapping::message_id(&msg, r.pkid)
                } else {
                    uuid::Uuid::new_v4().to_string()
                };
                let converted = if self.config.non_cloud_events == NonCloudEvents::Reject
                    && mapping::mode(&msg) == Mode::Plain
                {
                    Err("not a CloudEvent (the source says nonCloudEvents: reject)".to_string())
                } else {
                    mapping::to_cloudevent(&msg, &id, &self.wrap).map_err(|e| e.to_string())
                };
                (id, converted)
            })
            .collect()
    }

    /// The offer of a poison message: its dead letter to the source's
    /// `deadLetterBus`, else a refusal (dropped, counted).
    fn poison_offer(&self, r: &Received, id: &str, reason: &str) -> Offer {
        let from = format!("{}/{}", self.wrap.broker, r.topic);
        match self.config.dead_letter_bus.as_ref().and_then(|dlb| {
            rejected_event(&self.name, &from, id, &r.payload, reason)
                .ok()
                .map(|e| (dlb, e))
        }) {
            Some((dlb, event)) => Offer::Event {
                bus: dlb.clone(),
                event: event.into_value(),
            },
            None => Offer::Refused {
                bus: self.bus.clone(),
            },
        }
    }

    fn rejected(&self, id: &str, reason: &str, dead_lettered: bool) {
        self.status.update(|s| s.rejected += 1);
        metrics::counter!("strait_mqtt_source_rejected_total", "source" => self.name.clone())
            .increment(1);
        if dead_lettered {
            tracing::warn!(source = %self.name, message = %id, reason = %reason, "MQTT message is not a valid event; dead-lettered");
        } else {
            tracing::warn!(source = %self.name, message = %id, reason = %reason, "MQTT message is not a valid event; dropped");
        }
    }

    /// Submit `offers`, again and again while the node cannot commit
    /// (the messages stay unacknowledged meanwhile).
    async fn submit(&self, mut make: impl FnMut() -> Vec<Offer>) -> Vec<IngestOutcome> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.ingest.submit(make()).await {
                Ok(o) => return o,
                Err(e) => {
                    self.status
                        .update(|s| s.last_error = Some(format!("commit failed: {e}")));
                    tracing::warn!(source = %self.name, error = %e, "commit failed; trying again (the messages stay unacknowledged)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Convert and commit `batch`; the packet ids to acknowledge (QoS 1
    /// messages stored now or before, or poison that is dead-lettered or
    /// dropped). An error leaves the batch unacknowledged (the broker sends
    /// it again after a reconnect).
    async fn commit(&self, batch: &[Received]) -> Result<Vec<u16>, String> {
        self.status.update(|s| s.received += batch.len() as u64);
        metrics::counter!("strait_mqtt_source_received_total", "source" => self.name.clone())
            .increment(batch.len() as u64);
        let prepared = self.prepare(batch);
        let outcomes = self
            .submit(|| {
                prepared
                    .iter()
                    .zip(batch)
                    .map(|((id, converted), r)| match converted {
                        Ok(event) => Offer::Event {
                            bus: self.bus.clone(),
                            event: event.clone(),
                        },
                        Err(reason) => self.poison_offer(r, id, reason),
                    })
                    .collect()
            })
            .await;
        // Events the node refuses (over its size limit, say) are poison
        // too: dead-lettered in a second batch before anything is acked.
        let mut refused_by_node = Vec::new();
        let mut acks = Vec::new();
        let dead_lettered = self.config.dead_letter_bus.is_some();
        for (outcome, (r, (id, converted))) in outcomes.iter().zip(batch.iter().zip(&prepared)) {
            match (outcome, converted.as_ref().err()) {
                (IngestOutcome::Accepted, None) => {
                    self.status.update(|s| s.committed += 1);
                }
                (IngestOutcome::Duplicate, None) => {}
                (IngestOutcome::Accepted | IngestOutcome::Duplicate, Some(reason))
                | (IngestOutcome::Refused, Some(reason)) => {
                    self.rejected(id, reason, dead_lettered);
                }
                (IngestOutcome::Invalid(e), None) => {
                    self.rejected(id, e, dead_lettered);
                    refused_by_node.push((r, id.clone(), e.clone()));
                }
                (IngestOutcome::Invalid(e), Some(_)) => {
                    // The dead letter itself is refused (too large): drop.
                    tracing::warn!(source = %self.name, message = %id, error = %e, "the dead letter was refused; dropped");
                }
                (IngestOutcome::NoSuchBus | IngestOutcome::Refused, _) => {
                    return Err(format!(
                        "bus `{}` (or the dead-letter bus) does not exist at this site; messages left unacknowledged",
                        self.bus
                    ));
                }
            }
            if r.qos >= 1 {
                acks.push(r.pkid);
            }
        }
        if !refused_by_node.is_empty() && self.config.dead_letter_bus.is_some() {
            let outcomes = self
                .submit(|| {
                    refused_by_node
                        .iter()
                        .map(|(r, id, e)| self.poison_offer(r, id, e))
                        .collect()
                })
                .await;
            if outcomes
                .iter()
                .any(|o| matches!(o, IngestOutcome::NoSuchBus))
            {
                return Err(
                    "the dead-letter bus does not exist at this site; messages left unacknowledged"
                        .into(),
                );
            }
        }
        Ok(acks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<MqttSourceConfig, ConfigError> {
        let m = v.as_object().cloned().unwrap_or_default();
        MqttSourceConfig::parse(&m, Naming::Api, &["type", "bus", "site"])
    }

    #[test]
    fn settings_are_checked_naming_the_field() {
        let c = parse(json!({"type": "mqtt", "bus": "b", "url": "mqtt://h:1883",
            "topic": "sensors/+/t"}))
        .expect("valid");
        assert_eq!(c.qos, 1);
        assert_eq!(c.protocol, Protocol::V5);
        assert_eq!(c.client_id_of("a.b"), "strait-a.b");
        let m = c.to_map(Naming::Api);
        assert_eq!(m["protocol"], "v5");
        assert_eq!(m["nonCloudEvents"], "wrap");
        assert_eq!(
            parse(Value::Object(m.clone())).map(|c| c.to_map(Naming::Api)),
            Ok(m),
            "the normal form reads back as itself"
        );
        let c = parse(json!({"url": "mqtts://h", "topic": "#", "qos": 0,
            "protocol": "v3.1.1", "nonCloudEvents": "reject", "deadLetterBus": "dlq"}))
        .expect("valid");
        assert_eq!(c.protocol, Protocol::V311);
        assert!(!c.to_map(Naming::Api).contains_key("sessionExpirySecs"));
        for (v, field) in [
            (json!({"url": "http://h", "topic": "a"}), "url"),
            (json!({"url": "mqtt://h", "topic": "a/#/b"}), "topic"),
            (json!({"url": "mqtt://h", "topic": "a", "qos": 2}), "qos"),
            (
                json!({"url": "mqtt://h", "topic": "a", "protocol": "v4"}),
                "protocol",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "clientId": "a b"}),
                "clientId",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "credential": "a b"}),
                "credential",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "nonCloudEvents": "x"}),
                "nonCloudEvents",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "maxMessages": 0}),
                "maxMessages",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "sessionExpirySecs": 5}),
                "sessionExpirySecs",
            ),
            (
                json!({"url": "mqtt://h", "topic": "a", "subject": "x"}),
                "subject",
            ),
            (json!({"url": "mqtt://h"}), "topic"),
        ] {
            assert_eq!(parse(v.clone()).expect_err("bad").field, field, "{v}");
        }
    }

    #[test]
    fn the_password_comes_from_a_named_credential() {
        let creds: MqttCredentials = Arc::new(
            [(
                "broker".to_string(),
                crate::mqtt::MqttCredential {
                    username: Some("svc".into()),
                    password: "pw".into(),
                },
            )]
            .into_iter()
            .collect(),
        );
        assert_eq!(
            login(None, Some("broker"), &creds),
            Ok((Some("svc".into()), Some("pw".into())))
        );
        assert_eq!(
            login(Some("other"), Some("broker"), &creds),
            Ok((Some("other".into()), Some("pw".into())))
        );
        assert_eq!(login(Some("u"), None, &creds), Ok((Some("u".into()), None)));
        assert_eq!(
            login(None, Some("missing"), &creds)
                .expect_err("unknown")
                .field,
            "credential"
        );
    }
}
