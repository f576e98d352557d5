//! Dead letters read back and redriven, and target seeks (docs/replay.md).
//!
//! - **Listing** reads the delivery journal ([`SiteState::dead_letters`]):
//!   every delivery of this site's own events that was dead-lettered or
//!   dropped, with its reason and attempts, for as long as the journal
//!   keeps it (`retention_secs`).
//! - **Redrive** reads each dead letter's event from its bus (where it is
//!   kept for `retention_secs` too), and proposes the deliveries
//!   ([`Command::Redrive`]) into the inbox of the pseudo-origin
//!   [`REDRIVE_ORIGIN`]: the leader's inbound worker delivers them to the
//!   named target of the same rule, without routing again, with retries and
//!   dead letters like any delivery, and journals them (origin
//!   `~redrive`). The event is sent as stored: same id, same `traceparent`.
//!   The inbox cursor is checkpointed, so a new leader goes on where the
//!   old one stopped (at-least-once).
//! - **Seek** finds the first event of the bus ingested at or after a time
//!   and proposes [`Command::Seek`]; the leader's dispatcher restarts the
//!   target there and confirms it ([`Command::SeekDone`]).
//!
//! The pure parts (request checks, documents, deliveries) are apart from
//! the state reads and writes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use strait_federation::journal::{DeliveryStatus, JournalEntry};
use strait_federation::link::proto::spec_hash;
use strait_federation::store::links::REDRIVE_ORIGIN;
use strait_federation::store::state::target_key;
use strait_federation::{
    Command, CommandResponse, DeadLetter, DeadLetterCursor, DeadLetterQuery, EventFilter, LinkSpec,
    SiteState,
};

use crate::cluster::Writer;
use crate::links::Delivery;
use crate::lookup::model::{AttemptView, DeliveryView, rfc3339};
use crate::trace::TraceParent;
use crate::util::now_ms;

/// Most dead letters one redrive request sends.
pub const MAX_REDRIVE: usize = 10_000;
/// Deliveries per [`Command::Redrive`] (one Raft entry each).
pub const REDRIVE_CHUNK: usize = 500;
/// Journal rows one listing page reads at most.
pub const LIST_SCAN_CAP: usize = 200_000;

/// Why a dead-letter or seek request failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The request names something wrong (the field, and why).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// The bus, rule or target does not exist.
    #[error("{0}")]
    NotFound(String),
    /// None of the ids asked for is a dead letter of the target.
    #[error("no dead letter of {target} has the id(s) {}", ids.join(", "))]
    NoSuchDeadLetters {
        /// The target key.
        target: String,
        /// The ids.
        ids: Vec<String>,
    },
    /// A seek to a time before what the bus still holds.
    #[error(
        "time {time}: the bus keeps events only from {oldest} (retention_secs {retention_secs}); events before that are gone. Seek to {oldest} or later (or give \"allowPartial\": true to re-deliver the {count} events still held)"
    )]
    BeforeRetention {
        /// The time asked for.
        time: String,
        /// The oldest event's ingest time.
        oldest: String,
        /// The site's retention.
        retention_secs: u64,
        /// Events that would be re-delivered.
        count: u64,
    },
    /// Reading the state or writing through Raft failed.
    #[error("{0}")]
    Unavailable(String),
}

fn invalid(field: &str, message: impl Into<String>) -> RedriveError {
    RedriveError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One dead letter as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// The bus the event was posted to.
    pub bus: String,
    /// The rule.
    pub rule: String,
    /// The target that gave up.
    pub target: String,
    /// `dead-lettered` (stored on the dead-letter bus or sent to the
    /// dead-letter endpoint) or `dropped` (no destination, or it failed).
    pub status: DeliveryStatus,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When the event was ingested (RFC 3339).
    pub ingest_time: String,
    /// When it was given up on: its last attempt (RFC 3339; the ingest
    /// time when it was never attempted).
    pub time: String,
    /// The attempts kept.
    pub attempt_log: Vec<AttemptView>,
    /// Its redrives to targets of the rule (the latest per target).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrives: Vec<DeliveryView>,
}

