//! Why a secret is accepted or refused, exactly (`comfygate doctor --token`, `env check`).
//!
//! The secret is looked up by its digest, as [`super::Auth::authenticate`] does, and judged in
//! the same order (owner disabled, then revoked, then expired), so the verdict names the same
//! cause as the 401 a client gets. The store keeps revoked and expired tokens (a row goes only
//! with its owner's account), so "unknown" means the store never had this secret or its owner
//! was removed: a stale or mistyped copy. Nothing here returns, logs or prints the secret: a
//! [`Diagnosis`] carries a digest fingerprint and the token's stored listing prefix only.

use serde::Serialize;

use super::credentials::check_secret_shape;
use super::password::is_bcrypt;
use super::secret::{self, TOKEN_PREFIX};
use crate::store::{ApiToken, Role, Store, StoreError, TokenKind, User};

/// What a secret looks like, before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A comfygate API token (`cg_…`).
    Api,
    /// ComfyUI-Login's token: the bcrypt hash of its password (`$2b$…`).
    Legacy,
    /// Neither.
    Other,
}

/// The facts about a stored token the verdict is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenFacts {
    /// Store id (what `comfygate token revoke` and listings show).
    pub id: i64,
    /// The owner's label for it.
    pub name: String,
    /// The first characters shown in listings (never enough to use it).
    pub prefix: String,
    /// `api` or `legacy`.
    pub kind: TokenKind,
    /// The owner's name.
    pub owner: String,
    /// The owner's role.
    pub role: Role,
    /// Unix ms; `None` never expires.
    pub expires_at: Option<i64>,
}

/// Whether the secret is accepted, or exactly why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Accepted (a legacy token too, when it was imported to be kept).
    Valid {
        /// The token.
        token: TokenFacts,
    },
    /// No such token: a stale or mistyped copy (or its owner's account was removed).
    Unknown,
    /// The value of a login session's cookie, which is not accepted as a token.
    SessionId,
    /// Revoked at `revoked_at` (unix ms).
    Revoked {
        /// The token.
        token: TokenFacts,
        /// Unix ms.
        revoked_at: i64,
    },
    /// Past its expiry (`token.expires_at`).
    Expired {
        /// The token.
        token: TokenFacts,
    },
    /// The owner's account is disabled.
    OwnerDisabled {
        /// The token.
        token: TokenFacts,
    },
    /// Not something a client could send as a token.
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
}

impl Verdict {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Valid { .. } => "valid",
            Verdict::Unknown => "unknown",
            Verdict::SessionId => "session_id",
            Verdict::Revoked { .. } => "revoked",
            Verdict::Expired { .. } => "expired",
            Verdict::OwnerDisabled { .. } => "owner_disabled",
            Verdict::Malformed { .. } => "malformed",
        }
    }
}

/// The verdict on one secret, with what may be shown of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// `sha256:` and the first 8 hex digits of its digest: tells two copies apart, reveals nothing.
    pub fingerprint: String,
    /// What it looks like.
    pub shape: Shape,
    /// Accepted or why not.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Diagnosis {
    /// Whether a client presenting it is authenticated.
    pub fn is_valid(&self) -> bool {
        matches!(self.verdict, Verdict::Valid { .. })
    }

    /// One sentence for people: whose it is, or why it is refused and what to do.
    pub fn explain(&self, now: i64) -> String {
        let id = |t: &TokenFacts| format!("token #{} `{}` ({}…) of {}", t.id, t.name, t.prefix, t.owner);
        match &self.verdict {
            Verdict::Valid { token } => {
                let legacy = if token.kind == TokenKind::Legacy { " (a kept ComfyUI-Login legacy token)" } else { "" };
                let expiry = match token.expires_at {
                    Some(at) => format!("expires {}", when(at, now)),
                    None => "never expires".to_owned(),
                };
                format!("accepted: {}, role {}{legacy}, {expiry}", id(token), token.role.as_str())
            }
            Verdict::Unknown => match self.shape {
                Shape::Legacy => format!(
                    "refused: a ComfyUI-Login token ({}) that was not kept; import it with `comfygate import \
                     comfyui-login PASSWORD --keep-legacy-token`, or better give the client a new `cg_` token",
                    self.fingerprint
                ),
                Shape::Api => format!(
                    "refused: unknown token ({}): a stale or mistyped copy, or its owner was removed; copy the \
                     current token, or create one with `comfygate token create`",
                    self.fingerprint
                ),
                Shape::Other => format!(
                    "refused: not a comfygate token (`cg_…`) nor a ComfyUI-Login token (`$2b$…`) ({})",
                    self.fingerprint
                ),
            },
            Verdict::SessionId => {
                "refused: this is a login session's cookie value, not an API token; create a token on \
                 /comfygate/account or with `comfygate token create`"
                    .to_owned()
            }
            Verdict::Revoked { token, revoked_at } => {
                format!("refused: {} was revoked {}; create a new one", id(token), when(*revoked_at, now))
            }
            Verdict::Expired { token } => {
                let at = token.expires_at.map_or_else(String::new, |at| format!(" {}", when(at, now)));
                format!("refused: {} expired{at}; create a new one", id(token))
            }
            Verdict::OwnerDisabled { token } => format!(
                "refused: {} belongs to a disabled account; enable it with `comfygate user enable {}`",
                id(token),
                token.owner
            ),
            Verdict::Malformed { reason } => format!("refused: malformed token: {reason}"),
        }
    }
}

