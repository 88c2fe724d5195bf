//! `/comfygate/account`: who you are, your API tokens, your password.

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cookie::SameSite;
use http::StatusCode;
use http::header::{RETRY_AFTER, SET_COOKIE};
use serde::Deserialize;

use super::console::human_ms;
use super::cookies::set_cookie;
use super::page::{escape, layout, with_page_headers};
use super::views::TokenView;
use super::{actions, csrf};
use crate::auth::AuthMethod;
use crate::auth::accounts::AccountError;
use crate::auth::flash::{Flash, Owner};
use crate::config::DEFAULT_TOKEN_LIFETIME;
use crate::http::{ApiError, Caller, ClientInfo, RequestContext};
use crate::scheduler::control::POSITIONS_COUNTED;
use crate::state::AppState;
use crate::store::JobState;
use crate::time::{format_ms, now_ms};

/// Token creation form.
#[derive(Deserialize)]
pub struct NewTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    password: String,
    /// A checkbox: present (`on`) when checked.
    #[serde(default)]
    keep: Option<String>,
}

/// Forms that carry only the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Password change form.
#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

type FormResult<T> = Result<Form<T>, axum::extract::rejection::FormRejection>;

/// `GET /comfygate/account`.
pub async fn show(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let notices = app.flashes.take(Owner::of(&caller.identity));
    render(&app, &caller, StatusCode::OK, &notices, None).await
}

/// `POST /comfygate/account/tokens`: creates a token and shows it once.
pub async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    RequestContext(context): RequestContext,
    form: FormResult<NewTokenForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    csrf::check_form(&caller, &form.csrf)?;
    let request = actions::TokenRequest {
        owner: None,
        name: &form.name,
        expires: &form.expires,
        password: Some(&form.password),
        keep: form.keep.is_some(),
        context: &context,
    };
    match actions::create_token(&app, &caller, request).await {
        Ok(issued) => {
            // Post/Redirect/Get: a refresh shows the page again, never makes a second token. The
            // secret rides in a one-time notice of this session, not in the URL.
            let text = format!("New token “{}” — copy it now, it will not be shown again.", issued.token.name);
            app.flashes.push(Owner::of(&caller.identity), Flash::secret(text, issued.secret));
            Ok(Redirect::to("/comfygate/account").into_response())
        }
        Err(
            e @ (ApiError::BadRequest(_)
            | ApiError::Conflict(_)
            | ApiError::Forbidden(_)
            | ApiError::TooManyRequests { .. }),
        ) => refused(&app, &caller, e).await,
        Err(e) => Err(e),
    }
}

/// `POST /comfygate/account/tokens/{id}/revoke`.
pub async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    RequestContext(context): RequestContext,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    csrf::check_form(&caller, &form.csrf)?;
    actions::revoke_token(&app, &caller, id, &context).await?;
    Ok(Redirect::to("/comfygate/account").into_response())
}

/// `POST /comfygate/account/password`: every session ends, so the browser logs in again.
pub async fn change_password(
    State(app): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    RequestContext(context): RequestContext,
    form: FormResult<PasswordForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    csrf::check_form(&caller, &form.csrf)?;
    if form.new != form.confirm {
        return render(&app, &caller, StatusCode::BAD_REQUEST, &[], Some("The new passwords do not match.")).await;
    }
    match actions::change_password(&app, &caller, &form.current, &form.new, &context).await {
        Ok(()) => {
            let mut response = Redirect::to("/login?changed=1").into_response();
            response.headers_mut().append(
                SET_COOKIE,
                set_cookie(&app.config.auth.cookie_name, "", "/", SameSite::Lax, None, client.https),
            );
            Ok(response)
        }
        Err(e @ (ApiError::BadRequest(_) | ApiError::Unauthenticated(_) | ApiError::TooManyRequests { .. })) => {
            refused(&app, &caller, e).await
        }
        Err(e) => Err(e),
    }
}

/// The account page saying why a form was refused (and, for a throttled one, when to retry).
async fn refused(app: &AppState, caller: &Caller, e: ApiError) -> Result<Response, ApiError> {
    let mut response = render(app, caller, e.status(), &[], Some(&e.to_string())).await?;
    if let Some(retry_after) = e.retry_after() {
        response.headers_mut().insert(RETRY_AFTER, retry_after);
    }
    Ok(response)
}

