//! Server-rendered HTML: one layout, escaping for everything interpolated, safe redirects.

use axum::response::Response;
use http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    html_escape::encode_quoted_attribute(text).into_owned()
}

/// Percent-encodes a query value.
pub fn url_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A local path to return to after login; anything else (other hosts, `//host`, `/\host`,
/// control characters, the login page itself) becomes `/`.
pub fn safe_next(next: &str) -> String {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 2048
        && !next.chars().any(|c| c.is_control() || c == '\\')
        && !next.starts_with("/login")
        && !next.starts_with("/logout");
    if local { next.to_owned() } else { "/".to_owned() }
}

/// Security headers for every gateway page (login, account, logout, error pages): nothing
/// loads but inline style, no framing, no `<base>`, forms post only to the gateway.
pub const PAGE_HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
];

/// Headers on every other answer of the gateway's own routes (the JSON API, redirects).
pub const API_HEADERS: [(&str, &str); 2] = [("cache-control", "no-store"), ("x-content-type-options", "nosniff")];

/// Adds the security headers every gateway page carries.
pub fn with_page_headers(response: Response) -> Response {
    with_headers(response, &PAGE_HEADERS)
}

/// Middleware for the gateway's own routes: pages get [`PAGE_HEADERS`], everything else
/// [`API_HEADERS`].
pub async fn own_headers(response: Response) -> Response {
    let is_html =
        response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"));
    match (is_html, response.headers().contains_key(CONTENT_SECURITY_POLICY)) {
        // A page with a policy of its own (the console's, which allows its script) keeps it.
        (true, true) => {
            let others: Vec<_> =
                PAGE_HEADERS.iter().copied().filter(|(name, _)| *name != CONTENT_SECURITY_POLICY.as_str()).collect();
            with_headers(response, &others)
        }
        (true, false) => with_page_headers(response),
        (false, _) => with_headers(response, &API_HEADERS),
    }
}

fn with_headers(mut response: Response, headers: &[(&'static str, &'static str)]) -> Response {
    for (name, value) in headers {
        response.headers_mut().insert(*name, HeaderValue::from_static(value));
    }
    response
}

/// The gateway's page style: ComfyUI's dark look (the console adds its own rules to it).
pub const STYLE: &str = r#" :root { color-scheme: dark; }
 body { font: 15px/1.5 system-ui, sans-serif; background: #202020; color: #ddd; margin: 0; }
 main { max-width: 46rem; margin: 3rem auto; padding: 0 1rem; }
 .card { background: #2b2b2b; border: 1px solid #3a3a3a; border-radius: 10px; padding: 1.5rem; margin-bottom: 1.25rem; }
 h1 { font-size: 1.4rem; margin: 0 0 1rem; } h2 { font-size: 1.1rem; margin: 0 0 .75rem; }
 label { display: block; margin: .6rem 0 .2rem; }
 input, select { width: 100%; box-sizing: border-box; padding: .5rem; border-radius: 6px; border: 1px solid #555; background: #1a1a1a; color: #eee; }
 button { margin-top: 1rem; padding: .5rem 1rem; border: 0; border-radius: 6px; background: #4a7dd8; color: white; cursor: pointer; }
 button.danger { background: #a33; margin: 0; padding: .25rem .6rem; }
 .error { background: #5a2020; border: 1px solid #a33; padding: .6rem .8rem; border-radius: 6px; }
 .notice { background: #1f4a2a; border: 1px solid #2f7a44; padding: .6rem .8rem; border-radius: 6px; }
 code.secret { display: block; word-break: break-all; background: #111; padding: .6rem; border-radius: 6px; margin: .5rem 0; }
 table { width: 100%; border-collapse: collapse; font-size: .9rem; } td, th { text-align: left; padding: .35rem; border-bottom: 1px solid #3a3a3a; }
 .muted { color: #999; font-size: .85rem; } a { color: #8ab4ff; }
 form.inline { display: inline; }
"#;

/// Wraps a page body in the common layout.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · comfygate</title>
<style>{STYLE}</style></head>
<body><main>{body}</main></body></html>"#,
        title = escape(title),
    )
}

/// A readable page for an error status.
pub fn error_page(status: StatusCode, message: &str) -> String {
    error_page_with(status, message, None)
}

/// [`error_page`] with a first link `(text, local href)`, e.g. the same page without a bad
/// token.
pub fn error_page_with(status: StatusCode, message: &str, link: Option<(&str, &str)>) -> String {
    let title = status.canonical_reason().unwrap_or("Error");
    let first = link
        .map(|(text, href)| format!(r#"<a href="{}">{}</a> · "#, escape(&safe_next(href)), escape(text)))
        .unwrap_or_default();
    layout(
        title,
        &format!(
            r#"<div class="card"><h1>{code} · {title}</h1><p class="error">{message}</p><p>{first}<a href="/">Back to ComfyUI</a> · <a href="/comfygate/account">Your account</a></p></div>"#,
            code = status.as_u16(),
            title = escape(title),
            message = escape(message),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_only_allows_local_paths() {
        assert_eq!(safe_next("/"), "/");
        assert_eq!(safe_next("/view?filename=a.png&type=output"), "/view?filename=a.png&type=output");
        for bad in ["https://evil.test/", "//evil.test", "/\\evil.test", "evil", "/a\r\nb", "/login?next=/x", ""] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(escape("<script>\"x\"&'"), "&lt;script&gt;&quot;x&quot;&amp;&#x27;");
    }
}
