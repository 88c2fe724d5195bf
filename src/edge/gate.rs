//! The path of every request bound for ComfyUI, in order: authenticate (the [`Caller`]
//! extractor also refuses cross-site state-changing use of a session cookie), normalise the
//! path, classify the route on it (names inside it resolved), refuse what comes from another
//! site on the session cookie and what the caller's role does not allow, answer user data
//! (the gateway's own), forward the rest.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use crate::audit::Event;
use crate::auth::secret::DigestMemo;
use crate::http::ApiError;
use crate::http::Caller;
use crate::http::ClientInfo;
use crate::http::audit_context::of_headers;
use crate::http::client::Peer;
use crate::policy::{self, RouteClass, origin};
use crate::proxy::{ProxyError, is_upgrade};
use crate::state::AppState;

/// The router's fallback: everything that is not the gateway's own route.
pub async fn gate(State(app): State<AppState>, req: Request<Body>) -> Response {
    let peer = Peer::new(crate::http::client::peer(req.extensions()));
    pass(&app, &peer, None, req).await
}

/// A request from `peer` bound for ComfyUI, answered; `memo` is its connection's.
pub async fn pass(app: &AppState, peer: &Peer, memo: Option<&DigestMemo>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let client = ClientInfo::new(peer, &parts, &app.config.server.trusted_proxies, app.tls);
    let caller = match Caller::verify(&parts, app, memo, &client).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    forward(app, caller, client, Request::from_parts(parts, body)).await.unwrap_or_else(IntoResponse::into_response)
}

async fn forward(app: &AppState, caller: Caller, client: ClientInfo, req: Request<Body>) -> Result<Response, ApiError> {
    let identity = caller.identity;
    let path = policy::normalize(req.uri().path())?;
    let class = app.routes().classify(req.method(), &path, req.uri().query());
    let user_data = crate::userdata::route(&path);
    // User data answers a bad name itself, with ComfyUI's own status for it (it is never forwarded).
    if let (RouteClass::BadName(e), None) = (class, &user_data) {
        return Err(ApiError::BadRequest(format!("a file name in this request is refused: {e}")));
    }
    if caller.presented.is_ambient() {
        let (method, headers, authority) = (req.method(), req.headers(), req.uri().authority());
        if let Some(reason) = origin::refuse_for_comfyui(method, headers, authority, class, &app.allowed_hosts) {
            let event = Event::refused("cross_site_refused").user(&identity.username).reason(reason.clone());
            app.audit.note(&of_headers(req.headers(), &client), event.field("path_class", class_name(class))).await;
            return Err(ApiError::Forbidden(reason));
        }
    }
    if class == RouteClass::Admin && !identity.is_admin() {
        let event = Event::refused("admin_route_refused").user(&identity.username).reason("admin_only");
        app.audit.note(&of_headers(req.headers(), &client), event.field("path_class", class_name(class))).await;
        return Err(ApiError::Forbidden("this ComfyUI route is for admins only".to_owned()));
    }
    if path.canonical.starts_with("/comfygate/") || path.canonical == "/comfygate" {
        // A spelling of a gateway path the router did not take (`/comfygate/admin/../x`,
        // `/comfygate//admin/`, `%2F`): the gateway's own, never ComfyUI's.
        return Err(ApiError::NotFound("no such gateway page".to_owned()));
    }
    if let Some(route) = user_data {
        // User data belongs to the gateway: answered here, never forwarded.
        let max_body = app.config.server.max_request_body.as_u64();
        return Ok(crate::userdata::handle(&app.userdata, max_body, &identity, route, req).await);
    }
    if let Some(route) = crate::comfy::route(req.method(), &path) {
        // Boxed: the ComfyUI-aware handlers make a large future, which would otherwise be part
        // of (and be moved with) every plain forward's future too.
        let caller = Caller { identity, presented: caller.presented };
        return Box::pin(crate::comfy::handle(app, caller, &client, route, &path, req)).await;
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

/// A route class as the audit log names it (never the raw path).
fn class_name(class: RouteClass) -> &'static str {
    match class {
        RouteClass::Page => "page",
        RouteClass::User => "user",
        RouteClass::Admin => "admin",
        RouteClass::BadName(_) => "bad_name",
    }
}
