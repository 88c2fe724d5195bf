//! Account and token management, shared by the CLI and the gateway's own API.
//!
//! Every rule about names, passwords, token labels and the last admin lives here.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Audit, AuditError, Context, Event};
use crate::config::AuthConfig;
use crate::store::{ApiToken, NewToken, NewUser, Role, Store, StoreError, TokenKind, User};
use crate::time::{ms, now_ms};

use super::legacy::LegacyLogin;
use super::password::{HashError, PasswordHasher};
use super::secret::{self, RandomUnavailable};

/// Longest password accepted (hashing cost stays bounded).
const MAX_PASSWORD_BYTES: usize = 1024;

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The name breaks the naming rules.
    #[error(
        "invalid user name `{0}`: use 1-64 characters a-z, 0-9, '.', '_', '-', '@', starting with a letter or digit"
    )]
    InvalidUsername(String),
    /// The password is too short or too long.
    #[error("passwords must be {min} to {MAX_PASSWORD_BYTES} bytes long")]
    BadPassword {
        /// Shortest length accepted.
        min: usize,
    },
    /// The name is taken.
    #[error("user `{0}` already exists")]
    UserExists(String),
    /// No such user.
    #[error("no user named `{0}`")]
    NoSuchUser(String),
    /// No such active token.
    #[error("no active token {0}")]
    NoSuchToken(String),
    /// The label is taken by another active token of the user.
    #[error("user already has an active token named `{0}`")]
    TokenNameTaken(String),
    /// The label breaks the rules.
    #[error("invalid token name `{0}`: use 1-64 printable characters")]
    InvalidTokenName(String),
    /// The expiry cannot be read.
    #[error("invalid expiry `{0}`: use a duration such as 30d, 12h or 90m, or `never`")]
    InvalidExpiry(String),
    /// The expiry is longer than a non-admin may ask for.
    #[error("tokens may live at most {0}: choose a shorter expiry")]
    ExpiryTooLong(String),
    /// The change would leave no enabled admin.
    #[error("refused: this would leave no enabled admin account")]
    LastAdmin,
    /// The ComfyUI-Login file cannot be imported.
    #[error("cannot import ComfyUI-Login file: {0}")]
    Import(String),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// No randomness.
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The audit line could not be written, so the change was not made.
    #[error("refused: the audit log cannot be written")]
    Audit(#[from] AuditError),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => AccountError::UserExists(what),
            other => AccountError::Store(other),
        }
    }
}

/// A freshly created token: the record and the secret, shown once.
pub struct IssuedToken {
    /// The stored record.
    pub token: ApiToken,
    /// The secret (never stored).
    pub secret: String,
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    /// The admin created from the file.
    pub user: User,
    /// The legacy token, when kept.
    pub legacy_token: Option<ApiToken>,
}

/// The admin created on a gateway's very first start.
pub struct FirstAdmin {
    /// The account.
    pub user: User,
    /// The password, when it was generated (to be shown once).
    pub generated_password: Option<String>,
}

/// A random password for people to type once: 24 characters, 144 bits.
pub fn generate_password() -> Result<String, RandomUnavailable> {
    Ok(secret::random_secret()?.chars().take(24).collect())
}

/// Account and token management.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    audit: Arc<Audit>,
    hasher: PasswordHasher,
    min_password_length: usize,
}

impl Accounts {
    /// Management on `store` with the configured password rules.
    pub fn new(store: Arc<dyn Store>, config: &AuthConfig, audit: Arc<Audit>) -> Self {
        Self {
            store,
            audit,
            hasher: PasswordHasher::new(config.hash_concurrency),
            min_password_length: config.min_password_length,
        }
    }

    /// The password hasher (shared with logins, so its concurrency limit is global).
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// Writes `event` before the change it records, then makes the change: no change without
    /// its line. A change that then fails gets a second line saying so.
    async fn audited<T>(
        &self,
        context: &Context,
        event: Event,
        change: impl std::future::Future<Output = Result<T, AccountError>>,
    ) -> Result<T, AccountError> {
        let name = event.name();
        let user = event.username().unwrap_or_default().to_owned();
        self.audit.record(context, event).await?;
        let result = change.await;
        if let Err(e) = &result {
            self.audit.note(context, Event::failure(name).user(&user).reason(e.to_string())).await;
        }
        result
    }

