//! The HTTP API (see docs/api.md).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use strait_federation::store::state::{dead_letter_buses, target_key};
use strait_federation::{
    AppendEntry, AppendOutcome, Command, CommandResponse, FederationError, Refusal, SiteFailure,
};
use strait_routing::pattern::Pattern;
use strait_routing::transform::{Transform, TransformContext, TransformOutput};

use crate::app::{App, bus_json};
use crate::commit::CommitError;
use crate::ingest::{RequestError, parse_request};
use crate::spec::{RuleSpec, SpecError, validate_name};

/// An API error: status, code and message, rendered as
/// `{"error": {"code", "message"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Box<(&'static str, Value)>>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some((k, v)) = self.extra.map(|b| *b) {
            body[k] = v;
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        response
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::bad_request(e.code, e.to_string())
    }
}

impl From<FederationError> for ApiError {
    fn from(e: FederationError) -> Self {
        match e {
            FederationError::NotLeader { .. } | FederationError::Unreachable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NotReady", e.to_string())
            }
            FederationError::Membership(_) => ApiError::new(
                StatusCode::CONFLICT,
                "MembershipChangeRefused",
                e.to_string(),
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                other.to_string(),
            ),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Seconds a producer refused with `StateFull` is told to wait: retention
/// frees space at the next checkpoint that collects (at least every 10 s).
const STATE_FULL_RETRY_SECS: u64 = 10;

/// `507 Insufficient Storage`, code `StateFull`, with the limit and what
/// the state holds, and `Retry-After`.
fn state_full(full: strait_federation::StateFull) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "StateFull",
        full.to_string(),
    );
    err.extra = Some(Box::new((
        "state",
        json!({"maxStateBytes": full.limit, "storedBytes": full.stored}),
    )));
    err.retry_after = Some(STATE_FULL_RETRY_SECS);
    err
}

/// Build the router.
pub fn router(app: Arc<App>) -> Router {
    let aws_path = app.cfg.aws.ingress_path.clone();
    let v1 = Router::new()
        .route("/v1/buses", get(list_buses))
        .route(
            "/v1/buses/{bus}",
            put(put_bus).get(get_bus).delete(delete_bus),
        )
        .route("/v1/buses/{bus}/events", post(post_events))
        .route("/v1/buses/{bus}/rules", get(list_rules))
        .route(
            "/v1/buses/{bus}/rules/{rule}",
            put(put_rule).get(get_rule).delete(delete_rule),
        )
        .route("/v1/sources", get(list_sources))
        .route(
            "/v1/sources/{name}",
            put(put_source).get(get_source).delete(delete_source),
        )
        .route("/v1/patterns:test", post(test_pattern))
        .route("/v1/transforms:test", post(test_transform))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members", post(crate::cluster_api::add_member))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(crate::cluster_api::remove_member),
        )
        .layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            strait_adapters::alibaba_eventbridge::PUT_EVENTS_PATH,
            post(crate::alibaba::put_events),
        )
        .route("/alibaba/push/{bus}", post(crate::alibaba::push))
        .route(&aws_path, post(crate::aws::put_events))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such route (see docs/api.md)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this method is not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            refuse_when_failed,
        ))
        .with_state(app)
}

/// The answer of a node whose Raft stopped on its own: `507 Insufficient
/// Storage` with code `StorageFailed` after a storage error (a full disk,
/// an I/O error), `503` with code `RaftStopped` after anything else. Either
/// way the node accepts no write until it is restarted (docs/operations.md).
pub(crate) fn failure_error(f: &SiteFailure) -> ApiError {
    if f.storage {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "StorageFailed",
            format!(
                "this node's storage failed ({}); it accepts no writes until it is restarted: \
                 free disk space or fix the disk, then restart the node (see docs/operations.md)",
                f.message
            ),
        )
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "RaftStopped",
            format!(
                "this node's Raft stopped ({}); it accepts no writes until it is restarted",
                f.message
            ),
        )
    }
}

