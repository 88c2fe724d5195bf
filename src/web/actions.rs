//! What a caller can do to their own account, shared by the account page and the JSON API.
//! Permission checks live here: a user acts on their own tokens, an admin on anyone's.

use crate::auth::accounts::{IssuedToken, parse_expiry};
use crate::http::{ApiError, Caller};
use crate::state::AppState;
use crate::store::ApiToken;

/// Creates a token for `owner` (the caller, or anyone when the caller is an admin).
pub async fn create_token(
    app: &AppState,
    caller: &Caller,
    owner: Option<&str>,
    name: &str,
    expires: &str,
) -> Result<IssuedToken, ApiError> {
    let me = caller.identity.username.as_ref();
    let owner = owner.filter(|o| !o.is_empty()).unwrap_or(me);
    if owner != me && !caller.identity.is_admin() {
        return Err(ApiError::Forbidden("only admins create tokens for other users".to_owned()));
    }
    let issued = app.auth.accounts().create_token(owner, name, parse_expiry(expires)?).await?;
    tracing::info!(target: "comfygate::audit", event = "token_created", by = me, owner, token = issued.token.id, name = %issued.token.name);
    Ok(issued)
}

/// Revokes token `id` if the caller owns it or is an admin.
pub async fn revoke_token(app: &AppState, caller: &Caller, id: i64) -> Result<ApiToken, ApiError> {
    let scope = (!caller.identity.is_admin()).then_some(caller.identity.username.as_ref());
    let token = app
        .auth
        .accounts()
        .list_tokens(scope)
        .await?
        .into_iter()
        .find(|t| t.id == id && t.revoked_at.is_none())
        .ok_or_else(|| ApiError::NotFound(format!("no active token with id {id}")))?;
    app.auth.accounts().revoke_token_record(&token).await?;
    app.auth.revoked();
    tracing::info!(target: "comfygate::audit", event = "token_revoked", by = %caller.identity.username, owner = %token.username, token = id);
    Ok(token)
}

/// Changes the caller's own password after re-checking the current one; every session ends.
pub async fn change_password(
    app: &AppState,
    caller: &Caller,
    current: &str,
    new: &str,
    address: &str,
) -> Result<(), ApiError> {
    app.auth.confirm_password(&caller.identity, current, address).await.map_err(|e| match e {
        crate::auth::LoginFailure::InvalidCredentials => {
            ApiError::Forbidden("the current password is wrong".to_owned())
        }
        other => ApiError::from(other),
    })?;
    app.auth.accounts().check_password(new)?;
    app.auth.accounts().set_password(&caller.identity.username, new).await?;
    app.auth.revoked();
    tracing::info!(target: "comfygate::audit", event = "password_changed", username = %caller.identity.username, by = "self");
    Ok(())
}