    /// Creates the first admin when no user exists yet; `None` when there are users already
    /// (or another gateway replica created the admin at the same moment).
    pub async fn ensure_first_admin(
        &self,
        username: &str,
        password: Option<&str>,
        context: &Context,
    ) -> Result<Option<FirstAdmin>, AccountError> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let (password, generated_password) = match password {
            Some(p) => (p.to_owned(), None),
            None => {
                let p = generate_password()?;
                (p.clone(), Some(p))
            }
        };
        match self.create_user(username, &password, Role::Admin, context).await {
            Ok(user) => Ok(Some(FirstAdmin { user, generated_password })),
            Err(AccountError::UserExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a user.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        context: &Context,
    ) -> Result<User, AccountError> {
        let username = normalize_username(username)?;
        self.check_password(password)?;
        if self.store.user_by_name(&username).await?.is_some() {
            return Err(AccountError::UserExists(username));
        }
        let password_hash = self.hasher.hash(password).await?;
        let event = Event::success("user_created").user(&username).field("role", role.as_str());
        let create =
            async { Ok(self.store.create_user(NewUser { username: username.clone(), password_hash, role }).await?) };
        self.audited(context, event, create).await
    }

    /// A user by name.
    pub async fn user(&self, username: &str) -> Result<User, AccountError> {
        let name = normalize_username(username)?;
        self.store.user_by_name(&name).await?.ok_or(AccountError::NoSuchUser(name))
    }

    /// Every user.
    pub async fn list_users(&self) -> Result<Vec<User>, AccountError> {
        Ok(self.store.list_users().await?)
    }

    /// Sets a new password; every session of the user ends, and so does every token a session
    /// minted without `keep` (a thief of the old password or a session loses what it made).
    pub async fn set_password(&self, username: &str, password: &str, context: &Context) -> Result<User, AccountError> {
        let user = self.user(username).await?;
        self.check_password(password)?;
        let hash = self.hasher.hash(password).await?;
        let event = Event::success("password_changed").user(&user.username);
        let revoked =
            self.audited(context, event, async { Ok(self.store.set_password(user.id, &hash).await?) }).await?;
        for token in revoked {
            let event = Event::success("token_revoked").user(&user.username).token(token).reason("password_changed");
            self.audit.note(context, event).await;
        }
        Ok(user)
    }

    /// Disables (ending every session and token use) or enables a user.
    pub async fn set_disabled(&self, username: &str, disabled: bool, context: &Context) -> Result<User, AccountError> {
        let user = self.user(username).await?;
        if disabled && user.role == Role::Admin && !user.disabled {
            self.ensure_another_admin().await?;
        }
        let event = Event::success(if disabled { "user_disabled" } else { "user_enabled" }).user(&user.username);
        self.audited(context, event, async { Ok(self.store.set_disabled(user.id, disabled).await?) }).await?;
        Ok(user)
    }

    /// Changes a user's role.
    pub async fn set_role(&self, username: &str, role: Role, context: &Context) -> Result<User, AccountError> {
        let user = self.user(username).await?;
        if user.role == Role::Admin && role != Role::Admin && !user.disabled {
            self.ensure_another_admin().await?;
        }
        let event = Event::success("role_changed")
            .user(&user.username)
            .field("role", role.as_str())
            .field("from", user.role.as_str());
        self.audited(context, event, async { Ok(self.store.set_role(user.id, role).await?) }).await?;
        Ok(user)
    }

    /// Deletes a user with all their tokens and sessions.
    pub async fn remove_user(&self, username: &str, context: &Context) -> Result<User, AccountError> {
        let user = self.user(username).await?;
        if user.role == Role::Admin && !user.disabled {
            self.ensure_another_admin().await?;
        }
        let event = Event::success("user_removed").user(&user.username);
        self.audited(context, event, async { Ok(self.store.delete_user(user.id).await?) }).await?;
        Ok(user)
    }

    /// Sets a user's limits (`comfygate user limits`), audited as `user_changed`.
    pub async fn set_limits(
        &self,
        user: &User,
        limits: &crate::store::UserLimits,
        context: &Context,
    ) -> Result<(), AccountError> {
        let set = |n: Option<i64>| n.map_or(serde_json::Value::Null, serde_json::Value::from);
        let event = Event::success("user_changed").user(&user.username).field(
            "limits",
            serde_json::json!({
                "max_waiting": set(limits.max_waiting),
                "max_running": set(limits.max_running),
                "jobs_per_hour": set(limits.jobs_per_hour),
                "max_upload_bytes": set(limits.max_upload_bytes),
                "max_workflow_bytes": set(limits.max_workflow_bytes),
                "max_priority": set(limits.max_priority),
                "default_priority": set(limits.default_priority),
                "share_weight": set(limits.share_weight),
            }),
        );
        self.audited(context, event, async { Ok(self.store.set_user_limits(user.id, limits).await?) }).await
    }

    /// When each locked-out account may try to log in again (unix ms), by user name: the
    /// latest block of its own keys (from one address or from any); addresses' keys are not
    /// an account's.
    pub async fn lockouts(&self) -> Result<std::collections::HashMap<String, i64>, AccountError> {
        let mut until = std::collections::HashMap::new();
        for (key, blocked_until) in self.store.blocked_login_keys(now_ms()).await? {
            if let Some(account) = super::lockout::account_of_key(&key) {
                let entry = until.entry(account.to_owned()).or_insert(blocked_until);
                *entry = (*entry).max(blocked_until);
            }
        }
        Ok(until)
    }

    /// Lifts the login lockout of an account (from every address, and account-wide), audited
    /// as `user_unlocked`; returns how many throttle keys were cleared. An address blocked for
    /// failing on many accounts stays blocked.
    pub async fn unlock(&self, username: &str, context: &Context) -> Result<u64, AccountError> {
        let user = self.user(username).await?;
        let event = Event::success("user_unlocked").user(&user.username);
        let exact = super::lockout::account_key(&user.username);
        let prefix = super::lockout::pair_prefix(&user.username);
        self.audited(context, event, async { Ok(self.store.clear_login_keys(&exact, &prefix).await?) }).await
    }

    /// Creates an API token for a user (outside any session: the CLI); the secret is returned
    /// once and never stored.
    pub async fn create_token(
        &self,
        username: &str,
        name: &str,
        expires_in: Option<Duration>,
        context: &Context,
    ) -> Result<IssuedToken, AccountError> {
        self.create_token_from(username, name, expires_in, TokenOrigin::default(), context).await
    }

    /// [`Accounts::create_token`], recording which session (if any) mints it.
    pub async fn create_token_from(
        &self,
        username: &str,
        name: &str,
        expires_in: Option<Duration>,
        origin: TokenOrigin,
        context: &Context,
    ) -> Result<IssuedToken, AccountError> {
        let user = self.user(username).await?;
        let name = check_token_name(name)?;
        let secret = secret::new_api_token()?;
        let now = now_ms();
        let expires_at = expires_in.map(|d| now.saturating_add(ms(d)));
        let token = self
            .store
            .create_token(NewToken {
                user_id: user.id,
                name: name.clone(),
                token_hash: secret::hex(&secret::digest(&secret)),
                prefix: secret::display_prefix(&secret),
                kind: TokenKind::Api,
                created_at: now,
                expires_at,
                minted_by_session: origin.session,
                keep: origin.keep,
            })
            .await
            .map_err(|e| token_conflict(e, &name))?;
        // The id exists only once the row does: the line comes after it, and without the line
        // the token is revoked before its secret is ever shown.
        let event = Event::success("token_created")
            .user(&user.username)
            .token(token.id)
            .field("name", token.name.as_str())
            .field("expires_at", token.expires_at.map(crate::time::format_ms))
            .field("keep", origin.keep)
            .field("in_session", origin.session.is_some());
        if let Err(e) = self.audit.record(context, event).await {
            if let Err(revoke) = self.store.revoke_token(token.id, now_ms()).await {
                tracing::error!(error = %revoke, token = token.id, "cannot revoke an unaudited token");
            }
            return Err(e.into());
        }
        Ok(IssuedToken { token, secret })
    }

    /// Tokens of one user, or of everyone.
    pub async fn list_tokens(&self, username: Option<&str>) -> Result<Vec<ApiToken>, AccountError> {
        let user_id = match username {
            Some(name) => Some(self.user(name).await?.id),
            None => None,
        };
        Ok(self.store.list_tokens(user_id).await?)
    }

    /// Revokes a user's active token chosen by name or by id.
    pub async fn revoke_token(
        &self,
        username: &str,
        name_or_id: &str,
        context: &Context,
    ) -> Result<ApiToken, AccountError> {
        let user = self.user(username).await?;
        let tokens = self.store.list_tokens(Some(user.id)).await?;
        let token = tokens
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .find(|t| t.name == name_or_id || t.id.to_string() == name_or_id)
            .ok_or_else(|| AccountError::NoSuchToken(format!("`{name_or_id}` for user `{}`", user.username)))?;
        self.revoke_token_record(&token, context).await?;
        Ok(token)
    }

    /// Revokes a token by id (the caller has checked who may).
    pub async fn revoke_token_record(&self, token: &ApiToken, context: &Context) -> Result<(), AccountError> {
        let event =
            Event::success("token_revoked").user(&token.username).token(token.id).field("name", token.name.as_str());
        self.audited(context, event, async {
            if self.store.revoke_token(token.id, now_ms()).await? {
                Ok(())
            } else {
                Err(AccountError::NoSuchToken(format!("#{}", token.id)))
            }
        })
        .await
    }

    /// Creates the admin of a ComfyUI-Login install; with `keep_legacy_token`, its old token
    /// (the hash string) keeps working as a revocable token named `comfyui-login`.
    pub async fn import_comfyui_login(
        &self,
        legacy: &LegacyLogin,
        username: Option<&str>,
        keep_legacy_token: bool,
        context: &Context,
    ) -> Result<Imported, AccountError> {
        let name =
            username.map(str::to_owned).or_else(|| legacy.username.clone()).unwrap_or_else(|| "admin".to_owned());
        let username = normalize_username(&name)?;
        let event = Event::success("user_created")
            .user(&username)
            .field("role", Role::Admin.as_str())
            .reason("comfyui_login_import");
        let new = NewUser { username: username.clone(), password_hash: legacy.bcrypt_hash.clone(), role: Role::Admin };
        let user = self.audited(context, event, async { Ok(self.store.create_user(new).await?) }).await?;
        let legacy_token = if keep_legacy_token {
            let name = "comfyui-login";
            let token = self
                .store
                .create_token(NewToken {
                    user_id: user.id,
                    name: name.to_owned(),
                    token_hash: secret::hex(&secret::digest(&legacy.bcrypt_hash)),
                    prefix: secret::display_prefix(&legacy.bcrypt_hash),
                    kind: TokenKind::Legacy,
                    created_at: now_ms(),
                    expires_at: None,
                    minted_by_session: None,
                    keep: true,
                })
                .await
                .map_err(|e| token_conflict(e, name))?;
            let event = Event::success("token_created")
                .user(&user.username)
                .token(token.id)
                .field("name", name)
                .field("kind", "legacy");
            if let Err(e) = self.audit.record(context, event).await {
                if let Err(revoke) = self.store.revoke_token(token.id, now_ms()).await {
                    tracing::error!(error = %revoke, token = token.id, "cannot revoke an unaudited token");
                }
                return Err(e.into());
            }
            Some(token)
        } else {
            None
        };
        Ok(Imported { user, legacy_token })
    }

    /// Checks a new password against the rules.
    pub fn check_password(&self, password: &str) -> Result<(), AccountError> {
        let ok = password.chars().count() >= self.min_password_length
            && password.len() <= MAX_PASSWORD_BYTES
            && !password.trim().is_empty();
        if ok { Ok(()) } else { Err(AccountError::BadPassword { min: self.min_password_length }) }
    }

    async fn ensure_another_admin(&self) -> Result<(), AccountError> {
        if self.store.count_active_admins().await? <= 1 { Err(AccountError::LastAdmin) } else { Ok(()) }
    }
}

/// Where a new token comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenOrigin {
    /// The login session minting it (`None`: the CLI, or another token).
    pub session: Option<i64>,
    /// The owner asked to keep it after that session ends and across password changes.
    pub keep: bool,
}

