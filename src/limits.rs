//! What one user may make the gateway hold: waiting and running jobs, submissions per hour,
//! workflow and upload sizes. Defaults come from `[limits]`; an admin's per-user overrides
//! live in the store (`comfygate user limits`). A refusal is ComfyUI's error shape with 429
//! (413 for sizes) and `Retry-After`, and touches nothing of anyone else's.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::config::LimitsConfig;
use crate::config::priority::Priority;
use crate::store::{Store, StoreError, UserLimits};

/// The limits in force for one user (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Limits {
    /// Jobs waiting in the gateway's queue.
    pub max_waiting: Option<u64>,
    /// Jobs on backends at once.
    pub max_running: Option<u64>,
    /// Submissions in any hour.
    pub jobs_per_hour: Option<u64>,
    /// Bytes of one workflow.
    pub max_workflow: u64,
    /// Bytes of one upload.
    pub max_upload: u64,
    /// Highest priority class they may ask for.
    pub max_priority: Priority,
    /// Class of their jobs that ask for none (never above `max_priority`).
    pub default_priority: Priority,
    /// Their fair-share weight (1.0: an equal share).
    pub weight: f64,
    /// GPU seconds per UTC day.
    pub gpu_seconds_per_day: Option<u64>,
}

/// The window of `jobs_per_hour`.
pub const HOUR: Duration = Duration::from_secs(3600);

impl Limits {
    /// The defaults of `config`, with `set` (an admin's overrides) on top; uploads are never
    /// above `max_request_body`.
    pub fn resolve(config: &LimitsConfig, set: &UserLimits, max_request_body: u64) -> Self {
        let count = |set: Option<i64>, default: u64| {
            let n = set.map_or(default, |n| u64::try_from(n).unwrap_or(0));
            (n > 0).then_some(n)
        };
        let size = |set: Option<i64>, default: u64| set.and_then(|n| u64::try_from(n).ok()).unwrap_or(default);
        let default_upload = match config.max_upload.as_u64() {
            0 => max_request_body,
            n => n,
        };
        let class = |code: Option<i64>| match code? {
            0 => Some(Priority::Low),
            1 => Some(Priority::Normal),
            2 => Some(Priority::High),
            _ => None,
        };
        let max_priority = class(set.max_priority).unwrap_or(config.max_priority);
        let upload = match size(set.max_upload_bytes, default_upload) {
            0 => max_request_body,
            n => n,
        };
        Self {
            max_waiting: count(set.max_waiting, config.max_waiting),
            max_running: count(set.max_running, config.max_running),
            jobs_per_hour: count(set.jobs_per_hour, config.jobs_per_hour),
            max_workflow: size(set.max_workflow_bytes, config.max_workflow.as_u64()),
            max_upload: upload.min(max_request_body),
            max_priority,
            default_priority: class(set.default_priority).unwrap_or(config.default_priority).min(max_priority),
            weight: set.share_weight.map_or(1.0, |pct| (pct.clamp(1, 100_000) as f64) / 100.0),
            gpu_seconds_per_day: count(set.gpu_seconds_per_day, config.gpu_seconds_per_day),
        }
    }

    /// The class of a job asking for `asked` (ComfyUI's `front: true` asks for the highest
    /// allowed), or the refusal of a class above their ceiling.
    pub fn priority(&self, asked: Option<Priority>, front: bool) -> Result<Priority, Refusal> {
        match asked {
            Some(p) if p > self.max_priority => Err(Refusal {
                status: StatusCode::FORBIDDEN,
                kind: "priority_not_allowed",
                message: format!("priority `{p}` is above your highest allowed, `{}`", self.max_priority),
                retry_after: None,
            }),
            Some(p) => Ok(p),
            None if front => Ok(self.max_priority),
            None => Ok(self.default_priority),
        }
    }

    /// The limits of `user_id`, read from the store.
    pub async fn of(
        store: &dyn Store,
        config: &LimitsConfig,
        max_request_body: u64,
        user_id: i64,
    ) -> Result<Self, StoreError> {
        Ok(Self::resolve(config, &store.user_limits(user_id).await?, max_request_body))
    }

    /// When the next submission fits `jobs_per_hour`, given the submissions of the last hour
    /// (unix ms, newest first) at `now`: `None` if it fits now, else the seconds to wait.
    pub fn hourly_wait(&self, recent: &[i64], now: i64) -> Option<u64> {
        let limit = usize::try_from(self.jobs_per_hour?).unwrap_or(usize::MAX);
        if recent.len() < limit {
            return None;
        }
        // The submission that must leave the window for one more to fit.
        let oldest = recent.get(limit - 1).copied().unwrap_or(now);
        let hour = i64::try_from(HOUR.as_millis()).unwrap_or(i64::MAX);
        let ms = (oldest + hour - now).max(0);
        Some(u64::try_from(ms).unwrap_or(0).div_ceil(1000).max(1))
    }
}

/// One UTC day in ms (the window of `gpu_seconds_per_day`).
pub const DAY_MS: i64 = 86_400_000;

/// Midnight UTC starting the day of `now`.
pub fn day_start(now: i64) -> i64 {
    now.div_euclid(DAY_MS) * DAY_MS
}

