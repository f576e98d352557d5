//! Commands replicated through a site's Raft log and their results.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One event to append: its bus, its dedup key and its JSON structured form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppendEntry {
    /// The bus the event was posted to.
    pub bus: String,
    /// CloudEvents `source` (dedup key part).
    pub source: String,
    /// CloudEvents `id` (dedup key part).
    pub id: String,
    /// The event, JSON structured form.
    pub event: Box<RawValue>,
}

/// A rule definition that link deliveries refer to by hash (see
/// [`crate::link::proto::spec_hash`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkSpec {
    /// The definition's hash, as the deliveries name it.
    pub hash: String,
    /// The rule definition (JSON).
    pub spec: Box<RawValue>,
}

/// A command in the site log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Create or update a bus.
    PutBus {
        /// Bus name.
        name: String,
        /// The bus definition (JSON).
        spec: serde_json::Value,
    },
    /// Delete a bus (refused while it has rules).
    DeleteBus {
        /// Bus name.
        name: String,
    },
    /// Create or replace a rule. New targets start at the head of the bus.
    PutRule {
        /// Bus name.
        bus: String,
        /// Rule name.
        name: String,
        /// The validated rule definition (JSON, as accepted by the API).
        spec: serde_json::Value,
        /// Ids of the rule's targets (for cursors).
        targets: Vec<String>,
    },
    /// Delete a rule and its targets' cursors.
    DeleteRule {
        /// Bus name.
        bus: String,
        /// Rule name.
        name: String,
    },
    /// Create or replace a source: something a site pulls events from
    /// (an SQS queue, ...). The definition names the bus its events are
    /// committed to (`bus`, which must exist) and the site that runs it
    /// (`site`); credentials are referenced by name, never included.
    PutSource {
        /// Source name.
        name: String,
        /// The validated source definition (JSON, as accepted by the API).
        spec: serde_json::Value,
    },
    /// Delete a source.
    DeleteSource {
        /// Source name.
        name: String,
    },
    /// Append events (group commit: many producers' events in one entry).
    Append {
        /// Ingestion time in ms since the epoch, chosen by the proposer.
        ingest_ms: u64,
        /// Dedup window in ms.
        dedup_window_ms: u64,
        /// The events (shared: the log cache, replication to every follower
        /// and the state machine read the same entries without copying them).
        entries: std::sync::Arc<Vec<AppendEntry>>,
    },
    /// Record dispatch progress and garbage-collect delivered events.
    Checkpoint {
        /// Time of the checkpoint in ms since the epoch (for retention).
        now_ms: u64,
        /// Events younger than this stay even when delivered.
        retention_ms: u64,
        /// Dedup entries older than this are swept (0: no sweep).
        #[serde(default)]
        dedup_window_ms: u64,
        /// (target key, next sequence to process) pairs.
        cursors: Vec<(String, u64)>,
        /// Delivery histories written since the last checkpoint (see
        /// [`crate::journal`]); a later entry for the same event, rule and
        /// target replaces the earlier one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        journal: Vec<crate::journal::JournalEntry>,
        /// Cumulative counters of the targets this site delivers (target
        /// key, or inbox key for deliveries made for another site).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        counts: Vec<(String, crate::journal::TargetCounts)>,
    },
    /// The site now runs the federation's shared configuration as of this
    /// control-group version (written after the buses and rules of that
    /// version; see [`crate::control`]).
    ConfigVersion {
        /// The control group's applied log index the site's configuration matches.
        version: u64,
    },
    /// Append deliveries owed to another site to its outbox.
    LinkEnqueue {
        /// The remote site.
        remote: String,
        /// The deliveries (JSON each; shared, like an append's events).
        items: std::sync::Arc<Vec<Box<RawValue>>>,
        /// Rule definitions the deliveries refer to by hash (kept with the
        /// outbox until it is drained).
        #[serde(default)]
        specs: Vec<LinkSpec>,
    },
    /// The remote site committed the outbox up to `upto`.
    LinkAcked {
        /// The remote site.
        remote: String,
        /// Cumulative acknowledgement.
        upto: u64,
    },
    /// A batch received from another site's outbox.
    LinkReceive {
        /// The sending site (as its certificate names it).
        origin: String,
        /// Sequence of the first item.
        first_seq: u64,
        /// The deliveries (shared, like an append's events).
        items: std::sync::Arc<Vec<Box<RawValue>>>,
        /// Rule definitions the deliveries refer to by hash (kept with the
        /// inbox until it is delivered).
        #[serde(default)]
        specs: Vec<LinkSpec>,
    },
    /// Create or update an archive of a bus (see
    /// [`crate::store::archive`]): `spec` holds `pattern` (optional),
    /// `retentionDays` (0: forever) and `description`. Events appended
    /// after it is applied that match are archived at every node of the
    /// site.
    PutArchive {
        /// The bus.
        bus: String,
        /// Archive name.
        name: String,
        /// The validated definition (JSON).
        spec: serde_json::Value,
    },
    /// Delete an archive and its archived events.
    DeleteArchive {
        /// The bus.
        bus: String,
        /// Archive name.
        name: String,
    },
    /// Start a replay (refused when a replay of that name exists): `spec`
    /// names the archive (`bus`, `archive`), the window (`startMs`,
    /// `endMs`) and optionally `rules`.
    StartReplay {
        /// Replay name.
        name: String,
        /// The validated definition (JSON).
        spec: serde_json::Value,
    },
    /// Update a replay's state and progress: the fields of `update`
    /// replace the replay's (refused once the replay is `COMPLETED`,
    /// `CANCELLED` or `FAILED`).
    UpdateReplay {
        /// Replay name.
        name: String,
        /// Fields to set (JSON object).
        update: serde_json::Value,
    },
    /// Deliveries to make again at this site (dead letters redriven):
    /// appended to the inbox of the pseudo-origin
    /// [`crate::store::links::REDRIVE_ORIGIN`], which the leader delivers
    /// in order like a link's inbox (its cursor is checkpointed, so a new
    /// leader goes on where the old one stopped). Sequences are given by
    /// the apply, so concurrent redrives never collide.
    Redrive {
        /// The deliveries (the link's delivery JSON each: bus, rule,
        /// target, the event's ingest ms, its trace context, the event).
        items: std::sync::Arc<Vec<Box<RawValue>>>,
        /// Rule definitions the deliveries refer to by hash.
        #[serde(default)]
        specs: Vec<LinkSpec>,
    },
    /// Ask for a target's cursor to be moved to `seq` (back or forward):
    /// recorded as pending; the leader's dispatcher restarts the target
    /// there and confirms with [`Command::SeekDone`].
    Seek {
        /// The target key (`bus/rule/target`).
        key: String,
        /// The sequence to go on from.
        seq: u64,
        /// The request's id (a later seek of the same target replaces it).
        id: String,
    },
    /// The leader's dispatcher restarted the target at `seq`: the cursor is
    /// set there (even backwards) and the pending seek `id` is done.
    SeekDone {
        /// The target key.
        key: String,
        /// The cursor.
        seq: u64,
        /// The pending seek's id.
        id: String,
    },
    /// Use a signature nonce (an Alibaba `x-acs-signature-nonce`, a SigV4
    /// signature) once in the whole site: answered `Ok` the first time,
    /// `Refused(NonceUsed)` when `key` is remembered from another request.
    /// Remembered until `until_ms`; every apply forgets a bounded number
    /// of nonces whose time passed `now_ms`.
    UseNonce {
        /// The nonce, prefixed by what it belongs to (`alibaba:<key id>:`,
        /// `sigv4:<key id>:`).
        key: String,
        /// An id of the request: the same request retried (a forward to a
        /// leader that applied it but whose answer was lost) is not a
        /// replay of itself.
        request: String,
        /// The proposer's clock, ms since the epoch (expiry of others).
        now_ms: u64,
        /// Until when this nonce is remembered, ms since the epoch.
        until_ms: u64,
    },
}

