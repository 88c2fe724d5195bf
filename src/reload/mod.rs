//! Live reload (SIGHUP, `comfygate reload`): a new configuration is checked whole, then what
//! can change without a restart is put in force without dropping a connection:
//!
//! - `[[backends]]`: new ones serve at once; a removed one takes no new job and leaves once
//!   its jobs are done; a changed one is drained the same way, then replaced;
//! - `[limits]` (the next submission, and running-job counts, are held to them);
//! - `[policy]` (the next request is classified by it);
//! - `[server.tls]` certificate and key files (new connections get the new certificate).
//!
//! Anything unusable (a bad backend URL, route or certificate) refuses the whole reload and
//! the configuration in force stays. Settings only a restart applies are named in the answer.
//! `[log] level` is put in force by the binary, which owns the log subscriber.

use crate::audit::{Context, Event};
use crate::backends::watchers::Watchers;
use crate::config::Config;
use crate::edge::server::{TlsError, TlsSlot, tls_acceptor};
use crate::policy::{RouteError, RoutePolicy};
use crate::proxy::ProxyError;
use crate::state::AppState;

/// Why a new configuration was refused (the old one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A backend is unusable.
    #[error("backend configuration: {0}")]
    Backend(#[from] ProxyError),
    /// A `[policy] user_routes` entry is unusable.
    #[error("policy configuration: {0}")]
    Policy(#[from] RouteError),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// What changed, one line each (`backend b3 added`, `[limits] updated`).
    pub applied: Vec<String>,
    /// Sections that differ but only take effect at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// Puts `new` in force on the running gateway `app`, whose configuration in force is
/// `current` (see the module's documentation).
async fn apply(
    app: &AppState,
    watchers: &Watchers,
    tls: Option<&TlsSlot>,
    current: &Config,
    new: &Config,
) -> Result<Reloaded, ReloadError> {
    // What only a restart changes is still as the gateway started.
    let mut done = Reloaded { needs_restart: needs_restart(&app.config, new), ..Reloaded::default() };
    // Everything that can be refused is built before anything changes.
    let routes = RoutePolicy::with_user_routes(&new.policy.user_routes)?;
    let acceptor = match (&new.server.tls, tls) {
        (Some(files), Some(_)) => Some(tls_acceptor(&files.cert_file, &files.key_file)?),
        _ => None,
    };
    let pool = app.scheduler.pool();
    let changes = pool.apply(&new.backends)?;

    for backend in &changes.added {
        watchers.start(backend);
    }
    for replacement in app.scheduler.sweep_retired() {
        watchers.start(&replacement);
    }
    let names = |list: &[String]| list.join(", ");
    if !changes.added.is_empty() {
        let added: Vec<String> = changes.added.iter().map(|b| b.name().to_owned()).collect();
        done.applied.push(format!("backends added: {}", names(&added)));
    }
    if !changes.removed.is_empty() {
        done.applied.push(format!("backends removed (they finish their jobs first): {}", names(&changes.removed)));
    }
    if !changes.changed.is_empty() {
        done.applied.push(format!("backends changed (replaced once their jobs are done): {}", names(&changes.changed)));
    }
    if !changes.kept.is_empty() {
        done.applied.push(format!("backends back in service: {}", names(&changes.kept)));
    }
    if current.policy.user_routes != new.policy.user_routes {
        done.applied.push("[policy] updated".to_owned());
    }
    app.set_routes(routes);
    if format!("{:?}", current.limits) != format!("{:?}", new.limits) {
        if let Err(e) = app.scheduler.set_limits(new.limits.clone()).await {
            // In force for the next submission; the per-user counts catch up as they submit.
            tracing::warn!(error = %e, "reload: cannot re-read per-user limits from the store");
        }
        done.applied.push("[limits] updated".to_owned());
    }
    if current.log.level != new.log.level {
        done.applied.push(format!("[log] level = {:?}", new.log.level));
    }
    if let (Some(acceptor), Some(slot)) = (acceptor, tls) {
        *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
        done.applied.push("TLS certificate reloaded".to_owned());
    }
    app.scheduler.kick();
    Ok(done)
}

/// Records a reload (done or refused) in the audit log.
async fn audit(app: &AppState, result: &Result<Reloaded, String>) {
    let context = Context::gateway("reload");
    let event = match result {
        Ok(done) => Event::success("config_reloaded")
            .field("applied", done.applied.clone())
            .field("needs_restart", done.needs_restart.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()),
        Err(why) => Event::failure("config_reload_refused").reason(why.clone()),
    };
    app.audit.note(&context, event).await;
}

/// The sections that differ between `old` and `new` but are read only at start.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut server = (old.server.clone(), new.server.clone());
    // The certificate files are reloaded; serving TLS or not is not.
    let tls_toggled = server.0.tls.is_some() != server.1.tls.is_some();
    server.0.tls = None;
    server.1.tls = None;
    let mut differ = Vec::new();
    if !same(&server.0, &server.1) || tls_toggled {
        differ.push("[server]");
    }
    if old.store.data_dir != new.store.data_dir || old.store.database_url() != new.store.database_url() {
        differ.push("[store]");
    }
    let sections: [(&'static str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); 7] = [
        ("[auth]", &old.auth, &new.auth),
        ("[discovery]", &old.discovery, &new.discovery),
        ("[scheduler]", &old.scheduler, &new.scheduler),
        ("[userdata]", &old.userdata, &new.userdata),
        ("[metrics]", &old.metrics, &new.metrics),
        ("[audit]", &old.audit, &new.audit),
        ("[log] format", &old.log.format, &new.log.format),
    ];
    differ.extend(sections.into_iter().filter(|(_, a, b)| !same(*a, *b)).map(|(name, _, _)| name));
    differ
}

/// A running gateway's reload handle.
pub struct Reloader {
    app: AppState,
    watchers: Watchers,
    tls: Option<TlsSlot>,
    /// The configuration in force; held for the whole of a reload (one at a time).
    current: tokio::sync::Mutex<Config>,
}

impl Reloader {
    /// The handle of a gateway serving `app`.
    pub fn new(app: AppState, watchers: Watchers, tls: Option<TlsSlot>) -> Self {
        let current = tokio::sync::Mutex::new(app.config.clone());
        Self { app, watchers, tls, current }
    }

    /// Puts `new` in force, or refuses it whole, and audits the outcome.
    pub async fn reload(&self, new: &Config) -> Result<Reloaded, ReloadError> {
        let mut current = self.current.lock().await;
        let result = apply(&self.app, &self.watchers, self.tls.as_ref(), &current, new).await;
        if result.is_ok() {
            *current = new.clone();
        }
        audit(&self.app, &result.as_ref().map(Clone::clone).map_err(ToString::to_string)).await;
        result
    }

    /// Records a configuration refused before it reached [`reload`](Self::reload) (it did
    /// not parse).
    pub async fn refused(&self, why: &str) {
        audit(&self.app, &Err(why.to_owned())).await;
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn restart_only_sections_are_named_and_reloadable_ones_are_not() {
        let old = Config::default();
        let mut new = old.clone();
        new.limits.max_waiting = 7;
        new.policy.user_routes.push("GET /extra".to_owned());
        new.backends.clear();
        assert!(needs_restart(&old, &new).is_empty(), "{:?}", needs_restart(&old, &new));
        new.server.listen = "127.0.0.1:1".parse().unwrap();
        new.auth.cookie_name = "other".to_owned();
        new.store.data_dir = "elsewhere".into();
        assert_eq!(needs_restart(&old, &new), vec!["[server]", "[store]", "[auth]"]);
    }

    #[test]
    fn new_tls_files_are_reloaded_but_turning_tls_on_needs_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.tls = Some(crate::config::TlsConfig { cert_file: "c".into(), key_file: "k".into() });
        assert_eq!(needs_restart(&old, &new), vec!["[server]"]);
        let mut newer = new.clone();
        newer.server.tls = Some(crate::config::TlsConfig { cert_file: "c2".into(), key_file: "k2".into() });
        assert!(needs_restart(&new, &newer).is_empty());
    }
}
