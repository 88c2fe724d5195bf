//! What a backend's response may carry to a client. ComfyUI and its custom nodes do not speak
//! for the gateway's origin:
//!
//! - a `Set-Cookie` for one of the gateway's own cookies is dropped (a node could otherwise fix
//!   or wipe sessions), as is a nameless one (some browsers send its value as `name=value`);
//! - a `Location` may only lead back to the backend itself, and is made relative so it leads
//!   to the gateway; one that leads elsewhere refuses the whole response;
//! - every answer is for the caller who asked: `Cache-Control: private` (the backend's
//!   `no-store` stays, its `public` goes) and `Vary: Cookie, Authorization`, so no shared
//!   cache hands one user's answer to another.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;

/// A backend response the gateway will not relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `Location` leads somewhere other than the backend.
    #[error("it redirects to another site, which the gateway does not relay")]
    OffSiteRedirect,
    /// More than one `Location`: which one a client follows is anyone's guess.
    #[error("it carries more than one `Location` header")]
    SeveralLocations,
}

/// The rules for one backend's responses.
#[derive(Debug, Clone)]
pub struct ResponseRules {
    /// The gateway's cookie names without `__Host-`/`__Secure-` prefixes.
    gateway_cookies: Vec<String>,
    /// Spellings of the backend's authority in an absolute `Location` (`host:port`, and
    /// `host` alone when the port is 80).
    backend_authorities: Vec<String>,
}

impl ResponseRules {
    /// Rules for a backend at `authority` (plain HTTP), protecting `gateway_cookies`.
    pub fn new<'a>(authority: &Authority, gateway_cookies: impl IntoIterator<Item = &'a str>) -> Self {
        let host = authority.host();
        let backend_authorities = match authority.port_u16() {
            Some(80) => vec![authority.as_str().to_owned(), host.to_owned()],
            Some(_) => vec![authority.as_str().to_owned()],
            None => vec![host.to_owned(), format!("{host}:80")],
        };
        let gateway_cookies = gateway_cookies
            .into_iter()
            .map(|c| String::from_utf8_lossy(unprefixed(c.as_bytes())).into_owned())
            .collect();
        Self { gateway_cookies, backend_authorities }
    }

    /// Applies the rules to a response's headers.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), Refused> {
        self.relative_location(headers)?;
        self.drop_gateway_cookies(headers);
        make_private(headers);
        Ok(())
    }

    fn drop_gateway_cookies(&self, headers: &mut HeaderMap) {
        let cookies = headers.get_all(header::SET_COOKIE);
        if !cookies.iter().any(|v| self.sets_gateway_cookie(v.as_bytes())) {
            return;
        }
        let kept: Vec<HeaderValue> =
            cookies.iter().filter(|v| !self.sets_gateway_cookie(v.as_bytes())).cloned().collect();
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }

    /// Whether a `Set-Cookie` value sets (or clears) one of the gateway's cookies, or a
    /// nameless one. Names compare as browsers compare them: exactly, after trimming.
    fn sets_gateway_cookie(&self, line: &[u8]) -> bool {
        let pair = line.split(|b| *b == b';').next().unwrap_or_default();
        let Some(eq) = pair.iter().position(|b| *b == b'=') else { return true };
        let name = pair[..eq].trim_ascii();
        name.is_empty() || self.gateway_cookies.iter().any(|c| c.as_bytes() == unprefixed(name))
    }

    /// Refuses a `Location` off the backend; makes one to the backend relative.
    fn relative_location(&self, headers: &mut HeaderMap) -> Result<(), Refused> {
        let mut locations = headers.get_all(header::LOCATION).iter();
        let (Some(location), more) = (locations.next(), locations.next()) else { return Ok(()) };
        if more.is_some() {
            return Err(Refused::SeveralLocations);
        }
        if let Some(relative) = self.location(location.as_bytes())? {
            let relative = HeaderValue::from_str(&relative).map_err(|_| Refused::OffSiteRedirect)?;
            headers.insert(header::LOCATION, relative);
        }
        Ok(())
    }

    /// `None` to keep a relative `location`, the relative form of one to the backend, or a
    /// refusal. The value is read as a browser reads it: leading and trailing controls and
    /// spaces ignored, tabs and line breaks removed, `\` taken for `/`.
    fn location(&self, location: &[u8]) -> Result<Option<String>, Refused> {
        let text: String = String::from_utf8_lossy(location)
            .trim_matches(|c: char| c <= ' ')
            .chars()
            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
            .map(|c| if c == '\\' { '/' } else { c })
            .collect();
        let Some((scheme, rest)) = split_scheme(&text) else {
            // Relative: fine unless it is scheme-relative (`//host/`), which leaves the site.
            return if text.starts_with("//") { Err(Refused::OffSiteRedirect) } else { Ok(None) };
        };
        let authority_and_rest = rest.strip_prefix("//").filter(|_| scheme.eq_ignore_ascii_case("http"));
        let Some(authority_and_rest) = authority_and_rest else { return Err(Refused::OffSiteRedirect) };
        let end = authority_and_rest.find(['/', '?', '#']).unwrap_or(authority_and_rest.len());
        let (authority, path) = authority_and_rest.split_at(end);
        if !self.backend_authorities.iter().any(|a| a.eq_ignore_ascii_case(authority)) {
            return Err(Refused::OffSiteRedirect);
        }
        if path.starts_with("//") {
            return Err(Refused::OffSiteRedirect);
        }
        Ok(Some(if path.starts_with('/') { path.to_owned() } else { format!("/{path}") }))
    }
}

