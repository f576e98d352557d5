//! The archive and replay operations: AWS's shapes mapped to and from the
//! native archive and replay API (docs/api.md). Archive names are global
//! in AWS, per bus in Strait: an archive is found by name on any bus, and
//! a name in use on one bus is refused on another.

use serde_json::{Map, Value, json};

use super::{AwsError, Change, ControlView, Finish, Scope, lower_first, opt_str, page, paging};

/// The archive states AWS knows (Strait's archives are `ENABLED`).
pub const ARCHIVE_STATES: [&str; 6] = [
    "ENABLED",
    "DISABLED",
    "CREATING",
    "UPDATING",
    "CREATE_FAILED",
    "UPDATE_FAILED",
];

/// The replay states.
pub const REPLAY_STATES: [&str; 6] = [
    "STARTING",
    "RUNNING",
    "CANCELLING",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
];

fn required<'a>(req: &'a Value, field: &str) -> Result<&'a str, AwsError> {
    opt_str(req, field)?.ok_or_else(|| {
        AwsError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(field)
        ))
    })
}

/// A name field (`ArchiveName` 1..=48, `ReplayName` 1..=64 of
/// `[.\-_A-Za-z0-9]`).
fn name_field<'a>(req: &'a Value, field: &str, max: usize) -> Result<&'a str, AwsError> {
    let v = required(req, field)?;
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{v}' at '{}' failed to satisfy constraint: Member must have length between 1 and {max} and match [\\.\\-_A-Za-z0-9]+",
            lower_first(field)
        )));
    }
    Ok(v)
}

/// The resource name in an ARN `arn:aws:events:R:A:{kind}/{name}`.
fn arn_resource<'a>(field: &str, arn: &'a str, kind: &str) -> Result<&'a str, AwsError> {
    arn.strip_prefix("arn:")
        .and_then(|rest| rest.split_once(&format!(":{kind}/")))
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            AwsError::validation(format!(
                "{field}: {arn:?} is not an {kind} ARN (arn:aws:events:REGION:ACCOUNT:{kind}/NAME)"
            ))
        })
}

fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An RFC 3339 field as epoch seconds (JSON 1.1 timestamps).
fn epoch(v: &Value, field: &str) -> Option<Value> {
    let t = v.get(field).and_then(Value::as_str)?;
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(json!(t.timestamp_millis() as f64 / 1000.0))
}

/// A ms field as epoch seconds.
fn epoch_ms(v: &Value, field: &str) -> Option<Value> {
    v.get(field)
        .and_then(Value::as_u64)
        .map(|ms| json!(ms as f64 / 1000.0))
}

/// A timestamp of the request (epoch seconds, as botocore sends them) in ms.
fn time_ms(req: &Value, field: &str) -> Result<u64, AwsError> {
    let bad = || {
        AwsError::validation(format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member must be a timestamp (epoch seconds) not before 1970",
            lower_first(field)
        ))
    };
    match req.get(field) {
        None | Some(Value::Null) => Err(AwsError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(field)
        ))),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0).round() as u64)
            .ok_or_else(bad),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn archive_named(view: &dyn ControlView, name: &str) -> Result<Value, AwsError> {
    view.archives()
        .into_iter()
        .find(|a| a.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| AwsError::not_found(format!("Archive {name} does not exist.")))
}

fn replay_named(view: &dyn ControlView, name: &str) -> Result<Value, AwsError> {
    view.replays()
        .into_iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| AwsError::not_found(format!("Replay {name} does not exist.")))
}