/// Judges `secret` as authentication would at `now` (unix ms).
pub async fn diagnose(store: &dyn Store, secret: &str, now: i64) -> Result<Diagnosis, StoreError> {
    let digest = secret::digest(secret);
    let fingerprint = format!("sha256:{}", &secret::hex(&digest)[..8]);
    let shape = if secret.starts_with(TOKEN_PREFIX) {
        Shape::Api
    } else if is_bcrypt(secret) {
        Shape::Legacy
    } else {
        Shape::Other
    };
    let verdict = match malformed(secret) {
        Some(reason) => Verdict::Malformed { reason },
        None => lookup(store, &secret::hex(&digest), now).await?,
    };
    Ok(Diagnosis { fingerprint, shape, verdict })
}

/// What makes a secret impossible to send, most specific first.
fn malformed(secret: &str) -> Option<String> {
    let trimmed = secret.trim();
    if !trimmed.is_empty() && trimmed != secret {
        return Some("it has spaces or a line break around it (a copy that took too much?)".to_owned());
    }
    if trimmed.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")) {
        return Some("it includes the `Bearer ` scheme: give the token alone".to_owned());
    }
    check_secret_shape(secret).err().map(|e| e.to_string().trim_start_matches("malformed credentials: ").to_owned())
}

async fn lookup(store: &dyn Store, hex: &str, now: i64) -> Result<Verdict, StoreError> {
    let Some((token, user)) = store.token_by_hash(hex).await? else {
        if store.session_by_hash(hex).await?.is_some() {
            return Ok(Verdict::SessionId);
        }
        return Ok(Verdict::Unknown);
    };
    let revoked_at = token.revoked_at;
    let facts = facts(token, &user);
    // Authentication's order, so the verdict names the cause of the client's 401.
    Ok(if user.disabled {
        Verdict::OwnerDisabled { token: facts }
    } else if let Some(revoked_at) = revoked_at {
        Verdict::Revoked { token: facts, revoked_at }
    } else if facts.expires_at.is_some_and(|end| now >= end) {
        Verdict::Expired { token: facts }
    } else {
        Verdict::Valid { token: facts }
    })
}

fn facts(token: ApiToken, user: &User) -> TokenFacts {
    TokenFacts {
        id: token.id,
        name: token.name,
        prefix: token.prefix,
        kind: token.kind,
        owner: user.username.clone(),
        role: user.role,
        expires_at: token.expires_at,
    }
}

