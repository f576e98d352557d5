//! The `kafka` source: its settings ([`KafkaSourceConfig`]) and the reader
//! ([`run`]): a consumer in a consumer group, reading in bounded batches;
//! a batch's offsets are committed to the group only once its events are
//! committed in the site's log (or found duplicates, or dead-lettered): at
//! least once. What is read again after a crash is dropped by the node's
//! deduplication on (source, id).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Map, Value, json};

use crate::kafka::DropOffThread;
use crate::kafka::mapping::{self, Incoming, Wrap};
use crate::sources::{
    DEAD_LETTER_BUS, Field, Fields, NON_CLOUD_EVENTS, Naming, NonCloudEvents, SourceContext,
    SourceFuture, StatusCell, read_dead_letter_bus, rejected_event,
};
use crate::{ConfigError, Ingest, IngestOutcome, Offer};

/// The `type` of a Kafka source.
pub const KIND: &str = "kafka";

/// Fault injection for tests only: the source waits this many ms between
/// the commit of a batch's events and the commit of its offsets, so a test
/// can kill the node in between.
const COMMIT_DELAY_ENV: &str = "STRAIT_TEST_KAFKA_COMMIT_DELAY_MS";

const BROKERS: Field = Field::new("brokers", "brokers");
const TOPIC: Field = Field::new("topic", "topic");
const TOPICS: Field = Field::new("topics", "topics");
const GROUP: Field = Field::new("group", "group");
const START_FROM: Field = Field::new("start_from", "startFrom");
const EVENT_TYPE: Field = Field::new("event_type", "eventType");
const MAX_MESSAGES: Field = Field::new("max_messages", "maxMessages");
const SESSION_TIMEOUT_MS: Field = Field::new("session_timeout_ms", "sessionTimeoutMs");
const TLS: Field = Field::new("tls", "tls");
const SASL: Field = Field::new("sasl", "sasl");

/// The settings of a Kafka source, in the order they are written.
pub const FIELDS: &[Field] = &[
    BROKERS,
    TOPIC,
    TOPICS,
    GROUP,
    START_FROM,
    EVENT_TYPE,
    NON_CLOUD_EVENTS,
    DEAD_LETTER_BUS,
    MAX_MESSAGES,
    SESSION_TIMEOUT_MS,
    TLS,
    SASL,
];

/// The `type` of a wrapped record when `eventType` is not set.
pub const DEFAULT_EVENT_TYPE: &str = "org.apache.kafka.record";
const DEFAULT_MAX_MESSAGES: i32 = 500;
const DEFAULT_SESSION_TIMEOUT_MS: i32 = 10_000;

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Records written from now on.
    Latest,
    /// Everything the topic still holds.
    Earliest,
}

impl StartFrom {
    fn as_str(self) -> &'static str {
        match self {
            StartFrom::Latest => "latest",
            StartFrom::Earliest => "earliest",
        }
    }
}

/// SASL authentication: the mechanism and the node-local credential that
/// holds the user name and password (node config `kafka.credentials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    /// `PLAIN` (the mechanism this build has: SCRAM and GSSAPI need
    /// librdkafka built with OpenSSL).
    pub mechanism: String,
    /// The name of the credential in this node's `kafka.credentials`.
    pub credential: String,
}

/// A SASL user name and password (node config `kafka.credentials.<name>`).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaCredential {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for KafkaCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Kafka credentials by name (node config `kafka.credentials`).
pub type KafkaCredentials = Arc<BTreeMap<String, KafkaCredential>>;

/// The settings of a Kafka source (see docs/adapters/kafka.md).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topics read (one or more).
    pub topics: Vec<String>,
    /// The consumer group (its committed offsets are the source's place).
    pub group: String,
    /// Where a group without committed offsets starts.
    pub start_from: StartFrom,
    /// The `type` of wrapped records.
    pub event_type: String,
    /// Refuse records that are not CloudEvents instead of wrapping them.
    pub reject_non_cloud_events: bool,
    /// Where refused records go (a dead letter event each), else dropped.
    pub dead_letter_bus: Option<String>,
    /// Most records read and committed together (1-10000): the bound on
    /// what the source holds.
    pub max_messages: i32,
    /// The consumer's session timeout, ms (6000-300000): how long the group
    /// waits for a consumer that stopped answering (a killed node) before
    /// handing its partitions to another.
    pub session_timeout_ms: i32,
    /// SASL authentication.
    pub sasl: Option<Sasl>,
}

