//! The one place that turns errors into responses.
//!
//! API clients get `{"error": "<what happened and what to do>", "code": "<stable code>"}` with
//! the right status; browsers navigating get the same as a readable page (see [`super::browser`]).

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};

use crate::auth::{AccountError, AuthFailure, LoginFailure};
use crate::policy::PathError;
use crate::proxy::ProxyError;

/// Every error a request can end with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client sent something invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Not authenticated.
    #[error(transparent)]
    Unauthenticated(#[from] AuthFailure),
    /// Authenticated, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// Clashes with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Body too large.
    #[error("{0}")]
    TooLarge(String),
    /// Slow down.
    #[error("{message}")]
    TooManyRequests {
        /// What happened.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The backend failed.
    #[error("{0}")]
    BadGateway(String),
    /// The backend was too slow.
    #[error("{0}")]
    GatewayTimeout(String),
    /// A dependency (the store) is down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details are logged, not shown.
    #[error("internal error")]
    Internal,
}

/// Attached to error responses so the browser layer can render them as pages.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    /// The message shown.
    pub message: String,
    /// Whether logging in would help (no credential, or a session that ended); a bad token in
    /// the request is not helped by a login, which would send the browser back to it.
    pub login_required: bool,
    /// The authentication failure's code (`session_expired`, `token_revoked`...), if any.
    pub reason: Option<&'static str>,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(AuthFailure::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Retry-After` (seconds) the response carries, if any: when a refusal ends.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            ApiError::TooManyRequests { retry_after, .. } => Some(HeaderValue::from(retry_after.as_secs().max(1))),
            ApiError::Unavailable(_) | ApiError::Unauthenticated(AuthFailure::Unavailable) => {
                Some(HeaderValue::from(5u64))
            }
            _ => None,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthenticated(f) => f.code(),
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::BadGateway(_) => "backend_unavailable",
            ApiError::GatewayTimeout(_) => "backend_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let body = serde_json::json!({ "error": message, "code": self.code() });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthenticated(failure) if status == StatusCode::UNAUTHORIZED => {
                let challenge = match failure {
                    AuthFailure::MissingCredentials => "Bearer realm=\"comfygate\"".to_owned(),
                    other => format!(
                        "Bearer realm=\"comfygate\", error=\"invalid_token\", error_description=\"{}\"",
                        other.code()
                    ),
                };
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            _ => {}
        }
        if let Some(retry_after) = self.retry_after() {
            headers.insert(RETRY_AFTER, retry_after);
        }
        let (login_required, reason) = match &self {
            ApiError::Unauthenticated(f) if status == StatusCode::UNAUTHORIZED => (
                matches!(
                    f,
                    AuthFailure::MissingCredentials
                        | AuthFailure::UnknownSession
                        | AuthFailure::SessionExpired
                        | AuthFailure::UserDisabled
                ),
                Some(f.code()),
            ),
            _ => (false, None),
        };
        response.extensions_mut().insert(ErrorPage { message, login_required, reason });
        response
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        body_rejection("JSON body", e.status(), e.body_text())
    }
}

impl From<axum::extract::rejection::FormRejection> for ApiError {
    fn from(e: axum::extract::rejection::FormRejection) -> Self {
        body_rejection("form", e.status(), e.body_text())
    }
}

/// A body that could not be read: too large (413) or invalid (400).
fn body_rejection(what: &str, status: StatusCode, detail: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!("{what} too large"))
    } else {
        ApiError::BadRequest(format!("invalid {what}: {detail}"))
    }
}

/// A request body the gateway reads itself that could not be read: over `limit` bytes (413),
/// or malformed or cut short by the client (400).
pub fn unreadable_body(e: &axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::TooLarge(format!("request body larger than {limit} bytes"));
        }
        source = e.source();
    }
    ApiError::BadRequest("the request body could not be read (malformed or cut short)".to_owned())
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", e.body_text()))
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Unreachable { .. } | ProxyError::Refused { .. } => ApiError::BadGateway(e.to_string()),
            ProxyError::Timeout { .. } => ApiError::GatewayTimeout(e.to_string()),
            ProxyError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            ProxyError::NotUpgradable | ProxyError::BadTarget | ProxyError::ClientBody => {
                ApiError::BadRequest(e.to_string())
            }
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidUsername(_)
            | AccountError::BadPassword { .. }
            | AccountError::InvalidTokenName(_)
            | AccountError::InvalidExpiry(_)
            | AccountError::ExpiryTooLong(_)
            | AccountError::Import(_) => ApiError::BadRequest(e.to_string()),
            AccountError::UserExists(_) | AccountError::TokenNameTaken(_) | AccountError::LastAdmin => {
                ApiError::Conflict(e.to_string())
            }
            AccountError::NoSuchUser(_) | AccountError::NoSuchToken(_) => ApiError::NotFound(e.to_string()),
            AccountError::Audit(_) => ApiError::Unavailable(e.to_string()),
            AccountError::Hash(_) | AccountError::Random(_) | AccountError::Store(_) => {
                tracing::error!(error = %e, "account operation failed");
                ApiError::Unavailable("the account store is temporarily unavailable".to_owned())
            }
        }
    }
}

impl From<LoginFailure> for ApiError {
    fn from(e: LoginFailure) -> Self {
        match e {
            LoginFailure::InvalidCredentials => ApiError::Unauthenticated(AuthFailure::BadLogin),
            LoginFailure::Disabled => ApiError::Unauthenticated(AuthFailure::UserDisabled),
            LoginFailure::LockedOut(retry_after) => ApiError::TooManyRequests { message: e.to_string(), retry_after },
            LoginFailure::Unavailable => ApiError::Unavailable(e.to_string()),
        }
    }
}