fn token_conflict(e: StoreError, name: &str) -> AccountError {
    match e {
        StoreError::Conflict(_) => AccountError::TokenNameTaken(name.to_owned()),
        other => AccountError::Store(other),
    }
}

/// Lower-cases and checks a user name.
pub fn normalize_username(raw: &str) -> Result<String, AccountError> {
    let name = raw.trim().to_lowercase();
    let valid = (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    if valid { Ok(name) } else { Err(AccountError::InvalidUsername(raw.chars().take(80).collect())) }
}

/// Parses an expiry such as `30d`; `never` means no expiry, empty means `default`.
pub fn parse_expiry(text: &str, default: Duration) -> Result<Option<Duration>, AccountError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Some(default));
    }
    if t.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    match humantime::parse_duration(t) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(10 * 366 * 24 * 3600) => Ok(Some(d)),
        _ => Err(AccountError::InvalidExpiry(t.chars().take(40).collect())),
    }
}

fn check_token_name(name: &str) -> Result<String, AccountError> {
    let name = name.trim();
    let valid = (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control);
    if valid { Ok(name.to_owned()) } else { Err(AccountError::InvalidTokenName(name.chars().take(80).collect())) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn usernames_are_lower_cased_and_checked() {
        assert_eq!(normalize_username(" Alice ").unwrap(), "alice");
        assert_eq!(normalize_username("bob.smith@lab").unwrap(), "bob.smith@lab");
        for bad in ["", "-x", "a b", "é", "x/y", &"a".repeat(65)] {
            assert!(normalize_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiries_parse_durations_and_never() {
        let day = Duration::from_secs(86400);
        assert_eq!(parse_expiry("30d", day).unwrap(), Some(30 * day));
        assert_eq!(parse_expiry("never", day).unwrap(), None);
        assert_eq!(parse_expiry(" ", day).unwrap(), Some(day));
        assert!(parse_expiry("tomorrow", day).is_err());
        assert!(parse_expiry("0s", day).is_err());
    }

    #[test]
    fn token_names_reject_control_characters() {
        assert!(check_token_name("laptop 🎨").is_ok());
        assert!(check_token_name("a\nb").is_err());
        assert!(check_token_name("  ").is_err());
    }
}
