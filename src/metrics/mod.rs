//! The gateway's Prometheus metrics: one [`Metrics`] per gateway (never a process-wide static:
//! tests run many gateways in one process), encoded in the text format by `prometheus-client`.
//!
//! A leaf: it knows no other module of the crate. Counters and histograms move where things
//! happen (the edge, auth, the scheduler); what the gateway already knows as state (backends,
//! queue, sessions, readiness) is handed to [`Metrics::encode`] as a [`Snapshot`] at scrape time.
//! Every label set is bounded: route classes, status codes, reasons, outcomes, configured backend
//! names and the devices they report (capped), never paths, user names or ids.

mod process;
mod sources;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use sources::{FailureSources, SOURCE_WINDOW};

/// Every metric name starts with this (and `_`).
pub const PREFIX: &str = "comfygate";

/// The `Content-Type` of a scrape (the OpenMetrics text `prometheus-client` writes, which
/// Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most devices one backend may report (more are not exported: a backend must not be able to
/// grow the label sets without bound).
pub const MAX_DEVICES: usize = 16;

/// Longest device name kept as a label value.
const MAX_DEVICE_NAME: usize = 64;

/// Most `models` label values of `queue_waiting_jobs` (the sets with the most waiting jobs);
/// the jobs of any other set are counted under [`OTHER_MODELS`].
pub const MAX_MODEL_SETS: usize = 32;

/// The `models` label of the waiting jobs past [`MAX_MODEL_SETS`].
pub const OTHER_MODELS: &str = "(other)";

/// Longest `models` label value kept (longer sets count under [`OTHER_MODELS`]).
const MAX_MODELS_LABEL: usize = 512;

/// Why a scrape could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the metrics")]
pub struct EncodeError;

/// What kind of request it was: a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// ComfyUI's page and static files (policy: `Page`).
    Page,
    /// ComfyUI routes open to users (policy: `User`).
    User,
    /// ComfyUI routes for admins only (policy: `Admin`).
    Admin,
    /// A file name ComfyUI would refuse (policy: `BadName`), or a path that cannot be normalised.
    BadName,
    /// The client WebSocket (`/ws`).
    Ws,
    /// The login and logout pages.
    Login,
    /// The gateway's own API and account pages (`/comfygate/...`).
    Api,
    /// Health and readiness probes.
    Health,
    /// `/metrics`.
    Metrics,
    /// Anything else.
    Other,
}

impl RequestClass {
    /// Every class, for documentation and tests.
    pub const ALL: [RequestClass; 10] = [
        Self::Page,
        Self::User,
        Self::Admin,
        Self::BadName,
        Self::Ws,
        Self::Login,
        Self::Api,
        Self::Health,
        Self::Metrics,
        Self::Other,
    ];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Page => "page",
            Self::User => "user",
            Self::Admin => "admin",
            Self::BadName => "bad_name",
            Self::Ws => "ws",
            Self::Login => "login",
            Self::Api => "api",
            Self::Health => "health",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for RequestClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// How a job ended, as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    /// It ran to its end.
    Success,
    /// ComfyUI reported an error, or refused it, or the gateway gave up dispatching it.
    Error,
    /// Deleted, interrupted or cancelled (by its owner, an admin, or the owner's revocation).
    Interrupted,
    /// Its backend went away (or forgot it) while it ran.
    Lost,
}

impl JobOutcome {
    /// Every outcome.
    pub const ALL: [JobOutcome; 4] = [Self::Success, Self::Error, Self::Interrupted, Self::Lost];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Interrupted => "interrupted",
            Self::Lost => "lost",
        }
    }
}

