//! Header rewriting between client and ComfyUI.
//!
//! Toward ComfyUI: hop-by-hop headers go (RFC 9110 §7.6.1), the gateway's credentials go,
//! `comfy-user` is set from the authenticated user (never from the client), forwarding headers
//! are set, and `Origin` is rewritten so ComfyUI's own origin check (403 when a loopback `Host`
//! meets a foreign `Origin`) passes: the gateway has already checked it. `Sec-Fetch-*` pass
//! unchanged, a second line of defence for ComfyUI versions that check them.
//!
//! Toward the client: hop-by-hop headers go, then the rules of [`super::response`].

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::response::{Refused, ResponseRules};
use crate::auth::credentials::strip_session_cookie;

/// Headers that describe one connection, not the message (`Connection` first: it may name
/// more).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The index of `name` in [`HOP_BY_HOP`] (as strings, which compare by length first: cheaper
/// than nine `HeaderName` comparisons).
fn hop_by_hop(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    HOP_BY_HOP.iter().position(|h| *h == name)
}

/// The header ComfyUI `--multi-user` trusts to name the user.
pub const COMFY_USER: HeaderName = HeaderName::from_static("comfy-user");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether the request asks for a WebSocket (or other) protocol upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Removes hop-by-hop headers, including those the `Connection` header names; returns the
/// `Upgrade` header's value, if there was one.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names, then removals of only what is there: most messages carry none
    // or just `Connection: keep-alive`, and every removal costs a hash lookup.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return None;
    }
    let only_keep_alive = || {
        let mut values = headers.get_all(header::CONNECTION).iter();
        values.next().is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive")) && values.next().is_none()
    };
    // `Connection: keep-alive` (what most messages carry) names nothing more.
    let named: Vec<HeaderName> = if present & 1 == 0 || only_keep_alive() {
        Vec::new()
    } else {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `keep-alive` (the usual token) names a header that is hop-by-hop anyway.
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|name| hop_by_hop(name).is_none())
            .collect()
    };
    let mut upgrade = None;
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            let removed = headers.remove(*name);
            if *name == "upgrade" {
                upgrade = removed;
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    upgrade
}

/// What the proxy knows about the client when rewriting a request.
pub struct ForwardedFor<'a> {
    /// `X-Forwarded-For` value to send (trusted chain plus the peer).
    pub chain: &'a HeaderValue,
    /// `http` or `https`, as the client used.
    pub proto: &'a str,
    /// The host the client asked for.
    pub host: Option<&'a HeaderValue>,
}

/// Rewrites a client's request headers for ComfyUI.
pub fn prepare_request(
    headers: &mut HeaderMap,
    username: &str,
    cookie_name: &str,
    backend_authority: &HeaderValue,
    backend_origin: &HeaderValue,
    forwarded: &ForwardedFor<'_>,
) {
    if let Some(protocol) = remove_hop_by_hop(headers) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }

    // One pass to see which of the headers to replace or drop are there at all: most requests
    // carry few of them, and every removal costs a hash lookup.
    let (mut authorization, mut cookie, mut origin, mut drop) = (false, false, false, Vec::new());
    for name in headers.keys() {
        if name == header::AUTHORIZATION {
            authorization = true;
        } else if name == header::COOKIE {
            cookie = true;
        } else if name == header::ORIGIN {
            origin = true;
        } else if name == COMFY_USER || name == FORWARDED || name == X_FORWARDED_HOST {
            drop.push(name.clone());
        }
    }
    if authorization {
        headers.remove(header::AUTHORIZATION);
    }
    for name in &drop {
        headers.remove(name);
    }
    if cookie {
        let cookies: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| strip_session_cookie(v, cookie_name))
            .collect();
        headers.remove(header::COOKIE);
        if !cookies.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
                headers.insert(header::COOKIE, v);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(username) {
        headers.insert(COMFY_USER, v);
    }
    if origin {
        headers.insert(header::ORIGIN, backend_origin.clone());
    }
    headers.insert(X_FORWARDED_FOR, forwarded.chain.clone());
    headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static(if forwarded.proto == "https" { "https" } else { "http" }));
    if let Some(host) = forwarded.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    headers.insert(header::HOST, backend_authority.clone());
}

/// Rewrites ComfyUI's response headers for the client: hop-by-hop headers go, then `rules`
/// (the gateway's cookies, redirects, caching) apply, or refuse the response.
pub fn prepare_response(headers: &mut HeaderMap, upgraded: bool, rules: &ResponseRules) -> Result<(), Refused> {
    if let (Some(protocol), true) = (remove_hop_by_hop(headers), upgraded) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    rules.apply(headers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn prepare(h: &mut HeaderMap) {
        let host = HeaderValue::from_static("gw.example:8080");
        let chain = HeaderValue::from_static("203.0.113.9");
        let fwd = ForwardedFor { chain: &chain, proto: "https", host: Some(&host) };
        prepare_request(
            h,
            "alice",
            "cg_session",
            &HeaderValue::from_static("127.0.0.1:8188"),
            &HeaderValue::from_static("http://127.0.0.1:8188"),
            &fwd,
        );
    }

    #[test]
    fn credentials_and_spoofed_identity_never_reach_comfyui() {
        let mut h = headers(&[
            ("authorization", "Bearer cg_secret"),
            ("cookie", "cg_session=abc; theme=dark"),
            ("comfy-user", "admin"),
            ("comfy-user", "root"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        prepare(&mut h);
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("cookie").unwrap(), "theme=dark");
        assert_eq!(h.get_all("comfy-user").iter().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "gw.example:8080");
        assert!(h.get("forwarded").is_none());
        assert_eq!(h.get("host").unwrap(), "127.0.0.1:8188");
    }

    #[test]
    fn origin_is_rewritten_and_fetch_metadata_passes_unchanged() {
        let mut h = headers(&[
            ("origin", "https://gw.example:8080"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
        ]);
        prepare(&mut h);
        assert_eq!(h.get("origin").unwrap(), "http://127.0.0.1:8188");
        assert_eq!(h.get("sec-fetch-site").unwrap(), "same-origin");
        assert_eq!(h.get("sec-fetch-mode").unwrap(), "cors");
        assert_eq!(h.get("sec-fetch-dest").unwrap(), "empty");
        let mut h = headers(&[]);
        prepare(&mut h);
        assert!(h.get("origin").is_none());
    }

    #[test]
    fn upgrade_detection_reads_connection_tokens() {
        assert!(is_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn hop_by_hop_headers_go_but_upgrades_are_kept() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
        ]);
        prepare(&mut h);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none() && h.get("te").is_none());
        assert!(h.get("connection").is_none());
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        prepare(&mut h);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
    }
}
