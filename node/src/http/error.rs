//! The API's error type: status, code and message, rendered as
//! `{"error": {"code", "message"}}`, and the mapping of state-machine and
//! Raft answers to it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strait_federation::{
    CommandResponse, Conflict, FederationError, NotFound, Refusal, SiteFailure,
};

use crate::config::check::SpecError;

/// An API error: status, code and message, rendered as
/// `{"error": {"code", "message"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Box<(&'static str, Value)>>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    /// The same error with another status.
    pub(super) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same error with one more top-level member in its body.
    pub(super) fn with_extra(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some(Box::new((key, value)));
        self
    }

    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some((k, v)) = self.extra.map(|b| *b) {
            body[k] = v;
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// Seconds a producer refused with `StateFull` is told to wait: retention
/// frees space at the next checkpoint that collects (at least every 10 s).
const STATE_FULL_RETRY_SECS: u64 = 10;

/// `507 Insufficient Storage`, code `StateFull`, with the limit and what
/// the state holds, and `Retry-After`.
pub(super) fn state_full(full: &strait_federation::StateFull) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "StateFull",
        full.to_string(),
    )
    .with_extra(
        "state",
        json!({"maxStateBytes": full.limit, "storedBytes": full.stored}),
    );
    err.retry_after = Some(STATE_FULL_RETRY_SECS);
    err
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::bad_request(e.code, e.to_string())
    }
}

impl From<FederationError> for ApiError {
    fn from(e: FederationError) -> Self {
        match e {
            FederationError::NotLeader { .. } | FederationError::Unreachable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NotReady", e.to_string())
            }
            FederationError::Membership(_) => ApiError::new(
                StatusCode::CONFLICT,
                "MembershipChangeRefused",
                e.to_string(),
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                other.to_string(),
            ),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The answer of a node whose Raft stopped on its own: `507 Insufficient
/// Storage` with code `StorageFailed` after a storage error (a full disk,
/// an I/O error), `503` with code `RaftStopped` after anything else. Either
/// way the node accepts no write until it is restarted (docs/operations.md).
pub(crate) fn failure_error(f: &SiteFailure) -> ApiError {
    if f.storage {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "StorageFailed",
            format!(
                "this node's storage failed ({}); it accepts no writes until it is restarted: \
                 free disk space or fix the disk, then restart the node (see docs/operations.md)",
                f.message
            ),
        )
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "RaftStopped",
            format!(
                "this node's Raft stopped ({}); it accepts no writes until it is restarted",
                f.message
            ),
        )
    }
}

pub(super) fn command_result(resp: CommandResponse) -> ApiResult<()> {
    match resp {
        CommandResponse::Ok | CommandResponse::Appended(_) | CommandResponse::Link(_) => Ok(()),
        CommandResponse::NotFound(n) => {
            let code = match n {
                NotFound::Bus { .. } => "BusNotFound",
                NotFound::Source { .. } => "SourceNotFound",
                NotFound::Rule { .. } => "RuleNotFound",
                NotFound::Archive { .. } => "ArchiveNotFound",
                NotFound::Replay { .. } => "ReplayNotFound",
                NotFound::Target { .. } => "TargetNotFound",
                // Only a link acknowledgement answers this, never the API.
                NotFound::Link { .. } => "NotFound",
            };
            Err(ApiError::new(StatusCode::NOT_FOUND, code, n.to_string()))
        }
        CommandResponse::Conflict(c) => {
            let code = match c {
                Conflict::BusHasRules { .. } => "BusHasRules",
                Conflict::BusHasSources { .. } => "BusHasSources",
            };
            Err(ApiError::new(StatusCode::CONFLICT, code, c.to_string()))
        }
        CommandResponse::Refused(r) => Err(match r {
            Refusal::NoDeadLetterBus { .. } => {
                ApiError::bad_request("DeadLetterBusNotFound", r.to_string())
            }
            Refusal::BusIsDeadLetter { .. } => {
                ApiError::new(StatusCode::CONFLICT, "BusIsDeadLetter", r.to_string())
            }
            Refusal::ReplayExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ReplayExists", r.to_string())
            }
            Refusal::ReplayFinished { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ReplayFinished", r.to_string())
            }
            Refusal::NonceUsed => ApiError::new(StatusCode::FORBIDDEN, "NonceUsed", r.to_string()),
        }),
    }
}
