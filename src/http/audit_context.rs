//! The audit context of a request: the client's address as [`super::client`] resolved it, its
//! `User-Agent`, and the `X-Request-Id` the edge gave the request.

use axum::extract::FromRequestParts;
use http::HeaderMap;
use http::header::USER_AGENT;
use http::request::Parts;

use super::ClientInfo;
use crate::audit::Context;
use crate::edge::request_id::REQUEST_ID;
use crate::state::AppState;

/// The audit context of `parts`, from `client`.
pub fn context(parts: &Parts, client: &ClientInfo) -> Context {
    of_headers(&parts.headers, client)
}

/// The audit context of a request with these headers, from `client`.
pub fn of_headers(headers: &HeaderMap, client: &ClientInfo) -> Context {
    let header = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
    Context::request(client.address.to_string(), header(USER_AGENT), header(REQUEST_ID))
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