impl DeadLetterView {
    /// The view of a journal dead letter.
    pub fn from_dead_letter(site: &str, d: &DeadLetter) -> DeadLetterView {
        let e = &d.entry;
        let last = e.attempts.last().map(|a| a.time_ms).unwrap_or(e.ingest_ms);
        DeadLetterView {
            id: e.id.clone(),
            source: e.source.clone(),
            bus: e.bus.clone(),
            rule: e.rule.clone(),
            target: e.target.clone(),
            status: e.status,
            reason: e.reason.clone(),
            attempts: (e.attempts.len() as u32).saturating_add(e.omitted_attempts),
            ingest_time: rfc3339(e.ingest_ms),
            time: rfc3339(last),
            attempt_log: e.attempts.iter().map(AttemptView::from).collect(),
            redrives: d
                .redrives
                .iter()
                .map(|r| DeliveryView::from_entry(site, r))
                .collect(),
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    /// The dead letters, oldest event first.
    pub dead_letters: Vec<DeadLetterView>,
    /// Where the next page starts (`next=`); absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The dead letters of `bus/rule` (one target or all), a page of at most
/// `limit` from `next` (a token of an earlier page).
pub fn list(
    state: &SiteState,
    site: &str,
    bus: &str,
    rule: &str,
    target: Option<&str>,
    limit: usize,
    next: Option<&str>,
) -> Result<DeadLetterList, RedriveError> {
    check_target(state, bus, rule, target)?;
    let after = match next {
        Some(t) => Some(
            DeadLetterCursor::parse(t)
                .ok_or_else(|| invalid("next", format!("{t:?} is not a token of this list")))?,
        ),
        None => None,
    };
    let q = DeadLetterQuery { bus, rule, target };
    let page = state
        .dead_letters(&q, after.as_ref(), limit, LIST_SCAN_CAP)
        .map_err(|e| RedriveError::Unavailable(format!("state read failed: {e}")))?;
    Ok(DeadLetterList {
        dead_letters: page
            .entries
            .iter()
            .map(|d| DeadLetterView::from_dead_letter(site, d))
            .collect(),
        next: page.next.map(|c| c.token()),
    })
}

/// The bus, rule and (if named) target exist.
fn check_target(
    state: &SiteState,
    bus: &str,
    rule: &str,
    target: Option<&str>,
) -> Result<Value, RedriveError> {
    let view = state.view();
    if !view.buses.contains_key(bus) {
        return Err(RedriveError::NotFound(format!(
            "bus `{bus}` does not exist"
        )));
    }
    let Some(spec) = view.rules.get(&(bus.to_string(), rule.to_string())) else {
        return Err(RedriveError::NotFound(format!(
            "rule `{rule}` does not exist on bus `{bus}`"
        )));
    };
    if let Some(t) = target
        && !target_ids(spec).iter().any(|id| id == t)
    {
        return Err(RedriveError::NotFound(format!(
            "rule `{bus}/{rule}` has no target `{t}` (its targets: {})",
            target_ids(spec).join(", ")
        )));
    }
    Ok(spec.clone())
}

fn target_ids(spec: &Value) -> Vec<String> {
    spec.get("targets")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A redrive request: `{"ids": [...]}` or `{"all": true}`, and `"to"`
/// (another target of the rule; default: the dead letters' own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveRequest {
    /// The event ids to redrive; `None`: all of them (not redriven yet).
    pub ids: Option<Vec<String>>,
    /// The target to deliver to.
    pub to: Option<String>,
}

impl RedriveRequest {
    /// Check a request body.
    pub fn parse(body: &Value) -> Result<RedriveRequest, RedriveError> {
        let Some(m) = body.as_object() else {
            return Err(invalid(
                "body",
                "must be a JSON object: {\"ids\": [...]} or {\"all\": true}, optionally with \"to\"",
            ));
        };
        if let Some(k) = m
            .keys()
            .find(|k| !matches!(k.as_str(), "ids" | "all" | "to"))
        {
            return Err(invalid(k, "unknown field (allowed: ids, all, to)"));
        }
        let all = match m.get("all") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("all", "must be true or false")),
        };
        let ids = match m.get("ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => {
                let mut ids = Vec::with_capacity(a.len());
                for (i, v) in a.iter().enumerate() {
                    match v.as_str() {
                        Some(s) if !s.is_empty() => ids.push(s.to_string()),
                        _ => {
                            return Err(invalid(
                                &format!("ids[{i}]"),
                                "must be a non-empty string (an event id)",
                            ));
                        }
                    }
                }
                if ids.is_empty() {
                    return Err(invalid("ids", "must not be empty"));
                }
                if ids.len() > MAX_REDRIVE {
                    return Err(invalid(
                        "ids",
                        format!("at most {MAX_REDRIVE} ids per request"),
                    ));
                }
                Some(ids)
            }
            Some(_) => return Err(invalid("ids", "must be an array of event ids")),
        };
        match (&ids, all) {
            (Some(_), true) => return Err(invalid("all", "give either `ids` or `all`, not both")),
            (None, false) => {
                return Err(invalid(
                    "ids",
                    "name the dead letters to redrive (`ids`) or give \"all\": true",
                ));
            }
            _ => {}
        }
        let to = match m.get("to") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return Err(invalid("to", "must be a target id of the rule")),
        };
        Ok(RedriveRequest { ids, to })
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveResult {
    /// The target the events were sent to.
    pub to: String,
    /// Events committed for redelivery (ids).
    pub redriven: Vec<String>,
    /// Ids asked for that are not dead letters of the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<String>,
    /// Dead letters whose event is no longer stored (past retention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
    /// More dead letters remain than one request sends ([`MAX_REDRIVE`]).
    #[serde(default)]
    pub more: bool,
}

/// A redrive's delivery of one stored event (its JSON as stored, ingested
/// at `ingest_ms`) to `target` of `bus/rule`.
pub fn delivery(
    bus: &str,
    rule: &str,
    target: &str,
    rule_hash: &str,
    ingest_ms: u64,
    json: &[u8],
) -> Result<Box<RawValue>, String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("the stored event: {e}"))?;
    let event =
        RawValue::from_string(text.to_string()).map_err(|e| format!("the stored event: {e}"))?;
    // The hop's context: the event's `publish` span (derived from the
    // event, as every delivery's parent is), so the `receive` span and the
    // delivery attempts hang in the event's trace.
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let attr = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let traceparent = TraceParent::parse(attr("traceparent"))
        .map(|tp| crate::telemetry::publish_span_of(&tp, attr("source"), attr("id")).0)
        .unwrap_or_else(TraceParent::new_root);
    let d = Delivery {
        rule_hash: Some(rule_hash.to_string()),
        bus: bus.to_string(),
        rule: rule.to_string(),
        rule_spec: None,
        target: target.to_string(),
        ingest_ms,
        enqueued_ms: now_ms(),
        hops: 0,
        traceparent: traceparent.to_string(),
        event,
    };
    serde_json::value::to_raw_value(&d).map_err(|e| e.to_string())
}

