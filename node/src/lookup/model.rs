//! The documents of the event lookup (`GET /v1/buses/{bus}/events/{id}`)
//! and the events list (`GET /v1/buses/{bus}/events`), as the API writes
//! them and the CLI (and other sites) read them back.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strait_federation::journal::{Attempt, AttemptOutcome, DeliveryStatus, JournalEntry};

/// An RFC 3339 time (UTC, milliseconds) of `ms` since the epoch.
pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One event and what became of its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lookup {
    /// The CloudEvent as stored (structured JSON).
    pub event: Value,
    /// The trace its spans are in (32 hex digits).
    pub trace_id: String,
    /// The site the event entered at.
    pub site: String,
    /// The bus it was posted to.
    pub bus: String,
    /// Its sequence on the bus at `site`.
    pub sequence: u64,
    /// When `site` committed it (RFC 3339).
    pub ingest_time: String,
    /// The same, ms since the epoch (the key of its journal entries at
    /// every site).
    pub ingest_ms: u64,
    /// One per target of every enabled rule of the bus that matches the
    /// event, ordered by rule and target.
    pub deliveries: Vec<DeliveryView>,
    /// Its redrives at this site (dead letters sent again, see
    /// docs/replay.md): the latest per rule and target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrives: Vec<DeliveryView>,
    /// Sites that hold deliveries of the event and did not answer.
    pub unreachable_sites: Vec<String>,
}

/// Where one delivery of an event stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// The site that delivers it (the target's `site`, else the event's).
    pub site: String,
    /// The rule.
    pub rule: String,
    /// The target's id in the rule.
    pub target: String,
    /// `pending`, `retrying`, `delivered`, `dead-lettered`, `dropped` or
    /// `in-transit`.
    pub status: DeliveryStatus,
    /// The attempts known (the first and the latest of many; see
    /// `omittedAttempts`).
    pub attempts: Vec<AttemptView>,
    /// Attempts made but not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_attempts: u32,
    /// Why it was dead-lettered or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// When it ended (RFC 3339).
    pub time: String,
    /// `delivered` or `failed`.
    pub outcome: AttemptOutcome,
    /// The HTTP status the target answered, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        AttemptView {
            time: rfc3339(a.time_ms),
            outcome: a.outcome,
            http_status: a.http_status,
            error: a.error.clone(),
        }
    }
}

impl DeliveryView {
    /// The view of a journal entry written at `site`.
    pub fn from_entry(site: &str, e: &JournalEntry) -> DeliveryView {
        DeliveryView {
            site: site.to_string(),
            rule: e.rule.clone(),
            target: e.target.clone(),
            status: e.status,
            attempts: e.attempts.iter().map(AttemptView::from).collect(),
            omitted_attempts: e.omitted_attempts,
            reason: e.reason.clone(),
        }
    }
}

/// A page of a bus's events (`GET /v1/buses/{bus}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    /// The events, oldest first.
    pub events: Vec<EventSummary>,
    /// Where the next page starts (`cursor=`); absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One event of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// CloudEvents `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// CloudEvents `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Sequence on the bus.
    pub sequence: u64,
    /// When this site committed it (RFC 3339).
    pub ingest_time: String,
}
