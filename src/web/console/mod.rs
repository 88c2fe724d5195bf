//! The operator's console under `/comfygate/admin/`: backends, the queue, users and tokens,
//! the audit log. Admins only: every handler needs a [`Console`], whose extractor refuses
//! anyone else (so no page or form can be reached without the check), and every other path
//! under `/comfygate/admin/` is a 404 behind the same check.
//!
//! Pages are askama templates (`templates/console/`), which escape every value they
//! interpolate. Forms carry the session's CSRF token and answer with `303 See Other` back to
//! their page, which shows a one-time notice ([`crate::auth::flash`]). A small script served by the
//! gateway (`console.js`) refreshes the backends and queue every 2 s from JSON endpoints;
//! every form works without it.

pub mod audit;
pub mod backends;
pub mod queue;
pub mod users;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::audit::Event;
use crate::auth::flash::{Flash, Owner};
use crate::http::audit_context::context;
use crate::http::{ApiError, Caller, ClientInfo};
use crate::state::AppState;
use crate::time::{format_ms, now_ms};

/// Where the console lives.
pub const ROOT: &str = "/comfygate/admin/";

/// The console's pages' policy: as every gateway page's, plus its own script and the JSON
/// it polls (same origin only).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/comfygate/admin", get(root).fallback(wrong_method))
        .route("/comfygate/admin/", get(backends::show).fallback(wrong_method))
        .route("/comfygate/admin/backends", get(backends::show).fallback(wrong_method))
        .route("/comfygate/admin/live/backends", get(backends::live).fallback(wrong_method))
        .route("/comfygate/admin/backends/{name}/drain", post(backends::drain).fallback(wrong_method))
        .route("/comfygate/admin/backends/{name}/resume", post(backends::resume).fallback(wrong_method))
        .route("/comfygate/admin/queue", get(queue::show).fallback(wrong_method))
        .route("/comfygate/admin/live/queue", get(queue::live).fallback(wrong_method))
        .route("/comfygate/admin/queue/{id}/cancel", post(queue::cancel).fallback(wrong_method))
        .route("/comfygate/admin/users", get(users::list).post(users::create).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}", get(users::show).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/disable", post(users::disable).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/enable", post(users::enable).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/role", post(users::role).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/password", post(users::reset_password).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/unlock", post(users::unlock).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/limits", post(users::limits).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/remove", post(users::remove).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/tokens/{id}/revoke", post(users::revoke_token).fallback(wrong_method))
        .route("/comfygate/admin/users/{name}/sessions/{id}/revoke", post(users::revoke_session).fallback(wrong_method))
        .route("/comfygate/admin/audit", get(audit::show).fallback(wrong_method))
        .route("/comfygate/admin/console.js", get(script).fallback(wrong_method))
        .route("/comfygate/admin/{*rest}", any(not_found))
}

/// An admin using the console: who, the form token for their session, and whose notices.
pub struct Console {
    /// The admin.
    pub caller: Caller,
    /// The CSRF token every form repeats (empty for a token caller, who needs none).
    pub csrf: String,
    /// Whose one-time notices to show.
    pub owner: Owner,
}

impl FromRequestParts<AppState> for Console {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        if !caller.identity.is_admin() {
            let client = ClientInfo::from_parts(parts, &app.config.server.trusted_proxies, app.tls);
            let event = Event::refused("admin_route_refused").user(&caller.identity.username).reason("admin_only");
            app.audit.note(&context(parts, &client), event.field("path_class", "console")).await;
            return Err(ApiError::Forbidden("the console is for admins only".to_owned()));
        }
        let csrf = crate::web::csrf::form_token(&caller);
        let owner = Owner::of(&caller.identity);
        Ok(Console { caller, csrf, owner })
    }
}

impl Console {
    /// Checks a submitted form's CSRF token (in constant time).
    pub fn check_form(&self, submitted: &str) -> Result<(), ApiError> {
        crate::web::csrf::check_form(&self.caller, submitted)
    }

    /// The admin's name.
    pub fn me(&self) -> &str {
        &self.caller.identity.username
    }

    /// The audit context of a request by this admin.
    pub fn context(&self, request: &crate::audit::Context) -> crate::audit::Context {
        request.by(&self.caller.identity.username)
    }

    /// The frame of a page titled `title` under the tab `tab`, taking the caller's notices.
    pub fn frame(&self, app: &AppState, title: &str, tab: Tab) -> Frame {
        Frame {
            title: title.to_owned(),
            tab,
            me: self.me().to_owned(),
            csrf: self.csrf.clone(),
            flashes: app.flashes.take(self.owner),
            style: crate::web::page::STYLE,
        }
    }

