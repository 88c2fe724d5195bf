//! The ComfyUI backends: configuration, health, capabilities and load.
//!
//! Each backend has its own [`Proxy`]; [`health`] checks it actively (`/system_stats`) and
//! learns passively from failed requests; [`capabilities`] says what it can run; [`monitor`]
//! keeps the gateway's own WebSocket to it, through which job events arrive.

pub mod capabilities;
pub mod health;
pub mod monitor;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::broadcast;

use crate::config::{BackendConfig, Config};
use crate::proxy::{Proxy, ProxyError};
use capabilities::Capabilities;

/// Something changed about a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// It answers again (capabilities refreshed).
    Up(String),
    /// It stopped answering: its jobs must move.
    Down(String),
    /// It has room for another job, or learned new capabilities.
    Changed,
}

/// The live state of one backend.
#[derive(Debug, Default)]
pub struct Load {
    /// Whether it is in service.
    pub healthy: bool,
    /// Failed checks or requests in a row.
    pub failures: u32,
    /// Jobs handed to it and not finished, in dispatch order.
    pub inflight: Vec<String>,
    /// The job it runs now.
    pub running: Option<String>,
    /// The model files of the last job it ran (for checkpoint affinity).
    pub last_models: BTreeSet<String>,
    /// Why it was last taken out.
    pub last_error: Option<String>,
    /// When its monitor socket last said anything.
    pub last_event: Option<std::time::Instant>,
    /// Whether the gateway's monitor socket to it is open (job events reach the gateway only
    /// then).
    pub monitored: bool,
    /// Its devices and their memory, from its last health check (`/system_stats`).
    pub devices: Vec<crate::metrics::Device>,
}

/// One ComfyUI server.
pub struct Backend {
    /// Its configuration.
    pub config: BackendConfig,
    /// Requests to it.
    pub proxy: Proxy,
    /// The `clientId` of the gateway's own WebSocket to it; jobs are dispatched with it.
    pub monitor_id: String,
    load: Mutex<Load>,
    capabilities: RwLock<Option<Arc<Capabilities>>>,
}

impl Backend {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its live state (held briefly; never across an await).
    pub fn load(&self) -> MutexGuard<'_, Load> {
        self.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether it is in service.
    pub fn is_healthy(&self) -> bool {
        self.load().healthy
    }

    /// Whether it can take another job now: in service, its events reach the gateway, and
    /// a slot is free.
    pub fn has_room(&self) -> bool {
        let load = self.load();
        load.healthy && load.monitored && load.inflight.len() < self.config.max_inflight
    }

    /// What it can run, once known.
    pub fn capabilities(&self) -> Option<Arc<Capabilities>> {
        self.capabilities.read().ok().and_then(|c| c.clone())
    }

    fn set_capabilities(&self, caps: Capabilities) {
        if let Ok(mut slot) = self.capabilities.write() {
            *slot = Some(Arc::new(caps));
        }
    }
}

/// Every backend of the gateway.
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    events: broadcast::Sender<BackendEvent>,
    /// Merged capabilities of the healthy backends, and of every backend ever seen.
    merged: RwLock<[Option<Arc<Capabilities>>; 2]>,
}

/// Whose capabilities to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Backends in service now (what `/object_info` shows).
    Healthy,
    /// Every backend whose capabilities were ever read (what a job may wait for).
    Any,
}

impl Pool {
    /// Builds the backends of `config`; `instance` makes the gateway's WebSocket ids unique.
    pub fn new(config: &Config, instance: &str) -> Result<Self, ProxyError> {
        let max_body = config.server.max_request_body.as_u64();
        let backends = config
            .backends
            .iter()
            .map(|b| {
                Ok(Arc::new(Backend {
                    proxy: Proxy::new(b, max_body, &config.auth)?,
                    monitor_id: format!("comfygate-{instance}-{}", b.name),
                    config: b.clone(),
                    // Optimistic until the first check: a gateway starting next to its ComfyUI
                    // serves at once.
                    load: Mutex::new(Load { healthy: true, ..Load::default() }),
                    capabilities: RwLock::new(None),
                }))
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        Ok(Self { backends, events: broadcast::Sender::new(1024), merged: RwLock::new([None, None]) })
    }

    /// Every backend, in configuration order.
    pub fn all(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// A backend by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// Backends in service.
    pub fn healthy(&self) -> Vec<Arc<Backend>> {
        self.backends.iter().filter(|b| b.is_healthy()).cloned().collect()
    }

    /// The backend for requests that are not about a job (the web app, settings, user data):
    /// the first healthy one, else the first configured.
    pub fn primary(&self) -> Option<Arc<Backend>> {
        self.backends.iter().find(|b| b.is_healthy()).or(self.backends.first()).cloned()
    }

    /// Subscribes to backend events.
    pub fn subscribe(&self) -> broadcast::Receiver<BackendEvent> {
        self.events.subscribe()
    }

    /// Announces an event.
    pub fn announce(&self, event: BackendEvent) {
        if matches!(event, BackendEvent::Up(_) | BackendEvent::Down(_)) {
            self.forget_merged();
        }
        let _ = self.events.send(event);
    }

    /// Whether every healthy backend has reported its capabilities (so a workflow none of them
    /// can run is really unrunnable).
    pub fn capabilities_complete(&self) -> bool {
        let healthy = self.healthy();
        !healthy.is_empty() && healthy.iter().all(|b| b.capabilities().is_some())
    }

    /// What the backends in `reach` can run together (model lists merged), once any is known.
    pub fn known_capabilities(&self, reach: Reach) -> Option<Arc<Capabilities>> {
        let index = reach as usize;
        if let Some(merged) = self.merged.read().ok().and_then(|m| m[index].clone()) {
            return Some(merged);
        }
        let caps: Vec<Arc<Capabilities>> = self
            .backends
            .iter()
            .filter(|b| reach == Reach::Any || b.is_healthy())
            .filter_map(|b| b.capabilities())
            .collect();
        if caps.is_empty() {
            return None;
        }
        let raw = capabilities::merge_object_info(caps.iter().map(|c| &c.raw));
        let merged = Arc::new(Capabilities::from_object_info(raw));
        if let Ok(mut slot) = self.merged.write() {
            slot[index] = Some(merged.clone());
        }
        Some(merged)
    }

    fn forget_merged(&self) {
        if let Ok(mut slot) = self.merged.write() {
            *slot = [None, None];
        }
    }

    /// Counts a failed request to `backend` (passive health check).
    pub fn request_failed(&self, backend: &Backend, error: &str, unhealthy_after: u32) {
        let went_down = {
            let mut load = backend.load();
            load.failures = load.failures.saturating_add(1);
            load.last_error = Some(error.to_owned());
            let down = load.healthy && load.failures >= unhealthy_after;
            if down {
                load.healthy = false;
            }
            down
        };
        if went_down {
            tracing::warn!(backend = backend.name(), error, "backend taken out of service");
            self.announce(BackendEvent::Down(backend.name().to_owned()));
        }
    }
}
