//! `/v1/buses/{bus}/archives/...` and `/v1/replays/...` (see
//! docs/replay.md): thin wrappers over [`crate::archive`] and
//! [`crate::replay`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::archive::{self, OpError};
use crate::http::Resources;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult};
use crate::http::shared::bus_must_exist;
use crate::replay;
use crate::util::now_ms;

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid { code, .. } => ApiError::bad_request(code, e.to_string()),
            OpError::NotFound { code, message } => {
                ApiError::new(StatusCode::NOT_FOUND, code, message)
            }
            OpError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            OpError::Write(w) => w.into(),
        }
    }
}

pub(super) async fn list(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    bus_must_exist(&res.state, &bus)?;
    Ok(Json(
        json!({"archives": archive::list_archives(&res.state, Some(&bus))}),
    ))
}

pub(super) async fn get(
    State(res): State<Arc<Resources>>,
    Path((bus, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(archive::describe_archive(&res.state, &bus, &name)?))
}

pub(super) async fn put(
    State(res): State<Arc<Resources>>,
    Path((bus, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let v = read_json(body, res.max_request_bytes).await?;
    let input = archive::parse_archive(&v)?;
    let out = archive::put_archive(
        &res.state,
        res.config.site_writer(),
        &bus,
        &name,
        input,
        false,
    )
    .await?;
    Ok(Json(out))
}

pub(super) async fn delete(
    State(res): State<Arc<Resources>>,
    Path((bus, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    archive::delete_archive(res.config.site_writer(), &bus, &name).await?;
    Ok(Json(json!({"deleted": true})))
}

/// `GET /v1/replays` filters.
#[derive(Debug, Deserialize)]
pub(super) struct ReplayFilter {
    bus: Option<String>,
    archive: Option<String>,
    state: Option<String>,
}

pub(super) async fn list_replays(
    State(res): State<Arc<Resources>>,
    Query(f): Query<ReplayFilter>,
) -> ApiResult<Json<Value>> {
    let archive = match (&f.bus, &f.archive) {
        (Some(b), Some(a)) => Some((b.as_str(), a.as_str())),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "InvalidReplayFilter",
                "bus, archive: give both or neither",
            ));
        }
    };
    let replays = replay::list_replays(&res.state, archive, f.state.as_deref());
    Ok(Json(json!({ "replays": replays })))
}

pub(super) async fn get_replay(
    State(res): State<Arc<Resources>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(replay::describe_replay(&res.state, &name)?))
}

pub(super) async fn start_replay(
    State(res): State<Arc<Resources>>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let v = read_json(body, res.max_request_bytes).await?;
    let input = replay::parse_replay(&v, now_ms())?;
    let out = replay::start_replay(&res.state, res.config.site_writer(), &name, input).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

pub(super) async fn cancel_replay(
    State(res): State<Arc<Resources>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        replay::cancel_replay(&res.state, res.config.site_writer(), &name).await?,
    ))
}