/// Whether `all` leaves this dead letter alone: a redrive of it to `to` is
/// delivered or still under way.
fn redriven_already(d: &DeadLetter, to: &str) -> bool {
    d.redrives.iter().any(|r| {
        r.target == to
            && !matches!(
                r.status,
                DeliveryStatus::DeadLettered | DeliveryStatus::Dropped
            )
    })
}

/// Redrive dead letters of `bus/rule/target` (see the module's text).
pub async fn redrive(
    state: &SiteState,
    writer: &Writer,
    site: &str,
    bus: &str,
    rule: &str,
    target: &str,
    req: RedriveRequest,
) -> Result<RedriveResult, RedriveError> {
    let spec = check_target(state, bus, rule, Some(target))?;
    let to = req.to.clone().unwrap_or_else(|| target.to_string());
    let t_spec = spec
        .get("targets")
        .and_then(Value::as_array)
        .and_then(|ts| {
            ts.iter()
                .find(|t| t.get("id").and_then(Value::as_str) == Some(to.as_str()))
        })
        .ok_or_else(|| {
            invalid(
                "to",
                format!(
                    "rule `{bus}/{rule}` has no target `{to}` (its targets: {})",
                    target_ids(&spec).join(", ")
                ),
            )
        })?;
    if let Some(s) = t_spec.get("site").and_then(Value::as_str)
        && s != site
    {
        return Err(invalid(
            "to",
            format!("target `{to}` is delivered at site {s}: redrive it there"),
        ));
    }
    let raw_spec = serde_json::value::to_raw_value(&spec)
        .map_err(|e| RedriveError::Unavailable(format!("the rule cannot be encoded: {e}")))?;
    let hash = spec_hash(raw_spec.get().as_bytes());
    // The dead letters asked for, from the journal.
    let mut wanted: Option<std::collections::HashSet<String>> =
        req.ids.as_ref().map(|ids| ids.iter().cloned().collect());
    let q = DeadLetterQuery {
        bus,
        rule,
        target: Some(target),
    };
    let mut picked: Vec<DeadLetter> = Vec::new();
    let mut after: Option<DeadLetterCursor> = None;
    let mut result = RedriveResult {
        to: to.clone(),
        ..RedriveResult::default()
    };
    loop {
        let page = state
            .dead_letters(&q, after.as_ref(), 1000, LIST_SCAN_CAP)
            .map_err(|e| RedriveError::Unavailable(format!("state read failed: {e}")))?;
        for d in page.entries {
            let take = match &mut wanted {
                Some(w) => w.remove(&d.entry.id),
                None => !redriven_already(&d, &to),
            };
            if !take {
                continue;
            }
            if picked.len() >= MAX_REDRIVE {
                result.more = true;
                break;
            }
            picked.push(d);
        }
        match page.next {
            Some(n) if !result.more && wanted.as_ref().is_none_or(|w| !w.is_empty()) => {
                after = Some(n)
            }
            _ => break,
        }
    }
    if let Some(w) = wanted {
        let mut missing: Vec<String> = w.into_iter().collect();
        missing.sort();
        if picked.is_empty() {
            return Err(RedriveError::NoSuchDeadLetters {
                target: target_key(bus, rule, target),
                ids: missing,
            });
        }
        result.not_found = missing;
    }
    // The events, from their bus.
    let mut items = Vec::new();
    for d in &picked {
        let e = &d.entry;
        let found = state
            .find_event(bus, Some(&e.source), &e.id)
            .map_err(|x| RedriveError::Unavailable(format!("state read failed: {x}")))?;
        let Some(ev) = found
            .iter()
            .find(|f| f.ingest_ms == e.ingest_ms)
            .or(found.first())
        else {
            result.gone.push(e.id.clone());
            continue;
        };
        match delivery(bus, rule, &to, &hash, ev.ingest_ms, &ev.json) {
            Ok(item) => {
                items.push(item);
                result.redriven.push(e.id.clone());
            }
            Err(why) => {
                tracing::warn!(bus, rule, id = e.id, why, "dead letter cannot be redriven");
                result.gone.push(e.id.clone());
            }
        }
    }
    let specs = vec![LinkSpec {
        hash: hash.clone(),
        spec: raw_spec,
    }];
    let mut sent = 0usize;
    for chunk in items.chunks(REDRIVE_CHUNK) {
        let cmd = Command::Redrive {
            items: std::sync::Arc::new(chunk.to_vec()),
            specs: specs.clone(),
        };
        match writer.write(cmd).await {
            Ok(_) => sent += chunk.len(),
            Err(e) => {
                result.redriven.truncate(sent);
                return Err(RedriveError::Unavailable(format!(
                    "redrive not written after {sent} of {} events: {e}",
                    items.len()
                )));
            }
        }
    }
    metrics::counter!("strait_redriven_total", "bus" => bus.to_string(), "rule" => rule.to_string(), "target" => to.clone())
        .increment(sent as u64);
    Ok(result)
}