impl Command {
    /// The command's name, as it is spelled in the log (for logs and
    /// metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutBus { .. } => "put_bus",
            Command::DeleteBus { .. } => "delete_bus",
            Command::PutRule { .. } => "put_rule",
            Command::DeleteRule { .. } => "delete_rule",
            Command::PutSource { .. } => "put_source",
            Command::DeleteSource { .. } => "delete_source",
            Command::Append { .. } => "append",
            Command::Checkpoint { .. } => "checkpoint",
            Command::ConfigVersion { .. } => "config_version",
            Command::LinkEnqueue { .. } => "link_enqueue",
            Command::LinkAcked { .. } => "link_acked",
            Command::LinkReceive { .. } => "link_receive",
            Command::PutArchive { .. } => "put_archive",
            Command::DeleteArchive { .. } => "delete_archive",
            Command::StartReplay { .. } => "start_replay",
            Command::UpdateReplay { .. } => "update_replay",
            Command::Redrive { .. } => "redrive",
            Command::Seek { .. } => "seek",
            Command::SeekDone { .. } => "seek_done",
            Command::UseNonce { .. } => "use_nonce",
        }
    }
}

/// What a link command answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkAnswer {
    /// Deliveries were given these outbox sequences.
    Enqueued {
        /// First sequence.
        first: u64,
        /// Last sequence.
        last: u64,
    },
    /// Everything up to `upto` is committed (outbox: acknowledged).
    Ack {
        /// Cumulative sequence.
        upto: u64,
    },
    /// A batch left a gap; the inbox needs `expected` next.
    Gap {
        /// Next sequence needed.
        expected: u64,
    },
}

