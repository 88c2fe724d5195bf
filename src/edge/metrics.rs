//! `/metrics`: the scrape (the counters as they are, the gauges read from the gateway's state
//! at that moment), the route class each request is counted under, and the optional listener
//! that serves only `/metrics`, without authentication (`[metrics] listen`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, StatusCode, Uri};

use crate::http::{AdminCaller, ApiError};
use crate::metrics::{BackendSnapshot, RequestClass, Snapshot};
use crate::policy::{self, RouteClass};
use crate::state::{App, AppState};
use crate::time::{ms, now_ms};

/// Where the scrape is served.
pub const PATH: &str = "/metrics";

/// Connections the metrics listener holds at once, in all and from one address (scrapers are
/// few; the listener must not be a way to hold the gateway's descriptors).
pub const MAX_CONNECTIONS: (usize, usize) = (64, 16);

/// `GET /metrics` on the main listener: admins only (a token or a session), like the
/// gateway's other admin routes.
pub async fn admin_scrape(State(app): State<AppState>, _admin: AdminCaller) -> Response {
    scrape(&app).await
}

/// `GET /metrics` answered.
pub async fn scrape(app: &App) -> Response {
    let snapshot = snapshot(app).await;
    match app.metrics.encode(&snapshot) {
        Ok(text) => ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE), (CACHE_CONTROL, "no-store")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            ApiError::Internal.into_response()
        }
    }
}

/// What the listener of `[metrics] listen` answers: `/metrics` (GET or HEAD), nothing else.
pub async fn serve_only_metrics(app: &App, method: &Method, uri: &Uri) -> Response {
    if uri.path() != PATH {
        return ApiError::NotFound("this listener serves only /metrics".to_owned()).into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = (StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n").into_response();
        response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let response = scrape(app).await;
    if method == Method::HEAD {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    response
}

/// The gateway's state as the gauges show it.
pub async fn snapshot(app: &App) -> Snapshot {
    app.scheduler.fresh().await;
    let now = now_ms();
    let idle_since = now.saturating_sub(ms(app.config.auth.session_idle_timeout));
    let sessions = match app.scheduler.store().count_sessions(now, idle_since).await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the store did not answer");
            None
        }
    };
    let backends: Vec<BackendSnapshot> = app
        .scheduler
        .pool()
        .all()
        .iter()
        .map(|b| {
            let load = b.load();
            BackendSnapshot {
                name: b.name().to_owned(),
                up: load.healthy,
                inflight: load.inflight.len(),
                devices: load.devices.clone(),
            }
        })
        .collect();
    // The same checks as `/readyz`.
    let ready = crate::health::readiness(app).await.is_ready();
    // Demand is the scheduling replica's alone: another replica's view of the queue knows
    // neither the jobs' models nor the learnt run times, and summed over replicas each waiting
    // job would count once per replica.
    let demand = match app.scheduler.is_leading() {
        true => app.scheduler.demand(app.config.discovery.scale_target),
        false => crate::scheduler::demand::Demand::default(),
    };
    Snapshot {
        sessions_active: sessions,
        queue_waiting: demand.waiting,
        desired_backends: demand.desired_backends,
        discovered: app.scheduler.pool().discovered_counts(),
        queue_unrunnable: app.scheduler.unrunnable_jobs(),
        ready,
        backends,
    }
}

/// The class a request is counted under: the gateway's own route groups by path, ComfyUI
/// routes by the policy's class of their normalised path.
pub fn class_of(app: &App, method: &Method, uri: &Uri) -> RequestClass {
    let path = uri.path();
    match path {
        "/login" | "/logout" => RequestClass::Login,
        PATH => RequestClass::Metrics,
        "/healthz" | "/readyz" | "/comfygate/health" => RequestClass::Health,
        _ if path.starts_with("/comfygate/") => RequestClass::Api,
        _ => match policy::normalize(path) {
            Err(_) => RequestClass::BadName,
            Ok(p) if p.canonical == "/ws" || p.canonical == "/api/ws" => RequestClass::Ws,
            Ok(p) => match app.routes().classify(method, &p, uri.query()) {
                RouteClass::Page => RequestClass::Page,
                RouteClass::User => RequestClass::User,
                RouteClass::Admin => RequestClass::Admin,
                RouteClass::BadName(_) => RequestClass::BadName,
            },
        },
    }
}
