//! `GET /v1/buses/{bus}/events/{id}` (one event and what became of its
//! deliveries) and `GET /v1/buses/{bus}/events` (a bus's events, paged),
//! answered from this site's replicated state ([`crate::lookup`]); an event
//! that entered at another site, and deliveries other sites make, are asked
//! of them ([`crate::lookup::sites`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use strait_federation::EventFilter;

use crate::http::Resources;
use crate::http::error::{ApiError, ApiResult};
use crate::http::shared::bus_must_exist;
use crate::lookup::{EventList, Lookup, LookupFailure, list_local};

/// Events a page holds when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Most events a page holds.
const MAX_LIMIT: usize = 1000;

fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("InvalidParameter", format!("`{param}`: {message}"))
}

/// The API error of a lookup failure.
pub(crate) fn failure(state: &strait_federation::SiteState, f: LookupFailure) -> ApiError {
    match f {
        LookupFailure::BusNotFound { bus } => {
            bus_must_exist(state, &bus).err().unwrap_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "BusNotFound",
                    format!("bus `{bus}` does not exist"),
                )
            })
        }
        e @ (LookupFailure::EventNotFound { .. } | LookupFailure::NotFoundAt { .. }) => {
            ApiError::new(StatusCode::NOT_FOUND, "EventNotFound", e.to_string())
        }
        e @ LookupFailure::Ambiguous { .. } => {
            ApiError::bad_request("SourceRequired", format!("`source`: {e}"))
        }
        e @ LookupFailure::TooManyToScan { .. } => {
            ApiError::bad_request("SourceRequired", format!("`source`: {e}"))
        }
        e @ LookupFailure::Storage(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

/// Run a read of the state off the async threads (a lookup may scan).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LookupFailure> + Send + 'static,
) -> Result<T, LookupFailure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LookupFailure::Storage(format!("the lookup task failed: {e}")))?
}

/// `GET /v1/buses/{bus}/events/{id}?source=S`.
pub(super) async fn get(
    State(res): State<Arc<Resources>>,
    Path((bus, id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Lookup>> {
    let mut source = None;
    for (k, v) in params {
        match k.as_str() {
            "source" if !v.is_empty() => source = Some(v),
            "source" => return Err(bad("source", "must not be empty")),
            other => return Err(bad(other, "unknown parameter (this route takes `source`)")),
        }
    }
    // This site first; then the linked sites (see crate::lookup::sites).
    res.sites
        .lookup(&bus, source.as_deref(), &id)
        .await
        .map(Json)
        .map_err(|f| failure(&res.state, f))
}

/// A time parameter: RFC 3339, or ms since the epoch.
fn time_param(name: &str, v: &str) -> ApiResult<u64> {
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| {
            bad(
                name,
                format!(
                    "{v:?} is not an RFC 3339 time (2026-01-02T15:04:05Z) or ms since the epoch"
                ),
            )
        })
}

/// `GET /v1/buses/{bus}/events?source=&type=&since=&until=&limit=&cursor=`.
pub(super) async fn list(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<EventList>> {
    let mut filter = EventFilter::default();
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (k, v) in params {
        match k.as_str() {
            "source" => filter.source = Some(v),
            "type" => filter.event_type = Some(v),
            "since" => filter.since_ms = Some(time_param("since", &v)?),
            "until" => filter.until_ms = Some(time_param("until", &v)?),
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(bad(
                            "limit",
                            format!("{v:?} is not a number from 1 to {MAX_LIMIT}"),
                        ));
                    }
                }
            }
            "cursor" => {
                cursor = Some(v.parse::<u64>().map_err(|_| {
                    bad(
                        "cursor",
                        format!("{v:?} is not a cursor (give a page's `nextCursor`)"),
                    )
                })?)
            }
            other => {
                return Err(bad(
                    other,
                    "unknown parameter (this route takes source, type, since, until, limit, cursor)",
                ));
            }
        }
    }
    let state = res.state.clone();
    blocking(move || list_local(&state, &bus, &filter, cursor, limit))
        .await
        .map(Json)
        .map_err(|f| failure(&res.state, f))
}
