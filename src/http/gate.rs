//! The path of every request bound for ComfyUI, in order: authenticate (the [`Caller`]
//! extractor also refuses cross-site use of a session cookie), normalise the path, check the
//! route's class, forward.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

use super::caller::Caller;
use super::client::ClientInfo;
use super::error::ApiError;
use crate::app::AppState;
use crate::policy::{self, RouteClass};
use crate::proxy::{ForwardedFor, is_upgrade};

/// The fallback handler: everything that is not the gateway's own route.
pub async fn gate(
    State(app): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let identity = caller.identity;
    let path = policy::normalize(req.uri().path())?;
    if policy::classify(req.method(), &path, req.uri().query()) == RouteClass::Admin && !identity.is_admin() {
        tracing::info!(target: "comfygate::audit", event = "admin_route_refused", username = %identity.username, path = %path.canonical);
        return Err(ApiError::Forbidden("this ComfyUI route is for admins only".to_owned()));
    }
    let forwarded = ForwardedFor {
        chain: &client.forwarded_chain,
        proto: if client.https { "https" } else { "http" },
        host: client.host.as_ref(),
    };
    let close_when = is_upgrade(req.headers())
        .then(|| Box::pin(app.auth.clone().until_invalid(caller.presented)) as crate::proxy::CloseWhen);
    Ok(app.proxy.forward(req, &path.canonical, &identity.username, &forwarded, close_when).await?)
}
