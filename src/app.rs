//! Wiring: starts the listener, the background maintenance and the scheduling loop on a built
//! [`App`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backends;
use crate::backends::watchers::Watchers;
use crate::edge;
use crate::reload::Reloader;
use crate::state::{App, AppState, BuildError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The services could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] edge::server::TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A started gateway.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of the metrics listener (`[metrics] listen`), when configured.
    pub metrics_addr: Option<SocketAddr>,
    app: AppState,
    reloader: Arc<Reloader>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The state the gateway serves with.
    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// Puts a new configuration in force (SIGHUP), see [`crate::reload`].
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Stops accepting and dispatching, closes WebSockets with 1001 and lets open requests
    /// finish within `server.shutdown_timeout`; waiting jobs stay in the store.
    pub async fn shutdown(self) {
        let grace = self.app.config.server.shutdown_timeout;
        self.app.scheduler.stop_dispatching();
        self.app.lifecycle.stop();
        let ended = async {
            for task in self.tasks {
                let _ = task.await;
            }
            self.app.lifecycle.released().await;
        };
        // The listeners bound their own drain by the same timeout; this bounds the rest (a
        // WebSocket whose client does not take its close frame).
        if tokio::time::timeout(grace + std::time::Duration::from_secs(1), ended).await.is_err() {
            tracing::warn!("some tasks were still running at the end of server.shutdown_timeout");
        }
    }
}

/// Binds the listener and starts serving and background maintenance.
pub async fn start(app: App) -> Result<Running, StartError> {
    Ok(bind(app).await?.serve())
}

/// A gateway whose listeners are bound (a port in use has failed) but that serves nothing yet:
/// first-run setup happens here, so nobody reaches the gateway before it is done.
pub struct Bound {
    app: AppState,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>>,
    limits: Arc<edge::limits::ConnectionLimits>,
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    open_files: Option<u64>,
}