impl EncodeLabelValue for JobOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Reasons of `auth_failures_total` that are not the gateway's 401 codes.
pub mod reason {
    /// A login attempt refused by the throttle (lockout) before its password was checked.
    pub const LOGIN_THROTTLED: &str = "login_throttled";
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    class: RequestClass,
    code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabel {
    class: RequestClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: JobOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelsLabel {
    models: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EntryLabel {
    entry: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeviceLabels {
    backend: String,
    device: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// What the gateway knows at scrape time, read by the caller from its own state.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Sessions neither revoked, expired nor idle past their limit; `None` when the store did
    /// not answer (exported as 0; `ready` is 0 then too).
    pub sessions_active: Option<i64>,
    /// Jobs waiting in the gateway's queue, by the model files they need (sorted file names
    /// joined with `,`; `""` for jobs that need none or whose needs are not known yet).
    pub queue_waiting: Vec<(String, usize)>,
    /// Backends the queued and running work needs to drain within `[discovery] scale_target`.
    pub desired_backends: usize,
    /// How many workers each `discover` entry found last, by entry name.
    pub discovered: Vec<(String, usize)>,
    /// Waiting jobs that no backend in service can run.
    pub queue_unrunnable: usize,
    /// Whether the gateway is ready to serve (the facts `/readyz` uses).
    pub ready: bool,
    /// Every configured backend.
    pub backends: Vec<BackendSnapshot>,
}

/// One backend at scrape time.
#[derive(Debug, Default, Clone)]
pub struct BackendSnapshot {
    /// Its configured name.
    pub name: String,
    /// Whether it is in service.
    pub up: bool,
    /// Jobs handed to it and not finished.
    pub inflight: usize,
    /// The devices its last `/system_stats` reported (only exported while it is up).
    pub devices: Vec<Device>,
}

/// One device of a backend, from `/system_stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its name as ComfyUI reports it.
    pub name: String,
    /// Its memory in bytes.
    pub vram_total: u64,
    /// Its free memory in bytes.
    pub vram_free: u64,
}

/// The metrics of one gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<ClassLabel, Histogram, fn() -> Histogram>,
    auth_failures: Family<ReasonLabel, Counter>,
    sources: FailureSources,
    top_source: Gauge,
    sessions_active: Gauge,
    websockets: Gauge,
    backend_up: Family<BackendLabel, Gauge>,
    backend_inflight: Family<BackendLabel, Gauge>,
    vram_total: Family<DeviceLabels, Gauge>,
    vram_free: Family<DeviceLabels, Gauge>,
    model_loads: Family<BackendLabel, Counter>,
    queue_waiting: Family<ModelsLabel, Gauge>,
    desired_backends: Gauge,
    discovered: Family<EntryLabel, Gauge>,
    discovery_failures: Family<EntryLabel, Counter>,
    queue_unrunnable: Gauge,
    jobs_submitted: Counter,
    jobs_finished: Family<OutcomeLabel, Counter>,
    job_wait: Histogram,
    job_run: Histogram,
    ready: Gauge,
    /// One scrape at a time: a scrape sets the gauges of its snapshot, then encodes them. It
    /// holds the backends the previous scrape showed (whose counters go when they leave).
    scraping: Mutex<Vec<String>>,
}

fn request_histogram() -> Histogram {
    // 1 ms … ~33 s: proxied requests, logins (argon2id), uploads.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16))
}

/// Buckets for GPU jobs: 0.1 s … 1 h.
const JOB_BUCKETS: [f64; 14] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0];

/// The 401 codes of the gateway's authentication (`AuthFailure::code`), listed so each series
/// exists from the start (an alert on a rate needs the zero).
pub const AUTH_FAILURE_CODES: [&str; 9] = [
    "missing_credentials",
    "malformed_credentials",
    "unknown_token",
    "token_revoked",
    "token_expired",
    "session_ended",
    "session_expired",
    "user_disabled",
    "invalid_login",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            auth_failures: Family::default(),
            sources: FailureSources::default(),
            top_source: Gauge::default(),
            sessions_active: Gauge::default(),
            websockets: Gauge::default(),
            backend_up: Family::default(),
            backend_inflight: Family::default(),
            vram_total: Family::default(),
            vram_free: Family::default(),
            model_loads: Family::default(),
            queue_waiting: Family::default(),
            desired_backends: Gauge::default(),
            discovered: Family::default(),
            discovery_failures: Family::default(),
            queue_unrunnable: Gauge::default(),
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            job_wait: Histogram::new(JOB_BUCKETS),
            job_run: Histogram::new(JOB_BUCKETS),
            ready: Gauge::default(),
            scraping: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("http_requests", "HTTP requests answered, by route class and status code", m.requests.clone());
        r.register(
            "http_request_duration_seconds",
            "Time to answer a request (until the response head), by route class",
            m.request_duration.clone(),
        );
        r.register("auth_failures", "Refused authentications and logins, by reason", m.auth_failures.clone());
        r.register(
            "auth_failures_top_source",
            "Most authentication failures from one client address prefix (IPv4 /24, IPv6 /64) in the last 5 minutes",
            m.top_source.clone(),
        );
        r.register("sessions_active", "Login sessions neither revoked, expired nor idle", m.sessions_active.clone());
        r.register("websocket_connections", "Open client WebSockets", m.websockets.clone());
        r.register("backend_up", "Whether the backend is in service (1) or not (0)", m.backend_up.clone());
        r.register("backend_inflight_jobs", "Jobs handed to the backend and not finished", m.backend_inflight.clone());
        r.register("backend_vram_total_bytes", "Device memory, from /system_stats", m.vram_total.clone());
        r.register("backend_vram_free_bytes", "Free device memory, from /system_stats", m.vram_free.clone());
        r.register(
            "backend_model_loads",
            "Jobs that started on the backend with other models than its previous job",
            m.model_loads.clone(),
        );
        r.register(
            "queue_waiting_jobs",
            "Jobs waiting in the gateway's queue, by the model files they need (sorted, comma-joined; \"\" for none)",
            m.queue_waiting.clone(),
        );
        r.register(
            "desired_backends",
            "Backends needed to drain the queued and running work within [discovery] scale_target (what an autoscaler \
             should aim for)",
            m.desired_backends.clone(),
        );
        r.register(
            "discovered_backends",
            "Workers a [[backends]] discover entry found at its last lookup",
            m.discovered.clone(),
        );
        r.register(
            "discovery_lookup_failures",
            "DNS lookups of a discover entry that failed (the workers last found stayed)",
            m.discovery_failures.clone(),
        );
        r.register(
            "queue_unrunnable_jobs",
            "Waiting jobs that no backend in service can run (none up, or none with their nodes, models or input files)",
            m.queue_unrunnable.clone(),
        );
        r.register("jobs_submitted", "Jobs accepted into the queue", m.jobs_submitted.clone());
        r.register("jobs_finished", "Jobs ended, by outcome", m.jobs_finished.clone());
        r.register("job_wait_seconds", "Time from submission to the start of the run", m.job_wait.clone());
        r.register("job_run_seconds", "Time from the start of the run to its end", m.job_run.clone());
        r.register("ready", "Whether the gateway is ready (the facts /readyz uses): 1 or 0", m.ready.clone());
        let build: Family<VersionLabel, Gauge> = Family::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        r.register("build_info", "The running comfygate version (always 1)", build);
        r.register_collector(Box::new(process::ProcessCollector));
        for outcome in JobOutcome::ALL {
            m.jobs_finished.get_or_create_owned(&OutcomeLabel { outcome });
        }
        for reason in AUTH_FAILURE_CODES.into_iter().chain([reason::LOGIN_THROTTLED]) {
            m.auth_failures.get_or_create_owned(&ReasonLabel { reason });
        }
        Self { registry, ..m }
    }

