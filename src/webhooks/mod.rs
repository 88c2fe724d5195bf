//! Webhooks: job events POSTed to a URL the submission (or its token) names, signed in the
//! Standard Webhooks format, from a durable outbox in the store.
//!
//! [`spec`] checks `{url, events}` at submission; [`Webhooks`] (a
//! [`JobObserver`](crate::scheduler::observe::JobObserver)) writes one outbox row per event;
//! [`worker`] delivers them with retries; [`destination`] decides where a delivery may connect;
//! [`signing`] holds the secrets and signatures; [`payload`] the bodies.

pub mod destination;
pub mod payload;
pub mod signing;
pub mod spec;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::response::IntoResponse;
use tokio::sync::{Notify, OnceCell};

use crate::config::{Config, WebhooksConfig};
use crate::scheduler::observe::{JobObserver, JobReport};
use crate::store::{NewDelivery, Store};

pub use signing::KeyError;

/// The webhook service: the observer that fills the outbox and what its worker needs.
pub struct Webhooks {
    store: Arc<dyn Store>,
    config: WebhooksConfig,
    data_dir: PathBuf,
    public_url: Option<String>,
    /// The backends' `host:port`, resolved at delivery time (they are never destinations
    /// unless named exactly).
    backends: Vec<(String, u16)>,
    master: OnceCell<[u8; 32]>,
    wake: Notify,
}

impl Webhooks {
    /// The service for a configuration.
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Self {
        let backends = config
            .backends
            .iter()
            .filter_map(|b| reqwest::Url::parse(&b.url).ok())
            .filter_map(|u| Some((u.host_str()?.trim_matches(['[', ']']).to_owned(), u.port_or_known_default()?)))
            .collect();
        Self {
            store,
            config: config.webhooks.clone(),
            data_dir: config.store.data_dir.clone(),
            public_url: config.server.public_url.clone(),
            backends,
            master: OnceCell::new(),
            wake: Notify::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    /// The signing key of `user_id` (the master key is read or made at first use).
    pub async fn user_key(&self, user_id: i64) -> Result<[u8; 32], KeyError> {
        let dir = self.data_dir.clone();
        let master = self
            .master
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || signing::master_key(&dir)).await.map_err(|_| KeyError::Random)?
            })
            .await?;
        Ok(signing::user_key(master, user_id))
    }

    /// The backends' addresses now.
    async fn backend_addresses(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for (host, port) in &self.backends {
            if let Ok(found) = tokio::net::lookup_host((host.as_str(), *port)).await {
                out.extend(found);
            }
        }
        out
    }

    /// Gives a submission without `extra_data.webhook` its token's default webhook, if the token
    /// has one (checked again when events are recorded; a store error leaves the job without one).
    pub async fn apply_token_default(
        &self,
        token_id: Option<i64>,
        body: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        let Some(token_id) = token_id else { return };
        let given = body.get("extra_data").and_then(|e| e.get("webhook")).is_some_and(|h| !h.is_null());
        if given || self.config.allowed_hosts.is_empty() {
            return;
        }
        let spec = match self.store.token_webhook(token_id).await {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a token's default webhook");
                return;
            }
        };
        let Ok(spec) = serde_json::from_str::<serde_json::Value>(&spec) else { return };
        let extra = body.entry("extra_data").or_insert_with(|| serde_json::json!({}));
        if extra.is_null() {
            *extra = serde_json::json!({});
        }
        if let Some(extra) = extra.as_object_mut() {
            extra.insert("webhook".to_owned(), spec);
        }
    }

    async fn record(&self, report: &JobReport) {
        let Some(hook) = report.webhook.as_deref() else { return };
        let Some(event) = payload::event_of(report) else { return };
        // Checked again: the allowed list may have changed since it was submitted.
        let spec = match spec::parse(hook, &self.config) {
            Ok(spec) => spec,
            Err(why) => {
                tracing::warn!(job = %report.public_id, reason = %why, "webhook no longer allowed; event dropped");
                return;
            }
        };
        if !spec.wants(event) {
            return;
        }
        let now = crate::time::now_ms();
        let body = payload::body(event, report, self.public_url.as_deref(), now);
        let new = NewDelivery {
            message_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            user_id: report.owner,
            job_id: report.public_id.clone(),
            event: event.as_str().to_owned(),
            url: spec.url.to_string(),
            body: body.to_string(),
            created_at: now,
        };
        match self.store.insert_delivery(&new).await {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!(error = %e, job = %report.public_id, "cannot record a webhook delivery"),
        }
    }
}

#[async_trait::async_trait]
impl JobObserver for Webhooks {
    async fn job_started(&self, report: &JobReport) {
        self.record(report).await;
    }

    async fn job_ended(&self, report: &JobReport) {
        self.record(report).await;
    }
}

/// A URL for people: without its query string and fragment (they may hold a receiver's token).
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            if had_query { format!("{u}?…") } else { u.to_string() }
        }
        Err(_) => String::new(),
    }
}

/// `400 invalid_webhook` in ComfyUI's error shape.
pub fn refusal(why: &str) -> axum::response::Response {
    let body = serde_json::json!({
        "error": {"type": "invalid_webhook", "message": "the webhook is refused", "details": why, "extra_info": {}},
        "node_errors": {},
    });
    (http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