/// Writes to a node whose Raft stopped are refused with [`failure_error`]
/// (reads still work); a write that failed because Raft stopped while it
/// was under way gets the same answer instead of a generic 5xx.
async fn refuse_when_failed(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let reads = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) || req.uri().path().ends_with(":test");
    if reads {
        return next.run(req).await;
    }
    if let Some(f) = app.failure() {
        return failure_error(&f).into_response();
    }
    let response = next.run(req).await;
    if response.status().is_server_error()
        && let Some(f) = app.failure()
    {
        return failure_error(&f).into_response();
    }
    response
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.cfg.dev {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if app.cfg.auth.tokens.iter().any(|k| k == t) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the bearer token is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing `Authorization: Bearer <token>` header",
        )
        .into_response(),
    }
}

pub async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "MalformedRequest",
                format!("cannot read the request body: {e}"),
            )
        })?;
        total += chunk.len();
        if total > limit {
            // Read (and drop) the rest, up to a bound, so that the client can
            // finish sending and read this answer instead of a reset.
            let cap = limit.saturating_mul(2).max(limit.saturating_add(8 << 20));
            let drain = async {
                while total <= cap {
                    match stream.next().await {
                        Some(Ok(c)) => total += c.len(),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("request body is larger than the limit of {limit} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn read_json(app: &App, body: Body) -> ApiResult<Value> {
    let bytes = read_body(body, app.cfg.limits.max_request_bytes).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("MalformedRequest", format!("body is not valid JSON: {e}"))
    })
}

fn check_name(kind: &str, name: &str) -> ApiResult<()> {
    validate_name(kind, name).map_err(|e| ApiError::bad_request(e.code, e.message))
}

pub(crate) fn bus_must_exist(app: &App, bus: &str) -> ApiResult<()> {
    if app.site.state.view().buses.contains_key(bus) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "BusNotFound",
            format!(
                "bus `{bus}` does not exist; create it with `PUT /v1/buses/{bus}` or `strait apply` (a `buses:` entry)"
            ),
        ))
    }
}

fn command_result(resp: CommandResponse) -> ApiResult<()> {
    match resp {
        CommandResponse::Ok | CommandResponse::Appended(_) | CommandResponse::Link(_) => Ok(()),
        CommandResponse::NotFound(m) => {
            let code = if m.starts_with("bus") {
                "BusNotFound"
            } else if m.starts_with("source") {
                "SourceNotFound"
            } else {
                "RuleNotFound"
            };
            Err(ApiError::new(StatusCode::NOT_FOUND, code, m))
        }
        CommandResponse::Conflict(m) => {
            let code = if m.contains("still has rules") {
                "BusHasRules"
            } else if m.contains("still has sources") {
                "BusHasSources"
            } else {
                "Conflict"
            };
            Err(ApiError::new(StatusCode::CONFLICT, code, m))
        }
        CommandResponse::Refused(r) => Err(match r {
            Refusal::NoDeadLetterBus { .. } => {
                ApiError::bad_request("DeadLetterBusNotFound", r.to_string())
            }
            Refusal::BusIsDeadLetter { .. } => {
                ApiError::new(StatusCode::CONFLICT, "BusIsDeadLetter", r.to_string())
            }
        }),
    }
}

