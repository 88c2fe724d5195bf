//! The edge: the listener ([`server`]), request ids, and the routing of every request: the
//! gateway's own routes ([`crate::web`], [`crate::health`]) or the [`gate`] to ComfyUI ([`crate::comfy`] and the
//! generic proxy). It sits above the handlers; what they share is in [`crate::http`].

pub mod activity;
pub mod body_rate;
pub mod browser;
pub mod gate;
pub mod limits;
pub mod metrics;
pub mod request_id;
pub mod server;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::middleware;
use axum::response::Response;
use hyper::body::Incoming;
use tower::ServiceExt;
use tower_http::trace::TraceLayer;

use crate::auth::secret::DigestMemo;
use crate::state::AppState;

use request_id::REQUEST_ID;

/// Where every request goes: it gets an id, then requests for ComfyUI go straight to the
/// [`gate`], and the gateway's own routes, browser navigations (which may get a page instead
/// of an error) and everything under debug tracing go through the [`router`]. Both ways answer
/// alike; the direct one saves the router's per-request machinery on the hot path.
pub struct Edge {
    app: AppState,
    router: Router,
    direct: bool,
    body_rate: body_rate::BodyRate,
    /// The listener of `[metrics] listen`: `/metrics` only, without authentication.
    metrics_only: bool,
}

impl Edge {
    /// The edge of `app`.
    pub fn new(app: AppState) -> Self {
        let direct = !tracing::enabled!(tracing::Level::DEBUG);
        let server = &app.config.server;
        let body_rate =
            body_rate::BodyRate { min_bytes_per_sec: server.min_body_rate.as_u64(), period: server.body_rate_period };
        Self { router: router(app.clone()), app, direct, body_rate, metrics_only: false }
    }

    /// The edge of the metrics listener: `/metrics` without authentication, nothing else.
    pub fn metrics_only(app: AppState) -> Self {
        Self { metrics_only: true, ..Self::new(app) }
    }

    /// The class `req` is counted under.
    fn class_of<B>(&self, req: &http::Request<B>) -> crate::metrics::RequestClass {
        match self.metrics_only {
            true if req.uri().path() == metrics::PATH => crate::metrics::RequestClass::Metrics,
            true => crate::metrics::RequestClass::Other,
            false => metrics::class_of(&self.app, req.method(), req.uri()),
        }
    }

    /// Counts a request refused with `response` before it reached [`Edge::handle`] (a
    /// connection over the caps).
    pub fn count_refused<B>(&self, req: &http::Request<B>, response: &Response) {
        self.app.metrics.request(self.class_of(req), response.status(), std::time::Duration::ZERO);
    }

    /// Answers one request that came on `conn`.
    pub async fn handle(&self, conn: &Connection, req: http::Request<Incoming>) -> Response {
        // Most requests have no body: nothing to box.
        let mut req = req
            .map(|body| if http_body::Body::is_end_stream(&body) { Body::empty() } else { self.body_rate.apply(body) });
        let id = request_id::ensure(req.headers_mut());
        let started = std::time::Instant::now();
        // Counted once here, whatever answers: a handler, or a refusal before any.
        let class = self.class_of(&req);
        let mut response = if self.metrics_only {
            metrics::serve_only_metrics(&self.app, req.method(), req.uri()).await
        } else if self.direct
            && !crate::web::is_own_path(req.uri().path())
            && !crate::health::is_own_path(req.uri().path())
            && req.uri().path() != metrics::PATH
            && !browser::is_navigation(req.method(), req.headers())
        {
            gate::pass(&self.app, &conn.peer, Some(&conn.memo), req).await
        } else {
            req.extensions_mut().insert(ConnectInfo(conn.addr));
            // Boxed, like every path but the plain forward: it keeps the hot future small.
            match Box::pin(self.router.clone().oneshot(req)).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        };
        self.app.metrics.request(class, response.status(), started.elapsed());
        request_id::propagate(response.headers_mut(), id);
        response
    }
}

/// What the edge keeps for one client connection, for all the requests that come on it.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    peer: crate::http::client::Peer,
    memo: DigestMemo,
}

impl Connection {
    /// A connection from `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, peer: crate::http::client::Peer::new(addr.ip()), memo: DigestMemo::default() }
    }
}

/// The whole application: gateway routes, then everything else through the gate.
fn router(app: AppState) -> Router {
    let routes = crate::web::routes()
        .merge(crate::health::routes())
        .route(metrics::PATH, axum::routing::get(metrics::admin_scrape))
        .fallback(gate::gate)
        .layer(middleware::from_fn(browser::render_errors_for_browsers));
    // Per-request spans cost ~3 % of a proxied request: only when debug logs are wanted.
    let routes = if tracing::enabled!(tracing::Level::DEBUG) {
        routes.layer(TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
    } else {
        routes
    };
    routes.with_state(app)
}
