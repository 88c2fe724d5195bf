//! What the gateway's API shows of its records (JSON), shared by pages and the API.

use serde::Serialize;

use crate::store::{ApiToken, Role, TokenKind, User};
use crate::time::{format_ms, now_ms};

/// A token as shown to its owner or an admin (never the secret).
#[derive(Serialize)]
pub struct TokenView {
    /// Store id (used to revoke).
    pub id: i64,
    /// Owner.
    pub user: String,
    /// Label.
    pub name: String,
    /// First characters of the secret.
    pub prefix: String,
    /// `api` or `legacy`.
    pub kind: TokenKind,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, recorded lazily.
    pub last_used_at: Option<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// RFC 3339.
    pub revoked_at: Option<String>,
}

impl From<&ApiToken> for TokenView {
    fn from(t: &ApiToken) -> Self {
        let status = t.status(now_ms());
        TokenView {
            id: t.id,
            user: t.username.clone(),
            name: t.name.clone(),
            prefix: t.prefix.clone(),
            kind: t.kind,
            status,
            created_at: format_ms(t.created_at),
            last_used_at: t.last_used_at.map(format_ms),
            expires_at: t.expires_at.map(format_ms),
            revoked_at: t.revoked_at.map(format_ms),
        }
    }
}

/// A user as shown to admins.
#[derive(Serialize)]
pub struct UserView {
    /// Name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// RFC 3339.
    pub created_at: String,
    /// Whether the password still is an imported bcrypt hash.
    pub legacy_password: bool,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            username: u.username.clone(),
            role: u.role,
            disabled: u.disabled,
            created_at: format_ms(u.created_at),
            legacy_password: crate::auth::password::is_bcrypt(&u.password_hash),
        }
    }
}
