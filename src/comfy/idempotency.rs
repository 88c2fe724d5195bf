//! `Idempotency-Key` on `POST /prompt`: a retried submission (same user, key and body bytes)
//! gets the first answer again and queues nothing new.
//!
//! The first request claims `(user, key)` in the store (an atomic insert, so of any number of
//! concurrent duplicates in any gateway process exactly one goes on), then stores its answer. A
//! duplicate waits for that answer (bounded) and replays it with `Idempotent-Replayed: true`; a
//! different body under the same key is 409. Only 2xx answers are kept: a refusal (invalid
//! workflow, quota, store down) gives the key back, so a corrected or later retry with the same
//! key is a fresh attempt. Keys expire 24 h after their claim.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Request, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{MAX_JSON_BODY, bytes_response, json_response};
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::Store;
use crate::time::now_ms;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header a replayed answer carries.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a key is remembered after its claim.
pub const KEEP_FOR: Duration = crate::store::IDEMPOTENCY_KEEP_FOR;
/// An unanswered claim older than this was abandoned (its gateway died mid-request).
const ABANDONED_AFTER: Duration = Duration::from_secs(5 * 60);
/// How long a duplicate waits for the first request's answer before it is told to retry.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(10);
/// How often a waiting duplicate looks at the store.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Longest key accepted.
const MAX_KEY: usize = 255;

/// Whether `key` is 1 to 255 printable ASCII characters (space included, not leading or
/// trailing, which HTTP would strip).
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY
        && key.iter().all(|b| (0x20..=0x7e).contains(b))
        && key.first() != Some(&b' ')
        && key.last() != Some(&b' ')
}

/// Runs `submit` once per `(user, Idempotency-Key, body)`: without the header it just runs;
/// with it, a duplicate gets the stored answer instead.
pub async fn run<F, Fut>(app: &AppState, user_id: i64, req: Request<Body>, submit: F) -> Result<Response, ApiError>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let mut keys = req.headers().get_all(HEADER).iter();
    let Some(key) = keys.next() else {
        return submit(req).await;
    };
    if keys.next().is_some() || !valid_key(key.as_bytes()) {
        return Ok(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be one header of 1 to 255 printable ASCII characters",
        ));
    }
    let key = String::from_utf8_lossy(key.as_bytes()).into_owned();
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(app.config.server.max_request_body.as_u64()).unwrap_or(usize::MAX).min(MAX_JSON_BODY);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| crate::http::error::unreadable_body(&e, limit))?;
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let store = app.auth.accounts().store().clone();
    let deadline = Instant::now() + WAIT_FOR_FIRST;
    loop {
        let now = now_ms();
        let claimed = store
            .claim_idempotency_key(user_id, &key, &digest, now, now - ms(KEEP_FOR), now - ms(ABANDONED_AFTER))
            .await
            .map_err(unavailable)?;
        if claimed {
            break;
        }
        if let Some(record) = store.idempotency_key(user_id, &key).await.map_err(unavailable)? {
            if record.body_sha256 != digest {
                return Ok(refusal(
                    StatusCode::CONFLICT,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used with a different request body",
                ));
            }
            if let (Some(status), Some(answer)) = (record.status, record.answer) {
                return Ok(replay(status, answer, record.retry_after));
            }
            if Instant::now() >= deadline {
                return Ok(in_flight());
            }
            tokio::time::sleep(POLL_EVERY).await;
        } else if Instant::now() >= deadline {
            // Claims keep appearing and vanishing under this key: stop trying, bounded.
            return Ok(in_flight());
        }
        // No row: the first request gave its claim back in between; claim again.
    }
    let claim = Claim { store: Some(store), user_id, key };
    let response = submit(Request::from_parts(parts, Body::from(bytes))).await?;
    claim.settle(response).await
}

/// A claimed key: given back if the request ends without an answer worth keeping, even when
/// the request is dropped half-way (client gone, error returned).
struct Claim {
    store: Option<Arc<dyn Store>>,
    user_id: i64,
    key: String,
}

impl Claim {
    /// Keeps a 2xx answer under the key (and returns it); anything else gives the key back.
    async fn settle(mut self, response: Response) -> Result<Response, ApiError> {
        if !response.status().is_success() {
            return Ok(response);
        }
        let Some(store) = self.store.take() else {
            return Ok(response);
        };
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_JSON_BODY).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the answer to keep under an idempotency key");
                self.store = Some(store);
                return Err(ApiError::Internal);
            }
        };
        let retry_after = parts
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let answer = String::from_utf8_lossy(&bytes);
        let status = i32::from(parts.status.as_u16());
        if let Err(e) = store.answer_idempotency_key(self.user_id, &self.key, status, &answer, retry_after).await {
            // The job is queued: answer the client; a retry may queue it again, which beats
            // failing a submission that worked.
            tracing::error!(error = %e, "cannot keep the answer under an idempotency key");
            self.store = Some(store);
        }
        Ok(Response::from_parts(parts, Body::from(bytes)))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let (user_id, key) = (self.user_id, std::mem::take(&mut self.key));
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = store.release_idempotency_key(user_id, &key).await {
                        tracing::warn!(error = %e, "cannot give back an idempotency key");
                    }
                });
            }
        }
    }
}

/// The stored answer again.
fn replay(status: i32, answer: String, retry_after: Option<i64>) -> Response {
    let status = u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
    let mut response = bytes_response(status, answer.into());
    let headers = response.headers_mut();
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    if let Some(seconds) = retry_after.and_then(|s| u64::try_from(s).ok()) {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The first request with this key is still being answered.
fn in_flight() -> Response {
    let mut response = refusal(
        StatusCode::CONFLICT,
        "idempotency_key_in_flight",
        "a request with this Idempotency-Key is still being answered; retry shortly",
    );
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(1u64));
    response
}

/// A refusal in ComfyUI's `POST /prompt` error shape.
fn refusal(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({
        "error": {"type": kind, "message": message, "details": "", "extra_info": {}},
        "node_errors": {},
    });
    json_response(status, &body)
}

fn unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "cannot read or claim an idempotency key");
    ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert!(valid_key(b"a"));
        assert!(valid_key(b"order 42/retry:1"));
        assert!(valid_key("k".repeat(255).as_bytes()));
        assert!(!valid_key(b""));
        assert!(!valid_key("k".repeat(256).as_bytes()));
        assert!(!valid_key(b"tab\there"));
        assert!(!valid_key(b"nul\0"));
        assert!(!valid_key("caf\u{e9}".as_bytes()));
        assert!(!valid_key(b" lead"));
        assert!(!valid_key(b"del\x7f"));
    }
}