    /// Leaves a notice and answers `303 See Other` to `to` (Post/Redirect/Get: a refresh of
    /// the page the browser lands on never repeats the form).
    pub fn done(&self, app: &AppState, to: &str, flash: Flash) -> Response {
        app.flashes.push(self.owner, flash);
        Redirect::to(to).into_response()
    }
}

/// The console's tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Backends.
    Backends,
    /// Queue.
    Queue,
    /// Users and tokens.
    Users,
    /// Audit log.
    Audit,
}

/// What every console page shows around its content: title, nav bar, notices.
pub struct Frame {
    /// The page's title.
    pub title: String,
    /// The tab it belongs to.
    pub tab: Tab,
    /// The admin's name.
    pub me: String,
    /// The CSRF token for forms.
    pub csrf: String,
    /// One-time notices, taken for this render.
    pub flashes: Vec<Flash>,
    /// The gateway's page style (a constant of the gateway's own).
    pub style: &'static str,
}

impl Frame {
    /// Whether `tab` is this page's (for the nav bar).
    pub fn is(&self, tab: Tab) -> bool {
        self.tab == tab
    }
}

/// A moment as people read it: `3 min ago` (or `in 3 min`), and the UTC time for a title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// Relative to now.
    pub rel: String,
    /// RFC 3339, UTC.
    pub utc: String,
}

impl When {
    /// The moment `at_ms` (unix ms).
    pub fn at(at_ms: i64) -> Self {
        let delta = now_ms() - at_ms;
        let rel = match delta {
            d if d.abs() < 1000 => "just now".to_owned(),
            d if d > 0 => format!("{} ago", human_ms(d)),
            d => format!("in {}", human_ms(-d)),
        };
        When { rel, utc: format_ms(at_ms) }
    }
}

/// A span of `ms` milliseconds in words: `42 s`, `3 min`, `2 h 5 min`, `3 d 4 h`.
pub fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 if s % 3600 / 60 == 0 => format!("{} h", s / 3600),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ if s % 86400 / 3600 == 0 => format!("{} d", s / 86400),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// Renders a console page: HTML with the console's policy (the edge adds `no-store` and the
/// other page headers).
pub fn page(template: &impl askama::Template) -> Result<Response, ApiError> {
    let html = template.render().map_err(|e| {
        tracing::error!(error = %e, "console page failed to render");
        ApiError::Internal
    })?;
    let mut response = Html(html).into_response();
    response.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    Ok(response)
}

/// The JSON a live section polls: the section rendered by its template (escaped like a page).
pub fn live_json(template: &impl askama::Template) -> Result<Response, ApiError> {
    let html = template.render().map_err(|e| {
        tracing::error!(error = %e, "console section failed to render");
        ApiError::Internal
    })?;
    Ok(axum::Json(serde_json::json!({ "html": html, "at": format_ms(now_ms()) })).into_response())
}

/// `GET /comfygate/admin`: on to the console's first page.
async fn root(_console: Console) -> Response {
    Redirect::permanent(ROOT).into_response()
}

/// `/comfygate/admin/...` that is no page: 404, after the admin check.
async fn not_found(_console: Console) -> ApiError {
    ApiError::NotFound("no such console page".to_owned())
}

/// A method a console route does not take: 405, after the admin check (a user learns no more
/// than that the console is not for them).
async fn wrong_method(_console: Console) -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

/// `GET /comfygate/admin/console.js`: the live refresh.
async fn script(_console: Console) -> Response {
    let mut response = (StatusCode::OK, include_str!("../../../templates/console/console.js")).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A form that carries only the CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A form body, or why it could not be read.
pub type FormResult<T> = Result<axum::Form<T>, axum::extract::rejection::FormRejection>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_console_route_is_an_own_path_under_the_console() {
        let source = include_str!("mod.rs");
        let paths: Vec<&str> = source.split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(paths.len() >= 18, "found {paths:?}");
        for path in paths {
            let concrete = path.replace("{id}", "1").replace("{name}", "alice").replace("{*rest}", "x/y");
            assert!(crate::web::is_own_path(&concrete), "{path} would bypass the router");
            assert!(concrete.starts_with("/comfygate/admin"), "{path}");
        }
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(human_ms(42_000), "42 s");
        assert_eq!(human_ms(180_000), "3 min");
        assert_eq!(human_ms(7_200_000), "2 h");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
        assert_eq!(human_ms(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
        assert_eq!(human_ms(-5), "0 s");
        assert_eq!(When::at(now_ms() - 180_000).rel, "3 min ago");
        assert!(When::at(now_ms() + 600_000).rel.starts_with("in "));
    }
}
