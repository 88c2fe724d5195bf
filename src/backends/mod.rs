//! The ComfyUI backends: configuration, health, capabilities and load.
//!
//! Each backend has its own [`Proxy`]; [`health`] checks it actively (`/system_stats`) and
//! learns passively from failed requests; [`capabilities`] says what it can run; [`monitor`]
//! keeps the gateway's own WebSocket to it, through which job events arrive; [`discovery`]
//! finds the backends of `discover` entries in DNS.

pub mod capabilities;
pub mod discovery;
pub mod health;
pub mod monitor;
pub mod watchers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::{broadcast, watch};

use crate::config::{AuthConfig, BackendConfig, Config};
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
    /// The ComfyUI version its last health check reported (`system.comfyui_version`).
    pub comfyui_version: Option<String>,
    /// When (unix ms) it last went in or out of service; `None` before any change.
    pub healthy_since: Option<i64>,
    /// When (unix ms) `last_error` happened.
    pub last_error_at: Option<i64>,
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
    /// Set when a reload removed or changed it: no new jobs; it leaves once its jobs are done.
    retiring: AtomicBool,
    /// What takes its place once it has left (its configuration changed).
    replacement: Mutex<Option<Arc<Backend>>>,
    /// Ends its health checks and monitor socket once it has left the pool.
    gone: watch::Sender<bool>,
    /// Drained by an admin (maintenance): it keeps its jobs and takes no new one until resumed.
    drained: AtomicBool,
}

impl Backend {
    fn new(config: &BackendConfig, max_body: u64, auth: &AuthConfig, instance: &str) -> Result<Self, ProxyError> {
        Ok(Self {
            proxy: Proxy::new(config, max_body, auth)?,
            monitor_id: format!("comfygate-{instance}-{}", config.name),
            config: config.clone(),
            // Optimistic until the first check: a gateway starting next to its ComfyUI serves
            // at once.
            load: Mutex::new(Load { healthy: true, ..Load::default() }),
            capabilities: RwLock::new(None),
            retiring: AtomicBool::new(false),
            replacement: Mutex::new(None),
            gone: watch::Sender::new(false),
            drained: AtomicBool::new(false),
        })
    }

    /// Whether a reload took it out: it finishes its jobs and takes no new ones.
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    /// Whether it takes new work: healthy, neither retiring nor drained.
    pub fn in_service(&self) -> bool {
        !self.is_retiring() && !self.is_drained() && self.is_healthy()
    }

    /// Whether an admin drained it (see [`set_drained`](Self::set_drained)).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// Drains it (no new job; those it has finish) or puts it back; whether that changed
    /// anything. The store keeps drains (`backend_drains`); `usage::drain` applies them here.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::SeqCst) != drained
    }

    /// Resolves once it has left the pool.
    pub async fn gone(&self) {
        let mut gone = self.gone.subscribe();
        let _ = gone.wait_for(|g| *g).await;
    }

    fn reinstate(&self) {
        *self.replacement.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.retiring.store(false, Ordering::SeqCst);
    }

    fn retire(&self, replacement: Option<Arc<Backend>>) {
        *self.replacement.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = replacement;
        self.retiring.store(true, Ordering::SeqCst);
    }

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
        if self.is_retiring() || self.is_drained() {
            return false;
        }
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
    backends: RwLock<Arc<[Arc<Backend>]>>,
    /// What the backends are made from; held while the list changes (one change at a time).
    plan: Mutex<Plan>,
    events: broadcast::Sender<BackendEvent>,
    /// Merged capabilities of the healthy backends, and of every backend ever seen.
    merged: RwLock<[Option<Arc<Capabilities>>; 2]>,
    /// What new backends are built with (a reload changes backends, not these).
    max_body: u64,
    auth: AuthConfig,
    instance: String,
}

/// What the pool's backends are made from.
#[derive(Default)]
struct Plan {
    /// The `[[backends]]` entries in force, `discover` entries included.
    configured: Vec<BackendConfig>,
    /// The addresses each `discover` entry found last, by entry name.
    found: BTreeMap<String, Vec<IpAddr>>,
}

/// Whose capabilities to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Backends in service now (what `/object_info` shows).
    Healthy,
    /// Every backend whose capabilities were ever read (what a job may wait for).
    Any,
}

/// What [`Pool::apply`] changed.
#[derive(Default)]
pub struct Changes {
    /// New backends, in service at once (their watchers must be started).
    pub added: Vec<Arc<Backend>>,
    /// Backends no longer configured: drained, then gone.
    pub removed: Vec<String>,
    /// Backends whose settings changed: drained, then replaced.
    pub changed: Vec<String>,
    /// Backends a reload had taken out, configured again as they were: back in service.
    pub kept: Vec<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.kept.is_empty()
    }
}

