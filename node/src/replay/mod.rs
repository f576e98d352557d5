//! Replays (see docs/replay.md): sending an archive's events of a time
//! window `[start, end)` through the rules of its bus again, each marked
//! with the CloudEvents extension `replayname`. The definition, state and
//! progress are replicated through the site's log
//! ([`Command::StartReplay`], [`Command::UpdateReplay`]); the site's
//! leader runs them ([`runner`]).

pub mod runner;

use serde_json::{Map, Value, json};
use strait_federation::{Command, SiteState};

use crate::archive::{OpError, rfc3339};
use crate::cluster::Writer;
use crate::config::check::validate_name;
use crate::util::now_ms;

/// The replay states.
pub const STARTING: &str = "STARTING";
/// Sending events.
pub const RUNNING: &str = "RUNNING";
/// Every event of the window was sent.
pub const COMPLETED: &str = "COMPLETED";
/// Asked to stop; the leader stops it at its next event.
pub const CANCELLING: &str = "CANCELLING";
/// Stopped on request.
pub const CANCELLED: &str = "CANCELLED";
/// Stopped by an error (`stateReason` says which).
pub const FAILED: &str = "FAILED";

/// A replay request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayInput {
    /// The bus of the archive (and the bus whose rules the events go through).
    pub bus: String,
    /// The archive.
    pub archive: String,
    /// Window start (inclusive), ms since the epoch.
    pub start_ms: u64,
    /// Window end (exclusive), ms since the epoch.
    pub end_ms: u64,
    /// Only these rules of the bus (`None`: every rule).
    pub rules: Option<Vec<String>>,
    /// Free text.
    pub description: String,
}

/// A time as RFC 3339 text or a number of ms since the epoch.
fn parse_time(field: &str, v: Option<&Value>) -> Result<u64, OpError> {
    let bad = |m: &str| OpError::invalid("InvalidReplay", field, m);
    match v {
        None | Some(Value::Null) => Err(bad(
            "required: an RFC 3339 time (2026-12-07T10:00:00Z) or ms since the epoch",
        )),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| bad("must be a whole, non-negative number of ms since the epoch")),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| bad(&format!("{s:?} is not an RFC 3339 time: {e}")))
            .and_then(|t| {
                u64::try_from(t.timestamp_millis()).map_err(|_| bad("must not be before 1970"))
            }),
        Some(_) => Err(bad(
            "must be an RFC 3339 time (string) or ms since the epoch (number)",
        )),
    }
}

/// Read a replay request body (`bus`, `archive`, `start`, `end`, `rules`,
/// `description`); the error names the field. `now_ms`: the end must not
/// be later.
pub fn parse_replay(body: &Value, now_ms: u64) -> Result<ReplayInput, OpError> {
    let Value::Object(m) = body else {
        return Err(OpError::invalid(
            "InvalidReplay",
            "body",
            "must be a JSON object",
        ));
    };
    const ALLOWED: [&str; 7] = [
        "bus",
        "archive",
        "start",
        "end",
        "rules",
        "description",
        "name",
    ];
    if let Some(k) = m.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(OpError::invalid(
            "InvalidReplay",
            k.clone(),
            "unknown field (allowed: bus, archive, start, end, rules, description)",
        ));
    }
    let string = |k: &str| -> Result<String, OpError> {
        match m.get(k) {
            Some(Value::String(s)) => {
                validate_name(k, s).map_err(|e| OpError::invalid(e.code, k, e.message))?;
                Ok(s.clone())
            }
            None | Some(Value::Null) => Err(OpError::invalid("InvalidReplay", k, "required")),
            Some(_) => Err(OpError::invalid("InvalidReplay", k, "must be a string")),
        }
    };
    let bus = string("bus")?;
    let archive = string("archive")?;
    let start_ms = parse_time("start", m.get("start"))?;
    let end_ms = parse_time("end", m.get("end"))?;
    if end_ms <= start_ms {
        return Err(OpError::invalid(
            "InvalidReplay",
            "end",
            "must be later than start (the window is [start, end))",
        ));
    }
    if end_ms > now_ms {
        return Err(OpError::invalid(
            "InvalidReplay",
            "end",
            "must not be in the future",
        ));
    }
    let rules = match m.get("rules") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut names = Vec::new();
            for (i, r) in a.iter().enumerate() {
                let field = format!("rules[{i}]");
                let Some(s) = r.as_str() else {
                    return Err(OpError::invalid(
                        "InvalidReplay",
                        field,
                        "must be a rule name",
                    ));
                };
                validate_name("rule", s)
                    .map_err(|e| OpError::invalid(e.code, &field, e.message))?;
                names.push(s.to_string());
            }
            if names.is_empty() {
                return Err(OpError::invalid(
                    "InvalidReplay",
                    "rules",
                    "must name at least one rule (leave it out for every rule)",
                ));
            }
            Some(names)
        }
        Some(_) => {
            return Err(OpError::invalid(
                "InvalidReplay",
                "rules",
                "must be an array of rule names",
            ));
        }
    };
    let description = match m.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 512 => s.clone(),
        Some(_) => {
            return Err(OpError::invalid(
                "InvalidReplay",
                "description",
                "must be a string of at most 512 bytes",
            ));
        }
    };
    Ok(ReplayInput {
        bus,
        archive,
        start_ms,
        end_ms,
        rules,
        description,
    })
}

