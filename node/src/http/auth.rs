//! The bearer-token middleware of the `/v1` routes (and of `/metrics` when
//! `auth.metrics_public` is false), and the audit log of configuration
//! changes (tracing target `strait::audit`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Auth;
use super::error::ApiError;
use crate::auth::{Need, Token};

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn peer(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "-".into())
}

/// Who a request comes from, as far as [`authorize`] is concerned.
enum Caller {
    /// Dev mode: no authentication.
    Dev,
    /// A configured token that holds the scope.
    Token(Token),
}

/// A refusal, and the known token refused (for the audit log).
type Refused = (ApiError, Option<Box<Token>>);

/// Check the request's token against what `need` asks: 401 without a
/// known token, 403 naming the missing scope. The tokens are those in use
/// now (they are replaced when the config is read again).
fn authorize(auth: &Auth, req: &Request, need: &Need) -> Result<Caller, Refused> {
    let Some(live) = &auth.tokens else {
        return Ok(Caller::Dev);
    };
    let Some(presented) = bearer(req) else {
        return Err((
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing `Authorization: Bearer <token>` header",
            ),
            None,
        ));
    };
    let tokens = live.current();
    let Some(token) = tokens.find(presented).cloned() else {
        return Err((
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the bearer token is not valid",
            ),
            None,
        ));
    };
    if !token.allows(need) {
        let scope = need.scope();
        let alternatives = match need {
            Need::Admin => String::new(),
            Need::Read => " or `admin`".into(),
            Need::PutEvents(_) => " (or `events:put:*`, `admin`)".into(),
        };
        let refusal = ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "token `{}` lacks the scope `{scope}`{alternatives} needed for {} {}",
                token.name,
                req.method(),
                req.uri().path()
            ),
        )
        .with_extra("missingScope", json!(scope));
        return Err((refusal, Some(Box::new(token))));
    }
    Ok(Caller::Token(token))
}

/// The `/v1` middleware: the scope each route needs (see
/// [`crate::auth::need`]), and an audit line for every change.
pub(super) async fn v1(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let need = crate::auth::need(req.method(), req.uri().path());
    let audit = need.is_change().then(|| {
        (
            req.method().to_string(),
            req.uri().path().to_string(),
            peer(&req),
        )
    });
    let caller = authorize(&auth, &req, &need);
    let name = match &caller {
        Ok(Caller::Dev) => Some("(dev mode)".to_string()),
        Ok(Caller::Token(t)) => Some(t.name.clone()),
        Err((_, Some(t))) => Some(t.name.clone()),
        Err((_, None)) => bearer(&req).is_some().then(|| "(unknown token)".into()),
    };
    let response = match caller {
        Ok(_) => next.run(req).await,
        Err((r, _)) => r.into_response(),
    };
    if let Some((method, path, peer)) = audit {
        let status = response.status().as_u16();
        let outcome = match status {
            401 | 403 => "denied",
            s if s < 400 => "ok",
            _ => "failed",
        };
        tracing::info!(
            target: "strait::audit",
            token = name.as_deref().unwrap_or("(none)"),
            method,
            path,
            status,
            outcome,
            peer,
            time = %chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "configuration change"
        );
    }
    response
}

/// `/metrics` when `auth.metrics_public` is false: a token with `read`.
pub(super) async fn metrics(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    match authorize(&auth, &req, &Need::Read) {
        Ok(_) => next.run(req).await,
        Err((r, _)) => r.into_response(),
    }
}
