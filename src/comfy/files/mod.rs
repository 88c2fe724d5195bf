//! Files: `/view` resolves the file it names exactly as ComfyUI does ([`names`]), decides
//! ownership on that and forwards only that; uploads go into the caller's own folder
//! ([`upload`]); workflows may only use the caller's own files ([`references`]). Everything
//! that returns a user's bytes is marked inert ([`crate::policy::content`]).

pub mod names;
pub mod references;
mod upload;

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::Request;

use crate::backends::Backend;
use crate::http::{ApiError, Caller, ClientInfo};
use crate::policy::NormalizedPath;
use crate::state::AppState;
use crate::store::{StoreError, StoredFile};
use names::{Kind, Located, UserFile};

pub use upload::upload;

/// `/view` parameters forwarded besides the file's own (ComfyUI's preview and channel options).
const VIEW_OPTIONS: [&str; 2] = ["preview", "channel"];

/// `GET` and `HEAD /view?filename=&type=&subfolder=[&preview=&channel=]`.
pub async fn view(
    app: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    path: &NormalizedPath,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let query = ViewQuery::parse(req.uri().query().unwrap_or_default())?;
    let Some(filename) = &query.filename else {
        return Err(ApiError::NotFound("no such file".to_owned()));
    };
    let file =
        UserFile::resolve(filename, query.kind.as_deref(), query.subfolder.as_deref().unwrap_or(""), Kind::Output)?;
    let located = file.located_for(caller.identity.user_id);
    let backend = holder(app, caller, &located).await?;
    let mut target = format!("{}?{}", path.canonical, file_query(&located));
    for (name, value) in &query.options {
        target.push('&');
        target.push_str(name);
        target.push('=');
        target.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = target.parse().map_err(|_| ApiError::BadRequest("invalid file name".to_owned()))?;
    let req = Request::from_parts(parts, body);
    let mut response =
        backend.proxy.forward(req, &path.canonical, &caller.identity.username, &client.forwarded(), None).await?;
    crate::policy::content::protect(response.headers_mut(), &located.filename);
    Ok(response)
}

/// The backend that holds `file` for `caller`: a file the gateway has no owner for, or another
/// user's, does not exist for a non-admin (404, the same answer either way).
async fn holder(app: &AppState, caller: &Caller, file: &Located) -> Result<Arc<Backend>, ApiError> {
    let pool = app.scheduler.pool();
    match access(app, caller, file).await.map_err(store_unavailable)? {
        Access::Recorded(stored) => pool.get(&stored.backend).or_else(|| pool.primary()).ok_or_else(no_backend),
        Access::Unrecorded => pool.primary().ok_or_else(no_backend),
        Access::Denied => Err(ApiError::NotFound("no such file".to_owned())),
    }
}

/// What a caller may do with a located file.
pub(crate) enum Access {
    /// Not theirs (another user's, or no one's for a non-admin).
    Denied,
    /// Theirs (or an admin's to see), recorded as held by a backend.
    Recorded(Arc<StoredFile>),
    /// No record, and the caller is an admin.
    Unrecorded,
}

/// The one ownership rule for files: a user may use what is recorded as theirs; an admin may
/// use anything.
pub(crate) async fn access(app: &AppState, caller: &Caller, file: &Located) -> Result<Access, StoreError> {
    let me = caller.identity.user_id;
    let stored = app.scheduler.files().file(file.kind.as_str(), &file.subfolder, &file.filename, me).await?;
    let admin = caller.identity.is_admin();
    Ok(match stored {
        Some(stored) if stored.user_id == Some(me) || admin => Access::Recorded(stored),
        None if admin => Access::Unrecorded,
        _ => Access::Denied,
    })
}

/// The canonical `filename=&type=[&subfolder=]` of a located file.
fn file_query(file: &Located) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("filename", &file.filename).append_pair("type", file.kind.as_str());
    if !file.subfolder.is_empty() {
        query.append_pair("subfolder", &file.subfolder);
    }
    query.finish()
}

/// `/view`'s query: each parameter at most once (ComfyUI reads the first of several, other
/// software the last: a second one is refused rather than guessed).
#[derive(Debug, Default)]
struct ViewQuery {
    filename: Option<String>,
    kind: Option<String>,
    subfolder: Option<String>,
    options: Vec<(&'static str, String)>,
}

impl ViewQuery {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = ViewQuery::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "filename" => &mut q.filename,
                "type" => &mut q.kind,
                "subfolder" => &mut q.subfolder,
                other => {
                    if let Some(name) = VIEW_OPTIONS.iter().find(|o| **o == other) {
                        if q.options.iter().any(|(n, _)| n == name) {
                            return Err(duplicate(name));
                        }
                        q.options.push((name, value.into_owned()));
                    }
                    continue;
                }
            };
            if slot.is_some() {
                return Err(duplicate(&key));
            }
            *slot = Some(value.into_owned());
        }
        Ok(q)
    }
}

fn duplicate(name: &str) -> ApiError {
    ApiError::BadRequest(format!("the parameter `{name}` is given more than once"))
}

/// The answer when the job store cannot say whose a file is.
pub(crate) fn store_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "file lookup failed");
    ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
}

fn no_backend() -> ApiError {
    ApiError::BadGateway("no ComfyUI backend is configured".to_owned())
}

/// The healthy backend with the fewest jobs (uploads go there).
fn least_busy(app: &AppState) -> Option<Arc<Backend>> {
    let pool = app.scheduler.pool();
    pool.healthy().into_iter().min_by_key(|b| b.load().inflight.len()).or_else(|| pool.primary())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn view_parameters_given_twice_are_refused() {
        for q in [
            "filename=a.png&filename=b.png",
            "filename=a.png&type=output&type=input",
            "filename=a.png&subfolder=&subfolder=x",
            "filename=a.png&preview=webp&preview=jpeg",
            "filename=a.png&filename=a.png",
        ] {
            assert_eq!(ViewQuery::parse(q).unwrap_err().status(), 400, "{q}");
        }
        let q = ViewQuery::parse("filename=a%2Fb.png&type=output&subfolder=s&preview=webp&x=1").unwrap();
        assert_eq!(q.filename.as_deref(), Some("a/b.png"));
        assert_eq!(q.options, [("preview", "webp".to_owned())]);
    }

    #[test]
    fn only_the_canonical_file_is_forwarded() {
        let f = UserFile::resolve("x/../a b.png", Some("input"), "./pets/", Kind::Output);
        assert!(f.is_err(), "`..` in a file name is refused");
        let f = UserFile::resolve("x/a b.png", Some("input"), "./pets/", Kind::Output).unwrap();
        assert_eq!(file_query(&f.located_for(3)), "filename=a+b.png&type=input&subfolder=comfygate-users%2F3%2Fpets");
    }
}