async fn post_events(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    bus_must_exist(&app, &bus)?;
    let bytes = read_body(body, app.cfg.limits.max_request_bytes).await?;
    let span = tracing::info_span!("ingress", bus = %bus, bytes = bytes.len());
    let _g = span.enter();
    let parsed = parse_request(&headers, &bytes, &app.cfg.limits).map_err(|e| {
        let status = match e {
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    drop(_g);
    commit_parsed(&app, &bus, parsed).await
}

/// Count `n` entries received by an ingress (any: the HTTP API, Alibaba
/// push and PutEvents, AWS PutEvents, SQS sources) for `bus`, valid or
/// not; `""` when the entry names no existing bus (so that clients cannot
/// create label values).
pub(crate) fn count_ingested(bus: &str, n: u64) {
    if n > 0 {
        metrics::counter!("strait_events_ingested_total", "bus" => bus.to_string()).increment(n);
    }
}

/// Commit parsed entries to `bus` and answer with per-entry results (the
/// commit path of `POST /v1/buses/{bus}/events`, shared with the Alibaba
/// push source).
pub(crate) async fn commit_parsed(
    app: &App,
    bus: &str,
    parsed: crate::ingest::Entries,
) -> ApiResult<Response> {
    let bus = bus.to_string();
    let total = parsed.len();
    count_ingested(&bus, total as u64);
    let mut results: Vec<Value> = Vec::with_capacity(total);
    let mut entries = Vec::new();
    let mut slots = Vec::new();
    let mut first_error: Option<(StatusCode, &'static str, String)> = None;
    for (i, (id, r)) in parsed.into_iter().enumerate() {
        match r {
            Ok(p) => {
                entries.push(AppendEntry {
                    bus: bus.clone(),
                    source: p.event.source().to_string(),
                    id: p.event.id().to_string(),
                    event: p.json,
                });
                slots.push(i);
                results.push(json!({"id": id, "status": "pending"}));
            }
            Err(e) => {
                let status = if e.code() == "EventTooLarge" {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                if first_error.is_none() {
                    first_error = Some((status, e.code(), e.to_string()));
                }
                results.push(json!({"id": id, "status": "error", "error": {"code": e.code(), "message": e.to_string()}}));
            }
        }
    }
    let outcomes = match app.committer.append(entries).await {
        Ok(o) => o,
        Err(CommitError::NotReady(m)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NotReady",
                m,
            ));
        }
        Err(CommitError::Failed(m)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "CommitFailed",
                m,
            ));
        }
        Err(CommitError::StateFull(full)) => return Err(state_full(full)),
    };
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        let status = match outcome {
            AppendOutcome::Accepted(_) => {
                accepted += 1;
                "accepted"
            }
            AppendOutcome::Duplicate => {
                duplicates += 1;
                "duplicate"
            }
            AppendOutcome::NoSuchBus => {
                results[slot]["error"] =
                    json!({"code": "BusNotFound", "message": format!("bus `{bus}` was deleted")});
                if first_error.is_none() {
                    first_error = Some((
                        StatusCode::NOT_FOUND,
                        "BusNotFound",
                        format!("bus `{bus}` was deleted"),
                    ));
                }
                "error"
            }
        };
        results[slot]["status"] = json!(status);
    }
    metrics::counter!("strait_events_committed_total").increment(accepted);
    metrics::counter!("strait_events_duplicate_total").increment(duplicates);
    let failed = total as u64 - accepted - duplicates;
    let body = json!({"accepted": accepted, "duplicates": duplicates, "failed": failed, "results": results});
    if failed == 0 {
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    metrics::counter!("strait_events_rejected_total").increment(failed);
    if accepted + duplicates > 0 {
        return Ok((StatusCode::MULTI_STATUS, Json(body)).into_response());
    }
    let (status, code, message) = first_error.unwrap_or((
        StatusCode::BAD_REQUEST,
        "InvalidEvent",
        "no event accepted".into(),
    ));
    let mut err = ApiError::new(status, code, message);
    err.extra = Some(Box::new(("results", body["results"].clone())));
    Err(err)
}

async fn list_buses(State(app): State<Arc<App>>) -> Json<Value> {
    let buses: Vec<Value> = app.site.state.view().buses.values().cloned().collect();
    Json(json!({"buses": buses}))
}

async fn get_bus(State(app): State<Arc<App>>, Path(bus): Path<String>) -> ApiResult<Json<Value>> {
    bus_must_exist(&app, &bus)?;
    let v = app
        .site
        .state
        .view()
        .buses
        .get(&bus)
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Json(v))
}

