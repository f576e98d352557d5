//! Membership endpoints: `POST /v1/cluster/members` and
//! `DELETE /v1/cluster/members/{id}`. They run on the leader; any other
//! node passes the request on to the leader over HTTP (HTTPS when
//! `http_tls` is set: the request carries the caller's bearer token).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strait_federation::{FederationError, NodeInfo};

use super::ClusterApi;
use super::body::read_body;
use super::error::{ApiError, ApiResult};
use crate::cluster::leader_http;

/// Longest a membership change may take (a learner catching up first).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of a forwarded answer from the leader that is read.
const MAX_LEADER_ANSWER_BYTES: usize = 64 * 1024;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "InvalidMember", message)
}

fn parse_member(v: &Value) -> ApiResult<(u64, NodeInfo)> {
    let id = v
        .get("id")
        .and_then(Value::as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| bad("id: a positive integer node id is required"))?;
    let addr = |name: &str| -> ApiResult<String> {
        let a = v
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{name}: required (host:port)")))?;
        if a.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(bad(format!("{name}: {a:?} is not host:port")));
        }
        Ok(a.to_string())
    };
    Ok((
        id,
        NodeInfo {
            raft_addr: addr("raftAddr")?,
            http_addr: addr("httpAddr")?,
            site: String::new(),
        },
    ))
}

/// Pass a membership request on to the leader's HTTP API.
async fn to_leader(
    api: &ClusterApi,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Option<Value>,
) -> ApiResult<Response> {
    let Some((leader, base)) = leader_http(&api.site, api.cfg.http_tls.is_some()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            "no leader known yet; retry",
        ));
    };
    let client = crate::cluster::peer_client(&api.cfg).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TlsConfig",
            format!("cannot build the HTTPS client for the leader: {e:#}"),
        )
    })?;
    let mut req = client
        .request(method, format!("{base}{path}"))
        .timeout(CHANGE_TIMEOUT);
    if let Some(a) = headers.get(http::header::AUTHORIZATION) {
        req = req.header(http::header::AUTHORIZATION, a.clone());
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            format!("cannot reach the leader (node {leader} at {base}): {e}"),
        )
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // The leader's answer is a small JSON document: read a bounded part.
    let body = strait_adapters::peer::read_capped(resp, MAX_LEADER_ANSWER_BYTES)
        .await
        .unwrap_or_default();
    if body.truncated {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            format!(
                "the leader (node {leader} at {base}) answered with more than {MAX_LEADER_ANSWER_BYTES} bytes"
            ),
        ));
    }
    let bytes = body.bytes;
    Ok((
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

fn membership_answer(api: &ClusterApi) -> Value {
    let m = api.site.raft.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let nodes: Vec<u64> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    json!({"voters": voters, "nodes": nodes, "leader": m.current_leader})
}

/// `POST /v1/cluster/members` `{"id", "raftAddr", "httpAddr"}`: add a node
/// as a voter (it catches up as a learner first).
pub async fn add_member(
    State(api): State<Arc<ClusterApi>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, 64 * 1024).await?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let (id, info) = parse_member(&v)?;
    if !api.site.is_leader() {
        return to_leader(&api, Method::POST, "/v1/cluster/members", &headers, Some(v)).await;
    }
    tracing::info!(id, node = %info, "adding a member");
    match tokio::time::timeout(CHANGE_TIMEOUT, api.site.add_member(id, info)).await {
        Ok(Ok(())) => Ok(Json(membership_answer(&api)).into_response()),
        Ok(Err(FederationError::NotLeader { .. })) => {
            to_leader(&api, Method::POST, "/v1/cluster/members", &headers, Some(v)).await
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!(
                "node {id} did not catch up within {CHANGE_TIMEOUT:?}; is it running and reachable?"
            ),
        )),
    }
}

/// `DELETE /v1/cluster/members/{id}`: remove a node from the site.
pub async fn remove_member(
    State(api): State<Arc<ClusterApi>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let path = format!("/v1/cluster/members/{id}");
    if !api.site.is_leader() {
        return to_leader(&api, Method::DELETE, &path, &headers, None).await;
    }
    tracing::info!(id, "removing a member");
    match api.site.remove_member(id).await {
        Ok(()) => Ok(Json(membership_answer(&api)).into_response()),
        Err(FederationError::NotLeader { .. }) => {
            to_leader(&api, Method::DELETE, &path, &headers, None).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/cluster`.
pub(super) async fn status(State(api): State<Arc<ClusterApi>>) -> Json<Value> {
    // Read now: the certificate may have been rotated since the start.
    let cert_expiry = crate::cluster::cert_expiry(&api.cfg);
    let mut v = crate::cluster::status(&api.cfg, &api.site, api.writer.endpoint(), cert_expiry);
    v["links"] = crate::links::status(&api.cfg, &api.site.state, &api.link_stats);
    if let Some(c) = &api.control {
        v["control"] = c.status(&api.site);
    }
    Json(v)
}