/// Binds the listeners (and loads the TLS certificate), serving nothing yet.
pub async fn bind(app: App) -> Result<Bound, StartError> {
    let listen = app.config.server.listen;
    let listener = TcpListener::bind(listen).await.map_err(|source| StartError::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
    let tls = match &app.config.server.tls {
        Some(t) => Some(Arc::new(std::sync::RwLock::new(edge::server::tls_acceptor(&t.cert_file, &t.key_file)?))),
        None => None,
    };
    let open_files = edge::limits::raise_open_file_limit();
    let server = &app.config.server;
    let limits = Arc::new(edge::limits::ConnectionLimits::new(
        server.max_connections,
        server.max_connections_per_address,
        open_files,
    ));
    tracing::info!(
        open_file_limit = open_files,
        max_connections = limits.max_total(),
        max_connections_per_address = limits.max_per_address(),
        "connection limits"
    );
    let metrics_listener = match app.config.metrics.listen {
        Some(at) => {
            let bound = TcpListener::bind(at).await.map_err(|source| StartError::Bind { addr: at, source })?;
            let addr = bound.local_addr().map_err(|source| StartError::Bind { addr: at, source })?;
            Some((bound, addr))
        }
        None => None,
    };
    Ok(Bound { app: Arc::new(app), listener, addr, tls, limits, metrics_listener, open_files })
}

impl Bound {
    /// The gateway's state, before it serves.
    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// Starts serving and background maintenance.
    pub fn serve(self) -> Running {
        let Bound { app, listener, addr, tls, limits, metrics_listener, open_files } = self;
        let tls_slot = tls.clone();
        let server = app.config.server.clone();
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        let watch_shutdown = app.lifecycle.subscribe();
        let maintenance =
            tokio::spawn(app.auth.clone().maintain(app.instance.clone(), app.bus.clone(), watch_shutdown.clone()));
        let (watchers, scheduling) = spawn_scheduling(&app, &watch_shutdown);
        let mut tasks = Vec::new();
        if let Some((bound, _)) = metrics_listener {
            // Bounded like the main listener (same deadlines), with caps of its own.
            let (total, per_address) = edge::metrics::MAX_CONNECTIONS;
            let limits = Arc::new(edge::limits::ConnectionLimits::new(total, per_address, open_files));
            let (edge, server, stop) = (edge::Edge::metrics_only(app.clone()), server.clone(), watch_shutdown.clone());
            tasks
                .push(tokio::spawn(async move { edge::server::serve(bound, edge, None, &server, limits, stop).await }));
        }
        let edge = edge::Edge::new(app.clone());
        let server = tokio::spawn(async move {
            edge::server::serve(listener, edge, tls, &server, limits, watch_shutdown).await;
        });
        tasks.extend([server, maintenance]);
        tasks.extend(scheduling);
        let reloader = Arc::new(Reloader::new(app.clone(), watchers, tls_slot));
        Running { addr, metrics_addr, app, reloader, tasks }
    }
}

/// Health checks, the monitor sockets, and the loop that feeds their news to the scheduler.
fn spawn_scheduling(app: &AppState, shutdown: &watch::Receiver<bool>) -> (Watchers, Vec<tokio::task::JoinHandle<()>>) {
    let scheduler = app.scheduler.clone();
    let pool = scheduler.pool().clone();
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<(String, backends::monitor::Frame)>(4096);
    let watchers = Watchers::new(pool.clone(), frames_tx, app.config.scheduler.clone(), shutdown.clone());
    watchers.start_all();
    let mut events = pool.subscribe();
    let sweeper = watchers.clone();
    let mut accounts = app.auth.changes();
    let mut stop = shutdown.clone();
    let feed = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                // A backend's frames come before news about it: the events it sent before it
                // went down are applied before its jobs are moved (a running job is not taken
                // for one that never started).
                biased;
                Some((backend, frame)) = frames.recv() => scheduler.on_frame(&backend, frame).await,
                event = events.recv() => match event {
                    Ok(event) => scheduler.on_backend_event(event).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => scheduler.kick(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                Ok(()) = accounts.changed() => {
                    let scheduler = scheduler.clone();
                    tokio::spawn(async move { scheduler.prune_owners().await });
                }
                _ = tick.tick() => {
                    scheduler.reconcile_quiet(std::time::Duration::from_secs(2));
                    for replacement in scheduler.sweep_retired() {
                        sweeper.start(&replacement);
                    }
                    scheduler.kick();
                }
                _ = stop.changed() => break,
            }
        }
    });
    let purge = tokio::spawn(purge_ended_jobs(
        app.scheduler.store().clone(),
        app.config.scheduler.job_retention,
        shutdown.clone(),
    ));
    let purge_audit = tokio::spawn(crate::audit::Audit::purge(
        app.scheduler.store().clone(),
        app.config.audit.retention,
        shutdown.clone(),
    ));
    let audit_repeats = tokio::spawn(app.audit.clone().flush_repeats(shutdown.clone()));
    let webhooks = tokio::spawn(crate::webhooks::worker::run(app.webhooks.clone(), shutdown.clone()));
    let drains = tokio::spawn(crate::usage::drain::maintain(app.scheduler.clone(), shutdown.clone()));
    let discovery = tokio::spawn(backends::discovery::maintain(
        pool.clone(),
        watchers.clone(),
        app.config.discovery.clone(),
        app.metrics.clone(),
        shutdown.clone(),
    ));
    let mut tasks = vec![feed, purge, purge_audit, audit_repeats, webhooks, drains, discovery];
    if let Some(bus) = &app.bus {
        tasks.push(tokio::spawn(app.scheduler.clone().follow_notes(bus.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(lead_when_elected(app.clone(), shutdown.clone())));
    }
    (watchers, tasks)
}

/// Replicas: waits for the scheduler's lock, then schedules until the gateway stops. A gateway
/// that loses the lock (its connection failed) or finds another scheduling in its place stops
/// at once, with an error: it cannot know what the other has done meanwhile.
async fn lead_when_elected(app: AppState, shutdown: watch::Receiver<bool>) {
    let leadership = crate::cluster::Leadership::new(&app.config.store.database_url());
    let scheduler = app.scheduler.clone();
    let elected = || async {
        if let Err(e) = scheduler.lead(&app.instance).await {
            // Holding the lock without a queue helps nobody: give it up by stopping.
            app.scheduler.stop_dispatching();
            app.lifecycle.fail(format!("took the scheduler's lock but cannot read the queue: {e}"));
        }
    };
    let ended = tokio::select! {
        ended = leadership.run(shutdown, elected) => ended,
        () = app.scheduler.superseded() => {
            crate::cluster::leader::Ended::Lost("another gateway claimed jobs under a newer term".to_owned())
        }
    };
    if let crate::cluster::leader::Ended::Lost(why) = ended {
        app.scheduler.stop_dispatching();
        tracing::error!(reason = %why, "lost the scheduler's lock: stopping (another gateway takes over the queue)");
        app.lifecycle.fail(format!("lost the scheduler's lock: {why}"));
    }
}

/// Deletes ended jobs older than `retention`, at start and then hourly.
async fn purge_ended_jobs(
    store: std::sync::Arc<dyn crate::store::Store>,
    retention: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let cutoff = crate::time::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match store.purge_jobs(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "purged ended jobs past their retention"),
            Err(e) => tracing::warn!(error = %e, "cannot purge ended jobs"),
        }
    }
}
