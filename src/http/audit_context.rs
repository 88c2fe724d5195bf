//! The audit context of a request: the client's address as [`super::client`] resolved it, its
//! `User-Agent`, and the `X-Request-Id` the edge gave the request.

use axum::extract::FromRequestParts;
use http::HeaderMap;
use http::header::USER_AGENT;
use http::request::Parts;

use super::ClientInfo;
use crate::audit::Context;
use crate::state::AppState;

/// The header [`crate::edge::request_id`] gives every request (named here too, as the edge sits
/// above this module; a test there checks the two agree).
pub const REQUEST_ID: &str = "x-request-id";

/// The audit context of `parts`, from `client`.
pub fn context(parts: &Parts, client: &ClientInfo) -> Context {
    of_headers(&parts.headers, client)
}

/// The audit context of a request with these headers, from `client`.
pub fn of_headers(headers: &HeaderMap, client: &ClientInfo) -> Context {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Context::request(client.address.to_string(), header(USER_AGENT.as_str()), header(REQUEST_ID))
}

/// A handler's audit context, as an extractor.
#[derive(Debug, Clone)]
pub struct RequestContext(pub Context);

impl FromRequestParts<AppState> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let client = ClientInfo::from_parts(parts, &app.config.server.trusted_proxies, app.tls);
        Ok(RequestContext(context(parts, &client)))
    }
}
