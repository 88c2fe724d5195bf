//! The console's audit log: newest first, filtered by user, event and age (GET parameters, so
//! a view can be bookmarked), 100 to a page.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::{Console, Frame, Tab, When, page};
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::AuditQuery;
use crate::time::{ms, now_ms};

/// Events on one page.
pub const PAGE_SIZE: i64 = 100;
/// Pages one can go back at most (bounds the store's work for one view).
const MAX_PAGE: i64 = 1000;
/// Fields every row shows in their own columns.
const COLUMNS: [&str; 7] = ["time", "event", "outcome", "user", "by", "address", "reason"];

/// The filters.
#[derive(Deserialize, Default)]
pub struct AuditFilter {
    #[serde(default)]
    user: String,
    #[serde(default)]
    event: String,
    /// How far back: `1h`, `30m`, `7d`.
    #[serde(default)]
    since: String,
    /// 1-based.
    #[serde(default)]
    page: Option<i64>,
}

/// One event.
pub struct AuditRow {
    /// When.
    pub at: Option<When>,
    /// The time as written.
    pub time: String,
    /// Event name.
    pub event: String,
    /// `success`, `failure`, `refused`.
    pub outcome: String,
    /// Account concerned.
    pub user: String,
    /// Acting account.
    pub by: String,
    /// Client address.
    pub address: String,
    /// Why.
    pub reason: String,
    /// Every other field, as compact JSON.
    pub details: String,
}

/// The page.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    /// Around it.
    pub frame: Frame,
    /// Filter by user (as given).
    pub user: String,
    /// Filter by event (as given).
    pub event: String,
    /// Filter by age (as given).
    pub since: String,
    /// Why a filter was not understood.
    pub problem: Option<String>,
    /// The events of this page.
    pub rows: Vec<AuditRow>,
    /// This page's number.
    pub page: i64,
    /// The previous page's link.
    pub newer: Option<String>,
    /// The next page's link.
    pub older: Option<String>,
}

/// `GET /comfygate/admin/audit?user=&event=&since=&page=`.
pub async fn show(
    State(app): State<AppState>,
    console: Console,
    query: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (filter, mut problem) = match query {
        Ok(Query(f)) => (f, None),
        Err(e) => (AuditFilter::default(), Some(format!("the filters could not be read: {e}"))),
    };
    let user = filter.user.trim().to_lowercase();
    let event = filter.event.trim().to_owned();
    let since = match filter.since.trim() {
        "" => None,
        text => match humantime::parse_duration(text) {
            Ok(back) => Some(now_ms().saturating_sub(ms(back))),
            Err(_) => {
                problem = Some(format!("`{text}` is no duration: use 30m, 12h or 7d"));
                None
            }
        },
    };
    let page_no = filter.page.unwrap_or(1).clamp(1, MAX_PAGE);
    let query = AuditQuery {
        username: (!user.is_empty()).then(|| user.clone()),
        event: (!event.is_empty()).then(|| event.clone()),
        since,
        limit: PAGE_SIZE + 1,
        offset: (page_no - 1) * PAGE_SIZE,
    };
    let mut lines = app
        .scheduler
        .store()
        .audit_events(&query)
        .await
        .map_err(|_| ApiError::Unavailable("the audit log cannot be read".to_owned()))?;
    let more = lines.len() > usize::try_from(PAGE_SIZE).unwrap_or(100);
    lines.truncate(usize::try_from(PAGE_SIZE).unwrap_or(100));
    let rows = lines.iter().map(|l| row(l)).collect();
    let link = |n: i64| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("user", &user).append_pair("event", &event).append_pair("since", filter.since.trim());
        q.append_pair("page", &n.to_string());
        format!("/comfygate/admin/audit?{}", q.finish())
    };
    let frame = console.frame(&app, "Audit log", Tab::Audit);
    page(&AuditPage {
        newer: (page_no > 1).then(|| link(page_no - 1)),
        older: (more && page_no < MAX_PAGE).then(|| link(page_no + 1)),
        frame,
        since: filter.since.trim().to_owned(),
        user,
        event,
        problem,
        rows,
        page: page_no,
    })
}

/// One stored line as a row (a line that is not JSON shows as its details).
fn row(line: &str) -> AuditRow {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line) else {
        return AuditRow {
            at: None,
            time: String::new(),
            event: String::new(),
            outcome: String::new(),
            user: String::new(),
            by: String::new(),
            address: String::new(),
            reason: String::new(),
            details: line.to_owned(),
        };
    };
    let mut take = |key: &str| match fields.remove(key) {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let [time, event, outcome, user, by, address, reason] = COLUMNS.map(&mut take);
    let at = humantime::parse_rfc3339_weak(&time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| When::at(ms(d)));
    let details = if fields.is_empty() { String::new() } else { Value::Object(fields).to_string() };
    AuditRow { at, time, event, outcome, user, by, address, reason, details }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_splits_into_columns_and_details() {
        let r = row(
            r#"{"time":"2026-01-02T03:04:05.678Z","event":"login_failed","user":"bob","outcome":"failure","token_id":3}"#,
        );
        assert_eq!((r.event.as_str(), r.user.as_str(), r.outcome.as_str()), ("login_failed", "bob", "failure"));
        assert_eq!(r.details, r#"{"token_id":3}"#);
        assert!(r.at.is_some());
        assert_eq!(row("not json").details, "not json");
    }
}
