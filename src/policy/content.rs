//! User-supplied bytes (uploads, outputs, saved user data) are never active on the gateway's
//! origin: whatever route returns them marks them with these headers, so an uploaded SVG or
//! HTML file cannot run script with a user's (or an admin's) session.

use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderMap, HeaderValue};

/// A policy that lets a browser show an image or play media, and nothing else: no script, no
/// plugin, no form, no navigation, in a unique opaque origin.
pub const USER_CONTENT_CSP: &str =
    "sandbox; default-src 'none'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'unsafe-inline'";

/// File extensions a browser would render as an active document.
const ACTIVE_EXTENSIONS: &[&str] =
    &["svg", "svgz", "html", "htm", "xhtml", "xht", "shtml", "xml", "xsl", "xslt", "js", "mjs", "css", "pdf", "swf"];

/// Content types a browser would render as an active document (or run).
const ACTIVE_TYPES: &[&str] = &[
    "image/svg+xml",
    "text/html",
    "application/xhtml+xml",
    "text/xml",
    "application/xml",
    "text/xsl",
    "text/javascript",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "text/ecmascript",
    "text/css",
    "application/pdf",
    "application/x-shockwave-flash",
    "multipart/x-mixed-replace",
];

/// Whether a file named `name` served as `content_type` could be active in a browser.
pub fn is_active(name: &str, content_type: Option<&str>) -> bool {
    let extension = name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase());
    let by_name = extension.is_some_and(|ext| ACTIVE_EXTENSIONS.contains(&ext.as_str()));
    let essence = content_type.map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let by_type = essence.as_deref().is_some_and(|t| ACTIVE_TYPES.contains(&t) || t.ends_with("+xml"));
    by_name || by_type
}

/// Marks a response carrying the user-supplied file `name`: `nosniff`, the sandboxing CSP,
/// and for active types `Content-Type: application/octet-stream` with `attachment`.
pub fn protect(headers: &mut HeaderMap, name: &str) {
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("content-security-policy", HeaderValue::from_static(USER_CONTENT_CSP));
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if is_active(name, content_type) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_DISPOSITION, attachment(name));
    }
}

/// `attachment; filename="…"` with only safe characters kept in the quoted name.
pub fn attachment(name: &str) -> HeaderValue {
    let base = name.rsplit('/').next().unwrap_or(name);
    let safe: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '(' | ')') { c } else { '_' })
        .take(200)
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn served(name: &str, content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        protect(&mut h, name);
        h
    }

    #[test]
    fn active_files_are_downloads_whatever_their_spelling() {
        for (name, ty) in [
            ("x.svg", "image/svg+xml"),
            ("x.SVG", "image/png"),
            ("x.png", "image/svg+xml; charset=utf-8"),
            ("x.png", "IMAGE/SVG+XML"),
            ("x.html", "text/plain"),
            ("x.htm", "application/octet-stream"),
            ("x.xhtml", "text/plain"),
            ("page", "text/html"),
            ("x.js", "text/plain"),
            ("x.mjs", "text/plain"),
            ("x.xml", "text/plain"),
            ("feed", "application/rss+xml"),
            ("x.pdf", "application/pdf"),
            ("dir/evil \"name\".svg", "image/svg+xml"),
        ] {
            let h = served(name, ty);
            assert_eq!(h["content-type"], "application/octet-stream", "{name} {ty}");
            assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment"), "{name} {ty}");
            assert!(!h["content-disposition"].to_str().unwrap().contains("\"name\""), "{name} quotes escaped");
        }
    }

    #[test]
    fn images_stay_inline_but_sandboxed_and_unsniffed() {
        for (name, ty) in [("a.png", "image/png"), ("a.webp", "image/webp"), ("a.mp4", "video/mp4")] {
            let h = served(name, ty);
            assert_eq!(h["content-type"], ty);
            assert!(h.get("content-disposition").is_none());
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox"));
        }
    }
}