/// The native archive settings a request gives (`EventPattern` a JSON
/// string, `RetentionDays`, `Description`), over `base`.
fn archive_settings(req: &Value, base: Map<String, Value>) -> Result<Value, AwsError> {
    let mut body = base;
    if let Some(p) = opt_str(req, "EventPattern")? {
        let pattern: Value = serde_json::from_str(p).map_err(|e| AwsError {
            status: 400,
            code: "InvalidEventPatternException",
            message: format!("Event pattern is not valid. Reason: {e}"),
        })?;
        body.insert("pattern".into(), pattern);
    }
    match req.get("RetentionDays") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let days = v.as_u64().ok_or_else(|| {
                AwsError::validation(format!(
                    "1 validation error detected: Value '{v}' at 'retentionDays' failed to satisfy constraint: Member must have value greater than or equal to 0"
                ))
            })?;
            body.insert("retentionDays".into(), json!(days));
        }
    }
    if let Some(d) = opt_str(req, "Description")? {
        body.insert("description".into(), json!(d));
    }
    Ok(Value::Object(body))
}

fn archive_answer(scope: &Scope, a: &Value) -> Result<Value, AwsError> {
    let mut m = Map::new();
    m.insert(
        "ArchiveArn".into(),
        json!(scope.archive_arn(&text(a, "name"))),
    );
    m.insert("State".into(), json!(archive_state(a)));
    if let Some(t) = epoch(a, "createdAt") {
        m.insert("CreationTime".into(), t);
    }
    Ok(Value::Object(m))
}

fn archive_state(a: &Value) -> String {
    let s = text(a, "state");
    if s.is_empty() { "ENABLED".into() } else { s }
}

/// The fields `ListArchives` and `DescribeArchive` share.
fn archive_summary(scope: &Scope, a: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ArchiveName".into(), json!(text(a, "name")));
    m.insert(
        "EventSourceArn".into(),
        json!(scope.bus_arn(&text(a, "bus"))),
    );
    m.insert("State".into(), json!(archive_state(a)));
    m.insert(
        "RetentionDays".into(),
        json!(a.get("retentionDays").and_then(Value::as_u64).unwrap_or(0)),
    );
    m.insert(
        "SizeBytes".into(),
        json!(a.get("sizeBytes").and_then(Value::as_u64).unwrap_or(0)),
    );
    m.insert(
        "EventCount".into(),
        json!(a.get("eventCount").and_then(Value::as_u64).unwrap_or(0)),
    );
    if let Some(t) = epoch(a, "createdAt") {
        m.insert("CreationTime".into(), t);
    }
    m
}

/// `CreateArchive` {ArchiveName, EventSourceArn, Description?,
/// EventPattern?, RetentionDays?}.
pub fn create_archive(
    _scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<(Change, Finish), AwsError> {
    let name = name_field(req, "ArchiveName", 48)?;
    let source = required(req, "EventSourceArn")?;
    let bus = arn_resource("EventSourceArn", source, "event-bus")?;
    if !view.buses().iter().any(|b| b.name == bus) {
        return Err(AwsError::not_found(format!(
            "Event bus {bus} does not exist."
        )));
    }
    if view
        .archives()
        .iter()
        .any(|a| a.get("name").and_then(Value::as_str) == Some(name))
    {
        return Err(AwsError {
            status: 400,
            code: "ResourceAlreadyExistsException",
            message: format!("Archive {name} already exists."),
        });
    }
    let body = archive_settings(req, Map::new())?;
    Ok((
        Change::PutArchive {
            bus: bus.to_string(),
            name: name.to_string(),
            body,
            must_be_new: true,
        },
        archive_answer,
    ))
}

/// `UpdateArchive` {ArchiveName, Description?, EventPattern?,
/// RetentionDays?}: the fields given replace those of the archive.
pub fn update_archive(
    _scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<(Change, Finish), AwsError> {
    let name = name_field(req, "ArchiveName", 48)?;
    let old = archive_named(view, name)?;
    let mut base = Map::new();
    for k in ["pattern", "retentionDays", "description"] {
        if let Some(v) = old.get(k).filter(|v| !v.is_null()) {
            base.insert(k.into(), v.clone());
        }
    }
    let body = archive_settings(req, base)?;
    Ok((
        Change::PutArchive {
            bus: text(&old, "bus"),
            name: name.to_string(),
            body,
            must_be_new: false,
        },
        archive_answer,
    ))
}

/// `DescribeArchive` {ArchiveName}.
pub fn describe_archive(
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    let name = name_field(req, "ArchiveName", 48)?;
    let a = archive_named(view, name)?;
    let mut m = archive_summary(scope, &a);
    m.insert("ArchiveArn".into(), json!(scope.archive_arn(name)));
    let description = text(&a, "description");
    if !description.is_empty() {
        m.insert("Description".into(), json!(description));
    }
    if let Some(p) = a.get("pattern").filter(|p| !p.is_null()) {
        m.insert("EventPattern".into(), json!(p.to_string()));
    }
    Ok(Value::Object(m))
}

fn state_filter<'a>(req: &'a Value, allowed: &[&str]) -> Result<Option<&'a str>, AwsError> {
    let s = opt_str(req, "State")?;
    if let Some(s) = s
        && !allowed.contains(&s)
    {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{s}' at 'state' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            allowed.join(", ")
        )));
    }
    Ok(s)
}

