//! Logging in (password → session) and out.

use std::time::Duration;

use crate::store::NewSession;
use crate::time::{ms, now_ms};

use super::accounts::normalize_username;
use super::identity::{AuthMethod, Identity};
use super::password::Verdict;
use super::{Auth, secret};

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
    /// Checks a password and opens a session.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: &str,
        user_agent: &str,
    ) -> Result<NewLogin, LoginFailure> {
        let name = normalize_username(username).unwrap_or_default();
        self.lockout.check(&name, address).map_err(LoginFailure::LockedOut)?;
        let user = if name.is_empty() { None } else { self.store.user_by_name(&name).await.map_err(unavailable)? };
        let Some(user) = user else {
            self.accounts.hasher().verify_decoy(password).await.map_err(unavailable)?;
            self.lockout.failed(&name, address);
            tracing::info!(target: "comfygate::audit", event = "login_failed", username = %name, address, reason = "unknown_user");
            return Err(LoginFailure::InvalidCredentials);
        };
        let verdict = self.accounts.hasher().verify(password, &user.password_hash).await.map_err(unavailable)?;
        let Verdict::Valid { rehash } = verdict else {
            self.lockout.failed(&name, address);
            tracing::info!(target: "comfygate::audit", event = "login_failed", username = %name, address, reason = "bad_password");
            return Err(LoginFailure::InvalidCredentials);
        };
        self.lockout.succeeded(&name);
        if user.disabled {
            tracing::info!(target: "comfygate::audit", event = "login_failed", username = %name, address, reason = "disabled");
            return Err(LoginFailure::Disabled);
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

    /// Re-checks the caller's password before a sensitive change (throttled like logins).
    pub async fn confirm_password(
        &self,
        identity: &Identity,
        password: &str,
        address: &str,
    ) -> Result<(), LoginFailure> {
        let name = identity.username.as_ref();
        self.lockout.check(name, address).map_err(LoginFailure::LockedOut)?;
        let user = self.store.user_by_name(name).await.map_err(unavailable)?.ok_or(LoginFailure::InvalidCredentials)?;
        match self.accounts.hasher().verify(password, &user.password_hash).await.map_err(unavailable)? {
            Verdict::Valid { .. } => {
                self.lockout.succeeded(name);
                Ok(())
            }
            Verdict::Invalid => {
                self.lockout.failed(name, address);
                Err(LoginFailure::InvalidCredentials)
            }
        }
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

fn unavailable(e: impl std::fmt::Display) -> LoginFailure {
    tracing::error!(error = %e, "login failed for an internal reason");
    LoginFailure::Unavailable
}
