//! The generic streaming proxy to ComfyUI: bodies stream both ways, WebSocket upgrades are
//! tunnelled, and every failure of the backend becomes a clear error instead of a hang.

pub mod body;
pub mod headers;
mod pool;
pub mod response;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};

use pool::{Pool, SendError};

use crate::auth::credentials::strip_query_token;
use crate::config::{AuthConfig, BackendConfig};
use response::{Refused, ResponseRules};

pub use headers::{ForwardedFor, is_upgrade};
pub use upgrade::CloseWhen;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection to the backend (down, refused, reset).
    #[error("ComfyUI backend `{backend}` is unreachable: {detail}")]
    Unreachable {
        /// Backend name.
        backend: String,
        /// What failed.
        detail: String,
        /// Whether the backend may have received the request (the connection was lost after
        /// it was sent, rather than never opened).
        maybe_received: bool,
    },
    /// No response headers in time.
    #[error("ComfyUI backend `{backend}` did not answer within {} s", timeout.as_secs())]
    Timeout {
        /// Backend name.
        backend: String,
        /// The limit.
        timeout: Duration,
    },
    /// The backend answered with something the gateway does not relay (see [`response`]).
    #[error("ComfyUI backend `{backend}` sent a response the gateway refuses: {reason}")]
    Refused {
        /// Backend name.
        backend: String,
        /// What was wrong with it.
        reason: Refused,
    },
    /// The request body exceeds the limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The client's request body broke off or was malformed: the client's failure, not the
    /// backend's.
    #[error("the request body could not be read (malformed or cut short)")]
    ClientBody,
    /// An upgrade was asked for on a connection that cannot upgrade (HTTP/2).
    #[error("WebSocket upgrades need an HTTP/1.1 connection")]
    NotUpgradable,
    /// The target URI could not be built.
    #[error("invalid request target")]
    BadTarget,
}

/// Largest response body the gateway reads for itself (`/object_info` is ~0.5 MB, history can be large).
const MAX_CALL_BODY: usize = 64 * 1024 * 1024;

struct Upstream {
    name: String,
    authority: Authority,
    host_header: HeaderValue,
    origin: HeaderValue,
    response_timeout: Duration,
}

/// Forwards requests to one ComfyUI backend.
pub struct Proxy {
    pool: Arc<Pool>,
    upstream: Upstream,
    max_body: u64,
    cookie_name: String,
    response_rules: ResponseRules,
}

impl Proxy {
    /// A proxy to `backend`, refusing bodies over `max_body` bytes; `auth` names the gateway's
    /// cookies (taken from requests, never set by responses).
    pub fn new(backend: &BackendConfig, max_body: u64, auth: &AuthConfig) -> Result<Self, ProxyError> {
        let uri: Uri = backend.url.parse().map_err(|_| ProxyError::BadTarget)?;
        let authority = uri.authority().cloned().ok_or(ProxyError::BadTarget)?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadTarget)?;
        let origin = HeaderValue::from_str(&format!("http://{authority}")).map_err(|_| ProxyError::BadTarget)?;
        Ok(Self {
            response_rules: ResponseRules::new(&authority, auth.gateway_cookies()),
            pool: Pool::new(authority.as_str().to_owned(), backend.connect_timeout),
            upstream: Upstream {
                name: backend.name.clone(),
                authority,
                host_header,
                origin,
                response_timeout: backend.response_timeout,
            },
            max_body,
            cookie_name: auth.cookie_name.clone(),
        })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &str {
        &self.upstream.name
    }

    /// Forwards `req` (whose path is already the canonical `path`) as `username`; an upgraded
    /// connection is closed when `close_when` resolves. The response speaks the client's HTTP
    /// version, whatever the backend's was, and its headers pass [`headers::prepare_response`].
    pub async fn forward(
        &self,
        req: Request<Body>,
        path: &str,
        username: &str,
        forwarded: &ForwardedFor<'_>,
        close_when: Option<CloseWhen>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        // Most requests arrive in canonical form without a token in the query: their target is
        // forwarded as it came (already parsed); the others get a new one.
        let uri = match parts.uri.query().map(strip_query_token) {
            None if parts.uri.path() == path => {
                Uri::from(parts.uri.into_parts().path_and_query.ok_or(ProxyError::BadTarget)?)
            }
            Some(Some(query)) => self.target(&format!("{path}?{query}"))?,
            _ => self.target(path)?,
        };

        let client_upgrade = if is_upgrade(&parts.headers) {
            Some(parts.extensions.remove::<hyper::upgrade::OnUpgrade>().ok_or(ProxyError::NotUpgradable)?)
        } else {
            None
        };
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(ProxyError::TooLarge { limit: self.max_body });
        }
        headers::prepare_request(
            &mut parts.headers,
            username,
            &self.cookie_name,
            &self.upstream.host_header,
            &self.upstream.origin,
            forwarded,
        );