/// `ListArchives` {NamePrefix?, EventSourceArn?, State?, Limit?,
/// NextToken?}, by name.
pub fn list_archives(
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    let prefix = opt_str(req, "NamePrefix")?.unwrap_or("");
    let bus = opt_str(req, "EventSourceArn")?
        .map(|a| arn_resource("EventSourceArn", a, "event-bus"))
        .transpose()?;
    let state = state_filter(req, &ARCHIVE_STATES)?;
    let (limit, offset) = paging(req)?;
    let mut archives: Vec<Value> = view
        .archives()
        .into_iter()
        .filter(|a| text(a, "name").starts_with(prefix))
        .filter(|a| bus.is_none_or(|b| text(a, "bus") == b))
        .filter(|a| state.is_none_or(|s| archive_state(a) == s))
        .collect();
    archives.sort_by_key(|a| text(a, "name"));
    let (got, next) = page(&archives, limit, offset);
    let mut out = json!({"Archives": got.iter().map(|a| Value::Object(archive_summary(scope, a))).collect::<Vec<_>>()});
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

fn empty_answer(_scope: &Scope, _answer: &Value) -> Result<Value, AwsError> {
    Ok(json!({}))
}

/// `DeleteArchive` {ArchiveName}.
pub fn delete_archive(
    _scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<(Change, Finish), AwsError> {
    let name = name_field(req, "ArchiveName", 48)?;
    let a = archive_named(view, name)?;
    Ok((
        Change::DeleteArchive {
            bus: text(&a, "bus"),
            name: name.to_string(),
        },
        empty_answer,
    ))
}

/// The rule a `FilterArns` entry names on `bus`: `.../rule/{bus}/{rule}`,
/// or `.../rule/{rule}` on the default bus.
fn filter_rule(i: usize, arn: &str, bus: &str) -> Result<String, AwsError> {
    let field = format!("Destination.FilterArns[{i}]");
    let path = arn_resource(&field, arn, "rule")?;
    let (rule_bus, rule) = match path.split_once('/') {
        Some((b, r)) => (b, r),
        None => ("default", path),
    };
    if rule_bus != bus || rule.is_empty() {
        return Err(AwsError::validation(format!(
            "{field}: {arn:?} is not a rule of event bus {bus} (the archive's bus)"
        )));
    }
    Ok(rule.to_string())
}

/// `StartReplay` {ReplayName, Description?, EventSourceArn (an archive),
/// EventStartTime, EventEndTime, Destination {Arn (the archive's bus),
/// FilterArns? (rules of it)}}.
pub fn start_replay(
    _scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<(Change, Finish), AwsError> {
    let name = name_field(req, "ReplayName", 64)?;
    let source = required(req, "EventSourceArn")?;
    let archive = arn_resource("EventSourceArn", source, "archive")?;
    let start = time_ms(req, "EventStartTime")?;
    let end = time_ms(req, "EventEndTime")?;
    let dest = match req.get("Destination") {
        Some(d @ Value::Object(_)) => d,
        _ => {
            return Err(AwsError::validation(
                "1 validation error detected: Value null at 'destination' failed to satisfy constraint: Member must not be null",
            ));
        }
    };
    let dest_arn = required(dest, "Arn").map_err(|_| {
        AwsError::validation(
            "1 validation error detected: Value null at 'destination.arn' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let dest_bus = arn_resource("Destination.Arn", dest_arn, "event-bus")?;
    let a = archive_named(view, archive)?;
    let bus = text(&a, "bus");
    if dest_bus != bus {
        return Err(AwsError::validation(format!(
            "Destination.Arn: events of archive {archive} can only be replayed to its event bus {bus}"
        )));
    }
    let mut body = json!({"bus": bus, "archive": archive, "start": start, "end": end});
    match dest.get("FilterArns") {
        None | Some(Value::Null) => {}
        Some(Value::Array(arns)) if !arns.is_empty() => {
            let mut rules = Vec::new();
            for (i, arn) in arns.iter().enumerate() {
                let arn = arn.as_str().ok_or_else(|| {
                    AwsError::validation(format!("Destination.FilterArns[{i}]: must be a rule ARN"))
                })?;
                rules.push(filter_rule(i, arn, &bus)?);
            }
            body["rules"] = json!(rules);
        }
        Some(Value::Array(_)) => {}
        Some(_) => {
            return Err(AwsError::validation(
                "Destination.FilterArns: must be a list of rule ARNs",
            ));
        }
    }
    if let Some(d) = opt_str(req, "Description")? {
        body["description"] = json!(d);
    }
    Ok((
        Change::StartReplay {
            name: name.to_string(),
            body,
        },
        |scope, r| {
            let mut m = Map::new();
            m.insert(
                "ReplayArn".into(),
                json!(scope.replay_arn(&text(r, "name"))),
            );
            m.insert("State".into(), json!(text(r, "state")));
            if let Some(t) = epoch(r, "startedAt").or_else(|| epoch(r, "createdAt")) {
                m.insert("ReplayStartTime".into(), t);
            }
            Ok(Value::Object(m))
        },
    ))
}

/// The fields `ListReplays` and `DescribeReplay` share.
fn replay_summary(scope: &Scope, r: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ReplayName".into(), json!(text(r, "name")));
    m.insert(
        "EventSourceArn".into(),
        json!(scope.archive_arn(&text(r, "archive"))),
    );
    m.insert("State".into(), json!(text(r, "state")));
    let reason = text(r, "stateReason");
    if !reason.is_empty() {
        m.insert("StateReason".into(), json!(reason));
    }
    for (aws, native) in [
        ("EventStartTime", "startMs"),
        ("EventEndTime", "endMs"),
        ("EventLastReplayedTime", "lastReplayedMs"),
    ] {
        if let Some(t) = epoch_ms(r, native) {
            m.insert(aws.into(), t);
        }
    }
    if let Some(t) = epoch(r, "startedAt").or_else(|| epoch(r, "createdAt")) {
        m.insert("ReplayStartTime".into(), t);
    }
    if let Some(t) = epoch(r, "endedAt") {
        m.insert("ReplayEndTime".into(), t);
    }
    m
}

/// `DescribeReplay` {ReplayName}.
pub fn describe_replay(
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    let name = name_field(req, "ReplayName", 64)?;
    let r = replay_named(view, name)?;
    let mut m = replay_summary(scope, &r);
    m.insert("ReplayArn".into(), json!(scope.replay_arn(name)));
    let description = text(&r, "description");
    if !description.is_empty() {
        m.insert("Description".into(), json!(description));
    }
    let bus = text(&r, "bus");
    let mut dest = json!({"Arn": scope.bus_arn(&bus)});
    if let Some(rules) = r.get("rules").and_then(Value::as_array) {
        dest["FilterArns"] = rules
            .iter()
            .filter_map(Value::as_str)
            .map(|n| json!(scope.rule_arn(&bus, n)))
            .collect();
    }
    m.insert("Destination".into(), dest);
    Ok(Value::Object(m))
}

/// `ListReplays` {NamePrefix?, State?, EventSourceArn? (an archive),
/// Limit?, NextToken?}, by name.
pub fn list_replays(scope: &Scope, view: &dyn ControlView, req: &Value) -> Result<Value, AwsError> {
    let prefix = opt_str(req, "NamePrefix")?.unwrap_or("");
    let archive = opt_str(req, "EventSourceArn")?
        .map(|a| arn_resource("EventSourceArn", a, "archive"))
        .transpose()?;
    let state = state_filter(req, &REPLAY_STATES)?;
    let (limit, offset) = paging(req)?;
    let mut replays: Vec<Value> = view
        .replays()
        .into_iter()
        .filter(|r| text(r, "name").starts_with(prefix))
        .filter(|r| archive.is_none_or(|a| text(r, "archive") == a))
        .filter(|r| state.is_none_or(|s| text(r, "state") == s))
        .collect();
    replays.sort_by_key(|r| text(r, "name"));
    let (got, next) = page(&replays, limit, offset);
    let mut out = json!({"Replays": got.iter().map(|r| Value::Object(replay_summary(scope, r))).collect::<Vec<_>>()});
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

/// `CancelReplay` {ReplayName}: `IllegalStatusException` once it is over.
pub fn cancel_replay(
    _scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<(Change, Finish), AwsError> {
    let name = name_field(req, "ReplayName", 64)?;
    replay_named(view, name)?;
    Ok((
        Change::CancelReplay {
            name: name.to_string(),
        },
        |scope, r| {
            let mut m = Map::new();
            m.insert(
                "ReplayArn".into(),
                json!(scope.replay_arn(&text(r, "name"))),
            );
            m.insert("State".into(), json!(text(r, "state")));
            Ok(Value::Object(m))
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::{BusInfo, ChangeError, ChangeFuture, Operation, RuleInfo, operation, run};
    use super::*;

    /// Buses `default` and `orders`; archive `a1` on `orders`; replays
    /// `done` (COMPLETED, rules r1) and `live` (RUNNING). `apply` records
    /// the change and answers `answer`.
    struct View {
        seen: Mutex<Vec<Change>>,
        answer: Result<Value, ChangeError>,
    }

    impl View {
        fn new(answer: Result<Value, ChangeError>) -> View {
            View {
                seen: Mutex::new(Vec::new()),
                answer,
            }
        }
    }

    impl ControlView for View {
        fn buses(&self) -> Vec<BusInfo> {
            ["default", "orders"]
                .iter()
                .map(|n| BusInfo {
                    name: n.to_string(),
                    description: String::new(),
                })
                .collect()
        }
        fn rules(&self, _bus: &str) -> Option<Vec<RuleInfo>> {
            Some(Vec::new())
        }
        fn archives(&self) -> Vec<Value> {
            vec![
                json!({"name": "a1", "bus": "orders", "pattern": {"source": ["app"]},
                       "retentionDays": 7, "description": "d", "createdAt": "2026-12-07T10:00:00.500Z",
                       "state": "ENABLED", "eventCount": 12, "sizeBytes": 3456}),
                json!({"name": "b0", "bus": "default", "retentionDays": 0, "description": "",
                       "createdAt": "2026-12-07T10:00:00Z", "state": "ENABLED", "eventCount": 0, "sizeBytes": 0}),
            ]
        }
        fn replays(&self) -> Vec<Value> {
            vec![
                json!({"name": "live", "bus": "orders", "archive": "a1", "startMs": 1_000, "endMs": 2_000,
                       "description": "", "state": "RUNNING", "createdAt": "2026-12-07T10:00:00Z",
                       "startedAt": "2026-12-07T10:00:01Z"}),
                json!({"name": "done", "bus": "orders", "archive": "a1", "startMs": 1_500, "endMs": 2_500,
                       "rules": ["r1"], "description": "again", "state": "COMPLETED",
                       "lastReplayedMs": 2_400, "createdAt": "2026-12-07T10:00:00Z",
                       "startedAt": "2026-12-07T10:00:01Z", "endedAt": "2026-12-07T10:00:02Z"}),
            ]
        }
        fn apply(&self, change: Change) -> ChangeFuture<'_> {
            if let Ok(mut s) = self.seen.lock() {
                s.push(change);
            }
            let answer = self.answer.clone();
            Box::pin(async move { answer })
        }
    }

    fn scope() -> Scope {
        Scope {
            region: "eu-west-1".into(),
            account: "111122223333".into(),
        }
    }

    const BUS_ARN: &str = "arn:aws:events:eu-west-1:111122223333:event-bus/orders";
    const ARCHIVE_ARN: &str = "arn:aws:events:eu-west-1:111122223333:archive/a1";

    async fn call(view: &View, op: &str, req: Value) -> Result<Value, AwsError> {
        let op = operation(op).expect("known operation");
        run(op, &scope(), view, &req).await
    }

    fn change_of(op: &str, req: Value) -> Result<Change, AwsError> {
        match operation(op).expect("known operation") {
            Operation::Change(h) => h(&scope(), &View::new(Ok(Value::Null)), &req).map(|(c, _)| c),
            Operation::Read(_) => panic!("{op} is a read"),
        }
    }

    #[tokio::test]
    async fn archives_map_to_native_changes_and_back() {
        let native = View::new(Ok(
            json!({"name": "new", "bus": "orders", "state": "ENABLED",
            "createdAt": "2026-12-07T11:00:00Z", "retentionDays": 3}),
        ));
        let v = call(
            &native,
            "CreateArchive",
            json!({"ArchiveName": "new", "EventSourceArn": BUS_ARN,
                   "EventPattern": "{\"source\":[\"x\"]}", "RetentionDays": 3, "Description": "hi"}),
        )
        .await
        .expect("created");
        assert_eq!(
            v,
            json!({"ArchiveArn": "arn:aws:events:eu-west-1:111122223333:archive/new",
                   "State": "ENABLED", "CreationTime": 1_796_641_200.0})
        );
        assert_eq!(
            native.seen.lock().expect("lock")[0],
            Change::PutArchive {
                bus: "orders".into(),
                name: "new".into(),
                body: json!({"pattern": {"source": ["x"]}, "retentionDays": 3, "description": "hi"}),
                must_be_new: true,
            }
        );
        // A name is global: taken on another bus is refused.
        let e = change_of(
            "CreateArchive",
            json!({"ArchiveName": "b0", "EventSourceArn": BUS_ARN}),
        )
        .expect_err("exists");
        assert_eq!(e.code, "ResourceAlreadyExistsException");
        let e = change_of(
            "CreateArchive",
            json!({"ArchiveName": "n", "EventSourceArn": "arn:aws:events:eu-west-1:1:event-bus/nope"}),
        )
        .expect_err("no bus");
        assert_eq!(e.code, "ResourceNotFoundException");
        let e = change_of(
            "CreateArchive",
            json!({"ArchiveName": "n", "EventSourceArn": BUS_ARN, "EventPattern": "{"}),
        )
        .expect_err("bad pattern");
        assert_eq!(e.code, "InvalidEventPatternException");
        for bad in [
            json!({"EventSourceArn": BUS_ARN}),
            json!({"ArchiveName": "a/b", "EventSourceArn": BUS_ARN}),
            json!({"ArchiveName": "n", "EventSourceArn": "orders"}),
            json!({"ArchiveName": "n", "EventSourceArn": BUS_ARN, "RetentionDays": -1}),
        ] {
            let e = change_of("CreateArchive", bad.clone()).expect_err("invalid");
            assert_eq!(e.code, "ValidationException", "{bad}: {e}");
        }

        // Update keeps what it does not name.
        let c = change_of(
            "UpdateArchive",
            json!({"ArchiveName": "a1", "RetentionDays": 9}),
        )
        .expect("update");
        assert_eq!(
            c,
            Change::PutArchive {
                bus: "orders".into(),
                name: "a1".into(),
                body: json!({"pattern": {"source": ["app"]}, "retentionDays": 9, "description": "d"}),
                must_be_new: false,
            }
        );
        let e = change_of("UpdateArchive", json!({"ArchiveName": "zz"})).expect_err("missing");
        assert_eq!(e.code, "ResourceNotFoundException");
        assert_eq!(
            change_of("DeleteArchive", json!({"ArchiveName": "a1"})).expect("delete"),
            Change::DeleteArchive {
                bus: "orders".into(),
                name: "a1".into()
            }
        );
        let v = call(
            &View::new(Ok(Value::Null)),
            "DeleteArchive",
            json!({"ArchiveName": "a1"}),
        )
        .await
        .expect("deleted");
        assert_eq!(v, json!({}));

        let d = call(&native, "DescribeArchive", json!({"ArchiveName": "a1"}))
            .await
            .expect("describe");
        assert_eq!(
            d,
            json!({"ArchiveArn": ARCHIVE_ARN, "ArchiveName": "a1", "EventSourceArn": BUS_ARN,
                   "Description": "d", "EventPattern": "{\"source\":[\"app\"]}", "State": "ENABLED",
                   "RetentionDays": 7, "SizeBytes": 3456, "EventCount": 12,
                   "CreationTime": 1_796_637_600.5})
        );
        let l = call(&native, "ListArchives", json!({}))
            .await
            .expect("list");
        let names: Vec<&str> = l["Archives"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|a| a["ArchiveName"].as_str())
            .collect();
        assert_eq!(names, ["a1", "b0"]);
        let l = call(&native, "ListArchives", json!({"EventSourceArn": BUS_ARN}))
            .await
            .expect("by bus");
        assert_eq!(l["Archives"].as_array().map(Vec::len), Some(1));
        let l = call(
            &native,
            "ListArchives",
            json!({"NamePrefix": "b", "State": "ENABLED"}),
        )
        .await
        .expect("by prefix");
        assert_eq!(l["Archives"][0]["ArchiveName"], "b0");
        let l = call(&native, "ListArchives", json!({"Limit": 1}))
            .await
            .expect("page");
        assert_eq!(l["NextToken"], "o1");
        let e = call(&native, "ListArchives", json!({"State": "ON"}))
            .await
            .expect_err("bad state");
        assert_eq!(e.code, "ValidationException");
        let e = call(&native, "DescribeArchive", json!({"ArchiveName": "zz"}))
            .await
            .expect_err("missing");
        assert_eq!(e.code, "ResourceNotFoundException");
    }

    #[tokio::test]
    async fn replays_map_to_native_changes_and_back() {
        let c = change_of(
            "StartReplay",
            json!({"ReplayName": "r", "EventSourceArn": ARCHIVE_ARN, "Description": "x",
                   "EventStartTime": 1_700_000_000, "EventEndTime": 1_700_000_060.5,
                   "Destination": {"Arn": BUS_ARN, "FilterArns": [
                       "arn:aws:events:eu-west-1:111122223333:rule/orders/r1"]}}),
        )
        .expect("start");
        assert_eq!(
            c,
            Change::StartReplay {
                name: "r".into(),
                body: json!({"bus": "orders", "archive": "a1", "start": 1_700_000_000_000u64,
                             "end": 1_700_000_060_500u64, "rules": ["r1"], "description": "x"}),
            }
        );
        let base = json!({"ReplayName": "r", "EventSourceArn": ARCHIVE_ARN,
                          "EventStartTime": 1, "EventEndTime": 2, "Destination": {"Arn": BUS_ARN}});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for (req, code) in [
            (
                with(
                    "Destination",
                    json!({"Arn": "arn:aws:events:eu-west-1:1:event-bus/default"}),
                ),
                "ValidationException",
            ),
            (
                with(
                    "Destination",
                    json!({"Arn": BUS_ARN, "FilterArns": ["arn:aws:events:eu-west-1:1:rule/r1"]}),
                ),
                "ValidationException",
            ),
            (with("Destination", json!(null)), "ValidationException"),
            (with("EventStartTime", json!("soon")), "ValidationException"),
            (
                with(
                    "EventSourceArn",
                    json!("arn:aws:events:eu-west-1:1:archive/zz"),
                ),
                "ResourceNotFoundException",
            ),
            (
                with("EventSourceArn", json!(BUS_ARN)),
                "ValidationException",
            ),
        ] {
            let e = change_of("StartReplay", req.clone()).expect_err("refused");
            assert_eq!(e.code, code, "{req}: {e}");
        }

        let native = View::new(Ok(json!({"name": "r", "state": "STARTING",
                                          "createdAt": "2026-12-07T10:00:00Z"})));
        let v = call(&native, "StartReplay", base.clone())
            .await
            .expect("started");
        assert_eq!(
            v,
            json!({"ReplayArn": "arn:aws:events:eu-west-1:111122223333:replay/r",
                   "State": "STARTING", "ReplayStartTime": 1_796_637_600.0})
        );

        let d = call(&native, "DescribeReplay", json!({"ReplayName": "done"}))
            .await
            .expect("describe");
        assert_eq!(
            d,
            json!({"ReplayName": "done", "ReplayArn": "arn:aws:events:eu-west-1:111122223333:replay/done",
                   "EventSourceArn": ARCHIVE_ARN, "State": "COMPLETED", "Description": "again",
                   "EventStartTime": 1.5, "EventEndTime": 2.5, "EventLastReplayedTime": 2.4,
                   "ReplayStartTime": 1_796_637_601.0, "ReplayEndTime": 1_796_637_602.0,
                   "Destination": {"Arn": BUS_ARN, "FilterArns": [
                       "arn:aws:events:eu-west-1:111122223333:rule/orders/r1"]}})
        );
        let l = call(
            &native,
            "ListReplays",
            json!({"EventSourceArn": ARCHIVE_ARN}),
        )
        .await
        .expect("list");
        let names: Vec<&str> = l["Replays"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|r| r["ReplayName"].as_str())
            .collect();
        assert_eq!(names, ["done", "live"]);
        let l = call(&native, "ListReplays", json!({"State": "RUNNING"}))
            .await
            .expect("by state");
        assert_eq!(l["Replays"][0]["ReplayName"], "live");
        assert!(l["Replays"][0].get("Destination").is_none());

        // The node's refusals become AWS's codes.
        for (err, code) in [
            (
                ChangeError::IllegalState("over".into()),
                "IllegalStatusException",
            ),
            (
                ChangeError::Exists("taken".into()),
                "ResourceAlreadyExistsException",
            ),
            (
                ChangeError::NotFound("gone".into()),
                "ResourceNotFoundException",
            ),
            (
                ChangeError::Invalid {
                    code: "InvalidReplay".into(),
                    message: "end: ...".into(),
                },
                "ValidationException",
            ),
            (
                ChangeError::Invalid {
                    code: "InvalidEventPattern".into(),
                    message: "p".into(),
                },
                "InvalidEventPatternException",
            ),
            (
                ChangeError::Unavailable("no leader".into()),
                "InternalException",
            ),
        ] {
            let e = call(
                &View::new(Err(err)),
                "CancelReplay",
                json!({"ReplayName": "done"}),
            )
            .await
            .expect_err("refused");
            assert_eq!(e.code, code);
        }
        let e = call(&native, "CancelReplay", json!({"ReplayName": "zz"}))
            .await
            .expect_err("missing");
        assert_eq!(e.code, "ResourceNotFoundException");
    }
}
