//! Cross-site protection for requests that carry a browser's session cookie.
//!
//! `SameSite=Lax` already keeps the cookie off cross-site subrequests; this refuses what
//! slips through (same-site sibling hosts, `Origin: null`, old browsers, top-level GETs).
//! The gateway's own routes refuse state-changing requests and WebSocket upgrades from another
//! site; ComfyUI routes refuse every method, because a plain GET there can read a user's data
//! or, on an admin route such as `/manager/reboot`, change the server.

use http::header::{HOST, ORIGIN};
use http::uri::Authority;
use http::{HeaderMap, Method, Uri};

use super::routes::RouteClass;

/// Whether the method can change state.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// `Some(reason)` when the request comes from another site; `allowed_hosts` are the
/// `host[:port]` values users reach the gateway by (the request's own `Host` always counts,
/// and without one, as under HTTP/2, the `authority` its URI holds).
pub fn cross_site_at(headers: &HeaderMap, authority: Option<&Authority>, allowed_hosts: &[String]) -> Option<String> {
    if fetch_site_is(headers, "cross-site") {
        return Some("cross-site request refused (Sec-Fetch-Site: cross-site)".to_owned());
    }
    let origin = headers.get(ORIGIN)?;
    let origin = origin.to_str().ok().and_then(|o| o.parse::<Uri>().ok());
    let Some(origin_host) = origin.as_ref().and_then(|o| o.authority()).map(|a| a.as_str().to_ascii_lowercase()) else {
        return Some("cross-site request refused (opaque or invalid Origin)".to_owned());
    };
    let own_host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| authority.map(Authority::as_str))
        .map(str::to_ascii_lowercase);
    let same = own_host.as_deref() == Some(origin_host.as_str())
        || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&origin_host));
    if same {
        return None;
    }
    // Both names passed URI parsing (no quotes, spaces or controls); cut to keep logs bounded.
    let cut = |s: &str| s.chars().take(MAX_SHOWN).collect::<String>();
    let scheme =
        origin.as_ref().and_then(Uri::scheme_str).filter(|s| matches!(*s, "http" | "https")).unwrap_or("https");
    Some(format!(
        "cross-site request refused: the Origin {scheme}://{origin} is not this gateway's address ({own}); if users \
         reach the gateway at {scheme}://{origin} (a proxy in front that rewrites Host), set server.public_url = \
         \"{scheme}://{origin}\"",
        origin = cut(&origin_host),
        own = own_host.as_deref().map_or_else(|| "no Host header".to_owned(), cut),
    ))
}

/// Longest host name shown in a refusal.
const MAX_SHOWN: usize = 100;

/// `Some(reason)` when a request carrying the session cookie must not reach a ComfyUI route
/// of `class`: it comes from another site (`Sec-Fetch-Site: cross-site` or `same-site`, or a
/// foreign `Origin`), whatever its method, unless it is a top-level navigation to the app's
/// page or its static files. Admin routes accept no request from another site at all.
pub fn refuse_for_comfyui(
    method: &Method,
    headers: &HeaderMap,
    authority: Option<&Authority>,
    class: RouteClass,
    allowed_hosts: &[String],
) -> Option<String> {
    let reason = cross_site_at(headers, authority, allowed_hosts).or_else(|| {
        // A sibling host of the same site is another origin: the gateway's own frontend
        // never sends this.
        fetch_site_is(headers, "same-site").then(|| "cross-site request refused (Sec-Fetch-Site: same-site)".to_owned())
    })?;
    if class == RouteClass::Page && is_top_level_navigation(method, headers) { None } else { Some(reason) }
}

/// A browser loading a page into its window (a link followed, an address typed), not a
/// subresource, a frame or a script's fetch.
fn is_top_level_navigation(method: &Method, headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    matches!(*method, Method::GET | Method::HEAD)
        && header("sec-fetch-mode").is_some_and(|m| m.eq_ignore_ascii_case("navigate"))
        && header("sec-fetch-dest").is_none_or(|d| d.eq_ignore_ascii_case("document"))
}

