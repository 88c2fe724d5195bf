//! `comfygate serve`: open the store, make sure an admin exists, start, wait for a signal.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use comfygate::Config;
use comfygate::app;
use comfygate::audit::Context as Audited;
use comfygate::reload::Reloader;
use comfygate::state::App;
use comfygate::store;

use super::accounts::admin_password_from_env;
use super::logging::LogFilter;

/// Runs the gateway until SIGINT or SIGTERM; SIGHUP reloads the configuration from `path`
/// (and the environment), as it was read at start.
pub async fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let log = super::logging::init(&config.log)?;
    // Before anything is served: a signal from then on is answered, never the default action.
    let mut signals = Signals::new().context("cannot listen for signals")?;
    let url = config.store.database_url();
    let data_dir = &config.store.data_dir;
    store::private::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
    store::private::warn_if_shared(data_dir);
    // Held until this function returns: one gateway per data folder (`restore` and `reload` ask it).
    let _serving = store::running::RunLock::acquire(data_dir)?;
    let store =
        store::open(&url).await.with_context(|| format!("cannot open the store ({})", store::describe(&url)))?;
    tracing::info!(store = %store::describe(&url), data_dir = %data_dir.display(), "store opened");

    let admin_user = std::env::var("COMFYGATE_ADMIN_USER").unwrap_or_else(|_| "admin".to_owned());
    let admin_password = admin_password_from_env()?;
    let backends: Vec<String> = config.backends.iter().map(|b| format!("{} → {}", b.name, b.shown_target())).collect();
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    let app = App::new(config, store.clone()).await?;
    // Bound before the first admin is made: a port in use fails before a password is shown
    // (and lost with the failed start); served only after, so whoever sees the gateway answer
    // finds the admin account.
    let bound = app::bind(app).await?;
    let first_start = Audited::gateway("first_start");
    let first = bound.app().auth.accounts().ensure_first_admin(&admin_user, admin_password.as_deref(), &first_start);
    let first = first.await;
    let running = bound.serve();
    match first {
        Ok(Some(first)) => {
            println!("comfygate: created the first admin account `{}`", first.user.username);
            if let Some(password) = first.generated_password {
                println!("comfygate: its password is: {password}");
                println!("comfygate: (shown only this once; change it on /comfygate/account after logging in)");
            }
        }
        Ok(None) => {}
        Err(e) => {
            running.shutdown().await;
            store.close().await;
            return Err(e.into());
        }
    }
    if let Some(at) = running.metrics_addr {
        println!("comfygate metrics on http://{at}{}", comfygate::edge::metrics::PATH);
    }
    println!("comfygate listening on {scheme}://{} (backends: {})", running.addr, backends.join(", "));
    tracing::info!(addr = %running.addr, "comfygate started");

    let reloader = running.reloader();
    let stop = loop {
        let received = tokio::select! {
            received = signals.next() => received,
            // Stopping by itself (replicas: it lost the scheduler's lock).
            () = running.app().lifecycle.stopped() => break "failure",
        };
        match received {
            Received::Stop(name) => break name,
            Received::Reload => reload(&reloader, &log, path.as_deref()).await,
        }
    };
    tracing::info!(
        signal = stop,
        grace = %humantime::format_duration(running.app().config.server.shutdown_timeout),
        "shutting down: no new connections or jobs; open requests may finish (a second signal exits at once)"
    );
    // A second signal does not wait for anyone.
    tokio::spawn(async move {
        let again = signals.next_stop().await;
        eprintln!("comfygate: {again} again: exiting without waiting for open requests");
        std::process::exit(1);
    });
    let failure = running.app().lifecycle.failure();
    running.shutdown().await;
    // Closing the pool lets SQLite checkpoint its journal into the database file.
    store.close().await;
    if let Some(why) = failure {
        anyhow::bail!("stopped: {why}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads the configuration again and puts it in force; one that does not load, or that the
/// gateway refuses, leaves the one in force (the log and the audit log say why).
async fn reload(reloader: &Reloader, log: &LogFilter, path: Option<&Path>) {
    tracing::info!(file = ?path, "SIGHUP: reloading the configuration");
    let loaded = Config::load(path, std::env::vars()).map_err(anyhow::Error::from).and_then(|config| {
        super::logging::parse(&config.log.level)?;
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            let why = format!("{e:#}");
            tracing::error!(error = %why, "reload refused: the configuration in force stays");
            return reloader.refused(&why).await;
        }
    };
    match reloader.reload(&config).await {
        Ok(done) => {
            if let Err(e) = log.set(&config.log) {
                tracing::warn!(error = %format!("{e:#}"), "reload: the log filter stays as it was");
            }
            tracing::info!(applied = ?done.applied, "configuration reloaded");
            if !done.needs_restart.is_empty() {
                tracing::warn!(sections = ?done.needs_restart, "reload: these settings changed but apply only at the next start");
            }
        }
        Err(e) => tracing::error!(error = %e, "reload refused: the configuration in force stays"),
    }
}

/// What a signal asks for.
enum Received {
    /// Stop (the signal's name).
    Stop(&'static str),
    /// Re-read the configuration.
    Reload,
}

/// The signals `serve` answers: SIGTERM and SIGINT stop it, SIGHUP reloads the configuration.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop("SIGTERM"),
            _ = self.int.recv() => Received::Stop("SIGINT"),
            _ = self.hup.recv() => Received::Reload,
        }
    }

    /// The next SIGTERM or SIGINT, by name.
    async fn next_stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
