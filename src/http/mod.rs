//! The HTTP edge: the listener ([`server`]), who the client is ([`client`]), the gateway's
//! routes and the fallback [`gate`] to ComfyUI, and the one error mapping ([`error`]).

pub mod browser;
pub mod caller;
pub mod client;
pub mod error;
pub mod gate;
pub mod server;

use axum::Router;
use axum::middleware;
use http::HeaderName;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::AppState;

pub use caller::{AdminCaller, Caller};
pub use client::ClientInfo;
pub use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application: gateway routes, then everything else through the gate.
pub fn router(app: AppState) -> Router {
    let routes =
        crate::web::routes().fallback(gate::gate).layer(middleware::from_fn(browser::render_errors_for_browsers));
    // Per-request spans cost ~3 % of a proxied request: only when debug logs are wanted.
    let routes = if tracing::enabled!(tracing::Level::DEBUG) {
        routes.layer(TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
    } else {
        routes
    };
    routes
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(app)
}
