//! The `nats` source: its settings ([`NatsSourceConfig`]) and the reader
//! ([`run`]). With a `stream`, a durable JetStream pull consumer read in
//! bounded batches, each message acknowledged only once its event is
//! committed (or found a duplicate): at least once. Without one, a core
//! NATS subscription: at most once (core NATS has no redelivery; what
//! arrives while the node is down, or what the client drops as a slow
//! consumer, is lost).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value, json};

use crate::nats::mapping::{self, Incoming, Origin, Wrap};
use crate::sources::{
    DEAD_LETTER_BUS, Field, Fields, NON_CLOUD_EVENTS, Naming, NonCloudEvents, SourceContext,
    SourceFuture, StatusCell, read_dead_letter_bus, rejected_event,
};
use crate::{ConfigError, Ingest, IngestOutcome, Offer};

/// The `type` of a NATS source.
pub const KIND: &str = "nats";

/// Fault injection for tests only: the source waits this many ms between
/// commit and ack, so a test can kill the node in between.
const ACK_DELAY_ENV: &str = "STRAIT_TEST_NATS_ACK_DELAY_MS";

const URL: Field = Field::new("url", "url");
const SUBJECT: Field = Field::new("subject", "subject");
const STREAM: Field = Field::new("stream", "stream");
const DURABLE: Field = Field::new("durable", "durable");
const EVENT_TYPE: Field = Field::new("event_type", "eventType");
const MAX_MESSAGES: Field = Field::new("max_messages", "maxMessages");
const ACK_WAIT_SECS: Field = Field::new("ack_wait_secs", "ackWaitSecs");

/// The settings of a NATS source, in the order they are written.
pub const FIELDS: &[Field] = &[
    URL,
    SUBJECT,
    STREAM,
    DURABLE,
    EVENT_TYPE,
    MAX_MESSAGES,
    ACK_WAIT_SECS,
    NON_CLOUD_EVENTS,
    DEAD_LETTER_BUS,
];

/// The `type` of a wrapped message when `eventType` is not set.
pub const DEFAULT_EVENT_TYPE: &str = "io.nats.message";
const DEFAULT_MAX_MESSAGES: i32 = 100;
const DEFAULT_ACK_WAIT_SECS: i32 = 30;

/// The settings of a NATS source (see docs/adapters/nats.md).
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSourceConfig {
    /// `nats://host:port` (or `tls://`); credentials in the URL are used to
    /// connect and left out of event sources.
    pub url: String,
    /// The subject (wildcards allowed); with a stream, the consumer's filter.
    pub subject: String,
    /// The JetStream stream to read durably; absent: core NATS.
    pub stream: Option<String>,
    /// The durable consumer's name (default `strait-<source name>`).
    pub durable: Option<String>,
    /// The `type` of wrapped messages.
    pub event_type: String,
    /// Most messages read and committed together (1-1000): the bound on
    /// what the source holds.
    pub max_messages: i32,
    /// JetStream: how long a message handed out waits for its ack before
    /// the server redelivers it, seconds (1-3600).
    pub ack_wait_secs: i32,
    /// What to do with a message that is not a CloudEvent.
    pub non_cloud_events: NonCloudEvents,
    /// Where messages that are not valid events go (absent: dropped).
    pub dead_letter_bus: Option<String>,
}

