//! CSRF tokens for the gateway's own forms.
//!
//! Before login: a random value in a `SameSite=Strict` cookie that the form must repeat
//! (double submit). After login: an HMAC of the session secret, so it needs no storage and
//! dies with the session. Compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{Presented, secret};
use crate::http::{ApiError, Caller};

/// The cookie holding the login form's token.
pub const LOGIN_COOKIE: &str = crate::config::LOGIN_CSRF_COOKIE;

/// The form token bound to a session secret.
pub fn session_token(session_secret: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(session_secret.as_bytes()) else { return String::new() };
    mac.update(b"comfygate form v1");
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The token to embed in forms for this caller (empty for token callers, who need none).
pub fn form_token(caller: &Caller) -> String {
    match &caller.presented {
        Presented::SessionCookie(secret) => session_token(secret),
        _ => String::new(),
    }
}

/// Checks a submitted form token; callers with a bearer token carry no ambient authority.
pub fn check_form(caller: &Caller, submitted: &str) -> Result<(), ApiError> {
    let Presented::SessionCookie(session) = &caller.presented else { return Ok(()) };
    let expected = session_token(session);
    if !expected.is_empty() && secret::constant_time_eq(expected.as_bytes(), submitted.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("the form has expired: reload the page and try again".to_owned()))
    }
}

/// Checks the login form's double-submitted token.
pub fn check_login(cookie_value: Option<&str>, submitted: &str) -> bool {
    cookie_value.is_some_and(|c| !c.is_empty() && secret::constant_time_eq(c.as_bytes(), submitted.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_differ_per_session_and_are_stable() {
        assert_eq!(session_token("a"), session_token("a"));
        assert_ne!(session_token("a"), session_token("b"));
        assert!(check_login(Some("x1"), "x1"));
        assert!(!check_login(Some("x1"), "x2"));
        assert!(!check_login(None, ""));
        assert!(!check_login(Some(""), ""));
    }
}