/// "in 90d 1h" / "5m 3s ago": two units at most.
fn when(at: i64, now: i64) -> String {
    let secs = (at - now).unsigned_abs() / 1000;
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let span = match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    };
    if at >= now { format!("in {span}") } else { format!("{span} ago") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn impossible_shapes_are_malformed_with_a_reason() {
        assert!(malformed("cg_abc\n").unwrap().contains("line break"));
        assert!(malformed("Bearer cg_abc").unwrap().contains("Bearer"));
        assert!(malformed("").unwrap().contains("empty"));
        assert!(malformed(&"x".repeat(300)).is_some());
        assert!(malformed("cg_\u{7f}x").is_some());
        assert_eq!(malformed("cg_abcdef"), None);
        assert_eq!(malformed("$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5k"), None);
    }

    use crate::store::{NewSession, NewToken, NewUser};

    const NOW: i64 = 1_700_000_000_000;

    async fn store() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        (dir, crate::store::open(&url).await.unwrap())
    }

    async fn user(store: &dyn Store, name: &str) -> User {
        let new = NewUser { username: name.into(), password_hash: "x".into(), role: Role::User };
        store.create_user(new).await.unwrap()
    }

    async fn token(store: &dyn Store, owner: &User, secret: &str, kind: TokenKind, expires_at: Option<i64>) -> i64 {
        let new = NewToken {
            user_id: owner.id,
            name: format!("t{}", secret.len()),
            token_hash: secret::hex(&secret::digest(secret)),
            prefix: secret::display_prefix(secret),
            kind,
            created_at: NOW - 10,
            expires_at,
            minted_by_session: None,
            keep: false,
        };
        store.create_token(new).await.unwrap().id
    }

    #[tokio::test]
    async fn every_cause_is_told_apart_and_no_output_holds_the_secret() {
        let (_dir, store) = store().await;
        let store = store.as_ref();
        let alice = user(store, "alice").await;
        let bob = user(store, "bob").await;
        let legacy = "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5k";
        let valid = token(store, &alice, "cg_valid-secret-1", TokenKind::Api, Some(NOW + 3_600_000)).await;
        let revoked = token(store, &alice, "cg_revoked-secret-22", TokenKind::Api, None).await;
        store.revoke_token(revoked, NOW - 60_000).await.unwrap();
        token(store, &alice, "cg_expired-secret-333", TokenKind::Api, Some(NOW - 1)).await;
        token(store, &bob, "cg_disabled-owner-4444", TokenKind::Api, None).await;
        store.set_disabled(bob.id, true).await.unwrap();
        token(store, &alice, legacy, TokenKind::Legacy, None).await;
        let session = NewSession {
            token_hash: secret::hex(&secret::digest("session-cookie-value")),
            user_id: alice.id,
            created_at: NOW,
            expires_at: NOW + 1000,
            ip: "127.0.0.1".into(),
            user_agent: "test".into(),
        };
        store.create_session(session).await.unwrap();

        let cases: [(&str, &str, Shape); 9] = [
            ("cg_valid-secret-1", "valid", Shape::Api),
            ("cg_revoked-secret-22", "revoked", Shape::Api),
            ("cg_expired-secret-333", "expired", Shape::Api),
            ("cg_disabled-owner-4444", "owner_disabled", Shape::Api),
            ("cg_never-issued", "unknown", Shape::Api),
            (legacy, "valid", Shape::Legacy),
            ("$2b$12$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "unknown", Shape::Legacy),
            ("session-cookie-value", "session_id", Shape::Other),
            ("cg_valid-secret-1\n", "malformed", Shape::Api),
        ];
        for (secret, code, shape) in cases {
            let d = diagnose(store, secret, NOW).await.unwrap();
            assert_eq!((d.verdict.code(), d.shape), (code, shape), "{d:?}");
            let shown = format!("{} {} {d:?}", d.explain(NOW), serde_json::to_string(&d).unwrap());
            assert!(!shown.contains(secret.trim()), "the secret leaked: {shown}");
        }
        let d = diagnose(store, "cg_valid-secret-1", NOW).await.unwrap();
        let Verdict::Valid { token } = &d.verdict else { panic!("{d:?}") };
        assert_eq!((token.id, token.owner.as_str(), token.role), (valid, "alice", Role::User));
        assert_eq!(
            d.explain(NOW),
            format!("accepted: token #{valid} `t17` (cg_valid-se…) of alice, role user, expires in 1h")
        );
        let d = diagnose(store, "cg_revoked-secret-22", NOW).await.unwrap();
        assert!(d.explain(NOW).contains("was revoked 1m ago"), "{}", d.explain(NOW));
        let d = diagnose(store, legacy, NOW).await.unwrap();
        assert!(d.explain(NOW).contains("legacy"), "{}", d.explain(NOW));
    }

    #[test]
    fn times_are_relative() {
        assert_eq!(when(61_000, 0), "in 1m 1s");
        assert_eq!(when(0, 3_600_000), "1h ago");
        assert_eq!(when(90 * 86_400_000 + 3_725_000, 0), "in 90d 1h");
        assert_eq!(when(0, 5_000), "5s ago");
    }
}
