//! The AWS-compatible control API: EventBridge's JSON 1.1 operations on
//! buses and rules (`DescribeEventBus`, `ListEventBuses`, `ListRules`,
//! `DescribeRule`) and on archives and replays (`CreateArchive`,
//! `DescribeArchive`, `ListArchives`, `UpdateArchive`, `DeleteArchive`,
//! `StartReplay`, `DescribeReplay`, `ListReplays`, `CancelReplay`), in AWS's
//! request and response shapes, with AWS's ARNs and error codes. The
//! mapping is pure: the node gives a [`ControlView`] of its buses, rules,
//! archives and replays and makes the [`Change`]s a handler asks for
//! (through its native archive and replay operations); the SigV4 check
//! and the HTTP glue are [`super::ingress`]'s.
//!
//! Operations are looked up by name in [`OPERATIONS`]: a read is a
//! [`Handler`]; a change is a [`ChangeHandler`] that maps the request to a
//! [`Change`] and the native answer back to AWS's response.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value, json};

/// A bus as the control API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusInfo {
    /// Bus name.
    pub name: String,
    /// Free text (empty: none).
    pub description: String,
}

/// A rule as the control API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleInfo {
    /// The bus it is on.
    pub bus: String,
    /// Rule name.
    pub name: String,
    /// The event pattern (JSON).
    pub pattern: Value,
    /// Whether it matches (`State` ENABLED / DISABLED).
    pub enabled: bool,
    /// Free text (empty: none).
    pub description: String,
}

/// A change an archive or replay operation asks the node to make: the
/// native operations of docs/api.md ("Archives and replays"), with the
/// native request bodies.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create (`must_be_new`) or replace the archive `name` of `bus`;
    /// `body` is the native `{"pattern"?, "retentionDays", "description"}`.
    /// Answers the native archive.
    PutArchive {
        /// The archive's bus.
        bus: String,
        /// Archive name.
        name: String,
        /// The native settings.
        body: Value,
        /// Refuse an archive that exists (`CreateArchive`).
        must_be_new: bool,
    },
    /// Delete the archive `name` of `bus`. Answers anything.
    DeleteArchive {
        /// The archive's bus.
        bus: String,
        /// Archive name.
        name: String,
    },
    /// Start the replay `name`; `body` is the native `{"bus", "archive",
    /// "start", "end", "rules"?, "description"?}` (times in ms). Answers
    /// the native replay.
    StartReplay {
        /// Replay name.
        name: String,
        /// The native request.
        body: Value,
    },
    /// Cancel the replay `name`. Answers the native replay.
    CancelReplay {
        /// Replay name.
        name: String,
    },
}

/// Why the node refused a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// A field is invalid; `code` is the native code (`InvalidEventPattern`
    /// becomes `InvalidEventPatternException`, any other
    /// `ValidationException`).
    #[error("{message}")]
    Invalid {
        /// The native error code.
        code: String,
        /// Why (starting with the field).
        message: String,
    },
    /// The bus, archive, rule or replay does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists already.
    #[error("{0}")]
    Exists(String),
    /// Its state refuses the change (a finished replay cannot be cancelled).
    #[error("{0}")]
    IllegalState(String),
    /// The change could not be written (no leader, timeout).
    #[error("{0}")]
    Unavailable(String),
}

impl From<ChangeError> for AwsError {
    fn from(e: ChangeError) -> AwsError {
        let (status, code, message) = match e {
            ChangeError::Invalid { code, message } if code == "InvalidEventPattern" => {
                (400, "InvalidEventPatternException", message)
            }
            ChangeError::Invalid { message, .. } => (400, "ValidationException", message),
            ChangeError::NotFound(m) => (400, "ResourceNotFoundException", m),
            ChangeError::Exists(m) => (400, "ResourceAlreadyExistsException", m),
            ChangeError::IllegalState(m) => (400, "IllegalStatusException", m),
            ChangeError::Unavailable(m) => (500, "InternalException", m),
        };
        AwsError {
            status,
            code,
            message,
        }
    }
}

/// What [`ControlView::apply`] returns.
pub type ChangeFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, ChangeError>> + Send + 'a>>;