impl Pool {
    /// Builds the backends of `config`; `instance` makes the gateway's WebSocket ids unique.
    pub fn new(config: &Config, instance: &str) -> Result<Self, ProxyError> {
        let max_body = config.server.max_request_body.as_u64();
        // `discover` entries have found nothing yet: their backends come with the first lookup.
        let backends = discovery::expand(&config.backends, &BTreeMap::new())
            .iter()
            .map(|b| Backend::new(b, max_body, &config.auth, instance).map(Arc::new))
            .collect::<Result<Vec<_>, ProxyError>>()?;
        Ok(Self {
            backends: RwLock::new(backends.into()),
            plan: Mutex::new(Plan { configured: config.backends.clone(), found: BTreeMap::new() }),
            events: broadcast::Sender::new(1024),
            merged: RwLock::new([None, None]),
            max_body,
            auth: config.auth.clone(),
            instance: instance.to_owned(),
        })
    }

    /// Every backend (those retiring last), in configuration order.
    pub fn all(&self) -> Arc<[Arc<Backend>]> {
        self.backends.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A backend by name.
    pub fn get(&self, name: &str) -> Option<Arc<Backend>> {
        self.all().iter().find(|b| b.name() == name).cloned()
    }

    /// Backends in service (healthy and not retiring).
    pub fn healthy(&self) -> Vec<Arc<Backend>> {
        self.all().iter().filter(|b| b.in_service()).cloned().collect()
    }

    /// The backend for requests that are not about a job (the web app, settings, user data):
    /// the first in service, else the first configured.
    pub fn primary(&self) -> Option<Arc<Backend>> {
        let all = self.all();
        all.iter().find(|b| b.in_service()).or_else(|| all.iter().find(|b| !b.is_retiring())).or(all.first()).cloned()
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the pool match the `[[backends]]` entries `configs` (a reload), `discover`
    /// entries standing for what they found last: new backends join at once; removed and
    /// changed ones take no new jobs and leave (changed ones replaced) once their jobs are
    /// done, see [`sweep`](Self::sweep). Nothing changes when any new backend is unusable.
    pub fn apply(&self, configs: &[BackendConfig]) -> Result<Changes, ProxyError> {
        let mut plan = self.plan();
        let changes = self.make(&discovery::expand(configs, &plan.found))?;
        plan.configured = configs.to_vec();
        plan.found.retain(|name, _| configs.iter().any(|c| c.name == *name && c.discover.is_some()));
        Ok(changes)
    }

    /// The `discover` entries in force.
    pub fn discover_entries(&self) -> Vec<BackendConfig> {
        self.plan().configured.iter().filter(|c| c.discover.is_some()).cloned().collect()
    }

    /// The addresses the `discover` entry `entry` found last; `None` before its first lookup.
    pub fn discovered(&self, entry: &str) -> Option<Vec<IpAddr>> {
        self.plan().found.get(entry).cloned()
    }

    /// How many workers each `discover` entry found last, by entry name (0 before any lookup).
    pub fn discovered_counts(&self) -> Vec<(String, usize)> {
        let plan = self.plan();
        let entries = plan.configured.iter().filter(|c| c.discover.is_some());
        entries.map(|c| (c.name.clone(), plan.found.get(&c.name).map_or(0, Vec::len))).collect()
    }

    /// Puts in force that the `discover` entry `entry` finds `found` (see [`discovery`]): as
    /// [`apply`](Self::apply) with the same entries. Nothing changes for an entry no longer
    /// configured.
    pub fn set_discovered(&self, entry: &str, found: Vec<IpAddr>) -> Result<Changes, ProxyError> {
        let mut plan = self.plan();
        let configured = plan.configured.iter().any(|c| c.name == entry && c.discover.is_some());
        if !configured || plan.found.get(entry) == Some(&found) {
            return Ok(Changes::default());
        }
        let mut next = plan.found.clone();
        next.insert(entry.to_owned(), found);
        let changes = self.make(&discovery::expand(&plan.configured, &next))?;
        plan.found = next;
        Ok(changes)
    }

    /// Makes the backends `configs` (every entry expanded); the caller holds the plan.
    fn make(&self, configs: &[BackendConfig]) -> Result<Changes, ProxyError> {
        let current = self.all();
        let built = |c: &BackendConfig| Backend::new(c, self.max_body, &self.auth, &self.instance).map(Arc::new);
        // Everything new is built first: an unusable URL leaves the pool as it was.
        let mut plan = Vec::new();
        for config in configs {
            let old = current.iter().find(|b| b.name() == config.name);
            let fresh = match old {
                Some(old) if old.config == *config => None,
                _ => Some(built(config)?),
            };
            plan.push((old.cloned(), fresh));
        }
        let mut changes = Changes::default();
        let mut list: Vec<Arc<Backend>> = Vec::new();
        for (old, fresh) in plan {
            match (old, fresh) {
                (Some(old), None) => {
                    if old.is_retiring() {
                        old.reinstate();
                        changes.kept.push(old.name().to_owned());
                    }
                    list.push(old);
                }
                (Some(old), Some(fresh)) => {
                    changes.changed.push(old.name().to_owned());
                    old.retire(Some(fresh));
                    list.push(old);
                }
                (None, Some(fresh)) => {
                    changes.added.push(fresh.clone());
                    list.push(fresh);
                }
                (None, None) => {}
            }
        }
        for old in current.iter().filter(|b| !configs.iter().any(|c| c.name == b.name())) {
            if !old.is_retiring() || old.replacement.lock().is_ok_and(|r| r.is_some()) {
                changes.removed.push(old.name().to_owned());
            }
            old.retire(None);
            list.push(old.clone());
        }
        *self.backends.write().unwrap_or_else(std::sync::PoisonError::into_inner) = list.into();
        self.forget_merged();
        Ok(changes)
    }

    /// Takes out the retiring backends that have no job left, putting their replacements in
    /// their place; returns the replacements (their watchers must be started). Call it where
    /// no job can be handed to a backend meanwhile (the scheduler holds its lock).
    pub fn sweep(&self) -> Vec<Arc<Backend>> {
        let _plan = self.plan();
        let current = self.all();
        let leaving = |b: &Arc<Backend>| b.is_retiring() && b.load().inflight.is_empty();
        if !current.iter().any(leaving) {
            return Vec::new();
        }
        let mut started = Vec::new();
        let list: Vec<Arc<Backend>> = current
            .iter()
            .filter_map(|b| {
                if !leaving(b) {
                    return Some(b.clone());
                }
                b.gone.send_replace(true);
                let replacement = b.replacement.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                tracing::info!(backend = b.name(), replaced = replacement.is_some(), "backend left the pool");
                replacement.inspect(|r| started.push(r.clone()))
            })
            .collect();
        *self.backends.write().unwrap_or_else(std::sync::PoisonError::into_inner) = list.into();
        self.forget_merged();
        self.announce(BackendEvent::Changed);
        started
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
            .all()
            .iter()
            .filter(|b| !b.is_retiring() && (reach == Reach::Any || b.is_healthy()))
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

    /// Drops the merged capabilities (a backend came, went or learned new ones).
    pub fn forget_merged(&self) {
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
            load.last_error_at = Some(crate::time::now_ms());
            let down = load.healthy && load.failures >= unhealthy_after;
            if down {
                load.healthy = false;
                load.healthy_since = load.last_error_at;
            }
            down
        };
        if went_down {
            tracing::warn!(backend = backend.name(), error, "backend taken out of service");
            self.announce(BackendEvent::Down(backend.name().to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn backend(name: &str, port: u16) -> BackendConfig {
        BackendConfig { name: name.to_owned(), url: format!("http://127.0.0.1:{port}"), ..BackendConfig::local() }
    }

    fn names(pool: &Pool) -> Vec<(String, bool)> {
        pool.all().iter().map(|b| (b.name().to_owned(), b.is_retiring())).collect()
    }

    fn pool(backends: &[BackendConfig]) -> Pool {
        let config = Config { backends: backends.to_vec(), ..Config::default() };
        Pool::new(&config, "test").unwrap()
    }

    #[test]
    fn a_reload_adds_at_once_and_drains_removed_and_changed_backends_before_they_leave() {
        let pool = pool(&[backend("a", 1), backend("b", 2), backend("c", 3)]);
        let c = pool.get("c").unwrap();
        c.load().inflight.push("job-on-c".to_owned());
        let mut a2 = backend("a", 1);
        a2.max_inflight = 5;
        let changes = pool.apply(&[a2.clone(), backend("d", 4)]).unwrap();
        assert_eq!(changes.added.iter().map(|b| b.name()).collect::<Vec<_>>(), ["d"]);
        assert_eq!(changes.changed, ["a"]);
        assert_eq!(changes.removed, ["b", "c"]);
        let expected = [("a", true), ("d", false), ("b", true), ("c", true)];
        assert_eq!(names(&pool), expected.map(|(n, r)| (n.to_owned(), r)));
        assert!(!pool.get("a").unwrap().has_room(), "a retiring backend takes no job");
        assert!(pool.healthy().iter().all(|b| b.name() == "d"), "only d is in service");

        // Without jobs, a leaves for its replacement and b goes; c waits for its job.
        let started = pool.sweep();
        assert_eq!(started.iter().map(|b| b.config.max_inflight).collect::<Vec<_>>(), [5]);
        let expected = [("a", false), ("d", false), ("c", true)];
        assert_eq!(names(&pool), expected.map(|(n, r)| (n.to_owned(), r)));
        assert_eq!(pool.get("a").unwrap().config, a2);
        c.load().inflight.clear();
        assert!(pool.sweep().is_empty());
        assert_eq!(names(&pool), [("a", false), ("d", false)].map(|(n, r)| (n.to_owned(), r)));
    }

    #[test]
    fn discovered_workers_join_beside_static_ones_and_vanished_ones_drain_before_they_leave() {
        let workers = BackendConfig {
            name: "w".to_owned(),
            url: String::new(),
            discover: Some("dns://workers.test:7000".parse().unwrap()),
            ..BackendConfig::local()
        };
        let pool = pool(&[backend("a", 1), workers.clone()]);
        assert_eq!(names(&pool), [("a".to_owned(), false)], "nothing found before the first lookup");
        assert_eq!(pool.discovered_counts(), [("w".to_owned(), 0)]);
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();

        let changes = pool.set_discovered("w", vec![ip("10.0.0.1"), ip("10.0.0.2")]).unwrap();
        let added: Vec<&str> = changes.added.iter().map(|b| b.name()).collect();
        assert_eq!(added, ["w-10-0-0-1", "w-10-0-0-2"]);
        assert_eq!(pool.get("w-10-0-0-2").unwrap().config.url, "http://10.0.0.2:7000");
        assert!(pool.set_discovered("w", vec![ip("10.0.0.1"), ip("10.0.0.2")]).unwrap().is_empty(), "same set");
        assert!(pool.set_discovered("other", vec![ip("10.0.0.9")]).unwrap().is_empty(), "not an entry");

        pool.get("w-10-0-0-1").unwrap().load().inflight.push("job".to_owned());
        let changes = pool.set_discovered("w", vec![ip("10.0.0.2")]).unwrap();
        assert_eq!(changes.removed, ["w-10-0-0-1"]);
        assert!(!pool.get("w-10-0-0-1").unwrap().has_room(), "a vanished worker takes no new job");
        assert!(pool.sweep().is_empty());
        assert!(pool.get("w-10-0-0-1").is_some(), "it stays while its job runs");
        pool.get("w-10-0-0-1").unwrap().load().inflight.clear();
        pool.sweep();
        assert!(pool.get("w-10-0-0-1").is_none(), "then it leaves");

        // A reload keeps what was found; a changed entry's workers are replaced with its settings.
        let wider = BackendConfig { max_inflight: 7, ..workers };
        let changes = pool.apply(&[backend("a", 1), wider]).unwrap();
        assert_eq!(changes.changed, ["w-10-0-0-2"]);
        pool.sweep();
        assert_eq!(pool.get("w-10-0-0-2").unwrap().config.max_inflight, 7);
        let changes = pool.apply(&[backend("a", 1)]).unwrap();
        assert_eq!(changes.removed, ["w-10-0-0-2"], "an entry taken out of the configuration drains its workers");
        assert!(pool.discover_entries().is_empty() && pool.discovered("w").is_none());
    }

    #[test]
    fn a_backend_configured_again_as_it_was_comes_back_and_an_unusable_one_changes_nothing() {
        let pool = pool(&[backend("a", 1), backend("b", 2)]);
        pool.get("b").unwrap().load().inflight.push("job".to_owned());
        pool.apply(&[backend("a", 1)]).unwrap();
        assert!(pool.get("b").unwrap().is_retiring());
        let changes = pool.apply(&[backend("a", 1), backend("b", 2)]).unwrap();
        assert_eq!(changes.kept, ["b"]);
        assert!(!pool.get("b").unwrap().is_retiring() && changes.removed.is_empty() && changes.added.is_empty());

        let before = names(&pool);
        let bad = BackendConfig { url: "http://".to_owned(), ..backend("z", 9) };
        assert!(pool.apply(&[bad]).is_err());
        assert_eq!(names(&pool), before, "refused whole");
    }
}
