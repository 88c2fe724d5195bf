//! The gateway's own pages and API: login and logout, the account page, and the JSON API
//! under `/comfygate/api/`. Everything else goes through [`crate::edge::gate`] to ComfyUI.

pub mod account;
pub mod actions;
pub mod api;
pub mod console;
pub mod cookies;
pub mod csrf;
pub mod login;
pub mod page;
pub mod usage;
pub mod views;
pub mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};

use crate::state::AppState;

/// Largest body the gateway's own forms and JSON accept.
const FORM_LIMIT: usize = 64 * 1024;

/// Whether `path` (as sent, before normalisation) may be one of the gateway's own routes: every
/// route below is, and nothing else is (the edge sends other paths straight to the gate, and
/// a test checks the two agree).
pub fn is_own_path(path: &str) -> bool {
    path == "/login" || path == "/logout" || path.starts_with("/comfygate/")
}

/// The gateway's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login::show).post(login::submit))
        .route("/logout", get(login::confirm).post(login::logout))
        .route("/comfygate/health", get(api::health))
        .route("/comfygate/account", get(account::show))
        .route("/comfygate/account/tokens", post(account::create_token))
        .route("/comfygate/account/tokens/{id}/revoke", post(account::revoke_token))
        .route("/comfygate/account/password", post(account::change_password))
        .route("/comfygate/account/sessions/{id}/revoke", post(account::revoke_session))
        .route("/comfygate/api/whoami", get(api::whoami))
        .route("/comfygate/api/tokens", get(api::list_tokens).post(api::create_token))
        .route("/comfygate/api/tokens/{id}", delete(api::revoke_token))
        .route("/comfygate/api/password", post(api::change_password))
        .route("/comfygate/api/users", get(api::list_users).post(api::create_user))
        .route("/comfygate/api/users/{name}", delete(api::delete_user).patch(api::update_user))
        .route("/comfygate/api/backends", get(api::backends))
        .route("/comfygate/api/webhooks/secret", get(webhooks::secret))
        .route("/comfygate/api/webhooks/deliveries", get(webhooks::deliveries))
        .route("/comfygate/api/usage", get(usage::usage))
        .route("/comfygate/api/backends/{name}/drain", post(usage::drain_backend))
        .route("/comfygate/api/backends/{name}/resume", post(usage::resume_backend))
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::map_response(page::own_headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_an_own_path_and_comfyui_paths_are_not() {
        let source = include_str!("mod.rs");
        let paths: Vec<&str> = source.split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(paths.len() >= 12, "found {paths:?}");
        for path in paths {
            let concrete = path.replace("{id}", "1").replace("{name}", "alice");
            assert!(is_own_path(&concrete), "{path} would bypass the router");
        }
        for path in ["/", "/prompt", "/ws", "/view", "/login/", "/comfygate", "/api/comfygate/x", "/loginx"] {
            assert!(!is_own_path(path), "{path}");
        }
    }
}
