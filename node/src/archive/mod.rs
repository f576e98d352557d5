//! Archives of a bus (see docs/replay.md): their definitions (replicated
//! through the site's log, [`Command::PutArchive`]) and the operations the
//! native API and an AWS adapter call. The events themselves are kept by
//! every node of the site in its archive store
//! ([`strait_federation::store::archive`]); [`repair`] fills what a node
//! missed while it was brought up to date by a snapshot.

pub mod repair;

use serde_json::{Map, Value, json};
use strait_federation::{Command, CommandResponse, FederationError, NotFound, Refusal, SiteState};
use strait_routing::pattern::Pattern;

use crate::cluster::Writer;
use crate::config::check::validate_name;
use crate::util::now_ms;

/// What an archive or replay operation refused, typed so that each API
/// maps it to its own codes (the native API to HTTP statuses, an AWS
/// adapter to `ValidationException`, `ResourceNotFoundException`, ...).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A field of the request is invalid (`field` names it).
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as the request spells it (`pattern.source[0]`, `end`).
        field: String,
        /// Why.
        message: String,
        /// A code for the API (`InvalidArchive`, `InvalidEventPattern`, ...).
        code: &'static str,
    },
    /// The bus, archive, rule or replay does not exist.
    #[error("{message}")]
    NotFound {
        /// `BusNotFound`, `ArchiveNotFound`, `RuleNotFound`, `ReplayNotFound`.
        code: &'static str,
        /// What is missing.
        message: String,
    },
    /// It exists already, or is in a state that refuses the change.
    #[error("{message}")]
    Conflict {
        /// `ArchiveExists`, `ReplayExists`, `ReplayFinished`.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// The change could not be written (no leader, timeout, ...).
    #[error(transparent)]
    Write(#[from] FederationError),
}

impl OpError {
    pub(crate) fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> OpError {
        OpError::Invalid {
            field: field.into(),
            message: message.into(),
            code,
        }
    }

    /// Map a command's answer.
    pub(crate) fn check(resp: CommandResponse) -> Result<(), OpError> {
        match resp {
            CommandResponse::NotFound(n) => Err(OpError::NotFound {
                code: match n {
                    NotFound::Bus { .. } => "BusNotFound",
                    NotFound::Archive { .. } => "ArchiveNotFound",
                    NotFound::Replay { .. } => "ReplayNotFound",
                    NotFound::Rule { .. } => "RuleNotFound",
                    _ => "NotFound",
                },
                message: n.to_string(),
            }),
            CommandResponse::Refused(r) => Err(OpError::Conflict {
                code: match r {
                    Refusal::ReplayExists { .. } => "ReplayExists",
                    Refusal::ReplayFinished { .. } => "ReplayFinished",
                    _ => "Conflict",
                },
                message: r.to_string(),
            }),
            CommandResponse::Conflict(c) => Err(OpError::Conflict {
                code: "Conflict",
                message: c.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// An archive's settings, as a request gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveInput {
    /// Only events matching it are archived (`None`: every event).
    pub pattern: Option<Value>,
    /// Days archived events are kept (0: forever).
    pub retention_days: u64,
    /// Free text.
    pub description: String,
}

/// Read an archive's settings from a request body (`pattern`,
/// `retentionDays`, `description`); the error names the field.
pub fn parse_archive(body: &Value) -> Result<ArchiveInput, OpError> {
    let m = match body {
        Value::Null => &Map::new(),
        Value::Object(m) => m,
        _ => {
            return Err(OpError::invalid(
                "InvalidArchive",
                "body",
                "must be a JSON object",
            ));
        }
    };
    const ALLOWED: [&str; 5] = ["pattern", "retentionDays", "description", "name", "bus"];
    if let Some(k) = m.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(OpError::invalid(
            "InvalidArchive",
            k.clone(),
            "unknown field (allowed: pattern, retentionDays, description)",
        ));
    }
    let pattern = match m.get("pattern") {
        None | Some(Value::Null) => None,
        Some(p) => {
            Pattern::parse(p).map_err(|e| {
                let field = if e.path.is_empty() || e.path == "$" {
                    "pattern".to_string()
                } else {
                    format!("pattern.{}", e.path)
                };
                OpError::invalid("InvalidEventPattern", field, e.message.clone())
            })?;
            Some(p.clone())
        }
    };
    let retention_days = match m.get("retentionDays") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().filter(|d| *d <= 36_500).ok_or_else(|| {
            OpError::invalid(
                "InvalidArchive",
                "retentionDays",
                "must be a whole number of days from 0 (forever) to 36500",
            )
        })?,
    };
    let description = match m.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 512 => s.clone(),
        Some(_) => {
            return Err(OpError::invalid(
                "InvalidArchive",
                "description",
                "must be a string of at most 512 bytes",
            ));
        }
    };
    Ok(ArchiveInput {
        pattern,
        retention_days,
        description,
    })
}

fn check_names(bus: &str, name: &str) -> Result<(), OpError> {
    validate_name("bus", bus).map_err(|e| OpError::invalid(e.code, "bus", e.message))?;
    validate_name("archive", name).map_err(|e| OpError::invalid(e.code, "name", e.message))
}

/// Create an archive of `bus` (`must_be_new`: refuse one that exists, as
/// AWS's `CreateArchive` does) or replace its settings (the archived
/// events stay). Answers its description. AWS adapter: `CreateArchive`,
/// `UpdateArchive`.
pub async fn put_archive(
    state: &SiteState,
    writer: &Writer,
    bus: &str,
    name: &str,
    input: ArchiveInput,
    must_be_new: bool,
) -> Result<Value, OpError> {
    check_names(bus, name)?;
    if !state.view().buses.contains_key(bus) {
        return Err(OpError::NotFound {
            code: "BusNotFound",
            message: format!("bus `{bus}` does not exist"),
        });
    }
    let old = state
        .view()
        .archives
        .get(&(bus.to_string(), name.to_string()))
        .cloned();
    if must_be_new && old.is_some() {
        return Err(OpError::Conflict {
            code: "ArchiveExists",
            message: format!("archive `{name}` exists already on bus `{bus}`"),
        });
    }
    let created_at = old
        .as_ref()
        .and_then(|o| o.get("createdAt").cloned())
        .unwrap_or_else(|| Value::String(rfc3339(now_ms())));
    let mut spec = json!({
        "name": name,
        "bus": bus,
        "retentionDays": input.retention_days,
        "description": input.description,
        "createdAt": created_at,
    });
    if let (Some(p), Value::Object(m)) = (input.pattern, &mut spec) {
        m.insert("pattern".into(), p);
    }
    let written = spec.clone();
    OpError::check(
        writer
            .write(Command::PutArchive {
                bus: bus.to_string(),
                name: name.to_string(),
                spec,
            })
            .await?,
    )?;
    let key = (bus.to_string(), name.to_string());
    until_replica_shows(state, |v| {
        v.archives.get(&key).is_some_and(|stored| {
            written.as_object().is_some_and(|w| {
                w.iter()
                    .filter(|(k, _)| *k != "createdAt")
                    .all(|(k, val)| stored.get(k) == Some(val))
            })
        })
    })
    .await;
    describe_archive(state, bus, name)
}

/// An archive's definition with this node's figures: `eventCount`,
/// `sizeBytes` (of its segment files), `state` (`ENABLED`) and, while this
/// node is filling a range it missed, `missingRanges`. AWS adapter:
/// `DescribeArchive`.
pub fn describe_archive(state: &SiteState, bus: &str, name: &str) -> Result<Value, OpError> {
    let spec = state
        .view()
        .archives
        .get(&(bus.to_string(), name.to_string()))
        .cloned()
        .ok_or_else(|| OpError::NotFound {
            code: "ArchiveNotFound",
            message: format!("archive `{name}` does not exist on bus `{bus}`"),
        })?;
    Ok(with_figures(state, bus, name, spec))
}

fn with_figures(state: &SiteState, bus: &str, name: &str, mut spec: Value) -> Value {
    let stats = state.archive().stats(bus, name);
    if let Value::Object(m) = &mut spec {
        m.remove("createdIndex");
        m.insert("state".into(), "ENABLED".into());
        m.insert("eventCount".into(), stats.event_count.into());
        m.insert("sizeBytes".into(), stats.size_bytes.into());
        if !stats.holes.is_empty() {
            m.insert("missingRanges".into(), json!(stats.holes));
        }
    }
    spec
}

/// The archives of `bus` (every bus when `None`), with figures, by bus
/// then name. AWS adapter: `ListArchives` (filtering by name prefix and
/// state itself).
pub fn list_archives(state: &SiteState, bus: Option<&str>) -> Vec<Value> {
    let archives: Vec<((String, String), Value)> = state
        .view()
        .archives
        .iter()
        .filter(|((b, _), _)| bus.is_none_or(|x| x == b))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    archives
        .into_iter()
        .map(|((b, n), spec)| with_figures(state, &b, &n, spec))
        .collect()
}

/// Delete an archive and its archived events (on every node of the
/// site). AWS adapter: `DeleteArchive`.
pub async fn delete_archive(writer: &Writer, bus: &str, name: &str) -> Result<(), OpError> {
    OpError::check(
        writer
            .write(Command::DeleteArchive {
                bus: bus.to_string(),
                name: name.to_string(),
            })
            .await?,
    )
}

/// How long an operation waits for this node's replica to show a write it
/// made through the leader.
const OWN_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Wait until this node's replica shows a write just committed through the
/// site's leader (`shows`): on a follower, the leader answers once it has
/// applied the entry, which this node may apply a moment later, and an
/// answer read from this replica before then would not show the write (a
/// replay just started would be "not found"). Gives up after
/// [`OWN_WRITE_WAIT`] (the answer then shows the replica as it is).
pub(crate) async fn until_replica_shows(
    state: &SiteState,
    shows: impl Fn(&strait_federation::store::state::View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + OWN_WRITE_WAIT;
    while !shows(&state.view()) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "a write committed through the leader has not reached this node's replica within 5 s"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `ms` as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<ArchiveInput, OpError>) -> String {
        match r {
            Err(OpError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_are_read_and_bad_ones_named() {
        let ok = parse_archive(
            &json!({"pattern": {"type": ["a"]}, "retentionDays": 3, "description": "d"}),
        )
        .expect("valid");
        assert_eq!(ok.retention_days, 3);
        assert!(ok.pattern.is_some());
        assert_eq!(
            parse_archive(&Value::Null).expect("empty").retention_days,
            0
        );
        assert_eq!(
            field(parse_archive(&json!({"retentionDays": -1}))),
            "retentionDays"
        );
        assert_eq!(
            field(parse_archive(&json!({"retentionDays": "x"}))),
            "retentionDays"
        );
        assert_eq!(
            field(parse_archive(&json!({"description": 3}))),
            "description"
        );
        assert_eq!(field(parse_archive(&json!({"colour": 3}))), "colour");
        assert_eq!(field(parse_archive(&json!([1]))), "body");
        let f = field(parse_archive(
            &json!({"pattern": {"source": [{"prefix": 3}]}}),
        ));
        assert!(f.starts_with("pattern"), "{f}");
    }
}