async fn put_bus(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("bus", &bus)?;
    let v = read_json(&app, body).await?;
    let description = match &v {
        Value::Null => String::new(),
        Value::Object(m) => {
            if let Some(k) = m.keys().find(|k| *k != "description" && *k != "name") {
                return Err(ApiError::bad_request(
                    "InvalidBus",
                    format!("{k}: unknown field (allowed: description)"),
                ));
            }
            match m.get("description") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "InvalidBus",
                        "description: must be a string",
                    ));
                }
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "InvalidBus",
                "the body must be a JSON object",
            ));
        }
    };
    let created = app
        .site
        .state
        .view()
        .buses
        .get(&bus)
        .and_then(|b| b.get("createdAt"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let spec = bus_json(&bus, &description, created.as_deref());
    command_result(
        app.write_config(Command::PutBus {
            name: bus,
            spec: spec.clone(),
        })
        .await?,
    )?;
    Ok(Json(spec))
}

async fn delete_bus(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    command_result(app.write_config(Command::DeleteBus { name: bus }).await?)?;
    Ok(Json(json!({"deleted": true})))
}

fn rule_view(app: &App, bus: &str, name: &str, spec: &Value, with_status: bool) -> Value {
    let mut v = spec.clone();
    v["name"] = json!(name);
    v["bus"] = json!(bus);
    if with_status {
        let mut targets = serde_json::Map::new();
        if let Some(ts) = spec.get("targets").and_then(Value::as_array) {
            for t in ts {
                let Some(id) = t.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let key = target_key(bus, name, id);
                let replicated = app
                    .site
                    .state
                    .view()
                    .cursors
                    .get(&key)
                    .copied()
                    .unwrap_or(0);
                let live = crate::dispatch::stats(&app.progress, &key).unwrap_or_default();
                let cursor = live.cursor.max(replicated);
                let lag = app
                    .site
                    .state
                    .count_events_from(bus, cursor, 1_000_000)
                    .unwrap_or(0);
                targets.insert(
                    id.to_string(),
                    json!({
                        "cursor": cursor,
                        "checkpoint": replicated,
                        "delivered": live.delivered,
                        "deadLettered": live.dead_lettered,
                        "dropped": live.dropped,
                        "deadLetterFailed": live.dead_letter_failed,
                        "lastDeadLetterError": live.last_dead_letter_error,
                        "failedAttempts": live.failed_attempts,
                        "lastError": live.last_error,
                        "lag": lag,
                    }),
                );
            }
        }
        v["status"] = json!({"targets": targets});
    }
    v
}

async fn list_rules(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    bus_must_exist(&app, &bus)?;
    let rules: Vec<(String, Value)> = app
        .site
        .state
        .view()
        .rules
        .iter()
        .filter(|((b, _), _)| *b == bus)
        .map(|((_, r), v)| (r.clone(), v.clone()))
        .collect();
    let out: Vec<Value> = rules
        .iter()
        .map(|(r, v)| rule_view(&app, &bus, r, v, false))
        .collect();
    Ok(Json(json!({"rules": out})))
}

async fn get_rule(
    State(app): State<Arc<App>>,
    Path((bus, rule)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    bus_must_exist(&app, &bus)?;
    let spec = app
        .site
        .state
        .view()
        .rules
        .get(&(bus.clone(), rule.clone()))
        .cloned();
    match spec {
        Some(s) => Ok(Json(rule_view(&app, &bus, &rule, &s, true))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "RuleNotFound",
            format!("rule `{rule}` does not exist on bus `{bus}`"),
        )),
    }
}

async fn put_rule(
    State(app): State<Arc<App>>,
    Path((bus, rule)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("rule", &rule)?;
    bus_must_exist(&app, &bus)?;
    let mut v = read_json(&app, body).await?;
    if let Some(m) = v.as_object_mut() {
        // Echoed fields from a GET are fine to send back.
        m.remove("name");
        m.remove("bus");
        m.remove("status");
    }
    let mut spec = RuleSpec::from_json(&v)?;
    for (i, t) in spec.targets.iter_mut().enumerate() {
        if app.control.is_some() && t.site.is_none() {
            // Shared rules run everywhere: a target without a site is
            // delivered by the site it was created at.
            t.site = Some(app.cfg.site.clone());
        }
        if let Some(site) = &t.site
            && *site != app.cfg.site
            && !app.cfg.federation.links.contains_key(site)
        {
            let known: Vec<&String> = std::iter::once(&app.cfg.site)
                .chain(app.cfg.federation.links.keys())
                .collect();
            return Err(ApiError::bad_request(
                "UnknownSite",
                format!(
                    "targets[{i}].site: no link from site {:?} to site {site:?} (known sites: {known:?})",
                    app.cfg.site
                ),
            ));
        }
    }
    let stored = serde_json::to_value(&spec).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })?;
    let targets = spec.targets.iter().map(|t| t.id.clone()).collect();
    share_bus(&app, &bus).await?;
    // A dead-letter bus this site has from its configuration is shared
    // too, so that every site can store dead letters on it. (Whether it
    // exists is checked when the rule is committed.)
    for (_, dl_bus) in dead_letter_buses(&stored) {
        share_bus(&app, dl_bus).await?;
    }
    command_result(
        app.write_config(Command::PutRule {
            bus: bus.clone(),
            name: rule.clone(),
            spec: stored.clone(),
            targets,
        })
        .await?,
    )?;
    Ok(Json(rule_view(&app, &bus, &rule, &stored, false)))
}

