//! The usage ledger's types: one [`UsageRecord`] per finished job, and the totals
//! [`UsageQuery`] asks for, grouped by a [`UsageGroup`].

use std::str::FromStr;

/// One finished job, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The gateway's id of the job (unique: a job is counted once).
    pub prompt_id: String,
    /// Owner's user id.
    pub user_id: i64,
    /// Owner's name when the job ended.
    pub username: String,
    /// The API token that submitted it.
    pub token_id: Option<i64>,
    /// The backend that ran it (or last held it).
    pub backend: Option<String>,
    /// The model files it used.
    pub models: Vec<String>,
    /// Its priority class (`low`, `normal`, `high`).
    pub priority: String,
    /// When it was submitted (unix ms).
    pub created_at: i64,
    /// When its run started (unix ms; `None`: it never ran).
    pub started_at: Option<i64>,
    /// When it ended (unix ms).
    pub ended_at: i64,
    /// GPU run time in ms (`None`: it never ran).
    pub run_ms: Option<i64>,
    /// `done`, `failed` or `cancelled`.
    pub outcome: String,
    /// How many output files it made.
    pub outputs: i64,
}

impl UsageRecord {
    /// How long it waited in the gateway's queue (ms), if it started.
    pub fn wait_ms(&self) -> Option<i64> {
        self.started_at.map(|s| (s - self.created_at).max(0))
    }
}

/// What usage totals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    /// The owner (by the name they had).
    User,
    /// The submitting token (`user/token`; `user/(session)` for the browser).
    Token,
    /// Each model file (a job with two models counts under both).
    Model,
    /// The backend that ran it.
    Backend,
    /// The UTC day it ended (`YYYY-MM-DD`).
    Day,
}

impl UsageGroup {
    /// The name used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageGroup::User => "user",
            UsageGroup::Token => "token",
            UsageGroup::Model => "model",
            UsageGroup::Backend => "backend",
            UsageGroup::Day => "day",
        }
    }
}

/// An unknown [`UsageGroup`] name.
#[derive(Debug, thiserror::Error)]
#[error("unknown grouping `{0}` (use user, token, model, backend or day)")]
pub struct UnknownGroup(pub String);

impl FromStr for UsageGroup {
    type Err = UnknownGroup;

    fn from_str(s: &str) -> Result<Self, UnknownGroup> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "user" => UsageGroup::User,
            "token" => UsageGroup::Token,
            "model" => UsageGroup::Model,
            "backend" => UsageGroup::Backend,
            "day" => UsageGroup::Day,
            _ => return Err(UnknownGroup(s.chars().take(40).collect())),
        })
    }
}

/// Which ledger rows to total, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Jobs that ended at or after this (unix ms).
    pub since: i64,
    /// Jobs that ended before this (unix ms).
    pub until: i64,
    /// Only this user's jobs (`None`: everyone's).
    pub user_id: Option<i64>,
    /// How to group them.
    pub by: UsageGroup,
}

/// Totals of one group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageTotals {
    /// The group's name (user name, `user/token`, model, backend, or `YYYY-MM-DD`).
    pub key: String,
    /// Jobs.
    pub jobs: i64,
    /// Jobs that finished well.
    pub done: i64,
    /// Jobs that failed.
    pub failed: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
    /// GPU run time, seconds.
    pub gpu_seconds: f64,
    /// Mean wait in the gateway's queue of the jobs that started, seconds.
    pub mean_wait_seconds: f64,
    /// Output files.
    pub outputs: i64,
}

/// The SQL expression naming a row's group (`j`: job_usage, `m`: job_usage_models, `t`: api_tokens).
pub(super) fn group_key(by: UsageGroup) -> &'static str {
    match by {
        UsageGroup::User => "j.username",
        UsageGroup::Token => {
            "CASE WHEN j.token_id IS NULL THEN j.username || '/(session)' \
             WHEN t.name IS NULL THEN j.username || '/#' || CAST(j.token_id AS TEXT) \
             ELSE j.username || '/' || t.name END"
        }
        UsageGroup::Model => "COALESCE(m.model, '(none)')",
        UsageGroup::Backend => "COALESCE(j.backend, '(none)')",
        // Integer division: the UTC day number, turned into a date by `day_name`.
        UsageGroup::Day => "CAST(j.ended_at / 86400000 AS TEXT)",
    }
}

/// The totals query for `by` (`$1` since, `$2` until, `$3` user id or NULL). Sums are cast
/// because PostgreSQL sums BIGINTs to NUMERIC.
pub(crate) fn totals_sql(by: UsageGroup) -> String {
    let join = match by {
        UsageGroup::Model => "LEFT JOIN job_usage_models m ON m.prompt_id = j.prompt_id",
        UsageGroup::Token => "LEFT JOIN api_tokens t ON t.id = j.token_id",
        _ => "",
    };
    format!(
        "SELECT {key} AS key, COUNT(*) AS jobs, \
         CAST(SUM(CASE WHEN j.outcome = 'done' THEN 1 ELSE 0 END) AS BIGINT) AS done, \
         CAST(SUM(CASE WHEN j.outcome = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed, \
         CAST(SUM(CASE WHEN j.outcome = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT) AS cancelled, \
         CAST(COALESCE(SUM(j.run_ms), 0) AS BIGINT) AS run_ms, \
         CAST(COALESCE(SUM(j.wait_ms), 0) AS BIGINT) AS wait_ms, \
         COUNT(j.wait_ms) AS started, \
         CAST(SUM(j.outputs) AS BIGINT) AS outputs \
         FROM job_usage j {join} \
         WHERE j.ended_at >= $1 AND j.ended_at < $2 AND ($3 IS NULL OR j.user_id = $3) \
         GROUP BY {key} ORDER BY {key}",
        key = group_key(by),
    )
}

/// One row of [`totals_sql`].
#[derive(sqlx::FromRow)]
pub(crate) struct TotalsRow {
    key: String,
    jobs: i64,
    done: i64,
    failed: i64,
    cancelled: i64,
    run_ms: i64,
    wait_ms: i64,
    started: i64,
    outputs: i64,
}

impl TotalsRow {
    pub(crate) fn into_totals(self, by: UsageGroup) -> UsageTotals {
        let key = if by == UsageGroup::Day { day_name(&self.key) } else { self.key };
        #[allow(clippy::cast_precision_loss)] // sums of milliseconds stay far below 2^52
        UsageTotals {
            key,
            jobs: self.jobs,
            done: self.done,
            failed: self.failed,
            cancelled: self.cancelled,
            gpu_seconds: self.run_ms as f64 / 1000.0,
            mean_wait_seconds: if self.started > 0 { self.wait_ms as f64 / self.started as f64 / 1000.0 } else { 0.0 },
            outputs: self.outputs,
        }
    }
}

/// `YYYY-MM-DD` of a UTC day number (days since 1970-01-01).
fn day_name(day: &str) -> String {
    match day.parse::<i64>() {
        Ok(day) => crate::time::format_ms(day.saturating_mul(86_400_000)).chars().take(10).collect(),
        Err(_) => day.to_owned(),
    }
}
