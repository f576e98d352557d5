//! Dead letters and seeks (docs/replay.md):
//! `GET /v1/buses/{bus}/rules/{rule}/dead-letters`,
//! `GET /v1/buses/{bus}/rules/{rule}/targets/{target}/dead-letters`,
//! `POST /v1/buses/{bus}/rules/{rule}/targets/{target}/dead-letters/redrive`,
//! `POST /v1/buses/{bus}/rules/{rule}/targets/{target}/seek`; the work is
//! [`crate::redrive`]'s.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use crate::http::Resources;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult};
use crate::redrive::{
    self, BusDeadLetterList, DeadLetterList, RedriveError, RedriveRequest, RedriveResult,
    SeekRequest, SeekResult,
};

/// Dead letters a page holds when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Most dead letters a page holds.
const MAX_LIMIT: usize = 1000;

fn api_error(e: RedriveError) -> ApiError {
    match e {
        RedriveError::Invalid { field, message } => {
            ApiError::bad_request("InvalidRequest", format!("{field}: {message}"))
        }
        e @ RedriveError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string())
        }
        e @ RedriveError::NoSuchDeadLetters { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "DeadLetterNotFound", e.to_string())
        }
        e @ RedriveError::BeforeRetention { .. } => {
            ApiError::bad_request("BeforeRetention", format!("time: {e}"))
        }
        e @ RedriveError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            e.to_string(),
        ),
    }
}

/// `limit` and `next` of a listing.
fn paging(params: Vec<(String, String)>) -> ApiResult<(usize, Option<String>)> {
    let mut limit = DEFAULT_LIMIT;
    let mut next = None;
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(
                            "InvalidParameter",
                            format!("`limit`: {v:?} is not a number from 1 to {MAX_LIMIT}"),
                        ));
                    }
                }
            }
            "next" if !v.is_empty() => next = Some(v),
            other => {
                return Err(ApiError::bad_request(
                    "InvalidParameter",
                    format!("`{other}`: unknown parameter (this route takes `limit` and `next`)"),
                ));
            }
        }
    }
    Ok((limit, next))
}

async fn list_of(
    res: Arc<Resources>,
    bus: String,
    rule: String,
    target: Option<String>,
    params: Vec<(String, String)>,
) -> ApiResult<Json<DeadLetterList>> {
    let (limit, next) = paging(params)?;
    let r = tokio::task::spawn_blocking(move || {
        redrive::list(
            &res.state,
            &res.site,
            &bus,
            &rule,
            target.as_deref(),
            limit,
            next.as_deref(),
        )
    })
    .await
    .map_err(|e| {
        api_error(RedriveError::Unavailable(format!(
            "the listing failed: {e}"
        )))
    })?;
    r.map(Json).map_err(api_error)
}

/// `GET /v1/buses/{bus}/rules/{rule}/dead-letters?limit=&next=`.
pub(super) async fn list_rule(
    State(res): State<Arc<Resources>>,
    Path((bus, rule)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<DeadLetterList>> {
    list_of(res, bus, rule, None, params).await
}

/// `GET /v1/buses/{bus}/rules/{rule}/targets/{target}/dead-letters?limit=&next=`.
pub(super) async fn list(
    State(res): State<Arc<Resources>>,
    Path((bus, rule, target)): Path<(String, String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<DeadLetterList>> {
    list_of(res, bus, rule, Some(target), params).await
}

/// `POST .../targets/{target}/dead-letters/redrive` with `{"ids": [...]}`
/// or `{"all": true}`, and optionally `"to"`.
pub(super) async fn redrive(
    State(res): State<Arc<Resources>>,
    Path((bus, rule, target)): Path<(String, String, String)>,
    body: Body,
) -> ApiResult<Json<RedriveResult>> {
    let v = read_json(body, res.max_request_bytes).await?;
    let req = RedriveRequest::parse(&v).map_err(api_error)?;
    redrive::redrive(
        &res.state,
        res.config.site_writer(),
        &res.site,
        &bus,
        &rule,
        &target,
        req,
    )
    .await
    .map(Json)
    .map_err(api_error)
}

/// `POST .../targets/{target}/seek` with `{"time": RFC 3339}`.
pub(super) async fn seek(
    State(res): State<Arc<Resources>>,
    Path((bus, rule, target)): Path<(String, String, String)>,
    body: Body,
) -> ApiResult<Json<SeekResult>> {
    let v = read_json(body, res.max_request_bytes).await?;
    let req = SeekRequest::parse(&v).map_err(api_error)?;
    redrive::seek(
        &res.state,
        res.config.site_writer(),
        res.retention_secs,
        &bus,
        &rule,
        &target,
        req,
    )
    .await
    .map(Json)
    .map_err(api_error)
}

/// `GET /v1/buses/{bus}/dead-letters?limit=&cursor=`: the dead letters a
/// dead-letter bus holds (its events with `deadletter*` extensions).
pub(super) async fn list_bus(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<BusDeadLetterList>> {
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "InvalidParameter",
                            format!("`limit`: {v:?} is not a number from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "cursor" => {
                cursor = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "InvalidParameter",
                        format!("`cursor`: {v:?} is not a cursor (give a page's `nextCursor`)"),
                    )
                })?)
            }
            other => {
                return Err(ApiError::bad_request(
                    "InvalidParameter",
                    format!("`{other}`: unknown parameter (this route takes `limit` and `cursor`)"),
                ));
            }
        }
    }
    let r = tokio::task::spawn_blocking(move || redrive::list_bus(&res.state, &bus, cursor, limit))
        .await
        .map_err(|e| {
            api_error(RedriveError::Unavailable(format!(
                "the listing failed: {e}"
            )))
        })?;
    r.map(Json).map_err(api_error)
}