/// Check a topic name: 1-249 characters of `A-Z a-z 0-9 . _ -`, not `.`
/// nor `..`.
pub fn validate_topic(field: &str, topic: &str) -> Result<(), ConfigError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{topic:?} is not a valid topic name (1-249 characters of A-Z a-z 0-9 . _ -)"),
        ))
    }
}

/// Check a broker list (`host:port` each, at least one).
pub fn validate_brokers(field: &str, brokers: &[String]) -> Result<(), ConfigError> {
    if brokers.is_empty() {
        return Err(ConfigError::new(field, "must name at least one broker"));
    }
    for b in brokers {
        let ok = b.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['/', ',', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(ConfigError::new(
                field,
                format!("{b:?} is not host:port (a broker address, without a scheme)"),
            ));
        }
    }
    Ok(())
}

/// The broker URI of wrapped events' `source`: `kafka://<first broker>`.
pub fn broker_uri(brokers: &[String]) -> String {
    format!("kafka://{}", brokers.first().map_or("", String::as_str))
}

fn string_list(fields: &Fields<'_>, field: Field) -> Result<Option<Vec<String>>, ConfigError> {
    let name = field.name(fields.naming());
    match fields.value(field) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(ConfigError::new(
                    name,
                    format!("must be a list of strings, got {other} in it"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(ConfigError::new(
            name,
            format!("must be a list of strings, got {other}"),
        )),
    }
}

impl KafkaSourceConfig {
    /// Read the settings (types and shape; [`Self::validate`] checks values).
    pub fn read(fields: &Fields<'_>) -> Result<KafkaSourceConfig, ConfigError> {
        let naming = fields.naming();
        let brokers = string_list(fields, BROKERS)?
            .ok_or_else(|| ConfigError::new(BROKERS.name(naming), "required field is missing"))?;
        let topics = match (fields.string(TOPIC)?, string_list(fields, TOPICS)?) {
            (Some(t), None) => vec![t],
            (None, Some(ts)) => ts,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    TOPICS.name(naming),
                    format!(
                        "give `{}` or `{}`, not both",
                        TOPIC.name(naming),
                        TOPICS.name(naming)
                    ),
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    TOPIC.name(naming),
                    format!(
                        "required field is missing (or `{}`, a list)",
                        TOPICS.name(naming)
                    ),
                ));
            }
        };
        let start_from = match fields.string(START_FROM)?.as_deref() {
            None | Some("latest") => StartFrom::Latest,
            Some("earliest") => StartFrom::Earliest,
            Some(other) => {
                return Err(ConfigError::new(
                    START_FROM.name(naming),
                    format!("{other:?} is not \"latest\" or \"earliest\""),
                ));
            }
        };
        let reject_non_cloud_events = NonCloudEvents::read(fields)? == NonCloudEvents::Reject;
        if fields.boolean(TLS)? {
            return Err(ConfigError::new(
                TLS.name(naming),
                "TLS to Kafka is not in this build (librdkafka is built without OpenSSL); \
                 reach the brokers over a trusted network or a TLS tunnel",
            ));
        }
        let sasl = match fields.value(SASL) {
            None => None,
            Some(Value::Object(m)) => {
                let at = |k: &str| format!("{}.{k}", SASL.name(naming));
                if let Some(k) = m
                    .keys()
                    .find(|k| !matches!(k.as_str(), "mechanism" | "credential"))
                {
                    return Err(ConfigError::new(
                        at(k),
                        "unknown field (allowed: mechanism, credential)",
                    ));
                }
                let s = |k: &str| match m.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(ConfigError::new(
                        at(k),
                        format!("must be a string, got {other}"),
                    )),
                };
                Some(Sasl {
                    mechanism: s("mechanism")?.unwrap_or_else(|| "PLAIN".into()),
                    credential: s("credential")?.ok_or_else(|| {
                        ConfigError::new(
                            at("credential"),
                            "required field is missing (a name in the node's kafka.credentials)",
                        )
                    })?,
                })
            }
            Some(other) => {
                return Err(ConfigError::new(
                    SASL.name(naming),
                    format!("must be an object {{mechanism, credential}}, got {other}"),
                ));
            }
        };
        Ok(KafkaSourceConfig {
            brokers,
            topics,
            group: fields.required_string(GROUP)?,
            start_from,
            event_type: fields
                .string(EVENT_TYPE)?
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into()),
            reject_non_cloud_events,
            dead_letter_bus: read_dead_letter_bus(fields)?,
            max_messages: fields.integer(MAX_MESSAGES, DEFAULT_MAX_MESSAGES)?,
            session_timeout_ms: fields.integer(SESSION_TIMEOUT_MS, DEFAULT_SESSION_TIMEOUT_MS)?,
            sasl,
        })
    }

    /// Read and check `map`, spelled as `naming`; keys of `envelope` are
    /// the node's.
    pub fn parse(
        map: &Map<String, Value>,
        naming: Naming,
        envelope: &[&str],
    ) -> Result<KafkaSourceConfig, ConfigError> {
        let c = Self::read(&Fields::new(map, naming, envelope, FIELDS)?)?;
        c.validate(naming)?;
        Ok(c)
    }

    /// Check every value (pure). Errors name the field as `naming` spells it.
    pub fn validate(&self, naming: Naming) -> Result<(), ConfigError> {
        let field = |f: Field| f.name(naming);
        validate_brokers(field(BROKERS), &self.brokers)?;
        if self.topics.is_empty() {
            return Err(ConfigError::new(
                field(TOPICS),
                "must name at least one topic",
            ));
        }
        for t in &self.topics {
            validate_topic(
                field(if self.topics.len() == 1 {
                    TOPIC
                } else {
                    TOPICS
                }),
                t,
            )?;
        }
        if self.group.is_empty()
            || self.group.len() > 255
            || self.group.chars().any(char::is_control)
        {
            return Err(ConfigError::new(
                field(GROUP),
                "must be 1-255 characters without control characters",
            ));
        }
        if self.event_type.is_empty() {
            return Err(ConfigError::new(field(EVENT_TYPE), "must not be empty"));
        }
        if !(1..=10_000).contains(&self.max_messages) {
            return Err(ConfigError::new(
                field(MAX_MESSAGES),
                "must be between 1 and 10000",
            ));
        }
        if !(6_000..=300_000).contains(&self.session_timeout_ms) {
            return Err(ConfigError::new(
                field(SESSION_TIMEOUT_MS),
                "must be between 6000 and 300000",
            ));
        }
        if let Some(s) = &self.sasl {
            let at = |k: &str| format!("{}.{k}", field(SASL));
            if s.mechanism != "PLAIN" {
                return Err(ConfigError::new(
                    at("mechanism"),
                    format!(
                        "{:?} is not supported: this build has PLAIN (SCRAM and GSSAPI need \
                         librdkafka built with OpenSSL)",
                        s.mechanism
                    ),
                ));
            }
            if !crate::sources::is_name(&s.credential) {
                return Err(ConfigError::new(
                    at("credential"),
                    format!("{:?} is not a credential name", s.credential),
                ));
            }
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
        put(BROKERS, Some(json!(self.brokers)));
        if self.topics.len() == 1 {
            put(TOPIC, Some(json!(self.topics[0])));
        } else {
            put(TOPICS, Some(json!(self.topics)));
        }
        put(GROUP, Some(json!(self.group)));
        put(START_FROM, Some(json!(self.start_from.as_str())));
        put(EVENT_TYPE, Some(json!(self.event_type)));
        put(
            NON_CLOUD_EVENTS,
            Some(json!(if self.reject_non_cloud_events {
                "reject"
            } else {
                "wrap"
            })),
        );
        put(
            DEAD_LETTER_BUS,
            self.dead_letter_bus.as_ref().map(|b| json!(b)),
        );
        put(MAX_MESSAGES, Some(json!(self.max_messages)));
        put(SESSION_TIMEOUT_MS, Some(json!(self.session_timeout_ms)));
        put(
            SASL,
            self.sasl
                .as_ref()
                .map(|s| json!({"mechanism": s.mechanism, "credential": s.credential})),
        );
        m
    }

    /// The librdkafka settings of the consumer (`password`: the SASL
    /// password, when the source has SASL).
    fn client_config(&self, password: Option<&KafkaCredential>) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("group.id", &self.group)
            .set("client.id", "strait")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", self.start_from.as_str())
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 4).to_string(),
            )
            // Also the rebalance timeout: how long a join waits for the
            // group's other members. A batch whose commit takes longer
            // makes the consumer leave the group and start again (what it
            // read again is deduplicated).
            .set("max.poll.interval.ms", self.session_timeout_ms.to_string())
            // What librdkafka prefetches: a bound, with the batch size, on
            // what the source holds in memory.
            .set("queued.max.messages.kbytes", "16384")
            .set("isolation.level", "read_committed")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "3");
        if let (Some(s), Some(cred)) = (&self.sasl, password) {
            c.set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanisms", &s.mechanism)
                .set("sasl.username", &cred.username)
                .set("sasl.password", &cred.password);
        }
        c
    }
}

