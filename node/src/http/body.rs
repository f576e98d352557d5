//! Reading request bodies under a size limit.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use serde_json::Value;

use crate::http::error::{ApiError, ApiResult};

pub async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if crate::server::is_body_timeout(&e) {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", e.to_string());
            }
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

pub(super) async fn read_json(body: Body, limit: usize) -> ApiResult<Value> {
    let bytes = read_body(body, limit).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("MalformedRequest", format!("body is not valid JSON: {e}"))
    })
}
