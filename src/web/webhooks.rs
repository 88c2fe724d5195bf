//! `/comfygate/api/webhooks/...`: a user's signing secret and their deliveries (admins: anyone's).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{ApiError, Caller};
use crate::state::AppState;
use crate::store::Delivery;
use crate::time::format_ms;

/// Most deliveries listed.
const MAX_LISTED: i64 = 200;

/// `GET /comfygate/api/webhooks/secret`: the caller's own signing secret (`whsec_...`).
pub async fn secret(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let key = app.webhooks.user_key(caller.identity.user_id).await.map_err(|e| {
        tracing::error!(error = %e, "no webhook signing key");
        ApiError::Internal
    })?;
    Ok(Json(json!({"secret": crate::webhooks::signing::shown(&key)})))
}

/// `GET /comfygate/api/webhooks/deliveries` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    user: Option<String>,
    #[serde(default)]
    all: bool,
    limit: Option<i64>,
}

/// `GET /comfygate/api/webhooks/deliveries`: the caller's newest deliveries (admins: `?user=`
/// or `?all=true`).
pub async fn deliveries(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let me = caller.identity.username.to_string();
    let scope = match (q.all, q.user) {
        (false, None) => Some(caller.identity.user_id),
        (false, Some(user)) if user.eq_ignore_ascii_case(&me) => Some(caller.identity.user_id),
        _ if !caller.identity.is_admin() => {
            return Err(ApiError::Forbidden("only admins list other users' webhook deliveries".to_owned()));
        }
        (true, _) => None,
        (false, Some(user)) => Some(app.auth.accounts().user(&user).await?.id),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LISTED);
    let rows = app.scheduler.store().deliveries(scope, limit).await.map_err(|e| {
        tracing::error!(error = %e, "cannot list webhook deliveries");
        ApiError::Unavailable("the store is temporarily unavailable".to_owned())
    })?;
    Ok(Json(json!({"deliveries": rows.iter().map(view).collect::<Vec<_>>()})))
}

/// One delivery as its owner sees it (the URL without its query string).
pub fn view(d: &Delivery) -> Value {
    json!({
        "id": d.message_id,
        "prompt_id": d.job_id,
        "event": d.event,
        "url": crate::webhooks::shown_url(&d.url),
        "status": d.state,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": format_ms(d.created_at),
        "next_attempt_at": (d.state == "pending").then(|| format_ms(d.next_attempt_at)),
        "delivered_at": d.delivered_at.map(format_ms),
    })
}

/// The account page's "Webhook deliveries" card (empty when webhooks are off and none exist).
pub async fn account_card(app: &AppState, user_id: i64) -> String {
    use super::page::escape;
    let rows = match app.scheduler.store().deliveries(Some(user_id), 20).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list webhook deliveries");
            return String::new();
        }
    };
    if rows.is_empty() && app.config.webhooks.allowed_hosts.is_empty() {
        return String::new();
    }
    let lines: String = rows
        .iter()
        .map(|d| {
            let when = match d.delivered_at {
                Some(at) => format!("delivered {}", format_ms(at)),
                None if d.state == "pending" => format!("next try {}", format_ms(d.next_attempt_at)),
                None => "gave up".to_owned(),
            };
            format!(
                r#"<tr><td>{event}</td><td><code>{job}</code></td><td>{url}</td><td>{state}</td><td>{attempts}</td><td>{when}</td><td class="muted">{error}</td></tr>"#,
                event = escape(&d.event),
                job = escape(&d.job_id),
                url = escape(&crate::webhooks::shown_url(&d.url)),
                state = escape(&d.state),
                attempts = d.attempts,
                when = escape(&when),
                error = escape(d.last_error.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let table = if lines.is_empty() {
        "<p class=\"muted\">No webhook deliveries yet.</p>".to_owned()
    } else {
        format!(
            "<table><tr><th>Event</th><th>Job</th><th>URL</th><th>Status</th><th>Attempts</th><th>When</th><th>Last error</th></tr>{lines}</table>"
        )
    };
    format!(
        r#"<div class="card"><h2>Webhook deliveries</h2>{table}<p class="muted">Your signing secret: <a href="/comfygate/api/webhooks/secret">/comfygate/api/webhooks/secret</a> (see the gateway's docs/webhooks.md).</p></div>"#
    )
}