/// What the control API reads and changes: the site's buses, rules,
/// archives and replays.
pub trait ControlView: Send + Sync {
    /// Every bus, in name order.
    fn buses(&self) -> Vec<BusInfo>;
    /// The rules of `bus` in name order, `None` when the bus does not exist.
    fn rules(&self, bus: &str) -> Option<Vec<RuleInfo>>;
    /// Every archive of every bus, as the native API describes them
    /// (`{"name", "bus", "pattern"?, "retentionDays", "description",
    /// "createdAt", "state", "eventCount", "sizeBytes"}`).
    fn archives(&self) -> Vec<Value> {
        Vec::new()
    }
    /// Every replay, as the native API describes them (`{"name", "bus",
    /// "archive", "startMs", "endMs", "rules"?, "description", "state",
    /// "stateReason"?, "lastReplayedMs"?, "createdAt", "startedAt"?,
    /// "endedAt"?}`).
    fn replays(&self) -> Vec<Value> {
        Vec::new()
    }
    /// Make `change` (through the node's native operations).
    fn apply(&self, change: Change) -> ChangeFuture<'_> {
        drop(change);
        Box::pin(async {
            Err(ChangeError::Unavailable(
                "archives and replays are not served by this endpoint".into(),
            ))
        })
    }
}

/// A view with no buses (an ingress serving PutEvents only).
pub struct NoControl;

impl ControlView for NoControl {
    fn buses(&self) -> Vec<BusInfo> {
        Vec::new()
    }
    fn rules(&self, _bus: &str) -> Option<Vec<RuleInfo>> {
        None
    }
}

/// Where ARNs point: the request's signed region and the configured account.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Region (from the request's SigV4 credential scope).
    pub region: String,
    /// Account id (`aws.account_id`).
    pub account: String,
}

impl Scope {
    /// `arn:aws:events:{region}:{account}:event-bus/{bus}`.
    pub fn bus_arn(&self, bus: &str) -> String {
        format!(
            "arn:aws:events:{}:{}:event-bus/{bus}",
            self.region, self.account
        )
    }

    /// `arn:aws:events:{region}:{account}:rule/{bus}/{rule}` (AWS leaves the
    /// bus out for the default bus: `rule/{rule}`).
    pub fn rule_arn(&self, bus: &str, rule: &str) -> String {
        if bus == "default" {
            format!(
                "arn:aws:events:{}:{}:rule/{rule}",
                self.region, self.account
            )
        } else {
            format!(
                "arn:aws:events:{}:{}:rule/{bus}/{rule}",
                self.region, self.account
            )
        }
    }
}

impl Scope {
    /// `arn:aws:events:{region}:{account}:archive/{name}`.
    pub fn archive_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:events:{}:{}:archive/{name}",
            self.region, self.account
        )
    }

    /// `arn:aws:events:{region}:{account}:replay/{name}`.
    pub fn replay_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:events:{}:{}:replay/{name}",
            self.region, self.account
        )
    }
}

/// An AWS error: HTTP status, `__type` code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AwsError {
    /// HTTP status.
    pub status: u16,
    /// The `__type` (`ResourceNotFoundException`, `ValidationException`, ...).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl AwsError {
    /// `ValidationException` (400).
    pub fn validation(message: impl Into<String>) -> AwsError {
        AwsError {
            status: 400,
            code: "ValidationException",
            message: message.into(),
        }
    }

    /// `ResourceNotFoundException` (400, as AWS answers it).
    pub fn not_found(message: impl Into<String>) -> AwsError {
        AwsError {
            status: 400,
            code: "ResourceNotFoundException",
            message: message.into(),
        }
    }
}

/// A read operation: the request's JSON to the response's JSON.
pub type Handler = fn(&Scope, &dyn ControlView, &Value) -> Result<Value, AwsError>;

/// Maps a change's native answer to AWS's response.
pub type Finish = fn(&Scope, &Value) -> Result<Value, AwsError>;

/// A change operation: the request's JSON to the [`Change`] to make and
/// how to answer once it is made.
pub type ChangeHandler = fn(&Scope, &dyn ControlView, &Value) -> Result<(Change, Finish), AwsError>;

