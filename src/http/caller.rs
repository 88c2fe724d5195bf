//! The authenticated caller of a request, as an extractor: credentials are read, verified, and
//! a session cookie riding on a cross-site state-changing request or upgrade is refused (the
//! gate refuses cross-site use of ComfyUI routes for every method: [`crate::policy::origin`]).

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::ClientInfo;
use super::audit_context::context;
use super::error::ApiError;
use crate::audit::Event;
use crate::auth::secret::DigestMemo;
use crate::auth::{AuthFailure, AuthMethod, Identity, Presented, credentials};
use crate::policy::origin;
use crate::proxy::is_upgrade;
use crate::state::AppState;

/// Who is calling, and with what credential.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified identity.
    pub identity: Identity,
    /// The credential presented (needed for session-bound CSRF tokens).
    pub presented: Presented,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let client = ClientInfo::from_parts(parts, &app.config.server.trusted_proxies, app.tls);
        Caller::verify(parts, app, None, &client).await
    }
}

impl Caller {
    /// Reads and verifies the request's credential, hashing through `memo` when given (the
    /// connection's: see [`DigestMemo`]). A refusal is counted in the metrics against the
    /// client's address. A token's first use from an address is audited here (refused when the
    /// line cannot be written), and so is a cross-site refusal.
    pub async fn verify(
        parts: &Parts,
        app: &AppState,
        memo: Option<&DigestMemo>,
        client: &ClientInfo,
    ) -> Result<Self, ApiError> {
        let presented = credentials::presented(parts, &app.config.auth.cookie_name)
            .and_then(|p| p.ok_or(AuthFailure::MissingCredentials))
            .map_err(|failure| refused(app, client, failure))?;
        let identity =
            app.auth.authenticate_on(&presented, memo).await.map_err(|failure| refused(app, client, failure))?;
        if presented.is_ambient() && (origin::is_unsafe(&parts.method) || is_upgrade(&parts.headers)) {
            if let Some(reason) = origin::cross_site_at(&parts.headers, parts.uri.authority(), &app.allowed_hosts) {
                let event = Event::refused("cross_site_refused").user(&identity.username).reason(reason.clone());
                app.audit.note(&context(parts, client), event.field("path_class", "gateway")).await;
                return Err(ApiError::Forbidden(reason));
            }
        }
        if matches!(identity.method, AuthMethod::Token { .. }) {
            app.auth.note_token_address(&identity, &context(parts, client)).await?;
        }
        Ok(Caller { identity, presented })
    }
}

/// Counts a refused authentication (a store outage is not the client's failure) against the
/// client's address, and makes it the request's answer.
fn refused(app: &AppState, client: &ClientInfo, failure: AuthFailure) -> ApiError {
    if failure != AuthFailure::Unavailable {
        app.metrics.auth_failure(failure.code(), client.address);
    }
    ApiError::Unauthenticated(failure)
}

/// A caller who must be an admin.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        if !caller.identity.is_admin() {
            return Err(ApiError::Forbidden("this operation is for admins only".to_owned()));
        }
        Ok(AdminCaller(caller))
    }
}
