//! `GET /healthz` (the process serves) and `GET /readyz` (it can do its work: the store
//! answers and a backend is healthy), for load balancers and orchestrators. Public, so they
//! say nothing about users, backend URLs or versions: check names, yes or no, and counts.
//!
//! Reached by exactly these paths (the edge sends them to [`routes`]); every other spelling
//! (`/healthz/`, `/%68ealthz`, `/api/healthz`) is a ComfyUI path like any other, behind
//! authentication. ComfyUI has no route by these names.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use http::header::{CACHE_CONTROL, HeaderValue};
use serde::Serialize;

use crate::state::{App, AppState};

/// The liveness path.
pub const HEALTHZ: &str = "/healthz";
/// The readiness path.
pub const READYZ: &str = "/readyz";

/// Whether `path` (as sent) is one of these routes.
pub fn is_own_path(path: &str) -> bool {
    path == HEALTHZ || path == READYZ
}

/// `/healthz` and `/readyz` (GET and HEAD; other methods 405).
pub fn routes() -> Router<AppState> {
    Router::new().route(HEALTHZ, get(healthz)).route(READYZ, get(readyz))
}

/// One readiness check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`store`, `backends`, ...).
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Why, in a few words (no user data, no URLs).
    pub reason: String,
}

impl Check {
    /// A check that passed.
    pub fn pass(name: &'static str, reason: impl Into<String>) -> Self {
        Self { name, ok: true, reason: reason.into() }
    }

    /// A check that failed.
    pub fn fail(name: &'static str, reason: impl Into<String>) -> Self {
        Self { name, ok: false, reason: reason.into() }
    }

    /// A check from a service's own account of its failure (`None`: all is well), e.g.
    /// `Check::from_failure("audit", app.audit.failure())`.
    pub fn from_failure(name: &'static str, failure: Option<String>) -> Self {
        match failure {
            None => Self::pass(name, "ok"),
            Some(reason) => Self::fail(name, reason),
        }
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// `ok` when every check passed, else `fail`.
    pub status: &'static str,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// The verdict on `checks`.
    pub fn of(checks: Vec<Check>) -> Self {
        let status = if checks.iter().all(|c| c.ok) { "ok" } else { "fail" };
        Self { status, checks }
    }

    /// Whether the gateway is ready.
    pub fn is_ready(&self) -> bool {
        self.status == "ok"
    }
}

/// The readiness checks of a running gateway (`/readyz`, and `comfygate_ready` in the metrics).
/// Another check is one more line in the list.
pub async fn readiness(app: &App) -> Readiness {
    let store = match app.store_probe.check(app.scheduler.store().as_ref()).await {
        Ok(()) => Check::pass("store", "the store answers"),
        Err(reason) => Check::fail("store", reason),
    };
    Readiness::of(vec![
        store,
        backends(app),
        // Actions the audit log cannot record are refused: not ready while it fails.
        // Its reason names files and errors: in the gateway's log, not on this public route.
        Check::from_failure("audit", app.audit.failure().map(|_| "the audit log cannot be written".to_owned())),
    ])
}

async fn healthz() -> Response {
    no_store(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(app): State<AppState>) -> Response {
    let readiness = readiness(&app).await;
    let status = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    no_store(status, readiness)
}

fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// At least one configured backend passes its health checks.
fn backends(app: &App) -> Check {
    let pool = app.scheduler.pool();
    let (healthy, total) = (pool.healthy().len(), pool.all().iter().filter(|b| !b.is_retiring()).count());
    let reason = format!("{healthy} of {total} backends healthy");
    if healthy > 0 { Check::pass("backends", reason) } else { Check::fail("backends", reason) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_fails_when_any_check_fails() {
        assert!(Readiness::of(vec![Check::pass("a", "ok"), Check::from_failure("b", None)]).is_ready());
        let r = Readiness::of(vec![Check::pass("a", "ok"), Check::from_failure("b", Some("disk full".into()))]);
        assert!(!r.is_ready());
        assert_eq!(r.status, "fail");
        assert_eq!(r.checks[1], Check::fail("b", "disk full"));
    }

    #[test]
    fn only_the_exact_paths_are_health_routes() {
        assert!(is_own_path("/healthz") && is_own_path("/readyz"));
        for path in ["/healthz/", "/HEALTHZ", "/%68ealthz", "/./healthz", "//healthz", "/api/healthz", "/readyz/x"] {
            assert!(!is_own_path(path), "{path}");
        }
    }
}