/// A bus this site has from its own configuration becomes shared with its
/// first shared rule or source.
async fn share_bus(app: &App, bus: &str) -> ApiResult<()> {
    if let Some(control) = &app.control {
        let bus_spec = app.site.state.view().buses.get(bus).cloned();
        let shared = control.group.state.view().buses.contains_key(bus);
        if let (false, Some(spec)) = (shared, bus_spec) {
            command_result(
                app.write_config(Command::PutBus {
                    name: bus.to_string(),
                    spec,
                })
                .await?,
            )?;
        }
    }
    Ok(())
}

async fn delete_rule(
    State(app): State<Arc<App>>,
    Path((bus, rule)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    command_result(
        app.write_config(Command::DeleteRule { bus, name: rule })
            .await?,
    )?;
    Ok(Json(json!({"deleted": true})))
}

/// Sites a source may name: this one, the linked ones and those of the
/// control group's members.
fn known_sites(app: &App) -> Vec<String> {
    let mut sites: Vec<String> = std::iter::once(app.cfg.site.clone())
        .chain(app.cfg.federation.links.keys().cloned())
        .chain(app.cfg.control.members.iter().map(|m| m.site.clone()))
        .collect();
    sites.sort();
    sites.dedup();
    sites
}

fn source_view(app: &App, name: &str, spec: &Value, with_status: bool) -> Value {
    let mut v = spec.clone();
    v["name"] = json!(name);
    if with_status {
        v["status"] = app.sources.get(name).to_json();
    }
    v
}

async fn list_sources(State(app): State<Arc<App>>) -> Json<Value> {
    let out: Vec<Value> = app
        .site
        .state
        .sources()
        .iter()
        .map(|(n, v)| source_view(&app, n, v, false))
        .collect();
    Json(json!({"sources": out}))
}

fn source_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "SourceNotFound",
        format!("source `{name}` does not exist"),
    )
}

async fn get_source(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let spec = app.site.state.view().sources.get(&name).cloned();
    match spec {
        Some(s) => Ok(Json(source_view(&app, &name, &s, true))),
        None => Err(source_not_found(&name)),
    }
}