/// Result of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendOutcome {
    /// Stored with this sequence number.
    Accepted(u64),
    /// A repeat of (bus, source, id) inside the dedup window.
    Duplicate,
    /// The bus does not exist.
    NoSuchBus,
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Done.
    Ok,
    /// Per-entry outcomes of an append, in order.
    Appended(Vec<AppendOutcome>),
    /// The named bus, rule, source or link does not exist.
    #[serde(deserialize_with = "legacy::not_found")]
    NotFound(NotFound),
    /// The command conflicts with the current state.
    #[serde(deserialize_with = "legacy::conflict")]
    Conflict(Conflict),
    /// A link command's answer.
    Link(LinkAnswer),
    /// A configuration change refused for a reason of its own kind.
    Refused(Refusal),
}

/// Why a configuration change was refused (typed, so that the API maps it
/// to a code without reading the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// A rule's dead letter names a bus that does not exist.
    #[error(
        "{field}: dead-letter bus `{bus}` does not exist (create it first: PUT /v1/buses/{bus})"
    )]
    NoDeadLetterBus {
        /// The rule's field (`targets[0].deadLetter.bus`, `deadLetter.bus`).
        field: String,
        /// The missing bus.
        bus: String,
    },
    /// A replay of this name exists already.
    #[error("replay `{name}` exists already (its state: {state}); pick another name")]
    ReplayExists {
        /// The replay.
        name: String,
        /// Its state.
        state: String,
    },
    /// The replay is over and cannot change any more.
    #[error("replay `{name}` is {state} and cannot change any more")]
    ReplayFinished {
        /// The replay.
        name: String,
        /// Its state.
        state: String,
    },
    /// A signature nonce was used before (a replayed request).
    #[error("the signature nonce was already used (replayed request)")]
    NonceUsed,
    /// The bus is the dead-letter bus of rules (`bus/rule` each).
    #[error(
        "bus `{bus}` is the dead-letter bus of rules: {} (change or delete them first)", rules.join(", ")
    )]
    BusIsDeadLetter {
        /// The bus.
        bus: String,
        /// The rules naming it, `bus/rule` each.
        rules: Vec<String>,
    },
}

/// What a command named that does not exist (typed, so that the API maps
/// it to a code without reading the message; the message is the same on
/// every replica, as the state machine's answers must be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum NotFound {
    /// No bus of this name.
    #[error("bus `{name}` does not exist")]
    Bus {
        /// The bus.
        name: String,
    },
    /// No rule of this name on the bus.
    #[error("rule `{name}` does not exist on bus `{bus}`")]
    Rule {
        /// The bus.
        bus: String,
        /// The rule.
        name: String,
    },
    /// No source of this name.
    #[error("source `{name}` does not exist")]
    Source {
        /// The source.
        name: String,
    },
    /// No archive of this name on the bus.
    #[error("archive `{name}` does not exist on bus `{bus}`")]
    Archive {
        /// The bus.
        bus: String,
        /// The archive.
        name: String,
    },
    /// No replay of this name.
    #[error("replay `{name}` does not exist")]
    Replay {
        /// The replay.
        name: String,
    },
    /// No target with this key (`bus/rule/target`).
    #[error("target `{key}` does not exist")]
    Target {
        /// The target key.
        key: String,
    },
    /// No outbox to this site (a link acknowledgement from a site this one
    /// never sent to).
    #[error("no link to site `{remote}`")]
    Link {
        /// The remote site.
        remote: String,
    },
}

/// How a command conflicts with the current state (typed, like
/// [`NotFound`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// A bus cannot be deleted while rules are on it.
    #[error("bus `{bus}` still has rules: {}", rules.join(", "))]
    BusHasRules {
        /// The bus.
        bus: String,
        /// Its rules, by name, in order.
        rules: Vec<String>,
    },
    /// A bus cannot be deleted while sources commit to it.
    #[error("bus `{bus}` still has sources: {}", sources.join(", "))]
    BusHasSources {
        /// The bus.
        bus: String,
        /// The sources naming it, in order.
        sources: Vec<String>,
    },
}

/// Decoding of the answers earlier versions gave as text.
///
/// A [`CommandResponse`] crosses the network as JSON when a write is
/// forwarded to the leader (`network_quic::forward_write`); the leader of
/// the control group may be at a site that still runs an earlier version,
/// whose `NotFound` and `Conflict` carried their message only. Those
/// messages had fixed forms, the same as the [`std::fmt::Display`] of the
/// typed answers, so they are read back into the typed answer here, and
/// only here.
mod legacy {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    use super::{Conflict, NotFound};

