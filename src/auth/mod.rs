//! Authentication: who is asking.
//!
//! A request's credential ([`credentials`]) is digested ([`secret`]) and looked up in the
//! in-memory [`cache`], falling back to the store. Logins ([`login`]) create sessions; account
//! and token management lives in [`accounts`]; [`diagnosis`] says exactly why a secret is
//! refused; [`maintenance`] keeps caches in step with revocations made anywhere.

pub mod accounts;
pub mod cache;
pub mod credentials;
pub mod diagnosis;
pub mod flash;
pub mod identity;
pub mod legacy;
pub mod lockout;
pub mod login;
pub mod maintenance;
pub mod password;
pub mod secret;
pub mod token_addresses;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::audit::Audit;
use crate::config::AuthConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::time::{ms, now_ms};

pub use accounts::{AccountError, Accounts};
pub use cache::{Grant, GrantCache};
pub use credentials::Presented;
pub use identity::{AuthMethod, Identity};
pub use login::LoginFailure;

/// Grants kept in memory at most.
const CACHE_CAPACITY: usize = 100_000;

/// Why a request is not authenticated. Each variant tells the client exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No credential at all.
    #[error("authentication required: log in, or send `Authorization: Bearer <token>` or `?token=<token>`")]
    MissingCredentials,
    /// The `Authorization` header or `token` parameter cannot be read.
    #[error("malformed credentials: {0}")]
    MalformedAuthorization(&'static str),
    /// No such token.
    #[error("unknown API token: check that the client uses the current token")]
    UnknownToken,
    /// The token was revoked.
    #[error("this API token has been revoked: create a new one")]
    TokenRevoked,
    /// The token is past its expiry.
    #[error("this API token has expired: create a new one")]
    TokenExpired,
    /// No such session (logged out, or the cookie is stale).
    #[error("your session has ended: log in again")]
    UnknownSession,
    /// The session ran past its idle or absolute limit.
    #[error("your session has expired: log in again")]
    SessionExpired,
    /// The account is disabled.
    #[error("this account is disabled")]
    UserDisabled,
    /// A login with a wrong user name or password.
    #[error("invalid user name or password")]
    BadLogin,
    /// The store cannot be reached: fail closed.
    #[error("authentication is temporarily unavailable")]
    Unavailable,
}

impl AuthFailure {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::MalformedAuthorization(_) => "malformed_credentials",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::TokenRevoked => "token_revoked",
            AuthFailure::TokenExpired => "token_expired",
            AuthFailure::UnknownSession => "session_ended",
            AuthFailure::SessionExpired => "session_expired",
            AuthFailure::UserDisabled => "user_disabled",
            AuthFailure::BadLogin => "invalid_login",
            AuthFailure::Unavailable => "auth_unavailable",
        }
    }
}

impl From<StoreError> for AuthFailure {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store unavailable during authentication");
        AuthFailure::Unavailable
    }
}

/// The authentication service of a running gateway.
pub struct Auth {
    store: Arc<dyn Store>,
    accounts: Accounts,
    cache: GrantCache,
    lockout: lockout::Lockout,
    config: AuthConfig,
    applied_epoch: AtomicI64,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    token_addresses: token_addresses::TokenAddresses,
}

impl Auth {
    /// Builds the service on a store.
    pub fn new(store: Arc<dyn Store>, config: AuthConfig, metrics: Arc<Metrics>, audit: Arc<Audit>) -> Self {
        Self {
            accounts: Accounts::new(store.clone(), &config, audit.clone()),
            cache: GrantCache::new(CACHE_CAPACITY),
            lockout: lockout::Lockout::new(
                store.clone(),
                config.login_max_failures,
                config.login_lockout,
                config.login_lockout_max,
            ),
            config,
            applied_epoch: AtomicI64::new(-1),
            metrics,
            audit,
            token_addresses: token_addresses::TokenAddresses::default(),
            store,
        }
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// Account and token management.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The gateway's metrics (refusals are counted where they are answered).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The settings in force.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Changes whenever anything may have been revoked (a token or session, a user disabled,
    /// removed or given a new password), here or by another process on the same store.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cache.watch()
    }

    /// Forgets every cached grant after a revocation made by this process.
    pub fn revoked(&self) {
        self.cache.clear();
    }

