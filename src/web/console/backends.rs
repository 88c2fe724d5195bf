//! The console's first page: each backend's health, version, devices, the job it runs (and
//! whose it is), the jobs waiting on it, the models it last loaded and its last error.

use std::collections::{BTreeSet, HashMap};

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use axum::extract::Path;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Console, CsrfForm, FormResult, Frame, Tab, When, live_json, page};
use crate::audit::Event;
use crate::auth::flash::Flash;
use crate::http::{ApiError, RequestContext};
use crate::scheduler::control::JobSummary;
use crate::state::AppState;
use crate::store::JobState;

/// A job as a backend's row names it.
pub struct JobRef {
    /// Gateway id.
    pub id: String,
    /// Queue number.
    pub number: i64,
    /// Owner's name.
    pub owner: String,
    /// Since when it runs or waits.
    pub since: When,
}

/// One device and its memory.
pub struct DeviceRow {
    /// As ComfyUI names it.
    pub name: String,
    /// Memory in use, for people.
    pub used: String,
    /// Memory in all, for people.
    pub total: String,
    /// Percent in use (0-100).
    pub percent: u64,
}

/// One backend as the console shows it.
pub struct BackendRow {
    /// Name.
    pub name: String,
    /// Name as a path segment.
    pub name_path: String,
    /// Drained by an admin.
    pub drained: bool,
    /// Leaving the pool (a reload removed or changed it): neither drain nor resume applies.
    pub retiring: bool,
    /// URL.
    pub url: String,
    /// Labels from the configuration.
    pub labels: Vec<String>,
    /// `healthy`, `down`, `retiring`...
    pub state: String,
    /// CSS class for the state.
    pub state_class: &'static str,
    /// Since when it is in that state, if known.
    pub since: Option<When>,
    /// Whether the gateway's socket to it is open.
    pub monitored: bool,
    /// ComfyUI version, if reported.
    pub version: Option<String>,
    /// Devices with their memory.
    pub devices: Vec<DeviceRow>,
    /// Jobs on it, of its slots.
    pub slots: String,
    /// The job it runs.
    pub running: Option<JobRef>,
    /// Jobs handed to it, waiting in its own queue.
    pub queued: Vec<JobRef>,
    /// Model files of the last job it ran.
    pub last_models: Vec<String>,
    /// Why it was last taken out (or its last failed request).
    pub last_error: Option<String>,
    /// When that was.
    pub last_error_at: Option<When>,
    /// Node classes it reported, once it has.
    pub node_classes: Option<usize>,
}

/// The live part of the page.
#[derive(Template)]
#[template(path = "console/backends_live.html")]
pub struct BackendsLive {
    /// Every backend.
    pub backends: Vec<BackendRow>,
    /// The form token of the admin's session.
    pub csrf: String,
    /// The ComfyUI versions when backends differ.
    pub versions_differ: Option<String>,
    /// Jobs waiting in the gateway's queue.
    pub waiting: usize,
}

/// The page.
#[derive(Template)]
#[template(path = "console/backends.html")]
pub struct BackendsPage {
    /// Around it.
    pub frame: Frame,
    /// The live part, rendered by [`BackendsLive`] (escaped there).
    pub live: String,
}

/// `GET /comfygate/admin/` and `/comfygate/admin/backends`.
pub async fn show(State(app): State<AppState>, console: Console) -> Result<Response, ApiError> {
    app.scheduler.fresh().await;
    let live = gather(&app, &console).render().map_err(|_| ApiError::Internal)?;
    page(&BackendsPage { frame: console.frame(&app, "Backends", Tab::Backends), live })
}

/// `GET /comfygate/admin/live/backends`: the live part as JSON.
pub async fn live(State(app): State<AppState>, console: Console) -> Result<Response, ApiError> {
    app.scheduler.fresh().await;
    live_json(&gather(&app, &console))
}

/// `POST /comfygate/admin/backends/{name}/drain`: no new job for it; its jobs finish.
pub async fn drain(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    set_drained(app, console, context, name, form, true).await
}

/// `POST /comfygate/admin/backends/{name}/resume`: back in service.
pub async fn resume(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    set_drained(app, console, context, name, form, false).await
}

