//! Every request carries an `X-Request-Id` (the client's, or a new UUID), forwarded to ComfyUI
//! and returned on the response, so one request can be followed through both logs.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives the request an id unless the client sent one; returns it.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID) {
        return id.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// Sets the id on a response that does not carry one already (ComfyUI's own wins).
pub fn propagate(headers: &mut HeaderMap, id: HeaderValue) {
    if !headers.contains_key(&REQUEST_ID) {
        headers.insert(REQUEST_ID, id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_audit_log_reads_the_same_header() {
        assert_eq!(REQUEST_ID.as_str(), crate::http::audit_context::REQUEST_ID);
    }

    #[test]
    fn a_clients_id_is_kept_and_a_missing_one_made() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(ensure(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(h.get(&REQUEST_ID).unwrap(), &id);
        let mut out = HeaderMap::new();
        propagate(&mut out, id.clone());
        assert_eq!(out.get(&REQUEST_ID).unwrap(), &id);
        out.insert(REQUEST_ID, HeaderValue::from_static("from-comfyui"));
        propagate(&mut out, id);
        assert_eq!(out.get(&REQUEST_ID).unwrap(), "from-comfyui");
    }
}