/// A seek request: `{"time": RFC 3339, "allowPartial": bool?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekRequest {
    /// The time, ms since the epoch.
    pub time_ms: u64,
    /// Seek even when events after `time` are gone (re-deliver what is held).
    pub allow_partial: bool,
}

impl SeekRequest {
    /// Check a request body.
    pub fn parse(body: &Value) -> Result<SeekRequest, RedriveError> {
        let Some(m) = body.as_object() else {
            return Err(invalid(
                "body",
                "must be a JSON object: {\"time\": RFC 3339}",
            ));
        };
        if let Some(k) = m
            .keys()
            .find(|k| !matches!(k.as_str(), "time" | "allowPartial"))
        {
            return Err(invalid(k, "unknown field (allowed: time, allowPartial)"));
        }
        let time = m.get("time").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                "time",
                "required: an RFC 3339 time, e.g. 2026-01-02T03:04:05Z",
            )
        })?;
        let t = chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|e| invalid("time", format!("{time:?} is not an RFC 3339 time: {e}")))?;
        let time_ms = u64::try_from(t.timestamp_millis())
            .map_err(|_| invalid("time", format!("{time:?} is before 1970")))?;
        let allow_partial = match m.get("allowPartial") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("allowPartial", "must be true or false")),
        };
        Ok(SeekRequest {
            time_ms,
            allow_partial,
        })
    }
}

/// What a seek did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeekResult {
    /// The target key.
    pub target: String,
    /// The cursor before (the next sequence it was to process).
    pub from: u64,
    /// The new cursor.
    pub to: u64,
    /// Events of the bus the target goes through again (back) or skips
    /// (forward), counted up to 1,000,000.
    pub events: u64,
    /// The time asked for (RFC 3339).
    pub time: String,
}