async fn render(
    app: &AppState,
    caller: &Caller,
    status: StatusCode,
    notices: &[Flash],
    error: Option<&str>,
) -> Result<Response, ApiError> {
    let me = &caller.identity;
    let tokens = app.auth.accounts().list_tokens(Some(&me.username)).await?;
    let csrf = escape(&csrf::form_token(caller));
    let rows: String = tokens
        .iter()
        .map(TokenView::from)
        .filter(|t| t.status != "revoked")
        .map(|t| {
            format!(
                r#"<tr><td>{name}</td><td><code>{prefix}…</code></td><td>{status}</td><td>{created}</td><td>{used}</td><td>{expires}</td>
<td><form class="inline" method="post" action="/comfygate/account/tokens/{id}/revoke"><input type="hidden" name="csrf" value="{csrf}"><button class="danger" type="submit">Revoke</button></form></td></tr>"#,
                name = escape(&t.name),
                prefix = escape(&t.prefix),
                status = t.status,
                created = escape(&t.created_at),
                used = escape(t.last_used_at.as_deref().unwrap_or("never")),
                expires = escape(t.expires_at.as_deref().unwrap_or("never")),
                id = t.id,
            )
        })
        .collect();
    let table = if rows.is_empty() {
        "<p class=\"muted\">No active tokens.</p>".to_owned()
    } else {
        format!(
            "<table><tr><th>Name</th><th>Starts with</th><th>Status</th><th>Created</th><th>Last used</th><th>Expires</th><th></th></tr>{rows}</table>"
        )
    };
    let issued: String = notices
        .iter()
        .map(|n| match &n.secret {
            Some(secret) => format!(
                r#"<div class="notice"><b>{text}</b><code class="secret" id="one-time-secret">{secret}</code>
Use it as <code>Authorization: Bearer …</code> or <code>?token=…</code>.</div>"#,
                text = escape(&n.text),
                secret = escape(secret),
            ),
            None => {
                let class = if n.error { "error" } else { "notice" };
                format!(r#"<p class="{class}">{}</p>"#, escape(&n.text))
            }
        })
        .collect();
    let error = error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e))).unwrap_or_default();
    let jobs = jobs_card(app, me.user_id);
    let sessions = sessions_card(app, caller, &csrf).await?;
    let webhooks = super::webhooks::account_card(app, me.user_id).await;
    let body = format!(
        r#"<div class="card"><h1>Your account</h1><p>Signed in as <b>{user}</b> ({role}). <a href="/">Open ComfyUI</a>{console}</p>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Log out</button></form></div>
{error}
<div class="card"><h2>API tokens</h2>{issued}{table}
<form method="post" action="/comfygate/account/tokens"><input type="hidden" name="csrf" value="{csrf}">
<label for="name">New token name</label><input id="name" name="name" maxlength="64" placeholder="laptop notebook" required>
<label for="expires">Expires after</label><select id="expires" name="expires">{expiry_options}</select>
<label for="token-password">Your password</label><input id="token-password" name="password" type="password" autocomplete="current-password">
<p class="muted">Required unless you logged in less than {window} ago.</p>
<label><input type="checkbox" name="keep" style="width:auto"> Keep after I log out or change my password</label>
<p class="muted">Otherwise the token is revoked when this session logs out or the password changes.</p>
<button type="submit">Create token</button></form></div>
{jobs}{sessions}{webhooks}
<div class="card"><h2>Change password</h2><p class="muted">Every session, this one included, ends, and so do tokens made in a session unless kept.</p>
<form method="post" action="/comfygate/account/password"><input type="hidden" name="csrf" value="{csrf}">
<label for="current">Current password</label><input id="current" name="current" type="password" autocomplete="current-password" required>
<label for="new">New password</label><input id="new" name="new" type="password" autocomplete="new-password" minlength="{min}" required>
<label for="confirm">New password again</label><input id="confirm" name="confirm" type="password" autocomplete="new-password" required>
<button type="submit">Change password</button></form></div>"#,
        user = escape(&me.username),
        role = me.role,
        console = if me.is_admin() { r#" · <a href="/comfygate/admin/">Operator console</a>"# } else { "" },
        min = app.config.auth.min_password_length,
        window = humantime::format_duration(app.config.auth.token_reauth_window),
        expiry_options = expiry_options(me.is_admin(), app.config.auth.token_max_lifetime),
    );
    Ok(with_page_headers((status, Html(layout("Account", &body))).into_response()))
}

