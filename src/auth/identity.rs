//! Who is asking: the result of authentication, handed down the request path.

use std::sync::Arc;

use crate::store::{Role, TokenKind};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Store id of the user.
    pub user_id: i64,
    /// User name (what ComfyUI sees as `comfy-user`).
    pub username: Arc<str>,
    /// Role.
    pub role: Role,
    /// How the caller proved it.
    pub method: AuthMethod,
}

impl Identity {
    /// Whether the caller may do admin-only things.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A login session (browser).
    Session {
        /// Store id of the session.
        session_id: i64,
        /// When the session was opened (unix ms): a young session may mint tokens without
        /// re-entering the password.
        created_at: i64,
    },
    /// An API token.
    Token {
        /// Store id of the token.
        token_id: i64,
        /// The token's label.
        name: Arc<str>,
        /// `cg_` or imported legacy token.
        kind: TokenKind,
    },
}
