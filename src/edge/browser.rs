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
        let location = format!("/login?next={}", page::url_encode(&page::safe_next(&target)));
        return (StatusCode::FOUND, [(LOCATION, location)]).into_response();
    }
    let status = response.status();
    let mut page = Html(page::error_page(status, &error.message)).into_response();
    *page.status_mut() = status;
    for name in [http::header::RETRY_AFTER, http::header::WWW_AUTHENTICATE] {
        if let Some(v) = response.headers().get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page::with_page_headers(page)
}