/// "Your jobs": those on backends, then those waiting with their place in the gateway's queue
/// and why they wait.
fn jobs_card(app: &AppState, user_id: i64) -> String {
    let now = now_ms();
    let rows: String = app
        .scheduler
        .jobs_of(user_id)
        .into_iter()
        .map(|(job, place)| {
            let state = match job.state {
                JobState::Running => "running".to_owned(),
                JobState::Queued => match place {
                    Some(n) => format!("waiting, {} in the queue", ordinal(n)),
                    None => format!("waiting (past the first {POSITIONS_COUNTED} in the queue)"),
                },
                _ => "on its backend's queue".to_owned(),
            };
            format!(
                r#"<tr><td><code>{id}</code></td><td>{state}</td><td>{backend}</td><td title="{utc}">{waited} ago</td><td class="muted">{why}</td></tr>"#,
                id = escape(&job.public_id),
                state = escape(&state),
                backend = escape(job.backend.as_deref().unwrap_or("–")),
                utc = escape(&format_ms(job.created_at)),
                waited = human_ms(now - job.created_at),
                why = escape(job.reason.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let table = if rows.is_empty() {
        "<p class=\"muted\">None running or waiting.</p>".to_owned()
    } else {
        format!(
            "<table><tr><th>Prompt</th><th>State</th><th>Backend</th><th>Submitted</th><th></th></tr>{rows}</table>"
        )
    };
    format!(r#"<div class="card"><h2>Your jobs</h2>{table}</div>"#)
}

/// "Your sessions": every open one, this one marked, the others with a sign-out button.
async fn sessions_card(app: &AppState, caller: &Caller, csrf: &str) -> Result<String, ApiError> {
    let now = now_ms();
    let this = match caller.identity.method {
        AuthMethod::Session { session_id, .. } => Some(session_id),
        _ => None,
    };
    let sessions = app.scheduler.store().sessions_of(caller.identity.user_id, now).await.map_err(AccountError::from)?;
    let rows: String = sessions
        .iter()
        .map(|s| {
            let action = if Some(s.id) == this {
                "<b>this session</b>".to_owned()
            } else {
                format!(
                    r#"<form class="inline" method="post" action="/comfygate/account/sessions/{id}/revoke"><input type="hidden" name="csrf" value="{csrf}"><button class="danger" type="submit">Sign out</button></form>"#,
                    id = s.id,
                )
            };
            let browser: String = s.user_agent.chars().take(80).collect();
            format!(
                r#"<tr><td title="{started_utc}">{started} ago</td><td title="{seen_utc}">{seen} ago</td><td>{ip}</td><td class="muted">{browser}</td><td>{action}</td></tr>"#,
                started_utc = escape(&format_ms(s.created_at)),
                started = human_ms(now - s.created_at),
                seen_utc = escape(&format_ms(s.last_seen_at)),
                seen = human_ms(now - s.last_seen_at),
                ip = escape(&s.ip),
                browser = escape(&browser),
            )
        })
        .collect();
    let table = if rows.is_empty() {
        "<p class=\"muted\">No browser sessions (you are using a token).</p>".to_owned()
    } else {
        format!(
            "<table><tr><th>Logged in</th><th>Last seen</th><th>Address</th><th>Browser</th><th></th></tr>{rows}</table>"
        )
    };
    Ok(format!(r#"<div class="card"><h2>Your sessions</h2>{table}</div>"#))
}

/// `1st`, `2nd`, `3rd`, `11th`...
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// `POST /comfygate/account/sessions/{id}/revoke`: signs out another of the caller's sessions.
pub async fn revoke_session(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    RequestContext(context): RequestContext,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    csrf::check_form(&caller, &form.csrf)?;
    let me = &caller.identity;
    if !actions::sign_out_session(&app, &me.username, me.user_id, id, &context).await? {
        return Err(ApiError::NotFound("no such open session of yours".to_owned()));
    }
    Ok(Redirect::to("/comfygate/account").into_response())
}

/// The expiry choices a caller may pick: none beyond the maximum lifetime for non-admins, the
/// default (the maximum, or 90 days) selected.
fn expiry_options(is_admin: bool, max: Option<Duration>) -> String {
    let day = Duration::from_secs(86400);
    let default = max.unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let mut choices: Vec<(String, String, Duration)> =
        [(1, "1 day"), (7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")]
            .into_iter()
            .map(|(days, label)| (format!("{days}d"), label.to_owned(), day * days))
            .filter(|(_, _, d)| is_admin || max.is_none_or(|max| *d <= max))
            .collect();
    if !choices.iter().any(|(_, _, d)| *d == default) {
        choices.push((humantime::format_duration(default).to_string(), actions::describe(default), default));
        choices.sort_by_key(|(_, _, d)| *d);
    }
    let mut html: String = choices
        .iter()
        .map(|(value, label, d)| {
            let selected = if *d == default { " selected" } else { "" };
            format!(r#"<option value="{}"{selected}>{}</option>"#, escape(value), escape(label))
        })
        .collect();
    if is_admin || max.is_none() {
        html.push_str(r#"<option value="never">never</option>"#);
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_admins_are_offered_no_expiry_beyond_the_maximum() {
        let options = expiry_options(false, Some(Duration::from_secs(90 * 86400)));
        assert!(options.contains(r#"value="90d" selected"#), "{options}");
        assert!(!options.contains("365d") && !options.contains("never"), "{options}");
        let admin = expiry_options(true, Some(Duration::from_secs(90 * 86400)));
        assert!(admin.contains("365d") && admin.contains("never"), "{admin}");
    }
}
