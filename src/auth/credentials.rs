//! The one place that reads a client's credentials from a request, and removes them
//! again before the request goes to ComfyUI.
//!
//! Accepted, in this order: `Authorization: Bearer <token>`, a `token` query parameter (also
//! on `/ws`, where browsers cannot set headers), the session cookie.

use http::header::{AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::{HeaderMap, Uri};

use super::AuthFailure;

/// A credential as the client presented it.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// From `Authorization: Bearer`.
    Bearer(String),
    /// From `?token=`.
    QueryToken(String),
    /// From the session cookie.
    SessionCookie(String),
}

impl Presented {
    /// The secret itself.
    pub fn secret(&self) -> &str {
        match self {
            Presented::Bearer(s) | Presented::QueryToken(s) | Presented::SessionCookie(s) => s,
        }
    }

    /// Whether the browser attached it by itself (and so cross-site requests could carry it).
    pub fn is_ambient(&self) -> bool {
        matches!(self, Presented::SessionCookie(_))
    }
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Presented::Bearer(_) => "Bearer",
            Presented::QueryToken(_) => "QueryToken",
            Presented::SessionCookie(_) => "SessionCookie",
        };
        write!(f, "{kind}([redacted])")
    }
}

/// Longest secret accepted (a `cg_` token is 46 characters, a bcrypt legacy token 60).
const MAX_SECRET_LEN: usize = 256;

/// Reads the credential of a request, if any.
pub fn presented(parts: &Parts, cookie_name: &str) -> Result<Option<Presented>, AuthFailure> {
    if let Some(bearer) = bearer(&parts.headers)? {
        return Ok(Some(Presented::Bearer(bearer)));
    }
    if let Some(token) = query_token(&parts.uri)? {
        return Ok(Some(Presented::QueryToken(token)));
    }
    Ok(cookie_value(&parts.headers, cookie_name).map(Presented::SessionCookie))
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(AuthFailure::MalformedAuthorization("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| AuthFailure::MalformedAuthorization("Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthFailure::MalformedAuthorization("expected `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::MalformedAuthorization("only the Bearer scheme is accepted"));
    }
    let token = token.trim();
    check_secret_shape(token)?;
    Ok(Some(token.to_owned()))
}

fn query_token(uri: &Uri) -> Result<Option<String>, AuthFailure> {
    let Some(query) = uri.query() else { return Ok(None) };
    let mut found: Option<String> = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "token" {
            continue;
        }
        if found.as_deref().is_some_and(|f| f != value) {
            return Err(AuthFailure::MalformedAuthorization("more than one `token` query parameter"));
        }
        check_secret_shape(&value)?;
        found = Some(value.into_owned());
    }
    Ok(found)
}

/// The value of a cookie, if the request carries it.
pub fn cookie_value(headers: &HeaderMap, cookie_name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == cookie_name && !c.value().is_empty() && c.value().len() <= MAX_SECRET_LEN)
        .map(|c| c.value().to_owned())
}

/// Whether a secret has a shape a credential can have (authentication and [`super::diagnosis`] share it).
pub fn check_secret_shape(secret: &str) -> Result<(), AuthFailure> {
    if secret.is_empty() {
        return Err(AuthFailure::MalformedAuthorization("the token is empty"));
    }
    // Bytewise: spaces and ASCII controls are impossible in a token (non-ASCII is left to lookup).
    if secret.len() > MAX_SECRET_LEN || secret.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(AuthFailure::MalformedAuthorization("the token has an impossible shape"));
    }
    Ok(())
}

/// The query without any `token` parameter (byte-for-byte otherwise); `None` when nothing is left.
pub fn strip_query_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let decoded: String = form_urlencoded::parse(key.as_bytes()).map(|(k, _)| k.into_owned()).collect();
            !pair.is_empty() && decoded != "token"
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// A `Cookie` header value without the gateway's session cookie; `None` when nothing is left.
pub fn strip_session_cookie(value: &str, cookie_name: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next().map(str::trim) != Some(cookie_name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_wins_over_query_and_cookie() {
        let p = parts("/x?token=q", &[("authorization", "Bearer cg_a"), ("cookie", "s=c")]);
        assert_eq!(presented(&p, "s").unwrap(), Some(Presented::Bearer("cg_a".into())));
    }

    #[test]
    fn query_token_is_percent_decoded() {
        let p = parts("/ws?clientId=1&token=%242b%2412%24abc", &[]);
        assert_eq!(presented(&p, "s").unwrap(), Some(Presented::QueryToken("$2b$12$abc".into())));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let p = parts("/", &[("cookie", "a=1; s=secret; b=2")]);
        assert_eq!(presented(&p, "s").unwrap(), Some(Presented::SessionCookie("secret".into())));
        assert_eq!(presented(&parts("/", &[]), "s").unwrap(), None);
    }

    #[test]
    fn malformed_authorization_is_rejected() {
        for h in ["Bearer", "Basic dXNlcjpwYXNz", "Bearer  ", "cg_token"] {
            let p = parts("/", &[("authorization", h)]);
            assert!(matches!(presented(&p, "s"), Err(AuthFailure::MalformedAuthorization(_))), "{h}");
        }
        let long = format!("Bearer {}", "a".repeat(1000));
        assert!(presented(&parts("/", &[("authorization", long.as_str())]), "s").is_err());
        let p = parts("/?token=a&token=b", &[]);
        assert!(presented(&p, "s").is_err());
    }

    #[test]
    fn non_ascii_authorization_is_rejected_not_a_panic() {
        let mut p = parts("/", &[]);
        p.headers.insert(AUTHORIZATION, http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap());
        assert!(presented(&p, "s").is_err());
    }

    #[test]
    fn stripping_removes_only_the_credentials() {
        assert_eq!(strip_query_token("clientId=1&token=x&a=%20b").as_deref(), Some("clientId=1&a=%20b"));
        assert_eq!(strip_query_token("token=x"), None);
        assert_eq!(strip_query_token("%74oken=x&b=1").as_deref(), Some("b=1"));
        assert_eq!(strip_session_cookie("a=1; s=secret; b=2", "s").as_deref(), Some("a=1; b=2"));
        assert_eq!(strip_session_cookie("s=secret", "s"), None);
    }
}