/// Whether `s` is a NATS name (stream, consumer): 1-64 of `A-Z a-z 0-9 _ -`.
fn is_nats_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check a NATS server URL (`nats://` or `tls://`, a host); the error names
/// `field`. Returns the broker URI without credentials.
pub fn broker_uri(field: &str, url: &str) -> Result<String, ConfigError> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::new(field, format!("{url:?} is not a valid URL: {e}")))?;
    if u.scheme() != "nats" && u.scheme() != "tls" {
        return Err(ConfigError::new(
            field,
            format!(
                "scheme {:?} is not supported (use nats://host:port or tls://host:port)",
                u.scheme()
            ),
        ));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConfigError::new(field, format!("{url:?} has no host")))?;
    Ok(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

/// Check a NATS subject (`wildcards`: whether `*` and `>` may be used).
pub fn validate_subject(field: &str, subject: &str, wildcards: bool) -> Result<(), ConfigError> {
    let bad =
        |why: &str| ConfigError::new(field, format!("{subject:?} is not a valid subject: {why}"));
    if subject.is_empty() {
        return Err(bad("empty"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(bad("empty token"));
        }
        if t.contains(['*', '>']) {
            if !wildcards {
                return Err(bad("wildcards are not allowed here"));
            }
            if (*t != "*" && *t != ">") || (*t == ">" && i + 1 != tokens.len()) {
                return Err(bad("`*` must be a whole token, `>` the last one"));
            }
        }
    }
    Ok(())
}

impl NatsSourceConfig {
    /// Read the settings (types only; [`Self::validate`] checks values).
    pub fn read(fields: &Fields<'_>) -> Result<NatsSourceConfig, ConfigError> {
        Ok(NatsSourceConfig {
            url: fields.required_string(URL)?,
            subject: fields.required_string(SUBJECT)?,
            stream: fields.string(STREAM)?,
            durable: fields.string(DURABLE)?,
            event_type: fields
                .string(EVENT_TYPE)?
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into()),
            max_messages: fields.integer(MAX_MESSAGES, DEFAULT_MAX_MESSAGES)?,
            ack_wait_secs: fields.integer(ACK_WAIT_SECS, DEFAULT_ACK_WAIT_SECS)?,
            non_cloud_events: NonCloudEvents::read(fields)?,
            dead_letter_bus: read_dead_letter_bus(fields)?,
        })
    }

    /// Read and check `map`, spelled as `naming`; keys of `envelope` are
    /// the node's.
    pub fn parse(
        map: &Map<String, Value>,
        naming: Naming,
        envelope: &[&str],
    ) -> Result<NatsSourceConfig, ConfigError> {
        let c = Self::read(&Fields::new(map, naming, envelope, FIELDS)?)?;
        c.validate(naming)?;
        Ok(c)
    }

    /// Check every value (pure). Errors name the field as `naming` spells it.
    pub fn validate(&self, naming: Naming) -> Result<(), ConfigError> {
        let field = |f: Field| f.name(naming);
        broker_uri(field(URL), &self.url)?;
        validate_subject(field(SUBJECT), &self.subject, true)?;
        if let Some(s) = &self.stream
            && !is_nats_name(s)
        {
            return Err(ConfigError::new(
                field(STREAM),
                format!("{s:?} is not a valid stream name (1-64 characters of A-Z a-z 0-9 _ -)"),
            ));
        }
        if let Some(d) = &self.durable {
            if self.stream.is_none() {
                return Err(ConfigError::new(
                    field(DURABLE),
                    format!(
                        "a durable consumer needs `{}` (a JetStream stream)",
                        field(STREAM)
                    ),
                ));
            }
            if !is_nats_name(d) {
                return Err(ConfigError::new(
                    field(DURABLE),
                    format!(
                        "{d:?} is not a valid consumer name (1-64 characters of A-Z a-z 0-9 _ -)"
                    ),
                ));
            }
        }
        if self.event_type.is_empty() {
            return Err(ConfigError::new(field(EVENT_TYPE), "must not be empty"));
        }
        if !(1..=1000).contains(&self.max_messages) {
            return Err(ConfigError::new(
                field(MAX_MESSAGES),
                "must be between 1 and 1000",
            ));
        }
        if !(1..=3600).contains(&self.ack_wait_secs) {
            return Err(ConfigError::new(
                field(ACK_WAIT_SECS),
                "must be between 1 and 3600",
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
        put(SUBJECT, Some(json!(self.subject)));
        put(STREAM, self.stream.as_ref().map(|s| json!(s)));
        put(DURABLE, self.durable.as_ref().map(|s| json!(s)));
        put(EVENT_TYPE, Some(json!(self.event_type)));
        put(MAX_MESSAGES, Some(json!(self.max_messages)));
        if self.stream.is_some() {
            put(ACK_WAIT_SECS, Some(json!(self.ack_wait_secs)));
        }
        if self.non_cloud_events != NonCloudEvents::Wrap {
            put(
                NON_CLOUD_EVENTS,
                Some(json!(self.non_cloud_events.as_str())),
            );
        }
        put(
            DEAD_LETTER_BUS,
            self.dead_letter_bus.as_ref().map(|s| json!(s)),
        );
        m
    }

    /// The durable consumer of source `name`.
    pub fn durable_name(&self, name: &str) -> String {
        self.durable
            .clone()
            .unwrap_or_else(|| format!("strait-{}", name.replace('.', "_")))
    }
}

/// [`crate::SourceKind::normalize`] of `nats`.
pub(crate) fn normalize(
    settings: &Map<String, Value>,
    envelope: &[&str],
) -> Result<Map<String, Value>, ConfigError> {
    Ok(NatsSourceConfig::parse(settings, Naming::Api, envelope)?.to_map(Naming::Api))
}

/// [`crate::SourceKind::build`] of `nats`.
pub(crate) fn build(
    name: &str,
    bus: &str,
    settings: &Map<String, Value>,
    ctx: &SourceContext,
    status: StatusCell,
) -> Result<SourceFuture, ConfigError> {
    let config = NatsSourceConfig::parse(settings, Naming::Api, &[])?;
    Ok(Box::pin(run(
        name.to_string(),
        bus.to_string(),
        config,
        ctx.ingest.clone(),
        status,
    )))
}

/// A message read, with what acks it (JetStream).
struct Read {
    subject: String,
    headers: Vec<(String, String)>,
    payload: bytes::Bytes,
    jetstream: Option<(jetstream::Message, String, u64)>,
}

fn headers_of(m: &async_nats::Message) -> Vec<(String, String)> {
    m.headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(k, vs)| {
            vs.iter()
                .map(move |v| (k.to_string(), v.as_str().to_string()))
        })
        .collect()
}

/// Read `config`'s subject into `bus` until the future is dropped,
/// reconnecting with backoff. Progress and the last error go to `status`.
pub async fn run(
    name: String,
    bus: String,
    config: NatsSourceConfig,
    ingest: Arc<dyn Ingest>,
    status: StatusCell,
) {
    let wrap = Wrap {
        broker: broker_uri(URL.api, &config.url).unwrap_or_else(|_| config.url.clone()),
        event_type: config.event_type.clone(),
        reject: config.non_cloud_events == NonCloudEvents::Reject,
    };
    let ack_delay = std::env::var(ACK_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut backoff = Duration::from_millis(200);
    loop {
        let err = match read(&name, &bus, &config, &wrap, &ingest, &status, ack_delay).await {
            Ok(()) => "the subscription ended".to_string(),
            Err(e) => e,
        };
        status.update(|s| s.last_error = Some(err.clone()));
        metrics::counter!("strait_nats_source_errors_total", "source" => name.clone()).increment(1);
        tracing::warn!(source = %name, error = %err, "NATS source failed; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Connect and read until an error.
async fn read(
    name: &str,
    bus: &str,
    config: &NatsSourceConfig,
    wrap: &Wrap,
    ingest: &Arc<dyn Ingest>,
    status: &StatusCell,
    ack_delay: Option<Duration>,
) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
        .await
        .map_err(|e| format!("connecting to {} failed: {e}", wrap.broker))?;
    let max = config.max_messages as usize;
    let to = Buses {
        bus,
        dead_letter: config.dead_letter_bus.as_deref(),
    };
    match &config.stream {
        Some(stream) => {
            let js = jetstream::new(client);
            let s = js
                .get_stream(stream)
                .await
                .map_err(|e| format!("JetStream stream {stream:?}: {e}"))?;
            let durable = config.durable_name(name);
            let mut consumer: jetstream::consumer::PullConsumer = s
                .get_or_create_consumer(
                    &durable,
                    pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: config.subject.clone(),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(config.ack_wait_secs as u64),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("JetStream consumer {durable:?}: {e}"))?;
            // An existing durable keeps its own filter: reading it would
            // read another subject than the definition says.
            let info = consumer
                .info()
                .await
                .map_err(|e| format!("JetStream consumer {durable:?}: {e}"))?;
            if info.config.filter_subject != config.subject {
                return Err(format!(
                    "the durable consumer {durable:?} of stream {stream:?} filters {:?}, not {:?}: \
                     name another `durable` or delete that consumer",
                    info.config.filter_subject, config.subject
                ));
            }
            // Pulls at most `max` at a time: the server holds the rest.
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(max)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(10))
                .messages()
                .await
                .map_err(|e| format!("JetStream pull: {e}"))?;
            tracing::info!(source = %name, stream = %stream, consumer = %durable, bus = %bus, "NATS JetStream source started");
            status.update(|s| s.last_error = None);
            loop {
                let Some(first) = messages.next().await else {
                    return Ok(());
                };
                let mut batch = vec![first];
                while batch.len() < max {
                    match messages.next().now_or_never() {
                        Some(Some(m)) => batch.push(m),
                        _ => break,
                    }
                }
                let mut reads = Vec::with_capacity(batch.len());
                for m in batch {
                    let m = m.map_err(|e| format!("JetStream pull: {e}"))?;
                    let (stream, seq) = m
                        .info()
                        .map(|i| (i.stream.to_string(), i.stream_sequence))
                        .map_err(|e| format!("JetStream message without metadata: {e}"))?;
                    reads.push(Read {
                        subject: m.subject.to_string(),
                        headers: headers_of(&m.message),
                        payload: m.payload.clone(),
                        jetstream: Some((m, stream, seq)),
                    });
                }
                commit(name, to, wrap, ingest, status, reads, ack_delay).await;
            }
        }
        None => {
            let mut sub = client
                .subscribe(config.subject.clone())
                .await
                .map_err(|e| format!("subscribing to {:?}: {e}", config.subject))?;
            tracing::info!(source = %name, subject = %config.subject, bus = %bus, "NATS core source started (at most once)");
            status.update(|s| s.last_error = None);
            loop {
                let Some(first) = sub.next().await else {
                    return Ok(());
                };
                let mut batch = vec![first];
                while batch.len() < max {
                    match sub.next().now_or_never() {
                        Some(Some(m)) => batch.push(m),
                        _ => break,
                    }
                }
                let reads = batch
                    .into_iter()
                    .map(|m| Read {
                        subject: m.subject.to_string(),
                        headers: headers_of(&m),
                        payload: m.payload.clone(),
                        jetstream: None,
                    })
                    .collect();
                commit(name, to, wrap, ingest, status, reads, ack_delay).await;
            }
        }
    }
}

/// Where a source's events go: its bus, and its dead-letter bus if any.
#[derive(Debug, Clone, Copy)]
struct Buses<'a> {
    bus: &'a str,
    dead_letter: Option<&'a str>,
}

/// What one offer of a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An event of the message.
    Event,
    /// A message refused and dropped (no dead-letter bus).
    Refused,
    /// A message refused, as a dead letter to the dead-letter bus.
    DeadLetter,
}

/// Convert and commit one batch, then ack what is stored (now or before);
/// a message that is not a valid event goes to the dead-letter bus (acked
/// once that is committed) or, without one, is terminated (never
/// redelivered); both count as rejected. On a commit failure nothing is
/// acked (JetStream redelivers).
async fn commit(
    name: &str,
    to: Buses<'_>,
    wrap: &Wrap,
    ingest: &Arc<dyn Ingest>,
    status: &StatusCell,
    reads: Vec<Read>,
    ack_delay: Option<Duration>,
) {
    status.update(|s| s.received += reads.len() as u64);
    metrics::counter!("strait_nats_source_received_total", "source" => name.to_string())
        .increment(reads.len() as u64);
    let reject = |id: &str, e: &dyn std::fmt::Display| {
        status.update(|s| s.rejected += 1);
        metrics::counter!("strait_nats_source_rejected_total", "source" => name.to_string())
            .increment(1);
        tracing::warn!(source = %name, message = %id, error = %e, dead_letter_bus = ?to.dead_letter, "NATS message is not a valid event; dead-lettered, or dropped (terminated) without a dead-letter bus");
    };
    let bus = to.bus;
    let mut kinds = Vec::with_capacity(reads.len());
    let mut offers = Vec::with_capacity(reads.len());
    let mut ids = Vec::with_capacity(reads.len());
    for r in &reads {
        let core_id = uuid::Uuid::new_v4().to_string();
        let origin = match &r.jetstream {
            Some((_, stream, seq)) => Origin::JetStream {
                stream,
                sequence: *seq,
            },
            None => Origin::Core { id: &core_id },
        };
        ids.push(origin.id());
        let msg = Incoming {
            subject: &r.subject,
            headers: &r.headers,
            payload: &r.payload,
        };
        match mapping::to_cloudevent(&msg, origin, wrap) {
            Ok(event) => {
                kinds.push(Kind::Event);
                offers.push(Offer::Event {
                    bus: bus.to_string(),
                    event,
                })
            }
            Err(e) => {
                reject(&origin.id(), &e);
                let from = format!("{}/{}", wrap.broker.trim_end_matches('/'), r.subject);
                let dead = to.dead_letter.and_then(|dl| {
                    rejected_event(name, &from, &origin.id(), &r.payload, &e.to_string())
                        .ok()
                        .map(|ev| (dl, ev))
                });
                match dead {
                    Some((dl, ev)) => {
                        kinds.push(Kind::DeadLetter);
                        offers.push(Offer::Event {
                            bus: dl.to_string(),
                            event: ev.into_value(),
                        });
                    }
                    None => {
                        kinds.push(Kind::Refused);
                        offers.push(Offer::Refused {
                            bus: bus.to_string(),
                        });
                    }
                }
            }
        }
    }
    let outcomes = match ingest.submit(offers).await {
        Ok(o) => o,
        Err(e) => {
            status.update(|s| s.last_error = Some(format!("commit failed: {e}")));
            tracing::warn!(source = %name, error = %e, "commit failed; JetStream messages are redelivered after the ack wait");
            return;
        }
    };
    let mut acks = Vec::new();
    for (((r, outcome), kind), id) in reads.into_iter().zip(outcomes).zip(kinds).zip(&ids) {
        let stored = matches!(outcome, IngestOutcome::Accepted | IngestOutcome::Duplicate);
        if outcome == IngestOutcome::Accepted && kind == Kind::Event {
            status.update(|s| s.committed += 1);
        }
        if let (IngestOutcome::Invalid(e), Kind::Event) = (&outcome, kind) {
            reject(id, e);
        }
        if let (IngestOutcome::Invalid(e), Kind::DeadLetter) = (&outcome, kind) {
            tracing::warn!(source = %name, message = %id, error = %e, "the dead letter of a NATS message was refused; dropped (terminated)");
        }
        let Some((m, _, _)) = r.jetstream else {
            continue;
        };
        match outcome {
            _ if stored => acks.push((m, AckKind::Ack)),
            IngestOutcome::Invalid(_) => acks.push((m, AckKind::Term)),
            IngestOutcome::Refused if kind == Kind::Refused => acks.push((m, AckKind::Term)),
            _ => {
                let missing = match kind {
                    Kind::DeadLetter => to.dead_letter.unwrap_or(bus),
                    Kind::Event | Kind::Refused => bus,
                };
                status.update(|s| {
                    s.last_error = Some(format!(
                        "bus `{missing}` does not exist at this site; messages left unacknowledged"
                    ))
                });
            }
        }
    }
    let name = name.to_string();
    let ack = async move {
        for (m, kind) in acks {
            if let Err(e) = m.ack_with(kind).await {
                tracing::warn!(source = %name, error = %e, "JetStream ack failed; the message comes back and is dropped as a duplicate");
            }
        }
    };
    match ack_delay {
        Some(d) => {
            // Fault injection (tests): ack later, off the reading loop.
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                ack.await;
            });
        }
        None => ack.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<NatsSourceConfig, ConfigError> {
        let m = v.as_object().cloned().unwrap_or_default();
        NatsSourceConfig::parse(&m, Naming::Api, &["type", "bus", "site"])
    }

    #[test]
    fn settings_are_checked_naming_the_field() {
        let c = parse(
            json!({"type": "nats", "bus": "b", "url": "nats://u:p@h:4222",
            "subject": "orders.>", "stream": "ORDERS"}),
        )
        .expect("valid");
        assert_eq!(c.durable_name("a.b"), "strait-a_b");
        assert_eq!(
            broker_uri("url", &c.url).expect("uri"),
            "nats://h:4222",
            "credentials are not part of the source"
        );
        for (v, field) in [
            (json!({"url": "http://h", "subject": "a"}), "url"),
            (json!({"url": "nats://h", "subject": "a b"}), "subject"),
            (json!({"url": "nats://h", "subject": "a.>.b"}), "subject"),
            (
                json!({"url": "nats://h", "subject": "a", "durable": "d"}),
                "durable",
            ),
            (
                json!({"url": "nats://h", "subject": "a", "stream": "a.b"}),
                "stream",
            ),
            (
                json!({"url": "nats://h", "subject": "a", "maxMessages": 0}),
                "maxMessages",
            ),
            (
                json!({"url": "nats://h", "subject": "a", "queue": "x"}),
                "queue",
            ),
            (json!({"url": "nats://h"}), "subject"),
        ] {
            assert_eq!(parse(v.clone()).expect_err("bad").field, field, "{v}");
        }
    }
}