        let timeout = self.upstream.response_timeout;
        let timed_out = || self.timed_out(timeout);
        let mut upstream_req = Request::new(Body::empty());
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = parts.headers;
        let mut response = if http_body::Body::is_end_stream(&body) {
            // No body (most GETs): the response timeout starts now.
            tokio::time::timeout(timeout, self.pool.send(upstream_req))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| self.failure(e))?
        } else {
            // The response timeout starts once the body has been sent: long uploads never time out.
            let (body, sent) = body::ForwardBody::new(body, self.max_body);
            *upstream_req.body_mut() = Body::new(body);
            tokio::select! {
                result = self.pool.send(upstream_req) => result.map_err(|e| self.failure(e))?,
                () = async { let _ = sent.await; tokio::time::sleep(timeout).await; } => return Err(timed_out()),
            }
        };

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) = (response.status(), client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            // A refused handshake drops the backend's side: no tunnel is ever opened.
            self.relay(&mut parts, client_version, true)?;
            upgrade::spawn_tunnel(client_upgrade, upstream_upgrade, close_when);
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, incoming) = response.into_parts();
        self.relay(&mut parts, client_version, false)?;
        Ok(Response::from_parts(parts, Body::new(incoming)))
    }

    /// A backend's response head made fit for the client (or refused).
    fn relay(
        &self,
        parts: &mut http::response::Parts,
        client_version: Version,
        upgraded: bool,
    ) -> Result<(), ProxyError> {
        parts.version = client_version;
        headers::prepare_response(&mut parts.headers, upgraded, &self.response_rules).map_err(|reason| {
            tracing::warn!(backend = %self.upstream.name, status = %parts.status, %reason, "backend response refused");
            ProxyError::Refused { backend: self.upstream.name.clone(), reason }
        })
    }

    /// The backend's authority (`host:port`).
    pub fn authority(&self) -> &str {
        self.upstream.authority.as_str()
    }

    /// A request made by the gateway itself (health checks, dispatch, aggregation): the whole
    /// response body is read, up to `MAX_CALL_BODY`.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        json_body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        self.call_as(None, method, path_and_query, json_body, timeout).await
    }

    /// [`Proxy::call`] on behalf of a user (`comfy-user` set), e.g. dispatching their job.
    pub async fn call_as(
        &self,
        username: Option<&str>,
        method: Method,
        path_and_query: &str,
        json_body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let uri = self.target(path_and_query)?;
        let mut req = Request::new(json_body.map(Body::from).unwrap_or_else(Body::empty));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut().insert(http::header::HOST, self.upstream.host_header.clone());
        req.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = username.and_then(|u| HeaderValue::from_str(u).ok()) {
            req.headers_mut().insert(headers::COMFY_USER, v);
        }
        let timed_out = || self.timed_out(timeout);
        let response = tokio::time::timeout(timeout, self.pool.send(req))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.failure(e))?;
        let status = response.status();
        let body = tokio::time::timeout(timeout, Limited::new(response.into_body(), MAX_CALL_BODY).collect())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ProxyError::Unreachable {
                backend: self.upstream.name.clone(),
                detail: e.to_string(),
                maybe_received: true,
            })?
            .to_bytes();
        Ok((status, body))
    }

    /// The request target for a path and query (origin-form: the connection is to the backend).
    fn target(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        Uri::builder().path_and_query(path_and_query).build().map_err(|_| ProxyError::BadTarget)
    }

    fn timed_out(&self, timeout: Duration) -> ProxyError {
        ProxyError::Timeout { backend: self.upstream.name.clone(), timeout }
    }

    fn failure(&self, error: SendError) -> ProxyError {
        let maybe_received = matches!(error, SendError::Lost(_));
        let detail = match &error {
            SendError::Connect(e) => {
                // Health checks repeat this every interval while a backend is down: the
                // backends module logs the transition and a reminder instead.
                tracing::debug!(backend = %self.upstream.name, error = %e, "backend connection failed");
                format!("connection failed ({e})")
            }
            SendError::Lost(e) => {
                // The client's body failing is the client's failure: it says nothing of the backend.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(e) = source {
                    if e.downcast_ref::<body::TooLarge>().is_some() {
                        return ProxyError::TooLarge { limit: self.max_body };
                    }
                    if let Some(failed) = e.downcast_ref::<body::ClientBodyFailed>() {
                        tracing::debug!(error = %failed, "request body broke off");
                        return ProxyError::ClientBody;
                    }
                    source = e.source();
                }
                tracing::warn!(backend = %self.upstream.name, error = %e, "backend request failed");
                "connection lost".to_owned()
            }
        };
        ProxyError::Unreachable { backend: self.upstream.name.clone(), detail, maybe_received }
    }
}

impl ProxyError {
    /// Whether the backend may have received the request although no answer came: the
    /// connection was lost after sending, or the answer timed out.
    pub fn maybe_received(&self) -> bool {
        match self {
            ProxyError::Unreachable { maybe_received, .. } => *maybe_received,
            ProxyError::Timeout { .. } => true,
            _ => false,
        }
    }
}
