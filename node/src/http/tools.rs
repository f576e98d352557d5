//! `POST /v1/patterns:test` and `POST /v1/transforms:test`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde_json::{Value, json};
use strait_routing::pattern::Pattern;
use strait_routing::transform::{Transform, TransformContext, TransformOutput};

use crate::http::Resources;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult};

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

pub(super) async fn test_pattern(
    State(res): State<Arc<Resources>>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let v = read_json(body, res.max_request_bytes).await?;
    let pattern = Pattern::parse(field(&v, "pattern")?)
        .map_err(|e| ApiError::bad_request("InvalidPattern", format!("pattern: {e}")))?;
    let event = event_field(&v)?;
    Ok(Json(json!({"matched": pattern.matches(event)})))
}

pub(super) async fn test_transform(
    State(res): State<Arc<Resources>>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let v = read_json(body, res.max_request_bytes).await?;
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
