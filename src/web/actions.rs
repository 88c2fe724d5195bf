//! What a caller can do to their own account, shared by the account page and the JSON API.
//! Permission checks live here: a user acts on their own tokens, an admin on anyone's.

use std::time::Duration;

use crate::audit::Context;
use crate::auth::accounts::{AccountError, IssuedToken, TokenOrigin, parse_expiry};
use crate::auth::{AuthMethod, LoginFailure};
use crate::http::{ApiError, Caller};
use crate::state::AppState;
use crate::store::ApiToken;
use crate::time::{ms, now_ms};

/// What a caller asks for when creating a token.
pub struct TokenRequest<'a> {
    /// Owner (the caller when `None` or empty; anyone for admins).
    pub owner: Option<&'a str>,
    /// Label.
    pub name: &'a str,
    /// Lifetime such as `30d`, `never`, or empty for the default.
    pub expires: &'a str,
    /// The caller's password, re-entered (required from a session older than the window).
    pub password: Option<&'a str>,
    /// Keep the token after this session logs out and across password changes.
    pub keep: bool,
    /// Where the request comes from (for the login lockout and the audit log).
    pub context: &'a Context,
}

/// Creates a token for the caller (or, for an admin, anyone).
///
/// A session caller proves it is still the account's owner: by a session younger than
/// `auth.token_reauth_window`, or by re-entering the password (a stolen cookie or a script
/// injected into the page cannot). A token caller needs no password: the token already is a
/// full credential, so tokens may mint tokens (admins' automation); those are not tied to any
/// session. Non-admins may not exceed `auth.token_max_lifetime`.
pub async fn create_token(app: &AppState, caller: &Caller, request: TokenRequest<'_>) -> Result<IssuedToken, ApiError> {
    let me = caller.identity.username.as_ref();
    let owner = request.owner.filter(|o| !o.is_empty()).unwrap_or(me);
    if owner != me && !caller.identity.is_admin() {
        return Err(ApiError::Forbidden("only admins create tokens for other users".to_owned()));
    }
    let config = app.auth.config();
    let expires_in = parse_expiry(request.expires, config.default_token_lifetime())?;
    if !caller.identity.is_admin() {
        check_lifetime(expires_in, config.token_max_lifetime)?;
    }
    let origin = match caller.identity.method {
        AuthMethod::Session { session_id, created_at } => {
            let young = now_ms().saturating_sub(created_at) < ms(config.token_reauth_window);
            match request.password.filter(|p| !p.is_empty()) {
                Some(password) => confirm(app, caller, password, request.context).await?,
                None if young => {}
                None => {
                    return Err(ApiError::Forbidden(format!(
                        "enter your password to create a token (sessions older than {} must re-authenticate)",
                        humantime::format_duration(config.token_reauth_window)
                    )));
                }
            }
            TokenOrigin { session: Some(session_id), keep: request.keep }
        }
        AuthMethod::Token { .. } => TokenOrigin::default(),
    };
    let context = request.context.by(me);
    Ok(app.auth.accounts().create_token_from(owner, request.name, expires_in, origin, &context).await?)
}

/// Refuses `never` or a lifetime beyond `max` (when there is a maximum).
fn check_lifetime(expires_in: Option<Duration>, max: Option<Duration>) -> Result<(), AccountError> {
    match (expires_in, max) {
        (_, None) => Ok(()),
        (Some(asked), Some(max)) if asked <= max => Ok(()),
        (_, Some(max)) => Err(AccountError::ExpiryTooLong(describe(max))),
    }
}

/// A lifetime as people read it: whole days as `90 days`, the rest as humantime writes it.
pub fn describe(d: Duration) -> String {
    const DAY: u64 = 86400;
    match d.as_secs() {
        s if s >= DAY && s % DAY == 0 && d.subsec_nanos() == 0 => format!("{} days", s / DAY),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// Re-checks the caller's password (counted by the login lockout).
async fn confirm(app: &AppState, caller: &Caller, password: &str, context: &Context) -> Result<(), ApiError> {
    app.auth.confirm_password(&caller.identity, password, context).await.map_err(|e| match e {
        LoginFailure::InvalidCredentials => ApiError::Forbidden("the password is wrong".to_owned()),
        other => ApiError::from(other),
    })
}

/// Revokes token `id` if the caller owns it or is an admin.
pub async fn revoke_token(app: &AppState, caller: &Caller, id: i64, context: &Context) -> Result<ApiToken, ApiError> {
    let scope = (!caller.identity.is_admin()).then_some(caller.identity.username.as_ref());
    let token = app
        .auth
        .accounts()
        .list_tokens(scope)
        .await?
        .into_iter()
        .find(|t| t.id == id && t.revoked_at.is_none())
        .ok_or_else(|| ApiError::NotFound(format!("no active token with id {id}")))?;
    app.auth.accounts().revoke_token_record(&token, &context.by(&caller.identity.username)).await?;
    app.auth.revoked();
    Ok(token)
}

/// Changes the caller's own password after re-checking the current one; every session ends,
/// and so does every token a session minted without `keep`.
pub async fn change_password(
    app: &AppState,
    caller: &Caller,
    current: &str,
    new: &str,
    context: &Context,
) -> Result<(), ApiError> {
    app.auth.confirm_password(&caller.identity, current, context).await.map_err(|e| match e {
        LoginFailure::InvalidCredentials => ApiError::Forbidden("the current password is wrong".to_owned()),
        other => ApiError::from(other),
    })?;
    app.auth.accounts().check_password(new)?;
    let me = caller.identity.username.as_ref();
    app.auth.accounts().set_password(me, new, &context.by(me)).await?;
    app.auth.revoked();
    Ok(())
}

/// Signs out session `session_id` of account `username` (id `user_id`), with the tokens it
/// minted without `keep`, audited first; `false` when no such session is open.
pub async fn sign_out_session(
    app: &AppState,
    username: &str,
    user_id: i64,
    session_id: i64,
    context: &Context,
) -> Result<bool, ApiError> {
    let store = app.scheduler.store();
    let now = now_ms();
    let open = store.sessions_of(user_id, now).await.map_err(AccountError::from)?.iter().any(|s| s.id == session_id);
    if !open {
        return Ok(false);
    }
    let event = crate::audit::Event::success("session_revoked").user(username).field("session_id", session_id);
    app.audit.record(context, event).await.map_err(AccountError::from)?;
    let tokens = store.revoke_session(session_id, now).await.map_err(AccountError::from)?;
    app.auth.revoked();
    for token in tokens {
        let event = crate::audit::Event::success("token_revoked").user(username).token(token).reason("session_revoked");
        app.audit.note(context, event).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lifetimes_beyond_the_maximum_or_never_are_refused() {
        let day = Duration::from_secs(86400);
        assert!(check_lifetime(Some(90 * day), Some(90 * day)).is_ok());
        assert!(check_lifetime(Some(91 * day), Some(90 * day)).is_err());
        assert!(check_lifetime(None, Some(90 * day)).is_err());
        assert!(check_lifetime(None, None).is_ok());
        assert_eq!(describe(90 * day), "90 days");
        assert_eq!(describe(Duration::from_secs(300)), "5m");
    }
}
