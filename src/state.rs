//! The state every request handler shares: configuration, authentication, and the scheduler
//! with its backends. Built once at start ([`crate::app`] wires it to the listener).

use std::sync::Arc;

use crate::audit::{Audit, AuditError};
use crate::auth::Auth;
use crate::backends::Pool;
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::policy::{RouteError, RoutePolicy};
use crate::proxy::ProxyError;
use crate::scheduler::Scheduler;
use crate::store::{self, StoreError};
use crate::userdata::UserData;

/// Shared state of a running gateway.
pub type AppState = Arc<App>;

/// Why the services could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A backend URL is unusable.
    #[error("backend configuration: {0}")]
    Proxy(#[from] ProxyError),
    /// A `[policy] user_routes` entry is unusable.
    #[error("policy configuration: {0}")]
    Policy(#[from] RouteError),
    /// The audit file cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Everything a request handler needs.
pub struct App {
    /// The configuration in force.
    pub config: Config,
    /// Authentication and accounts.
    pub auth: Arc<Auth>,
    /// The audit log ([`Audit::failure`] says whether it is healthy).
    pub audit: Arc<Audit>,
    /// The job queue and the backends behind it.
    pub scheduler: Arc<Scheduler>,
    /// This process's name in the store (heartbeats, WebSocket ids).
    pub instance: String,
    /// `host[:port]` values users reach the gateway by, beyond the request's own `Host`.
    pub allowed_hosts: Vec<String>,
    /// Whether the gateway itself serves HTTPS.
    pub tls: bool,
    /// Which ComfyUI routes normal users may reach (`[policy]`, replaced by a reload).
    routes: std::sync::RwLock<Arc<RoutePolicy>>,
    /// Every user's saved workflows and settings.
    pub userdata: UserData,
    /// This gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether the store answers, asked at most once a second (readiness and metrics share it).
    pub store_probe: store::Probe,
    /// The stop signal, and the sockets the process waits for before it exits.
    pub lifecycle: Lifecycle,
    /// The console's one-time notices.
    pub flashes: crate::auth::flash::Flashes,
    /// Webhooks: the outbox and its signing keys.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// With replicas (a shared store): the notifications between them.
    pub bus: Option<Arc<crate::cluster::Bus>>,
}

impl App {
    /// Builds the services on an opened store (resuming the jobs it holds).
    pub async fn new(config: Config, store: Arc<dyn store::Store>) -> Result<Self, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let audit = Arc::new(Audit::open(&config, store.clone())?);
        let auth = Arc::new(Auth::new(store.clone(), config.auth.clone(), metrics.clone(), audit.clone()));
        let instance = format!("{}-{}", hostname(), &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let pool = Arc::new(Pool::new(&config, &instance)?);
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(&config, store.clone()));
        let lifecycle = Lifecycle::default();
        let (limits, max_body) = (config.limits.clone(), config.server.max_request_body.as_u64());
        let parts = (store.clone(), pool, config.scheduler.clone(), limits, max_body, metrics.clone(), audit.clone());
        // Replicas (a shared store): this gateway schedules only once it holds the scheduler's
        // lock (`app::start`); until then it queues into the store for the one that does.
        let (scheduler, bus) = if store.shared() {
            let bus = crate::cluster::Bus::start(&config.store.database_url(), &instance, lifecycle.subscribe()).await;
            let (store, pool, scheduling, limits, max_body, metrics, audit) = parts;
            let scheduler = Scheduler::standby(store, pool, scheduling, limits, max_body, metrics, audit);
            scheduler.join(bus.clone());
            (Arc::new(scheduler), Some(bus))
        } else {
            let (store, pool, scheduling, limits, max_body, metrics, audit) = parts;
            (Arc::new(Scheduler::load(store, pool, scheduling, limits, max_body, metrics, audit).await?), None)
        };
        scheduler.observe(webhooks.clone());
        scheduler.observe(Arc::new(crate::usage::Ledger::new(store.clone())));
        // Drains kept in the store hold from the first dispatch on.
        crate::usage::drain::apply(&scheduler).await?;
        let allowed_hosts = config
            .server
            .public_url
            .iter()
            .filter_map(|u| u.parse::<::http::Uri>().ok())
            .filter_map(|u| u.authority().map(|a| a.as_str().to_ascii_lowercase()))
            .collect();
        let tls = config.server.tls.is_some();
        let routes = std::sync::RwLock::new(Arc::new(RoutePolicy::with_user_routes(&config.policy.user_routes)?));
        let userdata = UserData::new(&config.store.data_dir, &config.userdata);
        let store_probe = store::Probe::default();
        Ok(Self {
            config,
            auth,
            audit,
            scheduler,
            instance,
            allowed_hosts,
            tls,
            routes,
            userdata,
            metrics,
            store_probe,
            lifecycle,
            bus,
            flashes: Default::default(),
            webhooks,
        })
    }
}

impl App {
    /// Which ComfyUI routes normal users may reach.
    pub fn routes(&self) -> Arc<RoutePolicy> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts a new route policy in force (a reload).
    pub fn set_routes(&self, routes: RoutePolicy) {
        *self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "gateway".to_owned())
}