/// Whole seconds from `now` to the next midnight UTC (at least 1).
pub fn seconds_to_next_day(now: i64) -> u64 {
    let ms = day_start(now) + DAY_MS - now;
    u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1)
}

/// A refusal for going over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 429, or 413 for sizes.
    pub status: StatusCode,
    /// ComfyUI-style error type.
    pub kind: &'static str,
    /// What the user reads.
    pub message: String,
    /// Seconds until trying again makes sense.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// Too many jobs at once or per hour.
    pub fn busy(kind: &'static str, message: String, retry_after: u64) -> Self {
        Self { status: StatusCode::TOO_MANY_REQUESTS, kind, message, retry_after: Some(retry_after) }
    }

    /// Too large.
    pub fn too_large(kind: &'static str, message: String) -> Self {
        Self { status: StatusCode::PAYLOAD_TOO_LARGE, kind, message, retry_after: None }
    }

    /// ComfyUI's error body.
    pub fn body(&self) -> Value {
        json!({"error": {"type": self.kind, "message": self.message, "details": "", "extra_info": {}}, "node_errors": {}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    fn config() -> LimitsConfig {
        LimitsConfig {
            max_waiting: 1000,
            max_running: 0,
            jobs_per_hour: 0,
            max_workflow: ByteSize::mib(4),
            max_upload: ByteSize::b(0),
            gpu_seconds_per_day: 3600,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn overrides_replace_defaults_and_zero_means_no_limit() {
        let base = Limits::resolve(&config(), &UserLimits::default(), 1 << 30);
        assert_eq!(
            base,
            Limits {
                max_waiting: Some(1000),
                max_running: None,
                jobs_per_hour: None,
                max_workflow: 4 << 20,
                max_upload: 1 << 30,
                max_priority: Priority::Normal,
                default_priority: Priority::Normal,
                weight: 1.0,
                gpu_seconds_per_day: Some(3600),
            }
        );
        let set = UserLimits {
            max_waiting: Some(0),
            max_running: Some(2),
            jobs_per_hour: Some(500),
            max_upload_bytes: Some(200 << 20),
            max_workflow_bytes: Some(1 << 20),
            max_priority: Some(2),
            default_priority: Some(0),
            share_weight: Some(250),
            gpu_seconds_per_day: Some(0),
        };
        let user = Limits::resolve(&config(), &set, 1 << 30);
        assert_eq!(
            user,
            Limits {
                max_waiting: None,
                max_running: Some(2),
                jobs_per_hour: Some(500),
                max_workflow: 1 << 20,
                max_upload: 200 << 20,
                max_priority: Priority::High,
                default_priority: Priority::Low,
                weight: 2.5,
                gpu_seconds_per_day: None,
            }
        );
        let capped = UserLimits { max_upload_bytes: Some(i64::MAX), ..UserLimits::default() };
        assert_eq!(Limits::resolve(&config(), &capped, 1 << 20).max_upload, 1 << 20, "never above the body limit");
        let negative = UserLimits { max_running: Some(-5), ..UserLimits::default() };
        assert_eq!(Limits::resolve(&config(), &negative, 1).max_running, None);
    }

    #[test]
    fn priorities_ask_within_the_ceiling_and_front_asks_for_the_highest() {
        let user = Limits::resolve(&config(), &UserLimits::default(), 1);
        assert_eq!(user.priority(None, false), Ok(Priority::Normal));
        assert_eq!(user.priority(None, true), Ok(Priority::Normal), "front: the ceiling, not a stack push");
        assert_eq!(user.priority(Some(Priority::Low), false), Ok(Priority::Low));
        let refused = user.priority(Some(Priority::High), true).err().map(|r| (r.status, r.kind));
        assert_eq!(refused, Some((StatusCode::FORBIDDEN, "priority_not_allowed")));
        let lead = UserLimits { max_priority: Some(2), ..UserLimits::default() };
        let lead = Limits::resolve(&config(), &lead, 1);
        assert_eq!(lead.priority(None, true), Ok(Priority::High));
        assert_eq!(lead.priority(None, false), Ok(Priority::Normal));
        // A default above the ceiling is held to it; unknown codes are the configured default.
        let odd = UserLimits { max_priority: Some(0), default_priority: Some(2), ..UserLimits::default() };
        assert_eq!(Limits::resolve(&config(), &odd, 1).default_priority, Priority::Low);
        let unknown = UserLimits { max_priority: Some(7), share_weight: Some(-3), ..UserLimits::default() };
        let unknown = Limits::resolve(&config(), &unknown, 1);
        assert_eq!((unknown.max_priority, unknown.weight), (Priority::Normal, 0.01));
    }

    #[test]
    fn the_hourly_wait_is_until_the_oldest_counted_submission_leaves_the_window() {
        let limits = Limits { jobs_per_hour: Some(3), ..Limits::resolve(&config(), &UserLimits::default(), 1) };
        let now = 10_000_000;
        assert_eq!(limits.hourly_wait(&[now - 1000, now - 2000], now), None);
        let full = [now - 1_000, now - 2_000, now - 3_600_000 + 10_000];
        assert_eq!(limits.hourly_wait(&full, now), Some(10));
        let unlimited = Limits { jobs_per_hour: None, ..limits };
        assert_eq!(unlimited.hourly_wait(&full, now), None);
    }
}