/// Move `bus/rule/target`'s cursor to the first event ingested at or after
/// the request's time (see the module's text).
pub async fn seek(
    state: &SiteState,
    writer: &Writer,
    retention_secs: u64,
    bus: &str,
    rule: &str,
    target: &str,
    req: SeekRequest,
) -> Result<SeekResult, RedriveError> {
    check_target(state, bus, rule, Some(target))?;
    let key = target_key(bus, rule, target);
    let (from, next_seq) = {
        let view = state.view();
        (
            view.cursors.get(&key).copied().unwrap_or(view.next_seq),
            view.next_seq,
        )
    };
    let read = |e: openraft::StorageError<u64>| {
        RedriveError::Unavailable(format!("state read failed: {e}"))
    };
    let first = |since: Option<u64>| {
        let filter = EventFilter {
            source: None,
            event_type: None,
            since_ms: since,
            until_ms: None,
        };
        state
            .list_events(bus, &filter, 0, 1, 1_000_000)
            .map(|p| p.events.into_iter().next())
            .map_err(read)
    };
    let oldest = first(None)?;
    let to = match first(Some(req.time_ms))? {
        Some(e) => e.seq,
        None => next_seq,
    };
    let horizon = now_ms().saturating_sub(retention_secs.saturating_mul(1000));
    if let Some(o) = &oldest
        && req.time_ms < o.ingest_ms
        && req.time_ms < horizon
        && !req.allow_partial
    {
        let count = state.count_events_from(bus, o.seq, 1_000_000).unwrap_or(0);
        return Err(RedriveError::BeforeRetention {
            time: rfc3339(req.time_ms),
            oldest: rfc3339(o.ingest_ms),
            retention_secs,
            count: count.saturating_sub(state.count_events_from(bus, from, 1_000_000).unwrap_or(0)),
        });
    }
    let (lo, hi) = (to.min(from), to.max(from));
    let events = state
        .count_events_from(bus, lo, 1_000_000)
        .unwrap_or(0)
        .saturating_sub(state.count_events_from(bus, hi, 1_000_000).unwrap_or(0));
    let id = uuid::Uuid::new_v4().to_string();
    let cmd = Command::Seek {
        key: key.clone(),
        seq: to,
        id,
    };
    match writer.write(cmd).await {
        Ok(CommandResponse::Ok) => {}
        Ok(CommandResponse::NotFound(n)) => return Err(RedriveError::NotFound(n.to_string())),
        Ok(other) => {
            return Err(RedriveError::Unavailable(format!(
                "unexpected answer: {other:?}"
            )));
        }
        Err(e) => return Err(RedriveError::Unavailable(e.to_string())),
    }
    Ok(SeekResult {
        target: key,
        from,
        to,
        events,
        time: rfc3339(req.time_ms),
    })
}

/// A dead letter as a dead-letter bus holds it (the event with its
/// `deadletter*` extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BusDeadLetter {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// The rule that gave it up, `bus/rule` (`deadletterrule`).
    pub rule: String,
    /// The target that gave it up (`deadlettertarget`).
    pub target: String,
    /// Why (`deadletterreason`).
    pub reason: String,
    /// Attempts made (`deadletterattempts`).
    pub attempts: u64,
    /// When the dead-letter bus committed it (RFC 3339).
    pub time: String,
    /// Its sequence on the dead-letter bus.
    pub sequence: u64,
}

/// A page of a dead-letter bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BusDeadLetterList {
    /// The dead letters, in the bus's order.
    pub dead_letters: Vec<BusDeadLetter>,
    /// Where the next page starts (`cursor=`); absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The dead letter an event of a dead-letter bus is (`None`: it carries no