    /// Resolves when `presented` stops being valid (revoked, expired, user disabled): used to
    /// close WebSockets opened with it. Re-checks whenever anything is revoked, and at the
    /// credential's expiry.
    pub async fn until_invalid(self: Arc<Self>, presented: Presented) {
        let mut revocations = self.cache.watch();
        loop {
            let expiry = match self.cache.get(&secret::digest(presented.secret())) {
                Some(grant) => grant.expires_at.map(|end| end - now_ms()),
                None => None,
            };
            let wait_expiry = async {
                match expiry {
                    Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms.max(0) as u64)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = revocations.changed() => if changed.is_err() { return },
                () = wait_expiry => {}
            }
            match self.authenticate(&presented).await {
                Ok(_) | Err(AuthFailure::Unavailable) => continue,
                Err(_) => return,
            }
        }
    }

    /// Verifies a credential: from the cache in microseconds, else from the store.
    pub async fn authenticate(&self, presented: &Presented) -> Result<Identity, AuthFailure> {
        self.authenticate_on(presented, None).await
    }

    /// [`Auth::authenticate`], hashing through the connection's memo when there is one.
    pub async fn authenticate_on(
        &self,
        presented: &Presented,
        memo: Option<&secret::DigestMemo>,
    ) -> Result<Identity, AuthFailure> {
        let digest = match memo {
            Some(memo) => memo.digest(presented.secret()),
            None => secret::digest(presented.secret()),
        };
        let now = now_ms();
        if let Some(grant) = self.cache.get(&digest) {
            return admit(&grant, presented, now);
        }
        let generation = self.cache.generation();
        let grant = Arc::new(match presented {
            Presented::SessionCookie(_) => self.load_session(&digest, now).await?,
            Presented::Bearer(_) | Presented::QueryToken(_) => self.load_token(&digest, now).await?,
        });
        let identity = admit(&grant, presented, now)?;
        self.cache.insert(digest, grant, generation);
        Ok(identity)
    }

    async fn load_token(&self, digest: &secret::SecretDigest, now: i64) -> Result<Grant, AuthFailure> {
        let Some((token, user)) = self.store.token_by_hash(&secret::hex(digest)).await? else {
            return Err(AuthFailure::UnknownToken);
        };
        if user.disabled {
            return Err(AuthFailure::UserDisabled);
        }
        if token.revoked_at.is_some() {
            return Err(AuthFailure::TokenRevoked);
        }
        let used = token.last_used_at.unwrap_or(0);
        Ok(Grant {
            identity: Identity {
                user_id: user.id,
                username: user.username.into(),
                role: user.role,
                method: AuthMethod::Token { token_id: token.id, name: token.name.into(), kind: token.kind },
            },
            expires_at: token.expires_at,
            idle_limit: None,
            last_used: AtomicI64::new(now),
            recorded_use: AtomicI64::new(used),
        })
    }

    async fn load_session(&self, digest: &secret::SecretDigest, now: i64) -> Result<Grant, AuthFailure> {
        let Some((session, user)) = self.store.session_by_hash(&secret::hex(digest)).await? else {
            return Err(AuthFailure::UnknownSession);
        };
        if user.disabled {
            return Err(AuthFailure::UserDisabled);
        }
        if session.revoked_at.is_some() {
            return Err(AuthFailure::UnknownSession);
        }
        let idle_limit = ms(self.config.session_idle_timeout);
        if now - session.last_seen_at > idle_limit {
            return Err(AuthFailure::SessionExpired);
        }
        Ok(Grant {
            identity: Identity {
                user_id: user.id,
                username: user.username.into(),
                role: user.role,
                method: AuthMethod::Session { session_id: session.id, created_at: session.created_at },
            },
            expires_at: Some(session.expires_at),
            idle_limit: Some(idle_limit),
            last_used: AtomicI64::new(session.last_seen_at),
            recorded_use: AtomicI64::new(session.last_seen_at),
        })
    }
}

/// Checks a grant's limits at `now` and records the use.
fn admit(grant: &Grant, presented: &Presented, now: i64) -> Result<Identity, AuthFailure> {
    let is_session = matches!(grant.identity.method, AuthMethod::Session { .. });
    if is_session != matches!(presented, Presented::SessionCookie(_)) {
        return Err(if is_session { AuthFailure::UnknownToken } else { AuthFailure::UnknownSession });
    }
    let expired = |f| if is_session { f } else { AuthFailure::TokenExpired };
    if grant.expires_at.is_some_and(|end| now >= end) {
        return Err(expired(AuthFailure::SessionExpired));
    }
    if let Some(idle) = grant.idle_limit {
        if now - grant.last_used.load(Ordering::Relaxed) > idle {
            return Err(AuthFailure::SessionExpired);
        }
    }
    grant.last_used.fetch_max(now, Ordering::Relaxed);
    Ok(grant.identity.clone())
}
