//! The gateway's JSON API under `/comfygate/api/`: who am I, my tokens, my password, and
//! (admins) users. Session callers must send JSON from the gateway's own origin.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::actions;
use super::views::{TokenView, UserView};
use crate::auth::AuthMethod;
use crate::http::{AdminCaller, ApiError, Caller, RequestContext};
use crate::state::AppState;
use crate::store::Role;

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// `GET /comfygate/api/whoami`: exactly who the gateway thinks you are.
pub async fn whoami(caller: Caller) -> Json<Value> {
    let id = &caller.identity;
    let auth = match &id.method {
        AuthMethod::Session { .. } => json!({ "method": "session" }),
        AuthMethod::Token { name, kind, .. } => {
            json!({ "method": "token", "token_name": name.as_ref(), "token_kind": kind })
        }
    };
    Json(json!({ "username": id.username.as_ref(), "role": id.role, "auth": auth }))
}

/// `GET /comfygate/api/tokens` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    user: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `GET /comfygate/api/tokens`: your tokens (admins: `?user=` or `?all=true`).
pub async fn list_tokens(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<TokenListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let Query(q) = query?;
    let me = caller.identity.username.to_string();
    let scope = match (q.all, q.user) {
        (false, None) => Some(me),
        (false, Some(user)) if user == me => Some(me),
        _ if !caller.identity.is_admin() => {
            return Err(ApiError::Forbidden("only admins list other users' tokens".to_owned()));
        }
        (true, _) => None,
        (false, Some(user)) => Some(user),
    };
    let tokens = app.auth.accounts().list_tokens(scope.as_deref()).await?;
    Ok(Json(tokens.iter().map(TokenView::from).collect()))
}

/// `POST /comfygate/api/tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    user: Option<String>,
    /// The caller's password: required from a session older than `auth.token_reauth_window`.
    #[serde(default)]
    password: Option<String>,
    /// Keep the token after this session logs out and across password changes.
    #[serde(default)]
    keep: bool,
}

/// `POST /comfygate/api/tokens`: `201 {token, ...}`; the secret is shown this once.
pub async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    RequestContext(context): RequestContext,
    body: JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let request = actions::TokenRequest {
        owner: body.user.as_deref(),
        name: &body.name,
        expires: body.expires.as_deref().unwrap_or_default(),
        password: body.password.as_deref(),
        keep: body.keep,
        context: &context,
    };
    let issued = actions::create_token(&app, &caller, request).await?;
    let mut view = serde_json::to_value(TokenView::from(&issued.token)).map_err(|_| ApiError::Internal)?;
    view["token"] = Value::String(issued.secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `DELETE /comfygate/api/tokens/{id}`.
pub async fn revoke_token(
    State(app): State<AppState>,
    caller: Caller,
    RequestContext(context): RequestContext,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    actions::revoke_token(&app, &caller, id, &context).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /comfygate/api/password` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /comfygate/api/password`: every session of the caller ends.
pub async fn change_password(
    State(app): State<AppState>,
    caller: Caller,
    RequestContext(context): RequestContext,
    body: JsonBody<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body?;
    actions::change_password(&app, &caller, &body.current_password, &body.new_password, &context).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /comfygate/api/users` (admins).
pub async fn list_users(State(app): State<AppState>, _admin: AdminCaller) -> Result<Json<Vec<UserView>>, ApiError> {
    let users = app.auth.accounts().list_users().await?;
    Ok(Json(users.iter().map(UserView::from).collect()))
}

/// `POST /comfygate/api/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<Role>,
}

/// `POST /comfygate/api/users` (admins): `201` with the user.
pub async fn create_user(
    State(app): State<AppState>,
    AdminCaller(admin): AdminCaller,
    RequestContext(context): RequestContext,
    body: JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let context = context.by(&admin.identity.username);
    let role = body.role.unwrap_or(Role::User);
    let user = app.auth.accounts().create_user(&body.username, &body.password, role, &context).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))).into_response())
}

/// `PATCH /comfygate/api/users/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    disabled: Option<bool>,
    role: Option<Role>,
    password: Option<String>,
}

/// `PATCH /comfygate/api/users/{name}` (admins): disable/enable, role, password reset.
pub async fn update_user(
    State(app): State<AppState>,
    AdminCaller(admin): AdminCaller,
    RequestContext(context): RequestContext,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: JsonBody<UserChange>,
) -> Result<Json<UserView>, ApiError> {
    let Path(name) = name?;
    let Json(change) = body?;
    let accounts = app.auth.accounts();
    let context = context.by(&admin.identity.username);
    // Each change is audited (and refused without its line) on its own; one that fails
    // leaves those before it made, as the response's error says.
    let result = async {
        if let Some(password) = &change.password {
            accounts.set_password(&name, password, &context).await?;
        }
        if let Some(role) = change.role {
            accounts.set_role(&name, role, &context).await?;
        }
        if let Some(disabled) = change.disabled {
            accounts.set_disabled(&name, disabled, &context).await?;
        }
        Ok::<_, crate::auth::AccountError>(())
    }
    .await;
    app.auth.revoked();
    result?;
    let user = accounts.user(&name).await?;
    Ok(Json(UserView::from(&user)))
}

/// `DELETE /comfygate/api/users/{name}` (admins).
pub async fn delete_user(
    State(app): State<AppState>,
    AdminCaller(admin): AdminCaller,
    RequestContext(context): RequestContext,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(name) = name?;
    app.auth.accounts().remove_user(&name, &context.by(&admin.identity.username)).await?;
    app.auth.revoked();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /comfygate/api/backends` (admins): each backend's health, capabilities, load, drain
/// and the jobs the store has on it (`jobs`, null when the store does not answer).
pub async fn backends(State(app): State<AppState>, _admin: AdminCaller) -> Json<Value> {
    let on = app.scheduler.store().jobs_on_backends().await.ok();
    app.scheduler.fresh().await;
    let list: Vec<Value> = app
        .scheduler
        .pool()
        .all()
        .iter()
        .map(|b| {
            let caps = b.capabilities();
            let load = b.load();
            json!({
                "name": b.name(),
                "url": b.config.url,
                "labels": b.config.labels,
                "healthy": load.healthy,
                "failures": load.failures,
                "retiring": b.is_retiring(),
                "drained": b.is_drained(),
                "jobs": on.as_ref().map(|on| on.iter().find(|(n, _)| n == b.name()).map_or(0, |(_, j)| *j)),
                "monitored": load.monitored,
                "max_inflight": b.config.max_inflight,
                "inflight": load.inflight,
                "running": load.running,
                "last_error": load.last_error,
                "node_classes": caps.as_ref().map(|c| c.classes.len()),
                "model_files": caps.as_ref().map(|c| c.model_files().len()),
            })
        })
        .collect();
    Json(json!({
        "backends": list,
        "jobs": app.scheduler.queue_remaining(),
        "waiting": app.scheduler.waiting(),
        "scheduling": app.scheduler.is_leading(),
    }))
}

/// `GET /comfygate/health`: liveness, public.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}