fn fetch_site_is(headers: &HeaderMap, value: &str) -> bool {
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|s| s.eq_ignore_ascii_case(value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cross_site(headers: &HeaderMap, allowed: &[String]) -> Option<String> {
        cross_site_at(headers, None, allowed)
    }

    fn parts(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_foreign_origin_is_named_with_the_setting_that_would_allow_it() {
        let behind_proxy = parts(&[("host", "127.0.0.1:8080"), ("origin", "https://Comfy.Example.com")]);
        let reason = cross_site(&behind_proxy, &[]).unwrap();
        assert!(
            reason.contains("https://comfy.example.com is not this gateway's address (127.0.0.1:8080)"),
            "{reason}"
        );
        assert!(reason.contains(r#"server.public_url = "https://comfy.example.com""#), "{reason}");
        let long = format!("http://{}.test", "a".repeat(300));
        let reason = cross_site(&parts(&[("host", "gw"), ("origin", &long)]), &[]).unwrap();
        assert!(reason.len() < 500, "bounded: {reason}");
    }

    #[test]
    fn same_origin_and_no_origin_pass() {
        assert_eq!(cross_site(&parts(&[("host", "gw:8080"), ("origin", "http://gw:8080")]), &[]), None);
        assert_eq!(cross_site(&parts(&[("host", "gw:8080")]), &[]), None);
        let allowed = vec!["comfy.example.com".to_owned()];
        assert_eq!(
            cross_site(&parts(&[("host", "10.0.0.1"), ("origin", "https://comfy.example.com")]), &allowed),
            None
        );
    }

    #[test]
    fn foreign_null_and_cross_site_origins_are_refused() {
        assert!(cross_site(&parts(&[("host", "gw:8080"), ("origin", "http://evil.test")]), &[]).is_some());
        assert!(cross_site(&parts(&[("host", "gw:8080"), ("origin", "null")]), &[]).is_some());
        assert!(cross_site(&parts(&[("host", "gw:8080"), ("sec-fetch-site", "cross-site")]), &[]).is_some());
        let sibling = [("host", "gw:8080"), ("origin", "http://blog.gw:8080"), ("sec-fetch-site", "same-site")];
        assert!(cross_site(&parts(&sibling), &[]).is_some(), "same-site with a foreign Origin is foreign");
    }

    #[test]
    fn without_a_host_header_the_uri_authority_is_the_own_host_as_under_http2() {
        let authority: Authority = "gw.example:8443".parse().unwrap();
        let h = parts(&[("origin", "https://gw.example:8443")]);
        assert_eq!(cross_site_at(&h, Some(&authority), &[]), None);
        assert!(cross_site_at(&h, None, &[]).is_some());
        let foreign = parts(&[("origin", "https://evil.test")]);
        assert!(cross_site_at(&foreign, Some(&authority), &[]).is_some());
    }

    #[test]
    fn comfyui_routes_refuse_every_method_from_another_site_but_navigations_to_the_page() {
        let navigate =
            parts(&[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")]);
        let fetch =
            parts(&[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors"), ("sec-fetch-dest", "image")]);
        let frame =
            parts(&[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")]);
        let sibling = parts(&[("sec-fetch-site", "same-site"), ("sec-fetch-mode", "cors")]);
        let same = parts(&[("sec-fetch-site", "same-origin"), ("host", "gw"), ("origin", "http://gw")]);
        let refused = |m: Method, h: &HeaderMap, c| refuse_for_comfyui(&m, h, None, c, &[]).is_some();
        assert!(!refused(Method::GET, &navigate, RouteClass::Page));
        assert!(!refused(Method::HEAD, &navigate, RouteClass::Page));
        assert!(refused(Method::POST, &navigate, RouteClass::Page));
        assert!(refused(Method::GET, &navigate, RouteClass::User));
        assert!(refused(Method::GET, &navigate, RouteClass::Admin));
        assert!(refused(Method::GET, &fetch, RouteClass::Page));
        assert!(refused(Method::GET, &frame, RouteClass::Page));
        assert!(refused(Method::GET, &fetch, RouteClass::User));
        assert!(refused(Method::HEAD, &sibling, RouteClass::User));
        assert!(!refused(Method::GET, &same, RouteClass::Admin));
        assert!(!refused(Method::GET, &parts(&[]), RouteClass::User));
    }
}
