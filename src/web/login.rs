//! The login page, the login form's handler, and logout.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cookie::SameSite;
use http::header::{RETRY_AFTER, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::cookies::set_cookie;
use super::csrf;
use super::page::{escape, layout, safe_next, with_page_headers};
use crate::auth::credentials::cookie_value;
use crate::auth::{Presented, secret};
use crate::http::{ApiError, Caller, ClientInfo, RequestContext};
use crate::policy::origin;
use crate::state::AppState;
use crate::time::ms;

/// `GET /login` query.
#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    changed: Option<String>,
    /// Why the browser was sent here (a known code; anything else is ignored).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /login` form.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// `GET /login`: the form (or straight on, when already logged in).
pub async fn show(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (next, changed, reason) = query.map(|Query(q)| (q.next, q.changed.is_some(), q.reason)).unwrap_or_default();
    if let Some(session) = cookie_value(&headers, &app.config.auth.cookie_name) {
        if app.auth.authenticate(&Presented::SessionCookie(session)).await.is_ok() {
            return Redirect::to(&safe_next(&next)).into_response();
        }
    }
    let notice = match reason.as_deref() {
        _ if changed => Some("Your password was changed. Log in with the new one."),
        Some("session_ended") => Some(
            "Your session has ended (you logged out elsewhere, your password was changed, or an admin ended it). Log in again.",
        ),
        Some("session_expired") => Some("Your session has expired. Log in again."),
        Some("user_disabled") => Some("This account is disabled: ask an administrator."),
        _ => None,
    };
    render(&client, StatusCode::OK, &next, notice, None, "")
}

/// `POST /login`: checks the password and opens a session.
pub async fn submit(
    State(app): State<AppState>,
    client: ClientInfo,
    RequestContext(context): RequestContext,
    uri: http::Uri,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            let error = ApiError::from(rejection);
            return render(&client, error.status(), "", None, Some(&error.to_string()), "");
        }
    };
    if !csrf::check_login(cookie_value(&headers, csrf::LOGIN_COOKIE).as_deref(), &form.csrf)
        || origin::cross_site_at(&headers, uri.authority(), &app.allowed_hosts).is_some()
    {
        let msg = "The login form expired or came from another site. Please try again.";
        return render(&client, StatusCode::FORBIDDEN, &form.next, None, Some(msg), &form.username);
    }
    match app.auth.login(&form.username, &form.password, &context).await {
        Ok(login) => {
            let cfg = &app.config.auth;
            let max_age = ms(cfg.session_absolute_timeout) / 1000;
            let mut response = Redirect::to(&safe_next(&form.next)).into_response();
            let h = response.headers_mut();
            h.append(
                SET_COOKIE,
                set_cookie(&cfg.cookie_name, &login.cookie_value, "/", SameSite::Lax, Some(max_age), client.https),
            );
            h.append(SET_COOKIE, set_cookie(csrf::LOGIN_COOKIE, "", "/login", SameSite::Strict, None, client.https));
            response
        }
        Err(failure) => {
            let error = ApiError::from(failure);
            let mut response =
                render(&client, error.status(), &form.next, None, Some(&error.to_string()), &form.username);
            if let Some(retry_after) = error.retry_after() {
                response.headers_mut().insert(RETRY_AFTER, retry_after);
            }
            response
        }
    }
}

/// `POST /logout` form.
#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `GET /logout`: a confirmation button (logging out by GET would let any page log you out).
pub async fn confirm(caller: Caller) -> Response {
    let body = format!(
        r#"<div class="card"><h1>Log out</h1><p>Signed in as <b>{user}</b>.</p>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Log out</button></form></div>"#,
        user = escape(&caller.identity.username),
        csrf = escape(&csrf::form_token(&caller)),
    );
    with_page_headers(Html(layout("Log out", &body)).into_response())
}

/// `POST /logout`: ends the session.
pub async fn logout(
    State(app): State<AppState>,
    client: ClientInfo,
    RequestContext(context): RequestContext,
    caller: Caller,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let submitted = form.map(|Form(f)| f.csrf).unwrap_or_default();
    csrf::check_form(&caller, &submitted)?;
    app.auth.logout(&caller.identity, &context.by(&caller.identity.username)).await?;
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(&app.config.auth.cookie_name, "", "/", SameSite::Lax, None, client.https));
    Ok(response)
}

/// Renders the login page with a fresh CSRF cookie.
fn render(
    client: &ClientInfo,
    status: StatusCode,
    next: &str,
    notice: Option<&str>,
    error: Option<&str>,
    username: &str,
) -> Response {
    let token = secret::random_secret().unwrap_or_default();
    let notice = notice.map(|n| format!(r#"<p class="notice">{}</p>"#, escape(n))).unwrap_or_default();
    let error = error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e))).unwrap_or_default();
    let body = format!(
        r#"<div class="card"><h1>Sign in to ComfyUI</h1>{notice}{error}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{token}"><input type="hidden" name="next" value="{next}">
<label for="username">User name</label><input id="username" name="username" autocomplete="username" value="{username}" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form></div>
<p class="muted">Scripts and notebooks: send <code>Authorization: Bearer cg_…</code> or <code>?token=cg_…</code>; create tokens on your account page.</p>"#,
        token = escape(&token),
        next = escape(&safe_next(next)),
        username = escape(username),
    );
    let mut response = (status, Html(layout("Sign in", &body))).into_response();
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(csrf::LOGIN_COOKIE, &token, "/login", SameSite::Strict, Some(3600), client.https),
    );
    with_page_headers(response)
}
