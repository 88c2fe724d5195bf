//! Browsers navigating to a page get pages, not JSON: an unauthenticated navigation is sent to
//! the login page (with a safe `next`), and other errors are rendered readably.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use http::header::{ACCEPT, LOCATION};
use http::{HeaderMap, Method, StatusCode};

use crate::http::error::ErrorPage;
use crate::web::page;

/// Whether the request is a browser loading a page (not fetch/XHR, not a WebSocket).
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) || headers.contains_key(http::header::AUTHORIZATION) {
        return false;
    }
    let accepts_html = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    let fetch_mode = headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok());
    accepts_html && fetch_mode.is_none_or(|m| m == "navigate") && !crate::proxy::is_upgrade(headers)
}

/// The middleware.
pub async fn render_errors_for_browsers(req: Request, next: Next) -> Response {
    if !is_navigation(req.method(), req.headers()) {
        return next.run(req).await;
    }
    let target = req.uri().path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let response = next.run(req).await;
    let Some(error) = response.extensions().get::<ErrorPage>().cloned() else { return response };
    if error.login_required {
        // The login page says why the session ended (a known code, never free text).
        let why = match error.reason {
            Some(code @ ("session_ended" | "session_expired" | "user_disabled")) => format!("&reason={code}"),
            _ => String::new(),
        };
        let location = format!("/login?next={}{why}", page::url_encode(&page::safe_next(&target)));
        return (StatusCode::FOUND, [(LOCATION, location)]).into_response();
    }
    let status = response.status();
    // A bad `?token=` is answered here, not with the login page: a login would bring the
    // browser back to the same address and the same refusal (a redirect loop).
    let without_token =
        error.reason.filter(|r| r.contains("token") || r.starts_with("malformed")).and(without_token(&target));
    let link = without_token.as_deref().map(|href| ("Open this page without the token in its address", href));
    let mut page = Html(page::error_page_with(status, &error.message, link)).into_response();
    *page.status_mut() = status;
    for name in [http::header::RETRY_AFTER, http::header::WWW_AUTHENTICATE] {
        if let Some(v) = response.headers().get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page::with_page_headers(page)
}

/// `target` without its `token` query parameters, when it has one.
fn without_token(target: &str) -> Option<String> {
    let (path, query) = target.split_once('?')?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if !pairs.iter().any(|(k, _)| k == "token") {
        return None;
    }
    let kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "token").collect();
    if kept.is_empty() {
        return Some(page::safe_next(path));
    }
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(kept.iter().map(|(k, v)| (k, v))).finish();
    Some(page::safe_next(&format!("{path}?{query}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_parameter_is_taken_out_of_an_address_and_nothing_else() {
        assert_eq!(without_token("/?token=cg_x").as_deref(), Some("/"));
        assert_eq!(
            without_token("/view?filename=a.png&token=cg_x&type=output").as_deref(),
            Some("/view?filename=a.png&type=output")
        );
        assert_eq!(without_token("/x?token=a&token=b").as_deref(), Some("/x"));
        assert_eq!(without_token("/x?tokens=a"), None);
        assert_eq!(without_token("/x"), None);
        assert_eq!(without_token("//evil.test/?token=a").as_deref(), Some("/"), "never off the gateway");
    }
}