/// `name` without any `__Host-` or `__Secure-` prefix (browsers compare those case-insensitively).
fn unprefixed(mut name: &[u8]) -> &[u8] {
    loop {
        let stripped = [b"__host-".as_slice(), b"__secure-"].into_iter().find_map(|prefix| {
            let head = name.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix).then(|| &name[prefix.len()..])
        });
        match stripped {
            Some(rest) => name = rest,
            None => return name,
        }
    }
}

/// The scheme of an absolute URL and what follows its `:` (RFC 3986 §3.1).
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// `Cache-Control: private` (or the backend's `no-store`) without `public`, the backend's other
/// directives kept; `Vary` names the credentials.
fn make_private(headers: &mut HeaderMap) {
    // Most ComfyUI answers carry neither header: no parsing, no allocation for them.
    if headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, private_cache_control(headers));
    } else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    if headers.contains_key(header::VARY) {
        headers.insert(header::VARY, vary_with_credentials(headers));
    } else {
        headers.insert(header::VARY, HeaderValue::from_static("Cookie, Authorization"));
    }
}

fn private_cache_control(headers: &HeaderMap) -> HeaderValue {
    let mut no_store = false;
    let mut directives = Vec::new();
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in split_list(&String::from_utf8_lossy(value.as_bytes())) {
            let name = directive.split('=').next().unwrap_or_default().trim_end().to_ascii_lowercase();
            match name.as_str() {
                "public" | "private" => continue,
                "no-store" => no_store = true,
                _ => {}
            }
            directives.push(directive);
        }
    }
    if !no_store {
        directives.insert(0, "private".to_owned());
    }
    HeaderValue::from_str(&directives.join(", ")).unwrap_or(HeaderValue::from_static("no-store"))
}

fn vary_with_credentials(headers: &HeaderMap) -> HeaderValue {
    let mut vary: Vec<String> = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in split_list(&String::from_utf8_lossy(value.as_bytes())) {
            if !vary.iter().any(|v| v.eq_ignore_ascii_case(&name)) {
                vary.push(name);
            }
        }
    }
    if vary.iter().any(|v| v == "*") {
        return HeaderValue::from_static("*");
    }
    for name in ["Cookie", "Authorization"] {
        if !vary.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            vary.push(name.to_owned());
        }
    }
    HeaderValue::from_str(&vary.join(", ")).unwrap_or(HeaderValue::from_static("*"))
}

