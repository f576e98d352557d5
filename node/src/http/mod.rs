//! The HTTP API (see docs/api.md): the router, its middleware (failure
//! guard, bearer tokens) and one file per resource.

pub(crate) mod alibaba;
pub(crate) mod aws;
mod body;
mod buses;
mod cluster;
mod error;
mod events;
mod probes;
mod rules;
mod shared;
mod sources;
mod tools;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::app::App;
pub(crate) use body::read_body;
pub(crate) use error::ApiError;
use error::failure_error;
pub(crate) use shared::bus_must_exist;

/// Build the router.
pub fn router(app: Arc<App>) -> Router {
    let aws_path = app.cfg.aws.ingress_path.clone();
    let v1 = Router::new()
        .route("/v1/buses", get(buses::list))
        .route(
            "/v1/buses/{bus}",
            put(buses::put).get(buses::get).delete(buses::delete),
        )
        .route("/v1/buses/{bus}/events", post(events::post))
        .route("/v1/buses/{bus}/rules", get(rules::list))
        .route(
            "/v1/buses/{bus}/rules/{rule}",
            put(rules::put).get(rules::get).delete(rules::delete),
        )
        .route("/v1/sources", get(sources::list))
        .route(
            "/v1/sources/{name}",
            put(sources::put).get(sources::get).delete(sources::delete),
        )
        .route("/v1/patterns:test", post(tools::test_pattern))
        .route("/v1/transforms:test", post(tools::test_transform))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member),
        )
        .layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .route(
            strait_adapters::alibaba_eventbridge::PUT_EVENTS_PATH,
            post(alibaba::put_events),
        )
        .route("/alibaba/push/{bus}", post(alibaba::push))
        .route(&aws_path, post(aws::put_events))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such route (see docs/api.md)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this method is not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            refuse_when_failed,
        ))
        .with_state(app)
}

/// Writes to a node whose Raft stopped are refused with [`failure_error`]
/// (reads still work); a write that failed because Raft stopped while it
/// was under way gets the same answer instead of a generic 5xx.
async fn refuse_when_failed(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let reads = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) || req.uri().path().ends_with(":test");
    if reads {
        return next.run(req).await;
    }
    if let Some(f) = app.failure() {
        return failure_error(&f).into_response();
    }
    let response = next.run(req).await;
    if response.status().is_server_error()
        && let Some(f) = app.failure()
    {
        return failure_error(&f).into_response();
    }
    response
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.cfg.dev {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if app.cfg.auth.tokens.iter().any(|k| k == t) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the bearer token is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing `Authorization: Bearer <token>` header",
        )
        .into_response(),
    }
}