/// [`crate::SourceKind::normalize`] of `kafka`.
pub(crate) fn normalize(
    settings: &Map<String, Value>,
    envelope: &[&str],
) -> Result<Map<String, Value>, ConfigError> {
    Ok(KafkaSourceConfig::parse(settings, Naming::Api, envelope)?.to_map(Naming::Api))
}

/// [`crate::SourceKind::build`] of `kafka`.
pub(crate) fn build(
    name: &str,
    bus: &str,
    settings: &Map<String, Value>,
    ctx: &SourceContext,
    status: StatusCell,
) -> Result<SourceFuture, ConfigError> {
    let config = KafkaSourceConfig::parse(settings, Naming::Api, &[])?;
    let credential = match &config.sasl {
        None => None,
        Some(s) => Some(
            ctx.kafka_credentials
                .get(&s.credential)
                .cloned()
                .ok_or_else(|| {
                    ConfigError::new(
                        "sasl.credential",
                        format!(
                            "{:?} is not in the kafka.credentials of {}",
                            s.credential, ctx.node
                        ),
                    )
                })?,
        ),
    };
    Ok(Box::pin(run(
        name.to_string(),
        bus.to_string(),
        config,
        credential,
        ctx.ingest.clone(),
        status,
    )))
}

/// Read `config`'s topics into `bus` until the future is dropped, starting
/// again (a new consumer, from the group's committed offsets) with backoff
/// after any failure. Progress and the last error go to `status`.
pub async fn run(
    name: String,
    bus: String,
    config: KafkaSourceConfig,
    credential: Option<KafkaCredential>,
    ingest: Arc<dyn Ingest>,
    status: StatusCell,
) {
    let wrap = Wrap {
        broker: broker_uri(&config.brokers),
        event_type: config.event_type.clone(),
        refuse: config.reject_non_cloud_events,
    };
    let commit_delay = std::env::var(COMMIT_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        let err = match read(
            &name,
            &bus,
            &config,
            credential.as_ref(),
            &wrap,
            &ingest,
            &status,
            commit_delay,
        )
        .await
        {
            Ok(()) => "the consumer ended".to_string(),
            Err(e) => e,
        };
        status.update(|s| s.last_error = Some(err.clone()));
        metrics::counter!("strait_kafka_source_errors_total", "source" => name.clone())
            .increment(1);
        tracing::warn!(source = %name, error = %err, "Kafka source failed; starting again from the committed offsets");
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One record read, owned.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    value: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
}

impl Record {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            headers: &self.headers,
            value: self.value.as_deref(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Start a consumer and read until an error.
#[allow(clippy::too_many_arguments)]
async fn read(
    name: &str,
    bus: &str,
    config: &KafkaSourceConfig,
    credential: Option<&KafkaCredential>,
    wrap: &Wrap,
    ingest: &Arc<dyn Ingest>,
    status: &StatusCell,
    commit_delay: Option<Duration>,
) -> Result<(), String> {
    let consumer: Arc<DropOffThread<StreamConsumer>> = Arc::new(DropOffThread::new(
        config
            .client_config(credential)
            .create()
            .map_err(|e| format!("creating the Kafka consumer failed: {e}"))?,
    ));
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("subscribing to {topics:?}: {e}"))?;
    tracing::info!(source = %name, topics = ?topics, group = %config.group, bus = %bus, "Kafka source started");
    let max = config.max_messages as usize;
    let mut first_batch = true;
    loop {
        let first = consumer
            .recv()
            .await
            .map_err(|e| format!("reading from {}: {e}", wrap.broker))?;
        let mut batch = vec![Record::of(&first)];
        drop(first);
        while batch.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(Record::of(&m)),
                Some(Err(e)) => return Err(format!("reading from {}: {e}", wrap.broker)),
                None => break,
            }
        }
        if first_batch {
            status.update(|s| s.last_error = None);
            first_batch = false;
        }
        let offsets = commit(name, bus, config, wrap, ingest, status, batch).await?;
        match commit_delay {
            None => consumer
                .commit(&offsets, CommitMode::Async)
                .map_err(|e| format!("committing offsets to group {:?}: {e}", config.group))?,
            Some(d) => {
                // Fault injection (tests): commit the offsets later, off
                // the reading loop.
                let consumer = consumer.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = consumer.commit(&offsets, CommitMode::Async);
                });
            }
        }
    }
}