async fn set_drained(
    app: AppState,
    console: Console,
    context: crate::audit::Context,
    name: String,
    form: FormResult<CsrfForm>,
    drained: bool,
) -> Result<Response, ApiError> {
    let axum::Form(form) = form?;
    console.check_form(&form.csrf)?;
    let Some(backend) = app.scheduler.pool().get(&name).filter(|b| !b.is_retiring()) else {
        return Ok(console.done(
            &app,
            PAGE,
            Flash::error("No such backend in service (a reload may have removed it)."),
        ));
    };
    let event = if drained { "backend_drained" } else { "backend_resumed" };
    let context = console.context(&context);
    app.audit.record(&context, Event::success(event).field("backend", backend.name())).await.map_err(|_| {
        ApiError::Unavailable("the audit log cannot be written: admin actions are refused until it can".to_owned())
    })?;
    // Kept in the store, so the drain survives restarts and every replica applies it.
    let by = console.me().to_owned();
    app.scheduler.store().set_backend_drain(backend.name(), drained, &by, crate::time::now_ms()).await.map_err(
        |e| {
            tracing::warn!(error = %e, "cannot record the backend drain");
            ApiError::Unavailable("the store is unavailable".to_owned())
        },
    )?;
    backend.set_drained(drained);
    app.scheduler.pool().forget_merged();
    app.scheduler.kick();
    let notice = if drained {
        format!(
            "Backend {} drained: it takes no new job until resumed (or the next start); its jobs finish.",
            backend.name()
        )
    } else {
        format!("Backend {} back in service.", backend.name())
    };
    Ok(console.done(&app, PAGE, Flash::notice(notice)))
}

/// Where the backends page is.
const PAGE: &str = "/comfygate/admin/backends";

/// Reads every backend's state now.
pub fn gather(app: &AppState, console: &Console) -> BackendsLive {
    let jobs: HashMap<String, JobSummary> =
        app.scheduler.overview(0).0.into_iter().map(|j| (j.id.clone(), j)).collect();
    let job_ref = |id: &str| {
        jobs.get(id).map(|j| JobRef {
            id: j.id.clone(),
            number: j.number,
            owner: j.username.clone(),
            since: When::at(j.started_at.unwrap_or(j.created_at)),
        })
    };
    let mut versions = BTreeSet::new();
    let backends: Vec<BackendRow> = app
        .scheduler
        .pool()
        .all()
        .iter()
        .map(|b| {
            let caps = b.capabilities();
            let retiring = b.is_retiring();
            let drained = b.is_drained();
            let load = b.load();
            let (state, state_class) = match (load.healthy, retiring, drained) {
                (true, false, false) => ("healthy", "ok"),
                (false, false, false) => ("down", "bad"),
                (true, true, _) => ("retiring", "warn"),
                (false, true, _) => ("retiring, down", "bad"),
                (true, false, true) => ("drained", "warn"),
                (false, false, true) => ("drained, down", "bad"),
            };
            if let Some(v) = &load.comfyui_version {
                versions.insert(v.clone());
            }
            let running = load.running.as_deref().and_then(job_ref);
            let queued = load
                .inflight
                .iter()
                .filter(|id| Some(id.as_str()) != load.running.as_deref())
                .filter(|id| jobs.get(id.as_str()).is_some_and(|j| j.state != JobState::Running))
                .filter_map(|id| job_ref(id))
                .collect();
            BackendRow {
                name_path: utf8_percent_encode(b.name(), NON_ALPHANUMERIC).to_string(),
                drained,
                retiring,
                name: b.name().to_owned(),
                url: b.config.url.clone(),
                labels: b.config.labels.clone(),
                state: state.to_owned(),
                state_class,
                since: load.healthy_since.map(When::at),
                monitored: load.monitored,
                version: load.comfyui_version.clone(),
                devices: load.devices.iter().map(device).collect(),
                slots: format!("{} of {}", load.inflight.len(), b.config.max_inflight),
                running,
                queued,
                last_models: load.last_models.iter().cloned().collect(),
                last_error: load.last_error.clone(),
                last_error_at: load.last_error_at.map(When::at),
                node_classes: caps.as_ref().map(|c| c.classes.len()),
            }
        })
        .collect();
    let versions_differ = (versions.len() > 1).then(|| versions.into_iter().collect::<Vec<_>>().join(", "));
    BackendsLive { backends, csrf: console.csrf.clone(), versions_differ, waiting: app.scheduler.waiting_jobs() }
}

fn device(d: &crate::metrics::Device) -> DeviceRow {
    let used = d.vram_total.saturating_sub(d.vram_free);
    let percent = used.saturating_mul(100).checked_div(d.vram_total).unwrap_or(0).min(100);
    let size = |n: u64| bytesize::ByteSize::b(n).display().iec().to_string();
    DeviceRow { name: d.name.clone(), used: size(used), total: size(d.vram_total), percent }
}
