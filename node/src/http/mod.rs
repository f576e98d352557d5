//! The HTTP API (see docs/api.md): the router, its middleware (failure
//! guard, bearer tokens and their scopes in `auth`) and one file per
//! resource.

mod alibaba;
mod archives;
mod auth;
mod aws;
mod body;
mod buses;
mod cluster;
mod dead_letters;
mod error;
mod events;
mod lookup;
mod probes;
mod rules;
mod shared;
mod sources;
mod state;
mod tools;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::cluster::Health;
use error::{ApiError, failure_error};
pub(crate) use state::{Auth, ClusterApi, HttpState, Ingresses, Resources};

/// Build the router: each group of routes with its part of `state`.
pub fn router(state: HttpState) -> Router {
    let resources = Router::new()
        .route("/v1/buses", get(buses::list))
        .route(
            "/v1/buses/{bus}",
            put(buses::put).get(buses::get).delete(buses::delete),
        )
        .route("/v1/buses/{bus}/rules", get(rules::list))
        .route(
            "/v1/buses/{bus}/rules/{rule}",
            put(rules::put).get(rules::get).delete(rules::delete),
        )
        .route("/v1/buses/{bus}/dead-letters", get(dead_letters::list_bus))
        .route(
            "/v1/buses/{bus}/rules/{rule}/dead-letters",
            get(dead_letters::list_rule),
        )
        .route(
            "/v1/buses/{bus}/rules/{rule}/targets/{target}/dead-letters",
            get(dead_letters::list),
        )
        .route(
            "/v1/buses/{bus}/rules/{rule}/targets/{target}/dead-letters/redrive",
            post(dead_letters::redrive),
        )
        .route(
            "/v1/buses/{bus}/rules/{rule}/targets/{target}/seek",
            post(dead_letters::seek),
        )
        .route("/v1/sources", get(sources::list))
        .route(
            "/v1/sources/{name}",
            put(sources::put).get(sources::get).delete(sources::delete),
        )
        .route("/v1/patterns:test", post(tools::test_pattern))
        .route("/v1/transforms:test", post(tools::test_transform))
        .route("/v1/buses/{bus}/archives", get(archives::list))
        .route(
            "/v1/buses/{bus}/archives/{name}",
            put(archives::put)
                .get(archives::get)
                .delete(archives::delete),
        )
        .route("/v1/replays", get(archives::list_replays))
        .route(
            "/v1/replays/{name}",
            post(archives::start_replay).get(archives::get_replay),
        )
        .route("/v1/replays/{name}/cancel", post(archives::cancel_replay))
        .route("/v1/buses/{bus}/events", get(lookup::list))
        .route("/v1/buses/{bus}/events/{id}", get(lookup::get))
        .with_state(state.resources);
    let cluster = Router::new()
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member),
        )
        .with_state(state.cluster);
    let events = Router::new()
        .route("/v1/buses/{bus}/events", post(events::post))
        .with_state(state.ingress.clone());
    let v1 = resources
        .merge(events)
        .merge(cluster)
        .layer(middleware::from_fn_with_state(state.auth.clone(), auth::v1));
    let vendors = Router::new()
        .route(
            strait_adapters::alibaba_eventbridge::PUT_EVENTS_PATH,
            post(alibaba::put_events),
        )
        .route("/alibaba/push/{bus}", post(alibaba::push))
        .route(&state.aws_ingress_path, post(aws::put_events))
        .with_state(state.ingress);
    let mut metrics =
        Router::new().route("/metrics", get(probes::metrics).with_state(state.metrics));
    if !state.auth.metrics_public {
        metrics = metrics.layer(middleware::from_fn_with_state(state.auth, auth::metrics));
    }
    let probes = Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .with_state(state.health.clone())
        .merge(metrics);
    Router::new()
        .merge(v1)
        .merge(probes)
        .merge(vendors)
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
            state.health,
            refuse_when_failed,
        ))
}

/// Writes to a node whose Raft stopped are refused with [`failure_error`]
/// (reads still work); a write that failed because Raft stopped while it
/// was under way gets the same answer instead of a generic 5xx.
async fn refuse_when_failed(State(health): State<Health>, req: Request, next: Next) -> Response {
    let reads = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) || req.uri().path().ends_with(":test");
    if reads {
        return next.run(req).await;
    }
    if let Some(f) = health.failure() {
        return failure_error(&f).into_response();
    }
    let response = next.run(req).await;
    if response.status().is_server_error()
        && let Some(f) = health.failure()
    {
        return failure_error(&f).into_response();
    }
    response
}
