//! The stored half of `Idempotency-Key` (see `crate::comfy::idempotency`).

/// How long an idempotency key is remembered after its claim (the maintenance loop purges older
/// ones; a claim of an older one starts afresh).
pub const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// A claimed idempotency key: the body it was claimed with, and the answer once there is one.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRecord {
    /// Hex SHA-256 of the request body that claimed the key.
    pub body_sha256: String,
    /// The answer's status code; `None` while the first request is still in flight.
    pub status: Option<i32>,
    /// The answer's JSON body.
    pub answer: Option<String>,
    /// The answer's `Retry-After` (seconds).
    pub retry_after: Option<i64>,
    /// When the key was claimed (unix ms).
    pub created_at: i64,
}
