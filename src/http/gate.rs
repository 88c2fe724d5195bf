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
use crate::proxy::{ProxyError, is_upgrade};

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
    if let Some(route) = crate::comfy::route(req.method(), &path) {
        return crate::comfy::handle(
            &app,
            Caller { identity, presented: caller.presented },
            &client,
            route,
            &path,
            req,
        )
        .await;
    }
    let pool = app.scheduler.pool();
    let backend = pool.primary().ok_or_else(|| ApiError::BadGateway("no ComfyUI backend is configured".to_owned()))?;
    let close_when = is_upgrade(req.headers())
        .then(|| Box::pin(app.auth.clone().until_invalid(caller.presented)) as crate::proxy::CloseWhen);
    let result = backend.proxy.forward(req, &path.canonical, &identity.username, &client.forwarded(), close_when).await;
    if let Err(e @ ProxyError::Unreachable { .. }) = &result {
        pool.request_failed(&backend, &e.to_string(), app.config.scheduler.unhealthy_after);
    }
    Ok(result?)
}
