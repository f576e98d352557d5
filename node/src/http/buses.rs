//! `/v1/buses` and `/v1/buses/{bus}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use strait_federation::Command;

use crate::app::App;
use crate::config::bus::bus_json;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult, command_result};
use crate::http::shared::{bus_must_exist, check_name};

pub(super) async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let buses: Vec<Value> = app.site.state.view().buses.values().cloned().collect();
    Json(json!({"buses": buses}))
}

pub(super) async fn get(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn put(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("bus", &bus)?;
    let v = read_json(body, app.cfg.limits.max_request_bytes).await?;
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

pub(super) async fn delete(
    State(app): State<Arc<App>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    command_result(app.write_config(Command::DeleteBus { name: bus }).await?)?;
    Ok(Json(json!({"deleted": true})))
}