/// `deadletterreason`).
pub fn bus_dead_letter(seq: u64, ingest_ms: u64, json: &[u8]) -> Option<BusDeadLetter> {
    let v: Value = serde_json::from_slice(json).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(BusDeadLetter {
        reason: s("deadletterreason")?,
        id: s("id").unwrap_or_default(),
        source: s("source").unwrap_or_default(),
        rule: s("deadletterrule").unwrap_or_default(),
        target: s("deadlettertarget").unwrap_or_default(),
        attempts: v
            .get("deadletterattempts")
            .and_then(|a| {
                a.as_u64()
                    .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(0),
        time: rfc3339(ingest_ms),
        sequence: seq,
    })
}

/// The dead letters a dead-letter bus holds, from sequence `cursor`, reading
/// at most `limit` of its events (events without `deadletterreason` are
/// skipped).
pub fn list_bus(
    state: &SiteState,
    bus: &str,
    cursor: Option<u64>,
    limit: usize,
) -> Result<BusDeadLetterList, RedriveError> {
    if !state.view().buses.contains_key(bus) {
        return Err(RedriveError::NotFound(format!(
            "bus `{bus}` does not exist"
        )));
    }
    let page = state
        .list_events(
            bus,
            &EventFilter::default(),
            cursor.unwrap_or(0),
            limit,
            LIST_SCAN_CAP,
        )
        .map_err(|e| RedriveError::Unavailable(format!("state read failed: {e}")))?;
    Ok(BusDeadLetterList {
        dead_letters: page
            .events
            .iter()
            .filter_map(|e| bus_dead_letter(e.seq, e.ingest_ms, &e.json))
            .collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    })
}

/// The journal entries of an event's redrives (for the lookup).
pub fn redrive_entries(entries: &[JournalEntry]) -> impl Iterator<Item = &JournalEntry> {
    entries
        .iter()
        .filter(|e| e.origin.as_deref() == Some(REDRIVE_ORIGIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redrive_requests_name_the_bad_field() {
        let ok = RedriveRequest::parse(&json!({"ids": ["a", "b"], "to": "t2"})).expect("ok");
        assert_eq!(
            ok.ids.as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        assert_eq!(ok.to.as_deref(), Some("t2"));
        let all = RedriveRequest::parse(&json!({"all": true})).expect("all");
        assert!(all.ids.is_none());
        let field = |v: Value| match RedriveRequest::parse(&v) {
            Err(RedriveError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(json!({})), "ids");
        assert_eq!(field(json!({"ids": []})), "ids");
        assert_eq!(field(json!({"ids": ["a", 3]})), "ids[1]");
        assert_eq!(field(json!({"ids": ["a"], "all": true})), "all");
        assert_eq!(field(json!({"all": "yes"})), "all");
        assert_eq!(field(json!({"all": true, "to": 5})), "to");
        assert_eq!(field(json!({"all": true, "x": 1})), "x");
        assert_eq!(field(json!([1])), "body");
    }

    #[test]
    fn seek_requests_need_an_rfc3339_time() {
        let s = SeekRequest::parse(&json!({"time": "2026-01-02T03:04:05.5Z"})).expect("ok");
        assert_eq!(s.time_ms, 1_767_323_045_500);
        assert!(!s.allow_partial);
        let field = |v: Value| match SeekRequest::parse(&v) {
            Err(RedriveError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(json!({})), "time");
        assert_eq!(field(json!({"time": "yesterday"})), "time");
        assert_eq!(field(json!({"time": "1960-01-01T00:00:00Z"})), "time");
        assert_eq!(
            field(json!({"time": "2026-01-02T03:04:05Z", "allowPartial": 1})),
            "allowPartial"
        );
    }

    #[test]
    fn a_dead_letter_bus_event_reads_its_extensions() {
        let ev = json!({"id": "e1", "source": "/s", "deadletterreason": "retries exhausted",
            "deadletterattempts": 3, "deadletterrule": "b/r", "deadlettertarget": "t"});
        let d = bus_dead_letter(7, 0, ev.to_string().as_bytes()).expect("a dead letter");
        assert_eq!(
            (d.rule.as_str(), d.target.as_str(), d.attempts),
            ("b/r", "t", 3)
        );
        assert_eq!(d.sequence, 7);
        assert!(bus_dead_letter(1, 0, br#"{"id": "x"}"#).is_none());
    }

    #[test]
    fn a_delivery_keeps_the_event_and_continues_its_trace() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ev = json!({"specversion": "1.0", "id": "e1", "source": "s", "type": "t",
            "traceparent": tp});
        let raw = delivery("b", "r", "t", "h", 42, ev.to_string().as_bytes()).expect("ok");
        let d: Delivery = serde_json::from_str(raw.get()).expect("a delivery");
        assert_eq!(
            (d.bus.as_str(), d.rule.as_str(), d.target.as_str()),
            ("b", "r", "t")
        );
        assert_eq!(d.ingest_ms, 42);
        assert_eq!(d.rule_hash.as_deref(), Some("h"));
        let back: Value = serde_json::from_str(d.event.get()).expect("json");
        assert_eq!(back, ev);
        assert!(d.traceparent.contains("0af7651916cd43dd8448eb211c80319c"));
        assert_ne!(d.traceparent, tp);
        assert!(delivery("b", "r", "t", "h", 1, b"not json").is_err());
    }
}
