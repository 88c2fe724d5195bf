//! Logging in (password → session) and out.

use std::time::Duration;

use crate::store::NewSession;
use crate::time::{ms, now_ms};

use super::accounts::normalize_username;
use super::identity::{AuthMethod, Identity};
use super::password::Verdict;
use super::{Auth, lockout, secret};

/// Longest user agent stored with a session.
const MAX_USER_AGENT: usize = 256;

/// Why a login failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginFailure {
    /// Wrong name or password (never says which).
    #[error("invalid user name or password")]
    InvalidCredentials,
    /// Too many failures: wait.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    LockedOut(Duration),
    /// Right password, disabled account.
    #[error("this account is disabled")]
    Disabled,
    /// The store or hasher failed.
    #[error("login is temporarily unavailable")]
    Unavailable,
}

/// A new session: who, and the cookie value (shown to the browser once).
pub struct NewLogin {
    /// The logged-in user.
    pub identity: Identity,
    /// The cookie value; only its digest is stored.
    pub cookie_value: String,
}

impl Auth {
    /// Checks a password and opens a session. The attempt is taken from the throttle before the
    /// hash is checked, and every kind of wrong login takes the same time.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: &str,
        user_agent: &str,
    ) -> Result<NewLogin, LoginFailure> {
        let name = normalize_username(username).unwrap_or_default();
        let user = if name.is_empty() { None } else { self.store.user_by_name(&name).await.map_err(unavailable)? };
        let since = now_ms().saturating_sub(ms(lockout::KNOWN_ADDRESS_FOR));
        let known_address = self
            .store
            .known_login_address(user.as_ref().map_or(-1, |u| u.id), address, since)
            .await
            .map_err(unavailable)?;
        let mut attempt = self.lockout.attempt(&name, address, !known_address).await.map_err(|refusal| {
            tracing::info!(target: "comfygate::audit", event = "login_throttled", username = %name, address);
            self.count_failure(crate::metrics::reason::LOGIN_THROTTLED, address);
            refused(refusal)
        })?;
        let verdict = self.check_password(password, user.as_ref().map(|u| u.password_hash.as_str())).await;
        let (user, rehash) = match (user, verdict) {
            (Some(user), Ok(Verdict::Valid { rehash })) => (user, rehash),
            (user, Ok(_)) => {
                attempt.failed().await;
                let reason = if user.is_some() { "bad_password" } else { "unknown_user" };
                tracing::info!(target: "comfygate::audit", event = "login_failed", username = %name, address, reason);
                self.count_failure(super::AuthFailure::BadLogin.code(), address);
                return Err(LoginFailure::InvalidCredentials);
            }
            (_, Err(failure)) => {
                attempt.give_back().await;
                return Err(failure);
            }
        };
        attempt.succeeded().await;
        if user.disabled {
            tracing::info!(target: "comfygate::audit", event = "login_failed", username = %name, address, reason = "disabled");
            self.count_failure(super::AuthFailure::UserDisabled.code(), address);
            return Err(LoginFailure::Disabled);
        }
        if let Err(e) = self.store.record_login_address(user.id, address, now_ms()).await {
            tracing::warn!(error = %e, "cannot remember the address of a login");
        }
        if rehash {
            let upgraded = self.accounts.hasher().hash(password).await.map_err(unavailable)?;
            self.store.rehash_password(user.id, &upgraded).await.map_err(unavailable)?;
            tracing::info!(target: "comfygate::audit", event = "password_rehashed", username = %name, to = "argon2id");
        }
        let cookie_value = secret::random_secret().map_err(unavailable)?;
        let now = now_ms();
        let session = self
            .store
            .create_session(NewSession {
                token_hash: secret::hex(&secret::digest(&cookie_value)),
                user_id: user.id,
                created_at: now,
                expires_at: now.saturating_add(ms(self.config.session_absolute_timeout)),
                ip: address.to_owned(),
                user_agent: user_agent.chars().take(MAX_USER_AGENT).collect(),
            })
            .await
            .map_err(unavailable)?;
        tracing::info!(target: "comfygate::audit", event = "login", username = %name, address, session = session.id);
        Ok(NewLogin {
            identity: Identity {
                user_id: user.id,
                username: user.username.into(),
                role: user.role,
                method: AuthMethod::Session { session_id: session.id, created_at: session.created_at },
            },
            cookie_value,
        })
    }

    /// Re-checks the caller's password before a sensitive change (throttled like logins; the
    /// caller already holds the account, so only the counters of its own address apply).
    pub async fn confirm_password(
        &self,
        identity: &Identity,
        password: &str,
        address: &str,
    ) -> Result<(), LoginFailure> {
        let name = identity.username.as_ref();
        let user = self.store.user_by_name(name).await.map_err(unavailable)?.ok_or(LoginFailure::InvalidCredentials)?;
        let mut attempt = self.lockout.attempt(name, address, false).await.map_err(refused)?;
        match self.check_password(password, Some(&user.password_hash)).await {
            Ok(Verdict::Valid { .. }) => {
                attempt.succeeded().await;
                Ok(())
            }
            Ok(Verdict::Invalid) => {
                attempt.failed().await;
                tracing::info!(target: "comfygate::audit", event = "password_confirmation_failed", username = %name, address);
                Err(LoginFailure::InvalidCredentials)
            }
            Err(failure) => {
                attempt.give_back().await;
                Err(failure)
            }
        }
    }

    /// One password check, timed alike for every kind of account (see
    /// [`PasswordHasher::verify_uniformly`](super::password::PasswordHasher::verify_uniformly)).
    async fn check_password(&self, password: &str, stored: Option<&str>) -> Result<Verdict, LoginFailure> {
        let bcrypt_cost = self.store.max_bcrypt_cost().await.map_err(unavailable)?;
        tracing::debug!(target: "comfygate::auth", "checking a password hash");
        self.accounts.hasher().verify_uniformly(password, stored, bcrypt_cost).await.map_err(unavailable)
    }

    /// Ends the caller's session and revokes the tokens it minted without `keep` (a token
    /// caller has nothing to end).
    pub async fn logout(&self, identity: &Identity) -> Result<(), LoginFailure> {
        if let AuthMethod::Session { session_id, .. } = identity.method {
            let revoked = self.store.revoke_session(session_id, now_ms()).await.map_err(unavailable)?;
            self.revoked();
            tracing::info!(target: "comfygate::audit", event = "logout", username = %identity.username, session = session_id);
            for token in revoked {
                tracing::info!(target: "comfygate::audit", event = "token_revoked", by = %identity.username,
                    owner = %identity.username, token, reason = "logout");
            }
        }
        Ok(())
    }
}

fn refused(refusal: lockout::Refusal) -> LoginFailure {
    match refusal {
        lockout::Refusal::Wait(wait) => LoginFailure::LockedOut(wait),
        lockout::Refusal::Store(e) => unavailable(e),
    }
}

fn unavailable(e: impl std::fmt::Display) -> LoginFailure {
    tracing::error!(error = %e, "login failed for an internal reason");
    LoginFailure::Unavailable
}

impl Auth {
    /// Counts a refused login from `address` (the client's, as logged).
    fn count_failure(&self, reason: &'static str, address: &str) {
        let ip = address.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        self.metrics.auth_failure(reason, ip);
    }
}