/// A control operation.
#[derive(Clone, Copy)]
pub enum Operation {
    /// Reads the view.
    Read(Handler),
    /// Changes the node's state through [`ControlView::apply`].
    Change(ChangeHandler),
}

/// The control operations, by their name in `X-Amz-Target`
/// (`AWSEvents.<name>`).
pub const OPERATIONS: &[(&str, Operation)] = &[
    ("DescribeEventBus", Operation::Read(describe_event_bus)),
    ("ListEventBuses", Operation::Read(list_event_buses)),
    ("ListRules", Operation::Read(list_rules)),
    ("DescribeRule", Operation::Read(describe_rule)),
    ("CreateArchive", Operation::Change(create_archive)),
    ("UpdateArchive", Operation::Change(update_archive)),
    ("DescribeArchive", Operation::Read(describe_archive)),
    ("ListArchives", Operation::Read(list_archives)),
    ("DeleteArchive", Operation::Change(delete_archive)),
    ("StartReplay", Operation::Change(start_replay)),
    ("DescribeReplay", Operation::Read(describe_replay)),
    ("ListReplays", Operation::Read(list_replays)),
    ("CancelReplay", Operation::Change(cancel_replay)),
];

/// The operation `name` (without the `AWSEvents.` prefix).
pub fn operation(name: &str) -> Option<Operation> {
    OPERATIONS.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
}

/// Run `op` on `view`: a read directly, a change through
/// [`ControlView::apply`] and the operation's [`Finish`].
pub async fn run(
    op: Operation,
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    match op {
        Operation::Read(h) => h(scope, view, req),
        Operation::Change(h) => {
            let (change, finish) = h(scope, view, req)?;
            let answer = view.apply(change).await?;
            finish(scope, &answer)
        }
    }
}

/// Largest `Limit` of the list operations (AWS: 100).
pub const MAX_LIMIT: usize = 100;

/// An optional string field of the request.
fn opt_str<'a>(req: &'a Value, field: &str) -> Result<Option<&'a str>, AwsError> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AwsError::validation(format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member must be a string",
            lower_first(field)
        ))),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The bus a request names (`Name` or `EventBusName`: a name or an ARN;
/// none: `default`).
fn bus_name(req: &Value, field: &str) -> Result<String, AwsError> {
    let Some(v) = opt_str(req, field)? else {
        return Ok("default".into());
    };
    if v.is_empty() {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '' at '{}' failed to satisfy constraint: Member must have length greater than or equal to 1",
            lower_first(field)
        )));
    }
    if let Some(rest) = v.strip_prefix("arn:") {
        return rest
            .split_once(":event-bus/")
            .map(|(_, b)| b.to_string())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                AwsError::validation(format!(
                    "{field}: {v:?} is not an event bus ARN (arn:aws:events:REGION:ACCOUNT:event-bus/NAME)"
                ))
            });
    }
    Ok(v.to_string())
}

/// `Limit` (1..=100) and `NextToken` (an offset written by an earlier page).
fn paging(req: &Value) -> Result<(usize, usize), AwsError> {
    let limit = match req.get("Limit") {
        None | Some(Value::Null) => MAX_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
            _ => {
                return Err(AwsError::validation(format!(
                    "1 validation error detected: Value '{v}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {MAX_LIMIT}"
                )));
            }
        },
    };
    let offset = match opt_str(req, "NextToken")? {
        None => 0,
        Some(t) => t
            .strip_prefix("o")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                AwsError::validation(format!("NextToken: {t:?} is not a token this API gave"))
            })?,
    };
    Ok((limit, offset))
}

/// One page of `items` and the token of the next.
fn page<T: Clone>(items: &[T], limit: usize, offset: usize) -> (Vec<T>, Option<String>) {
    let end = offset.saturating_add(limit).min(items.len());
    let got = items
        .get(offset.min(items.len())..end)
        .unwrap_or(&[])
        .to_vec();
    let next = (end < items.len()).then(|| format!("o{end}"));
    (got, next)
}

