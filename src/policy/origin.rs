//! Cross-site protection for requests that carry a browser's session cookie.
//!
//! `SameSite=Lax` already keeps the cookie off cross-site subrequests; this refuses what
//! slips through (same-site sibling hosts, `Origin: null`, old browsers) for state-changing
//! requests and WebSocket upgrades.

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, Method, Uri};

/// Whether the method can change state.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// `Some(reason)` when the request comes from another site; `allowed_hosts` are the
/// `host[:port]` values users reach the gateway by (the request's own `Host` always counts).
pub fn cross_site(headers: &HeaderMap, allowed_hosts: &[String]) -> Option<&'static str> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Some("cross-site request refused (Sec-Fetch-Site: cross-site)");
    }
    let origin = headers.get(ORIGIN)?;
    let origin = origin.to_str().ok().and_then(|o| o.parse::<Uri>().ok());
    let Some(origin_host) = origin.as_ref().and_then(|o| o.authority()).map(|a| a.as_str().to_ascii_lowercase()) else {
        return Some("cross-site request refused (opaque or invalid Origin)");
    };
    let own_host = headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase);
    let same = own_host.as_deref() == Some(origin_host.as_str())
        || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&origin_host));
    if same { None } else { Some("cross-site request refused (Origin does not match this gateway)") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parts(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
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
    }
}
