//! Set-Cookie values for the gateway's cookies: always `HttpOnly`, `SameSite`, and `Secure`
//! when the client reached the gateway over HTTPS.

use cookie::{Cookie, SameSite};
use http::HeaderValue;

/// A cookie with the gateway's attributes; `max_age` of `None` deletes it.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    same_site: SameSite,
    max_age_secs: Option<i64>,
    secure: bool,
) -> HeaderValue {
    let mut c = Cookie::build((name.to_owned(), value.to_owned()))
        .path(path.to_owned())
        .http_only(true)
        .same_site(same_site)
        .secure(secure)
        .build();
    match max_age_secs {
        Some(secs) => c.set_max_age(cookie::time::Duration::seconds(secs)),
        None => c.make_removal(),
    }
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_are_http_only_and_same_site() {
        let v = set_cookie("s", "abc", "/", SameSite::Lax, Some(60), false);
        let v = v.to_str().unwrap_or_default();
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Lax") && v.contains("Max-Age=60"), "{v}");
        assert!(!v.contains("Secure"));
        let v = set_cookie("s", "", "/", SameSite::Lax, None, true);
        let v = v.to_str().unwrap_or_default();
        assert!(v.contains("Secure") && v.contains("Max-Age=0"), "{v}");
    }
}
