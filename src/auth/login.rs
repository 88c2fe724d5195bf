//! Logging in (password → session) and out.

use std::time::Duration;

use crate::store::NewSession;
use crate::time::{ms, now_ms};

use super::accounts::normalize_username;
use super::identity::{AuthMethod, Identity};
use super::password::Verdict;
use super::{Auth, AuthFailure, lockout, secret, token_addresses};
use crate::audit::{Context, Event};

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
    /// hash is checked, and every kind of wrong login takes the same time. The audit line of a
    /// success is written before the session exists: when it cannot be, there is no session.
    pub async fn login(&self, username: &str, password: &str, context: &Context) -> Result<NewLogin, LoginFailure> {
        let address = context.address.as_deref().unwrap_or_default();
        let user_agent = context.user_agent.as_deref().unwrap_or_default();
        let name = normalize_username(username).unwrap_or_default();
        let shown = if name.is_empty() { "-" } else { name.as_str() };
        let user = if name.is_empty() { None } else { self.store.user_by_name(&name).await.map_err(unavailable)? };
        let since = now_ms().saturating_sub(ms(lockout::KNOWN_ADDRESS_FOR));
        let known_address = self
            .store
            .known_login_address(user.as_ref().map_or(-1, |u| u.id), address, since)
            .await
            .map_err(unavailable)?;
        let mut attempt = match self.lockout.attempt(&name, address, !known_address).await {
            Ok(attempt) => attempt,
            Err(refusal) => {
                self.audit.note(context, Event::refused("login_throttled").user(shown).reason("lockout")).await;
                self.count_failure(crate::metrics::reason::LOGIN_THROTTLED, address);
                return Err(refused(refusal));
            }
        };
        let verdict = self.check_password(password, user.as_ref().map(|u| u.password_hash.as_str())).await;
        let (user, rehash) = match (user, verdict) {
            (Some(user), Ok(Verdict::Valid { rehash })) => (user, rehash),
            (user, Ok(_)) => {
                attempt.failed().await;
                let reason = if user.is_some() { "bad_password" } else { "unknown_user" };
                self.audit.note(context, Event::failure("login_failed").user(shown).reason(reason)).await;
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
            self.audit.note(context, Event::refused("login_failed").user(shown).reason("disabled")).await;
            self.count_failure(super::AuthFailure::UserDisabled.code(), address);
            return Err(LoginFailure::Disabled);
        }
        if let Err(e) = self.store.record_login_address(user.id, address, now_ms()).await {
            tracing::warn!(error = %e, "cannot remember the address of a login");
        }
        let login = Event::success("login").user(&user.username).field("role", user.role.as_str());
        self.audit.record(context, login).await.map_err(unavailable)?;
        if rehash {
            let upgraded = self.accounts.hasher().hash(password).await.map_err(unavailable)?;
            self.store.rehash_password(user.id, &upgraded).await.map_err(unavailable)?;
            self.audit
                .note(context, Event::success("password_rehashed").user(&user.username).field("to", "argon2id"))
                .await;
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
        context: &Context,
    ) -> Result<(), LoginFailure> {
        let address = context.address.as_deref().unwrap_or_default();
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
                let event = Event::failure("password_confirmation_failed").user(name).reason("bad_password");
                self.audit.note(context, event).await;
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
    /// caller has nothing to end). A logout is never refused for the audit log's sake: it only
    /// takes access away (a failing audit write still marks the log unhealthy).
    pub async fn logout(&self, identity: &Identity, context: &Context) -> Result<(), LoginFailure> {
        if let AuthMethod::Session { session_id, .. } = identity.method {
            let revoked = self.store.revoke_session(session_id, now_ms()).await.map_err(unavailable)?;
            self.revoked();
            let name = identity.username.as_ref();
            self.audit.note(context, Event::success("logout").user(name)).await;
            for token in revoked {
                self.audit
                    .note(context, Event::success("token_revoked").user(name).token(token).reason("logout"))
                    .await;
            }
        }
        Ok(())
    }

    /// Audits the first use of an API token from an address it was not used from before
    /// (remembered per token, bounded: [`super::token_addresses`]). When that line cannot be
    /// written the request is refused.
    pub async fn note_token_address(&self, identity: &Identity, context: &Context) -> Result<(), AuthFailure> {
        let AuthMethod::Token { token_id, .. } = identity.method else { return Ok(()) };
        let Some(address) = context.address.as_deref() else { return Ok(()) };
        let entry = self.token_addresses.of(token_id);
        let mut seen = entry.lock().await;
        if seen.is_none() {
            let limit = i64::try_from(token_addresses::PER_TOKEN).unwrap_or(i64::MAX);
            *seen = Some(self.store.audit_token_addresses(token_id, token_addresses::EVENT, limit).await?);
        }
        let list = seen.get_or_insert_with(Vec::new);
        if list.len() >= token_addresses::PER_TOKEN || list.iter().any(|a| a == address) {
            return Ok(());
        }
        let event = Event::success(token_addresses::EVENT).user(&identity.username).token(token_id);
        self.audit.record(context, event).await.map_err(|_| AuthFailure::Unavailable)?;
        list.push(address.to_owned());
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