    /// Counts an answered request of `class` with `status`, which took `elapsed`.
    pub fn request(&self, class: RequestClass, status: http::StatusCode, elapsed: Duration) {
        // Codes are finite, but only the registered ones are kept apart: others count as 0.
        let code = if status.canonical_reason().is_some() { status.as_u16() } else { 0 };
        self.requests.get_or_create(&RequestLabels { class, code }).inc();
        self.request_duration.get_or_create(&ClassLabel { class }).observe(elapsed.as_secs_f64());
    }

    /// Counts a refused authentication or login from `client`; `reason` is one of the
    /// [`AUTH_FAILURE_CODES`] or [`reason`]s (anything else is counted as `other`).
    pub fn auth_failure(&self, reason: &'static str, client: IpAddr) {
        let known = AUTH_FAILURE_CODES.contains(&reason) || reason == reason::LOGIN_THROTTLED;
        let reason = if known { reason } else { "other" };
        self.auth_failures.get_or_create(&ReasonLabel { reason }).inc();
        self.sources.record(client, Instant::now());
    }

    /// Counts an open client WebSocket until the returned guard is dropped.
    pub fn websocket_opened(&self) -> WebSocketGuard {
        self.websockets.inc();
        WebSocketGuard { gauge: self.websockets.clone() }
    }

