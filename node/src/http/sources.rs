//! `/v1/sources` and `/v1/sources/{name}`: shared sources.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use strait_federation::Command;

use crate::http::Resources;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult, command_result};
use crate::http::shared::{check_name, share_bus};

fn source_view(res: &Resources, name: &str, spec: &Value, with_status: bool) -> Value {
    let mut v = spec.clone();
    v["name"] = json!(name);
    if with_status {
        v["status"] = res.sources.get(name).to_json();
    }
    v
}

pub(super) async fn list(State(res): State<Arc<Resources>>) -> Json<Value> {
    let out: Vec<Value> = res
        .state
        .sources()
        .iter()
        .map(|(n, v)| source_view(&res, n, v, false))
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

pub(super) async fn get(
    State(res): State<Arc<Resources>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let spec = res.state.view().sources.get(&name).cloned();
    match spec {
        Some(s) => Ok(Json(source_view(&res, &name, &s, true))),
        None => Err(source_not_found(&name)),
    }
}

pub(super) async fn put(
    State(res): State<Arc<Resources>>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("source", &name)?;
    let mut v = read_json(body, res.max_request_bytes).await?;
    if let Some(m) = v.as_object_mut() {
        // Echoed fields from a GET are fine to send back.
        m.remove("name");
        m.remove("status");
    }
    let mut spec = crate::config::source::SourceSpec::from_json(&v)?;
    let site = spec.site.get_or_insert_with(|| res.site.clone()).clone();
    let known = &res.known_sites;
    if !known.contains(&site) {
        return Err(ApiError::bad_request(
            "UnknownSite",
            format!("site: {site:?} is not a site of this federation (known sites: {known:?})"),
        ));
    }
    if !res.state.view().buses.contains_key(&spec.bus) {
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
    share_bus(&res, &spec.bus).await?;
    command_result(
        res.config
            .write(Command::PutSource {
                name: name.clone(),
                spec: stored.clone(),
            })
            .await?,
    )?;
    Ok(Json(source_view(&res, &name, &stored, false)))
}

pub(super) async fn delete(
    State(res): State<Arc<Resources>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    command_result(res.config.write(Command::DeleteSource { name }).await?)?;
    Ok(Json(json!({"deleted": true})))
}
