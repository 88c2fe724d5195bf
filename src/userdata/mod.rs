//! User data belongs to the gateway: saved workflows, templates and settings (`/userdata`,
//! `/v2/userdata`, `/settings`, `/users`, and their `/api/` twins) are answered here, per
//! gateway user, with ComfyUI's exact request and response shapes, and never reach a backend.
//! So the same files follow a user to whichever GPU runs the next job, and no user can read
//! another's.
//!
//! [`store`] keeps one folder per user on disk (names resolved as ComfyUI does, atomic writes,
//! a quota); [`files`] answers the file routes, [`listing`] the two listings, [`settings`] the
//! settings; [`reply`] writes answers as aiohttp does.

mod files;
mod listing;
mod reply;
mod settings;
mod store;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Method, Request, StatusCode};

use crate::auth::Identity;
use crate::policy::NormalizedPath;

pub use store::{UserData, UserDataError};

/// A user-data route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/userdata?dir=`.
    List,
    /// `/v2/userdata?path=`.
    ListV2,
    /// `/userdata/{file}`.
    File(String),
    /// `/userdata/{file}/move/{dest}`.
    Move(String, String),
    /// `/settings`.
    Settings,
    /// `/settings/{id}`.
    Setting(String),
    /// `/users`.
    Users,
    /// Under one of these roots but no route of ComfyUI's (answered 404 like aiohttp).
    Unknown,
}

/// The user-data route of a path, whatever the method; `None` for every other path.
pub fn route(path: &NormalizedPath) -> Option<Route> {
    Some(match path.route().as_slice() {
        ["userdata"] => Route::List,
        ["v2", "userdata"] => Route::ListV2,
        ["userdata", file] => Route::File((*file).to_owned()),
        ["userdata", file, "move", dest] => Route::Move((*file).to_owned(), (*dest).to_owned()),
        ["settings"] => Route::Settings,
        ["settings", id] => Route::Setting((*id).to_owned()),
        ["users"] => Route::Users,
        ["userdata" | "settings" | "users", ..] | ["v2", "userdata", ..] => Route::Unknown,
        _ => return None,
    })
}

/// Answers a user-data route for `identity` (authenticated, route policy already applied).
pub async fn handle(
    userdata: &UserData,
    max_body: u64,
    identity: &Identity,
    route: Route,
    req: Request<Body>,
) -> Response {
    let user = userdata.user(identity.user_id);
    let method = req.method().clone();
    let reading = method == Method::GET || method == Method::HEAD;
    let writing = method == Method::POST;
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let result = match (route, reading, writing) {
        (Route::List, true, _) => listing::list(&user, query).await,
        (Route::ListV2, true, _) => listing::list_v2(&user, query).await,
        (Route::File(file), true, _) => files::read(&user, &file).await,
        (Route::File(file), _, true) => files::write(max_body, &user, &file, query, req.into_body()).await,
        (Route::File(file), false, false) if method == Method::DELETE => files::delete(&user, &file).await,
        (Route::Move(file, dest), _, true) => files::rename(&user, &file, &dest, query).await,
        (Route::Settings, true, _) => settings::get_all(&user).await,
        (Route::Setting(id), true, _) => settings::get_one(&user, &id).await,
        (Route::Settings, _, true) => settings::merge(max_body, &user, req.into_body()).await,
        (Route::Setting(id), _, true) => settings::set_one(max_body, &user, &id, req.into_body()).await,
        (Route::Users, true, _) => {
            Ok(reply::json(StatusCode::OK, &serde_json::json!({"storage": "server", "migrated": true})))
        }
        (Route::Users, _, true) => Ok(reply::json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "users are managed by comfygate: use `comfygate user add`"}),
        )),
        (Route::Unknown, ..) => Ok(reply::text(StatusCode::NOT_FOUND, "404: Not Found")),
        _ => Ok(reply::text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed")),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::normalize;

    fn route_of(p: &str) -> Option<Route> {
        route(&normalize(p).unwrap())
    }

    #[test]
    fn every_spelling_of_a_user_data_route_is_the_gateways() {
        for (path, expected) in [
            ("/userdata", Some(Route::List)),
            ("/api/userdata", Some(Route::List)),
            ("/v2/userdata", Some(Route::ListV2)),
            ("/api/v2/userdata", Some(Route::ListV2)),
            ("/userdata/workflows%2Fa.json", Some(Route::File("workflows/a.json".to_owned()))),
            ("/api/userdata/workflows%252F..%252Fa.json", Some(Route::File("workflows%2F..%2Fa.json".to_owned()))),
            ("/x/../userdata/a.json", Some(Route::File("a.json".to_owned()))),
            ("//api//userdata/./a.json", Some(Route::File("a.json".to_owned()))),
            ("/userdata/a.json/move/b.json", Some(Route::Move("a.json".to_owned(), "b.json".to_owned()))),
            ("/api/userdata/a/move/b%2Fc", Some(Route::Move("a".to_owned(), "b/c".to_owned()))),
            ("/settings", Some(Route::Settings)),
            ("/api/settings/Comfy.ColorPalette", Some(Route::Setting("Comfy.ColorPalette".to_owned()))),
            ("/users", Some(Route::Users)),
            ("/api/users", Some(Route::Users)),
            ("/userdata/workflows/a.json", Some(Route::Unknown)),
            ("/settings/a/b", Some(Route::Unknown)),
            ("/v2/userdata/x", Some(Route::Unknown)),
            ("/prompt", None),
            ("/api/userdatax", None),
            ("/v2/manager/queue", None),
        ] {
            assert_eq!(route_of(path), expected, "{path}");
        }
    }
}
