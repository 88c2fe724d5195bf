//! The checks made on this machine: the data folder, the store (reachable, migrated, an
//! enabled admin) and the diagnosis of a token.

use std::sync::Arc;

use super::{Check, error_chain};
use crate::auth::diagnosis::{self, TokenFacts, Verdict};
use crate::config::Config;
use crate::store::schema::{self, SchemaError};
use crate::store::{self, Store, private};

/// Checks the data folder and the store; the store, when it is reachable and migrated.
pub async fn store(config: &Config, checks: &mut Vec<Check>) -> Option<Arc<dyn Store>> {
    data_folder(config, checks);
    let url = config.store.database_url();
    // The URL may carry a password: only the kind of database is ever shown.
    let kind = if url.starts_with("sqlite:") { "SQLite" } else { "PostgreSQL" };
    let remedy_unreachable = if kind == "SQLite" {
        "check [store] data_dir / url: the database file must exist (`comfygate serve` creates it on first start)"
    } else {
        "check [store] url (host, port, database, credentials) and that the PostgreSQL server is running"
    };
    let schema = match schema::inspect(&url).await {
        Ok(schema) => schema,
        Err(SchemaError::Store(store::StoreError::UnsupportedUrl)) => {
            checks.push(Check::fail("store", "unsupported database URL", "use sqlite://path or postgres://..."));
            return None;
        }
        Err(e) => {
            checks.push(Check::fail(
                "store",
                format!("{kind} store unreachable: {}", error_chain(&e)),
                remedy_unreachable,
            ));
            return None;
        }
    };
    if !schema.unknown.is_empty() {
        checks.push(Check::fail(
            "store",
            format!("{kind} store migrated by a newer comfygate (unknown migrations {:?})", schema.unknown),
            "run the comfygate version that migrated it, or restore a backup made before",
        ));
        return None;
    }
    if !schema.failed.is_empty() {
        checks.push(Check::fail(
            "store",
            format!("{kind} store: migrations {:?} failed part-way", schema.failed),
            "restore the backup made before the upgrade; see the gateway's log of that start",
        ));
        return None;
    }
    if !schema.pending.is_empty() {
        checks.push(Check::fail(
            "store",
            format!(
                "{kind} store reachable, {} migration(s) pending: {}",
                schema.pending.len(),
                schema.pending.join(", ")
            ),
            "start `comfygate serve` once: it applies them",
        ));
        return None;
    }
    let store = match store::open(&url).await {
        Ok(store) => store,
        Err(e) => {
            checks.push(Check::fail(
                "store",
                format!("{kind} store cannot be opened: {}", error_chain(&e)),
                remedy_unreachable,
            ));
            return None;
        }
    };
    checks.push(Check::pass("store", format!("{kind} store reachable, all {} migrations applied", schema.applied)));
    admin(store.as_ref(), checks).await;
    Some(store)
}

fn data_folder(config: &Config, checks: &mut Vec<Check>) {
    let dir = &config.store.data_dir;
    let name = "data folder";
    match private::shared_mode(dir) {
        Ok(None) => checks.push(Check::pass(name, format!("{} is private (0700)", dir.display()))),
        Ok(Some(mode)) => checks.push(Check::warn(
            name,
            format!("{} is open to other local users (mode {mode:04o})", dir.display()),
            format!("chmod 700 {}", dir.display()),
        )),
        Err(e) => checks.push(Check::fail(
            name,
            format!("{}: {e}", dir.display()),
            "check [store] data_dir; `comfygate serve` creates the folder (0700) on first start",
        )),
    }
}

async fn admin(store: &dyn Store, checks: &mut Vec<Check>) {
    match store.count_active_admins().await {
        Ok(0) => checks.push(Check::fail(
            "admin account",
            "no enabled admin account",
            "create one with `comfygate user add NAME --role admin`, or enable one with `comfygate user enable NAME`",
        )),
        Ok(n) => checks.push(Check::pass("admin account", format!("{n} enabled admin account(s)"))),
        Err(e) => checks.push(Check::fail("admin account", error_chain(&e), "check the store")),
    }
}

/// Diagnoses `secret`; its facts when it is valid.
pub async fn token(store: &dyn Store, secret: &str, checks: &mut Vec<Check>) -> Option<TokenFacts> {
    let now = crate::time::now_ms();
    let diagnosis = match diagnosis::diagnose(store, secret, now).await {
        Ok(d) => d,
        Err(e) => {
            checks.push(Check::fail("token", error_chain(&e), "check the store"));
            return None;
        }
    };
    let name = format!("token {}", diagnosis.fingerprint);
    let explained = diagnosis.explain(now);
    match diagnosis.verdict {
        Verdict::Valid { token } => {
            checks.push(Check::pass(name, explained));
            Some(token)
        }
        verdict => {
            let remedy = match verdict {
                Verdict::Unknown | Verdict::SessionId => {
                    "find which copy the client reads (.env, notebook, plugin settings) and replace it with a current token"
                }
                Verdict::OwnerDisabled { .. } => "enable the account, or give the client a token of an enabled account",
                Verdict::Malformed { .. } => "copy the token alone, without quotes, spaces or line breaks",
                _ => {
                    "create a new token (`comfygate token create USER --name NAME`) and replace every copy of the old one"
                }
            };
            checks.push(Check::fail(name, format!("{} ({})", explained, verdict.code()), remedy));
            None
        }
    }
}