/// Start the replay `name` (the site's leader runs it); answers its
/// description. Refused when the archive or a named rule does not exist
/// or a replay of that name exists. AWS adapter: `StartReplay` (its
/// `Destination.FilterArns` name the rules).
pub async fn start_replay(
    state: &SiteState,
    writer: &Writer,
    name: &str,
    input: ReplayInput,
) -> Result<Value, OpError> {
    validate_name("replay", name).map_err(|e| OpError::invalid(e.code, "name", e.message))?;
    {
        let view = state.view();
        if !view
            .archives
            .contains_key(&(input.bus.clone(), input.archive.clone()))
        {
            return Err(OpError::NotFound {
                code: "ArchiveNotFound",
                message: format!(
                    "archive `{}` does not exist on bus `{}`",
                    input.archive, input.bus
                ),
            });
        }
        for (i, r) in input.rules.iter().flatten().enumerate() {
            if !view.rules.contains_key(&(input.bus.clone(), r.clone())) {
                return Err(OpError::NotFound {
                    code: "RuleNotFound",
                    message: format!(
                        "rules[{i}]: rule `{r}` does not exist on bus `{}`",
                        input.bus
                    ),
                });
            }
        }
    }
    // A write retried after an unanswered forward may be applied twice:
    // the second is refused as a replay that exists, and recognised as
    // ours by this id.
    let request_id = format!("{:016x}", rand_u64());
    let mut spec = json!({
        "name": name,
        "bus": input.bus,
        "archive": input.archive,
        "startMs": input.start_ms,
        "endMs": input.end_ms,
        "start": rfc3339(input.start_ms),
        "end": rfc3339(input.end_ms),
        "description": input.description,
        "createdAt": rfc3339(now_ms()),
        "requestId": request_id,
        "eventsReplayed": 0,
    });
    if let (Some(rules), Value::Object(m)) = (input.rules, &mut spec) {
        m.insert("rules".into(), json!(rules));
    }
    let resp = writer
        .write(Command::StartReplay {
            name: name.to_string(),
            spec,
        })
        .await?;
    if let Err(e) = OpError::check(resp) {
        let ours = state
            .view()
            .replays
            .get(name)
            .and_then(|r| r.get("requestId"))
            .and_then(Value::as_str)
            == Some(request_id.as_str());
        if !ours {
            return Err(e);
        }
    }
    crate::archive::until_replica_shows(state, |v| {
        v.replays
            .get(name)
            .and_then(|r| r.get("requestId"))
            .and_then(Value::as_str)
            == Some(request_id.as_str())
    })
    .await;
    describe_replay(state, name)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

/// A replay: its definition, `state`, `stateReason` (when it failed),
/// `eventsReplayed`, `lastReplayedTime` and the times it started and
/// ended. AWS adapter: `DescribeReplay`.
pub fn describe_replay(state: &SiteState, name: &str) -> Result<Value, OpError> {
    let r = state
        .view()
        .replays
        .get(name)
        .cloned()
        .ok_or_else(|| OpError::NotFound {
            code: "ReplayNotFound",
            message: format!("replay `{name}` does not exist"),
        })?;
    Ok(public(r))
}

/// What the API shows of a stored replay (without internal fields).
fn public(mut r: Value) -> Value {
    if let Value::Object(m) = &mut r {
        m.remove("requestId");
        m.remove("startedIndex");
        m.remove("position");
    }
    r
}

/// Every replay, by name; `archive` = (bus, archive) and `state` filter.
/// AWS adapter: `ListReplays` (its `EventSourceArn` is an archive).
pub fn list_replays(
    state: &SiteState,
    archive: Option<(&str, &str)>,
    state_filter: Option<&str>,
) -> Vec<Value> {
    state
        .view()
        .replays
        .values()
        .filter(|r| {
            archive.is_none_or(|(b, a)| {
                r.get("bus").and_then(Value::as_str) == Some(b)
                    && r.get("archive").and_then(Value::as_str) == Some(a)
            })
        })
        .filter(|r| state_filter.is_none_or(|s| r.get("state").and_then(Value::as_str) == Some(s)))
        .cloned()
        .map(public)
        .collect()
}

/// Ask a replay to stop: it becomes `CANCELLING`, and `CANCELLED` once the
/// leader stops it (events already sent stay sent). Refused once it is
/// over. AWS adapter: `CancelReplay`.
pub async fn cancel_replay(
    state: &SiteState,
    writer: &Writer,
    name: &str,
) -> Result<Value, OpError> {
    describe_replay(state, name)?;
    let mut update = Map::new();
    update.insert("state".into(), CANCELLING.into());
    OpError::check(
        writer
            .write(Command::UpdateReplay {
                name: name.to_string(),
                update: Value::Object(update),
            })
            .await?,
    )?;
    crate::archive::until_replica_shows(state, |v| {
        !matches!(
            v.replays
                .get(name)
                .and_then(|r| r.get("state"))
                .and_then(Value::as_str),
            Some(STARTING | RUNNING)
        )
    })
    .await;
    describe_replay(state, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<ReplayInput, OpError>) -> String {
        match r {
            Err(OpError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_are_read_and_bad_fields_named() {
        let now = 2_000_000_000_000;
        let ok = parse_replay(
            &json!({"bus": "b", "archive": "a", "start": "2026-01-01T00:00:00Z", "end": 1_800_000_000_000u64, "rules": ["r"]}),
            now,
        )
        .expect("valid");
        assert_eq!(ok.start_ms, 1_767_225_600_000);
        assert_eq!(ok.rules, Some(vec!["r".to_string()]));
        let base = json!({"bus": "b", "archive": "a", "start": 1, "end": 2});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(
            field(parse_replay(&with("start", json!("yesterday")), now)),
            "start"
        );
        assert_eq!(field(parse_replay(&with("end", json!(1)), now)), "end");
        assert_eq!(
            field(parse_replay(&with("end", json!(now + 60_000)), now)),
            "end"
        );
        assert_eq!(
            field(parse_replay(&with("rules", json!([3])), now)),
            "rules[0]"
        );
        assert_eq!(field(parse_replay(&with("rules", json!([])), now)), "rules");
        assert_eq!(field(parse_replay(&with("bus", json!(null)), now)), "bus");
        assert_eq!(
            field(parse_replay(&with("archive", json!("../x")), now)),
            "archive"
        );
        assert_eq!(field(parse_replay(&with("speed", json!(1)), now)), "speed");
        assert_eq!(field(parse_replay(&json!("x"), now)), "body");
    }
}