fn bus_json(scope: &Scope, b: &BusInfo) -> Value {
    let mut m = Map::new();
    m.insert("Name".into(), json!(b.name));
    m.insert("Arn".into(), json!(scope.bus_arn(&b.name)));
    if !b.description.is_empty() {
        m.insert("Description".into(), json!(b.description));
    }
    Value::Object(m)
}

fn rule_json(scope: &Scope, r: &RuleInfo) -> Value {
    let mut m = Map::new();
    m.insert("Name".into(), json!(r.name));
    m.insert("Arn".into(), json!(scope.rule_arn(&r.bus, &r.name)));
    m.insert("EventPattern".into(), json!(r.pattern.to_string()));
    m.insert(
        "State".into(),
        json!(if r.enabled { "ENABLED" } else { "DISABLED" }),
    );
    if !r.description.is_empty() {
        m.insert("Description".into(), json!(r.description));
    }
    m.insert("EventBusName".into(), json!(r.bus));
    Value::Object(m)
}

fn no_bus(bus: &str) -> AwsError {
    AwsError::not_found(format!("Event bus {bus} does not exist."))
}

/// `DescribeEventBus` {Name?}.
pub fn describe_event_bus(
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    let name = bus_name(req, "Name")?;
    let bus = view
        .buses()
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| no_bus(&name))?;
    Ok(bus_json(scope, &bus))
}