    /// The typed form or an earlier version's text.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Text(String),
        Typed(T),
    }

    pub(super) fn not_found<'de, D: Deserializer<'de>>(d: D) -> Result<NotFound, D::Error> {
        match Either::<NotFound>::deserialize(d)? {
            Either::Typed(t) => Ok(t),
            Either::Text(m) => not_found_text(&m)
                .ok_or_else(|| D::Error::custom(format!("unknown NotFound answer: {m}"))),
        }
    }

    pub(super) fn conflict<'de, D: Deserializer<'de>>(d: D) -> Result<Conflict, D::Error> {
        match Either::<Conflict>::deserialize(d)? {
            Either::Typed(t) => Ok(t),
            Either::Text(m) => conflict_text(&m)
                .ok_or_else(|| D::Error::custom(format!("unknown Conflict answer: {m}"))),
        }
    }

    /// `s` with `prefix` before and `` ` `` after it: the quoted name.
    fn quoted<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
        s.strip_prefix(prefix)?.strip_suffix('`')
    }

    fn not_found_text(m: &str) -> Option<NotFound> {
        if let Some(name) = m
            .strip_suffix(" does not exist")
            .and_then(|s| quoted(s, "bus `"))
        {
            return Some(NotFound::Bus { name: name.into() });
        }
        if let Some(name) = m
            .strip_suffix(" does not exist")
            .and_then(|s| quoted(s, "source `"))
        {
            return Some(NotFound::Source { name: name.into() });
        }
        if let Some((name, bus)) =
            quoted(m, "rule `").and_then(|s| s.split_once("` does not exist on bus `"))
        {
            return Some(NotFound::Rule {
                bus: bus.into(),
                name: name.into(),
            });
        }
        quoted(m, "no link to site `").map(|remote| NotFound::Link {
            remote: remote.into(),
        })
    }

    fn conflict_text(m: &str) -> Option<Conflict> {
        let (bus, rest) = m.strip_prefix("bus `")?.split_once("` still has ")?;
        let list = |l: &str| l.split(", ").map(str::to_string).collect();
        if let Some(rules) = rest.strip_prefix("rules: ") {
            return Some(Conflict::BusHasRules {
                bus: bus.into(),
                rules: list(rules),
            });
        }
        rest.strip_prefix("sources: ")
            .map(|sources| Conflict::BusHasSources {
                bus: bus.into(),
                sources: list(sources),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: &CommandResponse) -> CommandResponse {
        let json = serde_json::to_vec(r).expect("encode");
        serde_json::from_slice(&json).expect("decode")
    }

    #[test]
    fn typed_answers_round_trip_and_keep_their_messages() {
        let answers = [
            CommandResponse::NotFound(NotFound::Bus { name: "b".into() }),
            CommandResponse::NotFound(NotFound::Rule {
                bus: "b".into(),
                name: "r".into(),
            }),
            CommandResponse::NotFound(NotFound::Source { name: "s".into() }),
            CommandResponse::NotFound(NotFound::Link {
                remote: "eu".into(),
            }),
            CommandResponse::Conflict(Conflict::BusHasRules {
                bus: "b".into(),
                rules: vec!["r1".into(), "r2".into()],
            }),
            CommandResponse::Conflict(Conflict::BusHasSources {
                bus: "b".into(),
                sources: vec!["s1".into()],
            }),
        ];
        for a in &answers {
            assert_eq!(&round_trip(a), a);
        }
        let text = |r: &CommandResponse| match r {
            CommandResponse::NotFound(n) => n.to_string(),
            CommandResponse::Conflict(c) => c.to_string(),
            other => panic!("{other:?}"),
        };
        let texts: Vec<String> = answers.iter().map(text).collect();
        assert_eq!(
            texts,
            [
                "bus `b` does not exist",
                "rule `r` does not exist on bus `b`",
                "source `s` does not exist",
                "no link to site `eu`",
                "bus `b` still has rules: r1, r2",
                "bus `b` still has sources: s1",
            ]
        );
        // An earlier version's text form reads back as the typed answer.
        for (a, t) in answers.iter().zip(&texts) {
            let kind = if matches!(a, CommandResponse::NotFound(_)) {
                "NotFound"
            } else {
                "Conflict"
            };
            let old = serde_json::json!({ kind: t });
            let decoded: CommandResponse = serde_json::from_value(old).expect("decode old");
            assert_eq!(&decoded, a);
        }
        let unknown = serde_json::json!({"NotFound": "something else"});
        assert!(serde_json::from_value::<CommandResponse>(unknown).is_err());
    }
}