async fn put_source(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("source", &name)?;
    let mut v = read_json(&app, body).await?;
    if let Some(m) = v.as_object_mut() {
        // Echoed fields from a GET are fine to send back.
        m.remove("name");
        m.remove("status");
    }
    let mut spec = crate::source_spec::SourceSpec::from_json(&v)?;
    let site = spec
        .site
        .get_or_insert_with(|| app.cfg.site.clone())
        .clone();
    let known = known_sites(&app);
    if !known.contains(&site) {
        return Err(ApiError::bad_request(
            "UnknownSite",
            format!("site: {site:?} is not a site of this federation (known sites: {known:?})"),
        ));
    }
    if !app.site.state.view().buses.contains_key(&spec.bus) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "BusNotFound",
            format!(
                "bus: bus `{b}` does not exist; create it with `PUT /v1/buses/{b}` or `strait apply`",
                b = spec.bus
            ),
        ));
    }
    let stored = serde_json::to_value(&spec).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })?;
    share_bus(&app, &spec.bus).await?;
    command_result(
        app.write_config(Command::PutSource {
            name: name.clone(),
            spec: stored.clone(),
        })
        .await?,
    )?;
    Ok(Json(source_view(&app, &name, &stored, false)))
}

async fn delete_source(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    command_result(app.write_config(Command::DeleteSource { name }).await?)?;
    Ok(Json(json!({"deleted": true})))
}

fn field<'a>(v: &'a Value, name: &str) -> ApiResult<&'a Value> {
    v.get(name).ok_or_else(|| {
        ApiError::bad_request(
            "MalformedRequest",
            format!("{name}: required field is missing"),
        )
    })
}

fn event_field(v: &Value) -> ApiResult<&Value> {
    let event = field(v, "event")?;
    if event.is_object() {
        Ok(event)
    } else {
        Err(ApiError::bad_request(
            "MalformedRequest",
            format!(
                "event: must be a JSON object, got {}",
                strait_routing::event::json_kind(event)
            ),
        ))
    }
}

async fn test_pattern(State(app): State<Arc<App>>, body: Body) -> ApiResult<Json<Value>> {
    let v = read_json(&app, body).await?;
    let pattern = Pattern::parse(field(&v, "pattern")?)
        .map_err(|e| ApiError::bad_request("InvalidPattern", format!("pattern: {e}")))?;
    let event = event_field(&v)?;
    Ok(Json(json!({"matched": pattern.matches(event)})))
}

async fn test_transform(State(app): State<Arc<App>>, body: Body) -> ApiResult<Json<Value>> {
    let v = read_json(&app, body).await?;
    let transform = Transform::parse(field(&v, "transform")?)
        .map_err(|e| ApiError::bad_request("InvalidTransform", format!("transform: {e}")))?;
    let event = event_field(&v)?;
    let now = chrono::Utc::now().to_rfc3339();
    let ctx = TransformContext {
        rule_name: "test-rule",
        rule_id: "test-rule",
        ingestion_time: &now,
    };
    let out = transform
        .apply(event, &ctx)
        .map_err(|e| ApiError::bad_request("TransformFailed", e.to_string()))?;
    let output = match out {
        TransformOutput::Original => event.clone(),
        TransformOutput::Json(v) => v,
        TransformOutput::Text(s) => Value::String(s),
    };
    Ok(Json(json!({"output": output})))
}

async fn cluster(State(app): State<Arc<App>>) -> Json<Value> {
    let mut v = crate::cluster::status(&app.cfg, &app.site, app.writer.endpoint(), app.cert_expiry);
    v["links"] = crate::links::status(&app);
    if let Some(c) = &app.control {
        v["control"] = c.status(&app.site);
    }
    Json(v)
}

/// Liveness: 503 once the node's Raft stopped on its own (a restart is
/// what it needs).
async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.failure() {
        Some(f) => not_serving(&f),
        None => Json(json!({"status": "ok"})).into_response(),
    }
}

/// `503` with the failure's code and message (for `/healthz` and `/readyz`).
fn not_serving(f: &SiteFailure) -> Response {
    let mut e = failure_error(f);
    e.status = StatusCode::SERVICE_UNAVAILABLE;
    e.into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if let Some(f) = app.failure() {
        return not_serving(&f);
    }
    let leader = app.site.raft.metrics().borrow().current_leader;
    match leader {
        Some(l) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "leader": l})),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            "no Raft leader yet",
        )
        .into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