/// The non-empty, trimmed elements of a comma-separated header list; commas inside quoted
/// strings (`no-cache="a, b"`) do not separate.
fn split_list(value: &str) -> Vec<String> {
    let (mut items, mut current, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items.into_iter().map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http::header::HeaderName;

    use super::*;

    fn rules() -> ResponseRules {
        ResponseRules::new(&Authority::from_static("127.0.0.1:8188"), ["comfygate_session", "comfygate_login_csrf"])
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn all(h: &HeaderMap, name: header::HeaderName) -> Vec<&str> {
        h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
    }

    /// The `name` lines a response with `lines` of it keeps after the rules.
    fn applied(name: header::HeaderName, lines: &[&str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(&name, HeaderValue::from_str(line).unwrap());
        }
        rules().apply(&mut h).unwrap();
        all(&h, name).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn set_cookie_for_a_gateway_cookie_is_dropped_in_every_spelling() {
        for line in [
            "comfygate_session=evil",
            "comfygate_session=; Max-Age=0",
            "  comfygate_session =evil; Path=/",
            "\tcomfygate_session\t=evil",
            "comfygate_login_csrf=fixed; Path=/login",
            "__Host-comfygate_session=evil; Secure; Path=/",
            "__host-comfygate_session=evil; Secure; Path=/",
            "__Secure-comfygate_session=evil; Secure",
            "__SECURE-__Host-comfygate_session=evil",
            "=comfygate_session=evil",
            " =x",
            "no-equals-sign",
        ] {
            assert!(applied(header::SET_COOKIE, &[line]).is_empty(), "{line:?} passed");
        }
    }

    #[test]
    fn set_cookie_for_other_names_passes_and_only_the_gateway_lines_go() {
        for line in [
            "Comfygate_session=x",
            "COMFYGATE_SESSION=x",
            "comfygate_session2=x",
            "my_comfygate_session=x",
            "theme=dark",
        ] {
            assert_eq!(applied(header::SET_COOKIE, &[line]), [line], "names are case-sensitive");
        }
        let lines = ["a=1", "comfygate_session=evil", "b=2; Path=/", "__Host-comfygate_login_csrf=evil"];
        assert_eq!(applied(header::SET_COOKIE, &lines), ["a=1", "b=2; Path=/"]);
    }

    #[test]
    fn a_prefixed_gateway_cookie_name_is_protected_unprefixed_too() {
        let rules = ResponseRules::new(&Authority::from_static("127.0.0.1:8188"), ["__Host-sess"]);
        for line in ["__Host-sess=x", "__host-sess=x", "sess=x", "__Secure-sess=x"] {
            let mut h = headers(&[("set-cookie", line)]);
            rules.apply(&mut h).unwrap();
            assert!(h.get("set-cookie").is_none(), "{line:?} passed");
        }
    }

    #[test]
    fn location_stays_on_the_backend_and_becomes_relative() {
        let cases: &[(&str, Result<&str, Refused>)] = &[
            ("/relative", Ok("/relative")),
            ("relative/x?y", Ok("relative/x?y")),
            ("?page=2", Ok("?page=2")),
            ("http://127.0.0.1:8188/x?a=b#c", Ok("/x?a=b#c")),
            ("HTTP://127.0.0.1:8188/x", Ok("/x")),
            ("http://127.0.0.1:8188", Ok("/")),
            ("http://127.0.0.1:8188?q", Ok("/?q")),
            (" http://127.0.0.1:8188/x ", Ok("/x")),
            ("//evil.example/", Err(Refused::OffSiteRedirect)),
            ("/\\evil.example/", Err(Refused::OffSiteRedirect)),
            ("\\\\evil.example/", Err(Refused::OffSiteRedirect)),
            ("/\t/evil.example/", Err(Refused::OffSiteRedirect)),
            (" //evil.example", Err(Refused::OffSiteRedirect)),
            ("http://evil.example/", Err(Refused::OffSiteRedirect)),
            ("http://EVIL.example", Err(Refused::OffSiteRedirect)),
            ("https://evil.example/x", Err(Refused::OffSiteRedirect)),
            ("https://127.0.0.1:8188/x", Err(Refused::OffSiteRedirect)),
            ("http://127.0.0.1:8188@evil.example/", Err(Refused::OffSiteRedirect)),
            ("http://127.0.0.1:8188.evil.example/", Err(Refused::OffSiteRedirect)),
            ("http://127.0.0.1:8188//evil.example/", Err(Refused::OffSiteRedirect)),
            ("http://127.0.0.1:8188/\\evil.example/", Err(Refused::OffSiteRedirect)),
            ("http://127.0.0.1/x", Err(Refused::OffSiteRedirect)),
            ("http:evil.example", Err(Refused::OffSiteRedirect)),
            ("javascript:alert(1)", Err(Refused::OffSiteRedirect)),
            ("data:text/html,x", Err(Refused::OffSiteRedirect)),
        ];
        for (location, expected) in cases {
            let mut h = headers(&[("location", location)]);
            let result = rules().apply(&mut h).map(|()| h.get("location").unwrap().to_str().unwrap().to_owned());
            assert_eq!(result.as_deref().map_err(Clone::clone), expected.clone(), "{location:?}");
        }
        let mut h = headers(&[("location", "/a"), ("location", "/b")]);
        assert_eq!(rules().apply(&mut h), Err(Refused::SeveralLocations));
    }

    #[test]
    fn the_default_port_is_the_same_authority() {
        let rules = ResponseRules::new(&Authority::from_static("comfy:80"), []);
        assert_eq!(rules.location(b"http://comfy/x"), Ok(Some("/x".to_owned())));
        assert_eq!(rules.location(b"http://COMFY:80/x"), Ok(Some("/x".to_owned())));
        let rules = ResponseRules::new(&Authority::from_static("comfy"), []);
        assert_eq!(rules.location(b"http://comfy:80/x"), Ok(Some("/x".to_owned())));
        assert_eq!(rules.location(b"http://comfy:8080/x"), Err(Refused::OffSiteRedirect));
    }

    #[test]
    fn responses_are_private_to_the_caller() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "private"),
            (&["public"], "private"),
            (&["PUBLIC, max-age=60"], "private, max-age=60"),
            (&["public", "max-age=60"], "private, max-age=60"),
            (&["max-age=60, Public , s-maxage=600"], "private, max-age=60, s-maxage=600"),
            (&["private=\"set-cookie\", max-age=5"], "private, max-age=5"),
            (&["no-store"], "no-store"),
            (&["public, no-store"], "no-store"),
            (&["max-age=0", "No-Store"], "max-age=0, No-Store"),
            (&["no-cache=\"a, public\", ,"], "private, no-cache=\"a, public\""),
        ];
        for (lines, expected) in cases {
            assert_eq!(applied(header::CACHE_CONTROL, lines), [*expected], "{lines:?}");
        }
    }

    #[test]
    fn vary_names_the_credentials_once() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "Cookie, Authorization"),
            (&["Accept-Encoding"], "Accept-Encoding, Cookie, Authorization"),
            (&["cookie", "Accept-Encoding, authorization"], "cookie, Accept-Encoding, authorization"),
            (&["Origin, Origin"], "Origin, Cookie, Authorization"),
            (&["*"], "*"),
            (&["Origin", "*"], "*"),
        ];
        for (lines, expected) in cases {
            assert_eq!(applied(header::VARY, lines), [*expected], "{lines:?}");
        }
    }
}