    /// Counts a job accepted into the queue.
    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }

    /// A job started running after waiting `waited` since its submission.
    pub fn job_started(&self, waited: Duration) {
        self.job_wait.observe(waited.as_secs_f64());
    }

    /// A job ended with `outcome`, after running for `ran` (when it ran).
    pub fn job_finished(&self, outcome: JobOutcome, ran: Option<Duration>) {
        self.jobs_finished.get_or_create(&OutcomeLabel { outcome }).inc();
        if let Some(ran) = ran {
            self.job_run.observe(ran.as_secs_f64());
        }
    }

    /// A job started on `backend` with other models than the backend's previous job.
    pub fn model_load(&self, backend: &str) {
        self.model_loads.get_or_create(&BackendLabel { backend: backend.to_owned() }).inc();
    }

    /// A DNS lookup of the `discover` entry `entry` failed.
    pub fn discovery_failed(&self, entry: &str) {
        self.discovery_failures.get_or_create(&EntryLabel { entry: entry.to_owned() }).inc();
    }

    /// The text of a scrape: the counters as they are, the gauges from `snapshot`.
    pub fn encode(&self, snapshot: &Snapshot) -> Result<String, EncodeError> {
        let mut shown = self.scraping.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.apply(snapshot, &mut shown);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).map_err(|_| EncodeError)?;
        Ok(text)
    }

    fn apply(&self, s: &Snapshot, shown: &mut Vec<String>) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.top_source.set(i64::from(self.sources.top(Instant::now())));
        self.sessions_active.set(s.sessions_active.unwrap_or(0));
        self.queue_waiting.clear();
        // The "" series is always there (an alert on the sum needs the zero).
        for (models, n) in model_sets(&s.queue_waiting) {
            self.queue_waiting.get_or_create(&ModelsLabel { models }).set(count(n));
        }
        self.desired_backends.set(count(s.desired_backends));
        self.discovered.clear();
        for (entry, n) in &s.discovered {
            let entry = EntryLabel { entry: entry.clone() };
            self.discovered.get_or_create(&entry).set(count(*n));
            // From zero, for `increase()` in alerts.
            self.discovery_failures.get_or_create_owned(&entry);
        }
        self.queue_unrunnable.set(count(s.queue_unrunnable));
        self.ready.set(i64::from(s.ready));
        // Backends come and go (reloads, DNS discovery), devices with the backend's answers:
        // the gauges are rebuilt each time, and a departed backend's counter goes with it.
        self.vram_total.clear();
        self.vram_free.clear();
        self.backend_up.clear();
        self.backend_inflight.clear();
        for gone in shown.iter().filter(|name| !s.backends.iter().any(|b| b.name == **name)) {
            self.model_loads.remove(&BackendLabel { backend: gone.clone() });
        }
        *shown = s.backends.iter().map(|b| b.name.clone()).collect();
        for b in &s.backends {
            let backend = BackendLabel { backend: b.name.clone() };
            self.backend_up.get_or_create(&backend).set(i64::from(b.up));
            self.backend_inflight.get_or_create(&backend).set(i64::try_from(b.inflight).unwrap_or(i64::MAX));
            self.model_loads.get_or_create_owned(&backend);
            if !b.up {
                continue;
            }
            for d in b.devices.iter().take(MAX_DEVICES) {
                let labels = DeviceLabels { backend: b.name.clone(), device: device_label(&d.name) };
                self.vram_total.get_or_create(&labels).set(i64::try_from(d.vram_total).unwrap_or(i64::MAX));
                self.vram_free.get_or_create(&labels).set(i64::try_from(d.vram_free).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The `models` label values and their counts: `""` (no models), the [`MAX_MODEL_SETS`] sets
/// with the most jobs, and the rest (and over-long values) summed under [`OTHER_MODELS`].
fn model_sets(waiting: &[(String, usize)]) -> Vec<(String, usize)> {
    let mut sets: Vec<(String, usize)> = Vec::new();
    let (mut none, mut other) = (0, 0);
    for (models, n) in waiting {
        if models.is_empty() {
            none += n;
        } else if models.len() > MAX_MODELS_LABEL || models.chars().any(char::is_control) {
            other += n;
        } else if let Some(known) = sets.iter_mut().find(|(m, _)| m == models) {
            known.1 += n;
        } else {
            sets.push((models.clone(), *n));
        }
    }
    sets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if sets.len() > MAX_MODEL_SETS {
        other += sets.split_off(MAX_MODEL_SETS).iter().map(|(_, n)| n).sum::<usize>();
    }
    if other > 0 {
        sets.push((OTHER_MODELS.to_owned(), other));
    }
    sets.push((String::new(), none));
    sets
}

/// A device name as a label value: printable, at most [`MAX_DEVICE_NAME`] characters.
fn device_label(name: &str) -> String {
    let label: String = name.chars().filter(|c| !c.is_control()).take(MAX_DEVICE_NAME).collect();
    if label.is_empty() { "unnamed".to_owned() } else { label }
}

/// Keeps one WebSocket counted while it is held.
#[derive(Debug)]
pub struct WebSocketGuard {
    gauge: Gauge,
}

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        m.encode(&Snapshot::default()).unwrap_or_default()
    }

    #[test]
    fn every_name_is_prefixed_and_counters_move() {
        let m = Metrics::new();
        m.request(RequestClass::User, http::StatusCode::OK, Duration::from_millis(3));
        m.auth_failure("unknown_token", IpAddr::from([10, 0, 0, 1]));
        m.job_submitted();
        m.job_finished(JobOutcome::Lost, Some(Duration::from_secs(2)));
        let text = scrape(&m);
        assert!(text.contains("comfygate_http_requests_total{class=\"user\",code=\"200\"} 1"), "{text}");
        assert!(text.contains("comfygate_auth_failures_total{reason=\"unknown_token\"} 1"), "{text}");
        assert!(text.contains("comfygate_auth_failures_top_source 1"), "{text}");
        assert!(text.contains("comfygate_jobs_finished_total{outcome=\"lost\"} 1"), "{text}");
        assert!(text.contains("comfygate_jobs_finished_total{outcome=\"success\"} 0"), "{text}");
        assert!(text.contains("comfygate_job_run_seconds_count 1"), "{text}");
        assert!(text.contains("comfygate_build_info{version=\""), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.starts_with("comfygate_"), "{line}");
        }
    }

    #[test]
    fn unknown_reasons_and_codes_are_grouped() {
        let m = Metrics::new();
        m.auth_failure("made up", IpAddr::from([10, 0, 0, 1]));
        let odd = http::StatusCode::from_u16(599).unwrap_or(http::StatusCode::OK);
        m.request(RequestClass::Other, odd, Duration::ZERO);
        let text = scrape(&m);
        assert!(text.contains("reason=\"other\"} 1"), "{text}");
        assert!(text.contains("comfygate_http_requests_total{class=\"other\",code=\"0\"} 1"), "{text}");
    }

    #[test]
    fn websocket_gauge_follows_its_guards() {
        let m = Metrics::new();
        let a = m.websocket_opened();
        let b = m.websocket_opened();
        assert!(scrape(&m).contains("comfygate_websocket_connections 2"));
        drop(a);
        drop(b);
        assert!(scrape(&m).contains("comfygate_websocket_connections 0"));
    }

    #[test]
    fn devices_are_exported_only_while_the_backend_is_up_and_capped() {
        let m = Metrics::new();
        let devices =
            (0..40).map(|i| Device { name: format!("cuda:{i}\n"), vram_total: 100, vram_free: 40 }).collect::<Vec<_>>();
        let mut snap = Snapshot {
            backends: vec![BackendSnapshot { name: "gpu0".into(), up: true, inflight: 2, devices }],
            ..Snapshot::default()
        };
        let text = m.encode(&snap).unwrap_or_default();
        assert_eq!(text.matches("comfygate_backend_vram_total_bytes{").count(), MAX_DEVICES, "{text}");
        assert!(text.contains("comfygate_backend_vram_free_bytes{backend=\"gpu0\",device=\"cuda:0\"} 40"), "{text}");
        assert!(text.contains("comfygate_backend_up{backend=\"gpu0\"} 1"), "{text}");
        assert!(text.contains("comfygate_backend_inflight_jobs{backend=\"gpu0\"} 2"), "{text}");
        assert!(text.contains("comfygate_backend_model_loads_total{backend=\"gpu0\"} 0"), "{text}");
        snap.backends[0].up = false;
        let text = m.encode(&snap).unwrap_or_default();
        assert!(!text.contains("comfygate_backend_vram_total_bytes{"), "{text}");
        assert!(text.contains("comfygate_backend_up{backend=\"gpu0\"} 0"), "{text}");
    }

    #[test]
    fn waiting_jobs_are_counted_by_model_set_capped_and_departed_backends_vanish() {
        let m = Metrics::new();
        let text = scrape(&m);
        assert!(text.contains("comfygate_queue_waiting_jobs{models=\"\"} 0"), "{text}");
        assert!(text.contains("comfygate_desired_backends 0"), "{text}");
        let mut waiting: Vec<(String, usize)> = (0..40).map(|i| (format!("m{i:02}.safetensors"), 1)).collect();
        waiting.push(("a.safetensors,b.safetensors".to_owned(), 5));
        waiting.push((String::new(), 2));
        let backend = |name: &str| BackendSnapshot { name: name.into(), up: true, ..BackendSnapshot::default() };
        let snap = Snapshot {
            queue_waiting: waiting,
            desired_backends: 3,
            discovered: vec![("workers".into(), 2)],
            backends: vec![backend("workers-10-0-0-1"), backend("workers-10-0-0-2")],
            ..Snapshot::default()
        };
        m.model_load("workers-10-0-0-2");
        let text = m.encode(&snap).unwrap_or_default();
        assert!(text.contains("comfygate_queue_waiting_jobs{models=\"a.safetensors,b.safetensors\"} 5"), "{text}");
        assert!(text.contains("comfygate_queue_waiting_jobs{models=\"\"} 2"), "{text}");
        assert_eq!(text.matches("comfygate_queue_waiting_jobs{").count(), MAX_MODEL_SETS + 2, "{text}");
        // Past a,b (5 jobs) and the first 31 others by name, 9 sets of one job are "(other)".
        assert!(text.contains("comfygate_queue_waiting_jobs{models=\"(other)\"} 9"), "{text}");
        assert!(text.contains("comfygate_queue_waiting_jobs{models=\"m30.safetensors\"} 1"), "{text}");
        assert!(!text.contains("m31.safetensors"), "{text}");
        assert!(text.contains("comfygate_desired_backends 3"), "{text}");
        assert!(text.contains("comfygate_discovered_backends{entry=\"workers\"} 2"), "{text}");
        assert!(text.contains("comfygate_discovery_lookup_failures_total{entry=\"workers\"} 0"), "{text}");
        assert!(text.contains("comfygate_backend_model_loads_total{backend=\"workers-10-0-0-2\"} 1"), "{text}");

        let snap = Snapshot { backends: vec![backend("workers-10-0-0-1")], ..Snapshot::default() };
        let text = m.encode(&snap).unwrap_or_default();
        assert!(!text.contains("workers-10-0-0-2"), "a backend that left has no series: {text}");
        assert!(text.contains("comfygate_backend_up{backend=\"workers-10-0-0-1\"} 1"), "{text}");
        assert!(!text.contains("a.safetensors"), "{text}");
    }

    #[test]
    fn process_figures_are_read_from_proc() {
        let text = scrape(&Metrics::new());
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "comfygate_process_resident_memory_bytes",
                "comfygate_process_open_fds",
                "comfygate_process_cpu_seconds_total",
                "comfygate_process_start_time_seconds",
            ] {
                assert!(text.contains(&format!("\n{name} ")), "{name} missing from {text}");
            }
        }
    }
}
