//! `/v1/buses` and `/v1/buses/{bus}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use strait_federation::Command;

use crate::config::bus::bus_json;
use crate::http::Resources;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult, command_result};
use crate::http::shared::{bus_must_exist, check_name};

pub(super) async fn list(State(res): State<Arc<Resources>>) -> Json<Value> {
    let buses: Vec<Value> = res.state.view().buses.values().cloned().collect();
    Json(json!({"buses": buses}))
}

pub(super) async fn get(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    bus_must_exist(&res.state, &bus)?;
    let v = res
        .state
        .view()
        .buses
        .get(&bus)
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Json(v))
}

pub(super) async fn put(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("bus", &bus)?;
    let v = read_json(body, res.max_request_bytes).await?;
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
    let created = res
        .state
        .view()
        .buses
        .get(&bus)
        .and_then(|b| b.get("createdAt"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let spec = bus_json(&bus, &description, created.as_deref());
    command_result(
        res.config
            .write(Command::PutBus {
                name: bus,
                spec: spec.clone(),
            })
            .await?,
    )?;
    Ok(Json(spec))
}

pub(super) async fn delete(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    command_result(res.config.write(Command::DeleteBus { name: bus }).await?)?;
    Ok(Json(json!({"deleted": true})))
}