/// Convert and commit one batch; the offsets to commit (one past the last
/// record of each partition) once every record is stored, a duplicate or
/// handed to the dead letter bus. Any other outcome is an error: nothing
/// is committed and the consumer starts again from the group's offsets.
async fn commit(
    name: &str,
    bus: &str,
    config: &KafkaSourceConfig,
    wrap: &Wrap,
    ingest: &Arc<dyn Ingest>,
    status: &StatusCell,
    batch: Vec<Record>,
) -> Result<TopicPartitionList, String> {
    status.update(|s| s.received += batch.len() as u64);
    metrics::counter!("strait_kafka_source_received_total", "source" => name.to_string())
        .increment(batch.len() as u64);
    let reject = |id: &str, e: &dyn std::fmt::Display| {
        status.update(|s| s.rejected += 1);
        metrics::counter!("strait_kafka_source_rejected_total", "source" => name.to_string())
            .increment(1);
        match &config.dead_letter_bus {
            Some(dl) => {
                tracing::warn!(source = %name, record = %id, error = %e, dead_letter_bus = %dl, "Kafka record is not a valid event; dead-lettered")
            }
            None => {
                tracing::warn!(source = %name, record = %id, error = %e, "Kafka record is not a valid event; dropped")
            }
        }
    };
    let dead_letter = |r: &Record, reason: &str| {
        let event = config.dead_letter_bus.as_ref().and_then(|dl| {
            rejected_event(
                name,
                &format!("{}/{}", wrap.broker, r.topic),
                &r.incoming().id(),
                r.value.as_deref().unwrap_or_default(),
                reason,
            )
            .ok()
            .map(|e| (dl.clone(), e.into_value()))
        });
        match event {
            Some((bus, event)) => Offer::Event { bus, event },
            None => Offer::Refused {
                bus: bus.to_string(),
            },
        }
    };
    let mut offers = Vec::with_capacity(batch.len());
    let mut refused = Vec::with_capacity(batch.len());
    for r in &batch {
        match mapping::to_cloudevent(&r.incoming(), wrap) {
            Ok(event) => {
                offers.push(Offer::Event {
                    bus: bus.to_string(),
                    event,
                });
                refused.push(false);
            }
            Err(e) => {
                reject(&r.incoming().id(), &e);
                offers.push(dead_letter(r, &e.to_string()));
                refused.push(true);
            }
        }
    }
    let outcomes = ingest
        .submit(offers)
        .await
        .map_err(|e| format!("commit failed: {e}"))?;
    // Events the node found invalid (too large, ...): dead-lettered in a
    // second submit, before the offsets move.
    let mut late = Vec::new();
    for ((r, outcome), was_refused) in batch.iter().zip(&outcomes).zip(&refused) {
        match outcome {
            IngestOutcome::Accepted if !was_refused => status.update(|s| s.committed += 1),
            IngestOutcome::Accepted | IngestOutcome::Duplicate => {}
            IngestOutcome::Refused if *was_refused => {}
            IngestOutcome::Invalid(e) if !was_refused => {
                reject(&r.incoming().id(), e);
                late.push(dead_letter(r, e));
            }
            IngestOutcome::Invalid(e) => {
                return Err(format!(
                    "the dead letter of record {} was refused: {e}",
                    r.incoming().id()
                ));
            }
            IngestOutcome::NoSuchBus | IngestOutcome::Refused => {
                let which = if *was_refused {
                    config.dead_letter_bus.as_deref().unwrap_or(bus)
                } else {
                    bus
                };
                return Err(format!(
                    "bus `{which}` does not exist at this site; offsets left uncommitted"
                ));
            }
        }
    }
    if !late.is_empty() {
        let n = late.len();
        let outcomes = ingest
            .submit(late)
            .await
            .map_err(|e| format!("commit failed: {e}"))?;
        if let Some(bad) = outcomes
            .iter()
            .find(|o| !o.stored() && **o != IngestOutcome::Refused)
        {
            return Err(format!(
                "{n} dead letter(s) not stored ({bad:?}); offsets left uncommitted"
            ));
        }
    }
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in &batch {
        let e = next.entry((&r.topic, r.partition)).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| format!("offset of {topic}/{partition}: {e}"))?;
    }
    Ok(tpl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<KafkaSourceConfig, ConfigError> {
        let m = v.as_object().cloned().unwrap_or_default();
        KafkaSourceConfig::parse(&m, Naming::Api, &["type", "bus", "site"])
    }

    #[test]
    fn settings_are_checked_naming_the_field() {
        let c = parse(json!({"type": "kafka", "bus": "b", "brokers": ["h:9092"],
            "topic": "orders", "group": "g"}))
        .expect("valid");
        assert_eq!(c.topics, vec!["orders"]);
        assert_eq!(c.start_from, StartFrom::Latest);
        assert_eq!(broker_uri(&c.brokers), "kafka://h:9092");
        let normal = c.to_map(Naming::Api);
        assert_eq!(
            Value::Object(normal.clone()),
            json!({"brokers": ["h:9092"], "topic": "orders", "group": "g", "startFrom": "latest",
                   "eventType": "org.apache.kafka.record", "nonCloudEvents": "wrap",
                   "maxMessages": 500, "sessionTimeoutMs": 10000})
        );
        assert_eq!(
            KafkaSourceConfig::parse(&normal, Naming::Api, &[]).expect("normal form reads"),
            c
        );
        let c = parse(
            json!({"brokers": ["a:1", "b:2"], "topics": ["x", "y"], "group": "g",
            "startFrom": "earliest", "nonCloudEvents": "reject", "deadLetterBus": "dl",
            "sasl": {"credential": "main"}}),
        )
        .expect("valid");
        assert_eq!(c.topics.len(), 2);
        assert!(c.reject_non_cloud_events);
        assert_eq!(c.sasl.as_ref().map(|s| s.mechanism.as_str()), Some("PLAIN"));
        for (v, field) in [
            (
                json!({"brokers": [], "topic": "t", "group": "g"}),
                "brokers",
            ),
            (
                json!({"brokers": ["kafka://h:1"], "topic": "t", "group": "g"}),
                "brokers",
            ),
            (
                json!({"brokers": "h:1", "topic": "t", "group": "g"}),
                "brokers",
            ),
            (json!({"brokers": ["h:1"], "group": "g"}), "topic"),
            (
                json!({"brokers": ["h:1"], "topic": "a b", "group": "g"}),
                "topic",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "topics": ["u"], "group": "g"}),
                "topics",
            ),
            (json!({"brokers": ["h:1"], "topic": "t"}), "group"),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g", "startFrom": "now"}),
                "startFrom",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g", "nonCloudEvents": "x"}),
                "nonCloudEvents",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g", "maxMessages": 0}),
                "maxMessages",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g", "tls": true}),
                "tls",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g", "sasl": {}}),
                "sasl.credential",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g",
                    "sasl": {"mechanism": "SCRAM-SHA-256", "credential": "c"}}),
                "sasl.mechanism",
            ),
            (
                json!({"brokers": ["h:1"], "topic": "t", "group": "g", "queue": "x"}),
                "queue",
            ),
        ] {
            assert_eq!(parse(v.clone()).expect_err("bad").field, field, "{v}");
        }
    }

    #[test]
    fn a_credential_prints_without_its_password() {
        let c = KafkaCredential {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