/// `ListEventBuses` {NamePrefix?, Limit?, NextToken?}.
pub fn list_event_buses(
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    let prefix = opt_str(req, "NamePrefix")?.unwrap_or("");
    let (limit, offset) = paging(req)?;
    let buses: Vec<BusInfo> = view
        .buses()
        .into_iter()
        .filter(|b| b.name.starts_with(prefix))
        .collect();
    let (got, next) = page(&buses, limit, offset);
    let mut out = json!({"EventBuses": got.iter().map(|b| bus_json(scope, b)).collect::<Vec<_>>()});
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

/// `ListRules` {EventBusName?, NamePrefix?, Limit?, NextToken?}.
pub fn list_rules(scope: &Scope, view: &dyn ControlView, req: &Value) -> Result<Value, AwsError> {
    let bus = bus_name(req, "EventBusName")?;
    let prefix = opt_str(req, "NamePrefix")?.unwrap_or("");
    let (limit, offset) = paging(req)?;
    let rules: Vec<RuleInfo> = view
        .rules(&bus)
        .ok_or_else(|| no_bus(&bus))?
        .into_iter()
        .filter(|r| r.name.starts_with(prefix))
        .collect();
    let (got, next) = page(&rules, limit, offset);
    let mut out = json!({"Rules": got.iter().map(|r| rule_json(scope, r)).collect::<Vec<_>>()});
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

/// `DescribeRule` {Name, EventBusName?}.
pub fn describe_rule(
    scope: &Scope,
    view: &dyn ControlView,
    req: &Value,
) -> Result<Value, AwsError> {
    let name = opt_str(req, "Name")?.ok_or_else(|| {
        AwsError::validation(
            "1 validation error detected: Value null at 'name' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let bus = bus_name(req, "EventBusName")?;
    let rule = view
        .rules(&bus)
        .ok_or_else(|| no_bus(&bus))?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            AwsError::not_found(format!("Rule {name} does not exist on EventBus {bus}."))
        })?;
    let mut out = rule_json(scope, &rule);
    out["CreatedBy"] = json!(scope.account);
    Ok(out)
}

mod archives;
pub use archives::{
    cancel_replay, create_archive, delete_archive, describe_archive, describe_replay,
    list_archives, list_replays, start_replay, update_archive,
};

#[cfg(test)]
mod tests {
    use super::*;

    struct View;
    impl ControlView for View {
        fn buses(&self) -> Vec<BusInfo> {
            ["default", "orders", "orders-dlq"]
                .iter()
                .map(|n| BusInfo {
                    name: n.to_string(),
                    description: if *n == "orders" {
                        "the orders".into()
                    } else {
                        String::new()
                    },
                })
                .collect()
        }
        fn rules(&self, bus: &str) -> Option<Vec<RuleInfo>> {
            if !self.buses().iter().any(|b| b.name == bus) {
                return None;
            }
            Some(
                (0..5)
                    .map(|i| RuleInfo {
                        bus: bus.into(),
                        name: format!("r{i}"),
                        pattern: json!({"source": ["app"]}),
                        enabled: i != 3,
                        description: String::new(),
                    })
                    .collect(),
            )
        }
    }

    fn scope() -> Scope {
        Scope {
            region: "eu-west-1".into(),
            account: "111122223333".into(),
        }
    }

    fn call(op: &str, req: Value) -> Result<Value, AwsError> {
        match operation(op).expect("known operation") {
            Operation::Read(h) => h(&scope(), &View, &req),
            Operation::Change(_) => panic!("{op} is a change"),
        }
    }

    #[test]
    fn describes_buses_by_name_arn_or_default() {
        let v = call("DescribeEventBus", json!({})).expect("default");
        assert_eq!(v["Name"], "default");
        assert_eq!(
            v["Arn"],
            "arn:aws:events:eu-west-1:111122223333:event-bus/default"
        );
        let v = call(
            "DescribeEventBus",
            json!({"Name": "arn:aws:events:eu-west-1:111122223333:event-bus/orders"}),
        )
        .expect("by arn");
        assert_eq!(v["Description"], "the orders");
        let e = call("DescribeEventBus", json!({"Name": "nope"})).expect_err("missing");
        assert_eq!(e.code, "ResourceNotFoundException");
        let e = call("DescribeEventBus", json!({"Name": 3})).expect_err("type");
        assert_eq!(e.code, "ValidationException");
        assert!(e.message.contains("'name'"), "{e}");
    }

    #[test]
    fn lists_page_with_prefix_limit_and_token() {
        let v = call(
            "ListEventBuses",
            json!({"NamePrefix": "orders", "Limit": 1}),
        )
        .expect("page 1");
        assert_eq!(v["EventBuses"][0]["Name"], "orders");
        let t = v["NextToken"].as_str().expect("token").to_string();
        let v = call(
            "ListEventBuses",
            json!({"NamePrefix": "orders", "Limit": 1, "NextToken": t}),
        )
        .expect("page 2");
        assert_eq!(v["EventBuses"][0]["Name"], "orders-dlq");
        assert!(v.get("NextToken").is_none(), "{v}");

        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({"EventBusName": "orders", "Limit": 2});
            if let Some(t) = &token {
                req["NextToken"] = json!(t);
            }
            let v = call("ListRules", req).expect("rules");
            for r in v["Rules"].as_array().expect("array") {
                names.push(r["Name"].as_str().unwrap_or_default().to_string());
                assert_eq!(r["EventBusName"], "orders");
                assert_eq!(r["EventPattern"], "{\"source\":[\"app\"]}");
            }
            match v.get("NextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        assert_eq!(names, ["r0", "r1", "r2", "r3", "r4"]);
        for bad in [
            json!({"Limit": 0}),
            json!({"Limit": 101}),
            json!({"NextToken": "x"}),
        ] {
            let e = call("ListRules", bad).expect_err("bad paging");
            assert_eq!(e.code, "ValidationException");
        }
        let e = call("ListRules", json!({"EventBusName": "nope"})).expect_err("no bus");
        assert_eq!(e.code, "ResourceNotFoundException");
    }

    #[test]
    fn describes_rules_with_arn_and_state() {
        let v = call(
            "DescribeRule",
            json!({"Name": "r3", "EventBusName": "orders"}),
        )
        .expect("rule");
        assert_eq!(v["State"], "DISABLED");
        assert_eq!(
            v["Arn"],
            "arn:aws:events:eu-west-1:111122223333:rule/orders/r3"
        );
        let v = call("DescribeRule", json!({"Name": "r0"})).expect("default bus");
        assert_eq!(v["Arn"], "arn:aws:events:eu-west-1:111122223333:rule/r0");
        let e = call("DescribeRule", json!({"Name": "zz"})).expect_err("missing");
        assert_eq!(e.code, "ResourceNotFoundException");
        let e = call("DescribeRule", json!({})).expect_err("no name");
        assert_eq!(e.code, "ValidationException");
        assert!(operation("PutRule").is_none());
    }
}
