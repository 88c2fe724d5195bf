//! The webhook outbox's rows ([`crate::webhooks`] fills and drains it).

/// A webhook delivery to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The Standard Webhooks `webhook-id` (unique, the same on every attempt).
    pub message_id: String,
    /// Whose job it is about (whose secret signs it).
    pub user_id: i64,
    /// The job's public id.
    pub job_id: String,
    /// `job.started`, `job.completed`, ...
    pub event: String,
    /// Where it goes.
    pub url: String,
    /// The exact JSON body.
    pub body: String,
    /// When it was made (unix ms).
    pub created_at: i64,
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// The Standard Webhooks `webhook-id`.
    pub message_id: String,
    /// Whose job it is about.
    pub user_id: i64,
    /// The job's public id.
    pub job_id: String,
    /// The event's type.
    pub event: String,
    /// Where it goes.
    pub url: String,
    /// The exact JSON body.
    pub body: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When it was made (unix ms).
    pub created_at: i64,
    /// When the next attempt is due (unix ms).
    pub next_attempt_at: i64,
    /// When it was delivered (unix ms).
    pub delivered_at: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// The receiver answered 2xx at this time (unix ms).
    Delivered(i64),
    /// It failed; try again at this time (unix ms).
    Retry(i64, String),
    /// It failed and no attempt is left.
    Failed(String),
}
