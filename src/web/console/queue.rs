//! The console's queue: every running and waiting job with its owner, how long it has waited,
//! where it runs and why it waits; a Cancel button per job.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;

use super::{Console, CsrfForm, FormResult, Frame, Tab, When, human_ms, live_json, page};
use crate::audit::Event;
use crate::auth::flash::Flash;
use crate::http::{ApiError, RequestContext};
use crate::scheduler::control::Scope;
use crate::state::AppState;
use crate::store::JobState;
use crate::time::now_ms;

const PAGE: &str = "/comfygate/admin/queue";
/// Jobs of the gateway's queue the page lists at most (the rest are counted).
const MAX_WAITING_SHOWN: usize = 500;

/// One job as the queue shows it.
pub struct JobRow {
    /// Gateway id.
    pub id: String,
    /// The id as a path segment.
    pub id_path: String,
    /// Queue number.
    pub number: i64,
    /// Owner's name.
    pub owner: String,
    /// The owner's console page.
    pub owner_path: String,
    /// Where it is, in words.
    pub state: &'static str,
    /// CSS class for the state.
    pub state_class: &'static str,
    /// How long it waited (until it started, for a running job).
    pub waited: String,
    /// When it was submitted.
    pub submitted: When,
    /// How long it has run.
    pub running_for: Option<String>,
    /// The backend holding it.
    pub backend: Option<String>,
    /// Why it waits, in plain words.
    pub reason: Option<String>,
}

/// The live part of the page.
#[derive(Template)]
#[template(path = "console/queue_live.html")]
pub struct QueueLive {
    /// The jobs shown: all running or on backends, and the first of the gateway's queue.
    pub jobs: Vec<JobRow>,
    /// Jobs held but not shown.
    pub more: usize,
    /// Jobs held in all.
    pub total: usize,
    /// The CSRF token for the Cancel forms.
    pub csrf: String,
}

/// The page.
#[derive(Template)]
#[template(path = "console/queue.html")]
pub struct QueuePage {
    /// Around it.
    pub frame: Frame,
    /// The live part, rendered by [`QueueLive`] (escaped there).
    pub live: String,
}

/// `GET /comfygate/admin/queue`.
pub async fn show(State(app): State<AppState>, console: Console) -> Result<Response, ApiError> {
    app.scheduler.fresh().await;
    let live = gather(&app, &console).render().map_err(|_| ApiError::Internal)?;
    page(&QueuePage { frame: console.frame(&app, "Queue", Tab::Queue), live })
}

/// `GET /comfygate/admin/live/queue`: the live part as JSON.
pub async fn live(State(app): State<AppState>, console: Console) -> Result<Response, ApiError> {
    app.scheduler.fresh().await;
    live_json(&gather(&app, &console))
}

fn gather(app: &AppState, console: &Console) -> QueueLive {
    let now = now_ms();
    let (jobs, total) = app.scheduler.overview(MAX_WAITING_SHOWN);
    let jobs: Vec<JobRow> = jobs
        .into_iter()
        .map(|j| {
            let (state, state_class) = match j.state {
                JobState::Running => ("running", "ok"),
                JobState::Queued => ("waiting in the gateway", "warn"),
                _ => ("on the backend's queue", ""),
            };
            let waited_until = j.started_at.unwrap_or(now);
            JobRow {
                id_path: super::users::path_segment(&j.id),
                owner_path: super::users::path_segment(&j.username),
                number: j.number,
                owner: j.username,
                state,
                state_class,
                waited: human_ms(waited_until - j.created_at),
                submitted: When::at(j.created_at),
                running_for: j.started_at.map(|s| human_ms(now - s)),
                backend: j.backend,
                reason: j.reason,
                id: j.id,
            }
        })
        .collect();
    let more = total.saturating_sub(jobs.len());
    QueueLive { jobs, more, total, csrf: console.csrf.clone() }
}

/// `POST /comfygate/admin/queue/{id}/cancel`: a waiting job leaves the queue, a running one
/// is interrupted; audited first as the same actions through ComfyUI's API are.
pub async fn cancel(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(id): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let axum::Form(form) = form?;
    console.check_form(&form.csrf)?;
    app.scheduler.fresh().await;
    let Some(job) = app.scheduler.summary(&id) else {
        return Ok(console.done(&app, PAGE, Flash::error("That job is no longer in the queue.")));
    };
    let context = console.context(&context);
    let viewer = console.caller.identity.user_id;
    let audited = |event: Event| event.user(&job.username).field("via", "console");
    let running = job.state == JobState::Running;
    let event = match running {
        true => audited(Event::success("admin_interrupt").field("prompt_id", job.id.clone())),
        false => audited(
            Event::success("admin_jobs_deleted")
                .field("prompt_ids", vec![Value::from(job.id.clone())])
                .field("count", 1),
        ),
    };
    app.audit.record(&context, event).await.map_err(|_| {
        ApiError::Unavailable("the audit log cannot be written: admin actions are refused until it can".to_owned())
    })?;
    if running {
        app.scheduler.interrupt(Scope::All, viewer, Some(&job.id)).await;
    } else {
        app.scheduler.delete(Scope::All, viewer, std::slice::from_ref(&job.id)).await;
    }
    let what = if running { "interrupted" } else { "cancelled" };
    Ok(console.done(&app, PAGE, Flash::notice(format!("Job #{} of {} {what}.", job.number, job.username))))
}
