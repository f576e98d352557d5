//! `/v1/sources` and `/v1/sources/{name}`: shared sources.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use strait_federation::Command;

use crate::app::App;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult, command_result};
use crate::http::shared::{check_name, known_sites, share_bus};

fn source_view(app: &App, name: &str, spec: &Value, with_status: bool) -> Value {
    let mut v = spec.clone();
    v["name"] = json!(name);
    if with_status {
        v["status"] = app.sources.get(name).to_json();
    }
    v
}

pub(super) async fn list(State(app): State<Arc<App>>) -> Json<Value> {
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

pub(super) async fn get(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let spec = app.site.state.view().sources.get(&name).cloned();
    match spec {
        Some(s) => Ok(Json(source_view(&app, &name, &s, true))),
        None => Err(source_not_found(&name)),
    }
}

pub(super) async fn put(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("source", &name)?;
    let mut v = read_json(body, app.cfg.limits.max_request_bytes).await?;
    if let Some(m) = v.as_object_mut() {
        // Echoed fields from a GET are fine to send back.
        m.remove("name");
        m.remove("status");
    }
    let mut spec = crate::config::source::SourceSpec::from_json(&v)?;
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

pub(super) async fn delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    command_result(app.write_config(Command::DeleteSource { name }).await?)?;
    Ok(Json(json!({"deleted": true})))
}
