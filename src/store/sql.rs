//! The SQL shared by every database: one text per query, written so that SQLite and
//! PostgreSQL both accept it (`$n` parameters, `RETURNING`, `ON CONFLICT`).
//!
//! [`impl_store!`] implements [`Store`](super::Store) for a struct holding a `pool`.

use super::{ApiToken, Job, JobState, Session, StoreError, StoredFile, TokenKind, User};

/// A `users` row.
#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: i64,
    username: String,
    password_hash: String,
    role: String,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;

    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            id: r.id,
            username: r.username,
            password_hash: r.password_hash,
            role: r.role.parse()?,
            disabled: r.disabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// An `api_tokens` row joined with its owner.
#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    id: i64,
    user_id: i64,
    name: String,
    prefix: String,
    kind: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    minted_by_session: Option<i64>,
    keep: bool,
    #[sqlx(flatten)]
    owner: OwnerRow,
}

/// The owner columns of a joined row (`u_*` aliases).
#[derive(sqlx::FromRow)]
pub(super) struct OwnerRow {
    u_username: String,
    u_password_hash: String,
    u_role: String,
    u_disabled: bool,
    u_created_at: i64,
    u_updated_at: i64,
}

impl OwnerRow {
    fn into_user(self, id: i64) -> Result<User, StoreError> {
        Ok(User {
            id,
            username: self.u_username,
            password_hash: self.u_password_hash,
            role: self.u_role.parse()?,
            disabled: self.u_disabled,
            created_at: self.u_created_at,
            updated_at: self.u_updated_at,
        })
    }
}

impl TokenRow {
    pub(super) fn into_pair(self) -> Result<(ApiToken, User), StoreError> {
        let token = ApiToken {
            id: self.id,
            user_id: self.user_id,
            username: self.owner.u_username.clone(),
            name: self.name,
            prefix: self.prefix,
            kind: TokenKind::parse(&self.kind)?,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            minted_by_session: self.minted_by_session,
            keep: self.keep,
        };
        Ok((token, self.owner.into_user(self.user_id)?))
    }
}

/// A `sessions` row joined with its user.
#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: i64,
    user_id: i64,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    ip: String,
    user_agent: String,
    revoked_at: Option<i64>,
    #[sqlx(flatten)]
    owner: OwnerRow,
}

impl SessionRow {
    pub(super) fn into_pair(self) -> Result<(Session, User), StoreError> {
        let session = Session {
            id: self.id,
            user_id: self.user_id,
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            expires_at: self.expires_at,
            ip: self.ip,
            user_agent: self.user_agent,
            revoked_at: self.revoked_at,
        };
        Ok((session, self.owner.into_user(self.user_id)?))
    }
}

/// A `jobs` row.
#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    prompt_id: String,
    public_id: String,
    user_id: i64,
    token_id: Option<i64>,
    username: String,
    client_id: String,
    number: i64,
    request: String,
    state: String,
    backend: Option<String>,
    error: Option<String>,
    created_at: i64,
    outcome: Option<String>,
    in_history: bool,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        Ok(Job {
            prompt_id: r.prompt_id,
            public_id: r.public_id,
            user_id: r.user_id,
            token_id: r.token_id,
            username: r.username,
            client_id: r.client_id,
            number: r.number,
            request: r.request,
            state: JobState::parse(&r.state)?,
            backend: r.backend,
            error: r.error,
            created_at: r.created_at,
            outcome: r.outcome,
            in_history: r.in_history,
        })
    }
}

/// A `job_files` row.
#[derive(sqlx::FromRow)]
pub(super) struct FileRow {
    backend: String,
    kind: String,
    subfolder: String,
    filename: String,
    prompt_id: Option<String>,
    user_id: Option<i64>,
}

impl From<FileRow> for StoredFile {
    fn from(r: FileRow) -> Self {
        StoredFile {
            backend: r.backend,
            kind: r.kind,
            subfolder: r.subfolder,
            filename: r.filename,
            prompt_id: r.prompt_id,
            user_id: r.user_id,
        }
    }
}

pub(super) const JOB_COLUMNS: &str = "prompt_id, COALESCE(public_id, prompt_id) AS public_id, user_id, token_id, \
     username, client_id, number, request, state, backend, error, created_at, outcome, in_history";

/// The states a job ends in (never left).
pub(super) const ENDED_STATES: &str = "('done', 'failed', 'cancelled')";

pub(super) const USER_COLUMNS: &str = "id, username, password_hash, role, disabled, created_at, updated_at";

pub(super) const TOKEN_SELECT: &str = "SELECT t.id, t.user_id, t.name, t.prefix, t.kind, t.created_at, \
     t.last_used_at, t.expires_at, t.revoked_at, t.minted_by_session, t.keep, u.username AS u_username, \
     u.password_hash AS u_password_hash, u.role AS u_role, u.disabled AS u_disabled, \
     u.created_at AS u_created_at, u.updated_at AS u_updated_at \
     FROM api_tokens t JOIN users u ON u.id = t.user_id";

pub(super) const SESSION_SELECT: &str = "SELECT s.id, s.user_id, s.created_at, s.last_seen_at, \
     s.expires_at, s.ip, s.user_agent, s.revoked_at, u.username AS u_username, \
     u.password_hash AS u_password_hash, u.role AS u_role, u.disabled AS u_disabled, \
     u.created_at AS u_created_at, u.updated_at AS u_updated_at \
     FROM sessions s JOIN users u ON u.id = s.user_id";

/// Revokes the unkept session-minted tokens of user `$2` (at `$1`), returning their ids.
pub(super) const REVOKE_USER_SESSION_TOKENS: &str = "UPDATE api_tokens SET revoked_at = $1 \
     WHERE user_id = $2 AND minted_by_session IS NOT NULL AND keep = FALSE AND revoked_at IS NULL RETURNING id";

/// Revokes the unkept tokens minted by session `$2` (at `$1`), returning their ids.
pub(super) const REVOKE_SESSION_TOKENS: &str = "UPDATE api_tokens SET revoked_at = $1 \
     WHERE minted_by_session = $2 AND keep = FALSE AND revoked_at IS NULL RETURNING id";

pub(super) const BUMP_EPOCH: &str = "UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 1";

/// Takes one attempt from key `$1` at `$2` (a key quiet since before `$3` starts afresh) unless
/// it is blocked or `$4` attempts are failed or in flight: one statement, so atomic in both
/// databases. Returns a row only when granted.
pub(super) const TAKE_LOGIN_ATTEMPT: &str = "INSERT INTO login_throttle \
     (throttle_key, attempts, lock_ms, blocked_until, updated_at) VALUES ($1, 1, 0, 0, $2) \
     ON CONFLICT (throttle_key) DO UPDATE SET \
     attempts = CASE WHEN login_throttle.updated_at < $3 AND login_throttle.blocked_until <= $2 THEN 1 \
                     ELSE login_throttle.attempts + 1 END, \
     lock_ms = CASE WHEN login_throttle.updated_at < $3 AND login_throttle.blocked_until <= $2 THEN 0 \
                    ELSE login_throttle.lock_ms END, \
     updated_at = $2 \
     WHERE login_throttle.blocked_until <= $2 \
     AND (login_throttle.updated_at < $3 OR login_throttle.attempts < $4) \
     RETURNING attempts";

/// After a failed attempt on key `$1` whose round of `$2` is full: blocks it at `$3` for
/// `$4` ms, doubling the previous block up to `$5`, and leaves one attempt for after the block.
pub(super) const BLOCK_LOGIN_KEY: &str = "UPDATE login_throttle SET \
     lock_ms = CASE WHEN lock_ms = 0 THEN $4 WHEN lock_ms * 2 > $5 THEN $5 ELSE lock_ms * 2 END, \
     blocked_until = $3 + CASE WHEN lock_ms = 0 THEN $4 WHEN lock_ms * 2 > $5 THEN $5 ELSE lock_ms * 2 END, \
     attempts = $2 - 1 \
     WHERE throttle_key = $1 AND attempts >= $2";

pub(super) fn map_conflict(what: &str, e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what.to_owned()),
        _ => StoreError::Database(e),
    }
}

/// Implements [`Store`](super::Store) for `$store { pool: sqlx::Pool<$db> }`.
macro_rules! impl_store {
    ($store:ty, $db:ty, shared: $shared:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn shared(&self) -> bool {
                $shared
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            async fn create_user(&self, new: NewUser) -> StoreResult<User> {
                let now = $crate::time::now_ms();
                let sql = format!(
                    "INSERT INTO users (username, password_hash, role, disabled, created_at, updated_at) \
                     VALUES ($1, $2, $3, FALSE, $4, $4) RETURNING {USER_COLUMNS}"
                );
                let row: UserRow = sqlx::query_as(&sql)
                    .bind(&new.username)
                    .bind(&new.password_hash)
                    .bind(new.role.as_str())
                    .bind(now)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| map_conflict(&new.username, e))?;
                row.try_into()
            }

            async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
                let row: Option<UserRow> = sqlx::query_as(&sql).bind(username).fetch_optional(&self.pool).await?;
                row.map(User::try_from).transpose()
            }

            async fn list_users(&self) -> StoreResult<Vec<User>> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username");
                let rows: Vec<UserRow> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
                rows.into_iter().map(User::try_from).collect()
            }

            async fn count_users(&self) -> StoreResult<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?)
            }

            async fn count_active_admins(&self) -> StoreResult<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = FALSE")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn set_password(&self, user_id: i64, password_hash: &str) -> StoreResult<Vec<i64>> {
                let now = $crate::time::now_ms();
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                    .bind(password_hash)
                    .bind(now)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                let revoked: Vec<i64> = sqlx::query_scalar(REVOKE_USER_SESSION_TOKENS)
                    .bind(now)
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await?;
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(revoked)
            }

            async fn rehash_password(&self, user_id: i64, password_hash: &str) -> StoreResult<()> {
                sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                    .bind(password_hash)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_disabled(&self, user_id: i64, disabled: bool) -> StoreResult<()> {
                let now = $crate::time::now_ms();
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3")
                    .bind(disabled)
                    .bind(now)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                if disabled {
                    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                        .bind(now)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_role(&self, user_id: i64, role: Role) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3")
                    .bind(role.as_str())
                    .bind($crate::time::now_ms())
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete_user(&self, user_id: i64) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM api_tokens WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM login_addresses WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(&mut *tx).await?;
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_token(&self, new: NewToken) -> StoreResult<ApiToken> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO api_tokens (user_id, name, token_hash, prefix, kind, created_at, expires_at, \
                     minted_by_session, keep) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(new.user_id)
                .bind(&new.name)
                .bind(&new.token_hash)
                .bind(&new.prefix)
                .bind(new.kind.as_str())
                .bind(new.created_at)
                .bind(new.expires_at)
                .bind(new.minted_by_session)
                .bind(new.keep)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| map_conflict(&new.name, e))?;
                let sql = format!("{TOKEN_SELECT} WHERE t.id = $1");
                let row: TokenRow = sqlx::query_as(&sql).bind(id).fetch_one(&self.pool).await?;
                Ok(row.into_pair()?.0)
            }

            async fn list_tokens(&self, user_id: Option<i64>) -> StoreResult<Vec<ApiToken>> {
                let sql = format!(
                    "{TOKEN_SELECT} WHERE ($1 IS NULL OR t.user_id = $1) ORDER BY u.username, t.created_at, t.id"
                );
                let rows: Vec<TokenRow> = sqlx::query_as(&sql).bind(user_id).fetch_all(&self.pool).await?;
                rows.into_iter().map(|r| r.into_pair().map(|(t, _)| t)).collect()
            }

            async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<(ApiToken, User)>> {
                let sql = format!("{TOKEN_SELECT} WHERE t.token_hash = $1");
                let row: Option<TokenRow> = sqlx::query_as(&sql).bind(token_hash).fetch_optional(&self.pool).await?;
                row.map(TokenRow::into_pair).transpose()
            }

            async fn revoke_token(&self, token_id: i64, now: i64) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(token_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done > 0 {
                    sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(done > 0)
            }

            async fn record_token_use(&self, uses: &UseTimes) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                for (id, at) in uses {
                    sqlx::query(
                        "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 \
                         AND (last_used_at IS NULL OR last_used_at < $1)",
                    )
                    .bind(*at)
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn create_session(&self, new: NewSession) -> StoreResult<Session> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at, ip, user_agent) \
                     VALUES ($1, $2, $3, $3, $4, $5, $6) RETURNING id",
                )
                .bind(&new.token_hash)
                .bind(new.user_id)
                .bind(new.created_at)
                .bind(new.expires_at)
                .bind(&new.ip)
                .bind(&new.user_agent)
                .fetch_one(&self.pool)
                .await?;
                Ok(Session {
                    id,
                    user_id: new.user_id,
                    created_at: new.created_at,
                    last_seen_at: new.created_at,
                    expires_at: new.expires_at,
                    ip: new.ip,
                    user_agent: new.user_agent,
                    revoked_at: None,
                })
            }

            async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<(Session, User)>> {
                let sql = format!("{SESSION_SELECT} WHERE s.token_hash = $1");
                let row: Option<SessionRow> = sqlx::query_as(&sql).bind(token_hash).fetch_optional(&self.pool).await?;
                row.map(SessionRow::into_pair).transpose()
            }

            async fn revoke_session(&self, session_id: i64, now: i64) -> StoreResult<Vec<i64>> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                let revoked: Vec<i64> = sqlx::query_scalar(REVOKE_SESSION_TOKENS)
                    .bind(now)
                    .bind(session_id)
                    .fetch_all(&mut *tx)
                    .await?;
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(revoked)
            }

            async fn record_session_use(&self, uses: &UseTimes) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                for (id, at) in uses {
                    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
                        .bind(*at)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn count_sessions(&self, now: i64, idle_since: i64) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at >= $1 AND last_seen_at >= $2",
                )
                .bind(now)
                .bind(idle_since)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn purge_sessions(&self, now: i64, idle_since: i64) -> StoreResult<u64> {
                Ok(sqlx::query(
                    "DELETE FROM sessions WHERE revoked_at IS NOT NULL OR expires_at < $1 OR last_seen_at < $2",
                )
                .bind(now)
                .bind(idle_since)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn take_login_attempt(
                &self,
                key: &str,
                limit: i64,
                now: i64,
                forget_before: i64,
            ) -> StoreResult<Option<i64>> {
                let granted: Option<i64> = sqlx::query_scalar(TAKE_LOGIN_ATTEMPT)
                    .bind(key)
                    .bind(now)
                    .bind(forget_before)
                    .bind(limit)
                    .fetch_optional(&self.pool)
                    .await?;
                if granted.is_some() {
                    return Ok(None);
                }
                let until: Option<i64> =
                    sqlx::query_scalar("SELECT blocked_until FROM login_throttle WHERE throttle_key = $1")
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(Some(until.unwrap_or(0)))
            }

            async fn login_attempt_failed(
                &self,
                key: &str,
                limit: i64,
                now: i64,
                base_ms: i64,
                max_ms: i64,
            ) -> StoreResult<()> {
                sqlx::query(BLOCK_LOGIN_KEY)
                    .bind(key)
                    .bind(limit)
                    .bind(now)
                    .bind(base_ms)
                    .bind(max_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn return_login_attempt(&self, key: &str, forget: bool) -> StoreResult<()> {
                let sql = if forget {
                    "DELETE FROM login_throttle WHERE throttle_key = $1"
                } else {
                    "UPDATE login_throttle SET attempts = attempts - 1 WHERE throttle_key = $1 AND attempts > 0"
                };
                sqlx::query(sql).bind(key).execute(&self.pool).await?;
                Ok(())
            }

            async fn purge_login_throttle(&self, before: i64) -> StoreResult<u64> {
                Ok(sqlx::query("DELETE FROM login_throttle WHERE updated_at < $1 AND blocked_until < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn record_login_address(&self, user_id: i64, address: &str, now: i64) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO login_addresses (user_id, address, last_login_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, address) DO UPDATE SET last_login_at = excluded.last_login_at",
                )
                .bind(user_id)
                .bind(address)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn known_login_address(&self, user_id: i64, address: &str, since: i64) -> StoreResult<bool> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT user_id FROM login_addresses WHERE user_id = $1 AND address = $2 AND last_login_at >= $3",
                )
                .bind(user_id)
                .bind(address)
                .bind(since)
                .fetch_optional(&self.pool)
                .await?;
                Ok(found.is_some())
            }

            async fn blocked_login_keys(&self, now: i64) -> StoreResult<Vec<(String, i64)>> {
                Ok(sqlx::query_as("SELECT throttle_key, blocked_until FROM login_throttle WHERE blocked_until > $1")
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn clear_login_keys(&self, exact: &str, prefix: &str) -> StoreResult<u64> {
                // substr, not LIKE: names may hold `_`, a LIKE wildcard.
                let len = i32::try_from(prefix.chars().count()).map_err(|_| $crate::store::StoreError::Corrupt("throttle key too long".to_owned()))?;
                Ok(sqlx::query("DELETE FROM login_throttle WHERE throttle_key = $1 OR substr(throttle_key, 1, $2) = $3")
                    .bind(exact)
                    .bind(len)
                    .bind(prefix)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn last_logins(&self) -> StoreResult<Vec<(i64, i64)>> {
                Ok(sqlx::query_as("SELECT user_id, MAX(last_login_at) FROM login_addresses GROUP BY user_id")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn sessions_of(&self, user_id: i64, now: i64) -> StoreResult<Vec<Session>> {
                let sql = format!(
                    "{SESSION_SELECT} WHERE s.user_id = $1 AND s.revoked_at IS NULL AND s.expires_at >= $2 \
                     ORDER BY s.created_at DESC, s.id DESC"
                );
                let rows: Vec<SessionRow> = sqlx::query_as(&sql).bind(user_id).bind(now).fetch_all(&self.pool).await?;
                rows.into_iter().map(|r| r.into_pair().map(|(s, _)| s)).collect()
            }

            async fn max_bcrypt_cost(&self) -> StoreResult<Option<u32>> {
                // `$2b$12$...`: the cost is the two digits after the second `$`.
                let cost: Option<String> = sqlx::query_scalar(
                    "SELECT MAX(SUBSTR(password_hash, 5, 2)) FROM users WHERE password_hash LIKE $1",
                )
                .bind("$2_$__$%")
                .fetch_one(&self.pool)
                .await?;
                Ok(cost.and_then(|c| c.parse().ok()))
            }

            async fn revocation_epoch(&self) -> StoreResult<i64> {
                Ok(sqlx::query_scalar("SELECT epoch FROM revocation_epoch WHERE id = 1").fetch_one(&self.pool).await?)
            }

            async fn heartbeat(&self, instance: &str, applied_epoch: i64, now: i64) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO gateway_instances (id, started_at, heartbeat_at, applied_epoch) \
                     VALUES ($1, $2, $2, $3) ON CONFLICT (id) DO UPDATE \
                     SET heartbeat_at = excluded.heartbeat_at, applied_epoch = excluded.applied_epoch",
                )
                .bind(instance)
                .bind(now)
                .bind(applied_epoch)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn lagging_instances(&self, epoch: i64, alive_since: i64) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM gateway_instances WHERE heartbeat_at >= $1 AND applied_epoch < $2",
                )
                .bind(alive_since)
                .bind(epoch)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn remove_instance(&self, instance: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM gateway_instances WHERE id = $1").bind(instance).execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_job(&self, job: &Job) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO jobs (prompt_id, user_id, username, client_id, number, request, state, backend, \
                     error, created_at, updated_at, public_id, token_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12)",
                )
                .bind(&job.prompt_id)
                .bind(job.user_id)
                .bind(&job.username)
                .bind(&job.client_id)
                .bind(job.number)
                .bind(&job.request)
                .bind(job.state.as_str())
                .bind(&job.backend)
                .bind(&job.error)
                .bind(job.created_at)
                .bind(&job.public_id)
                .bind(job.token_id)
                .execute(&self.pool)
                .await
                .map_err(|e| map_conflict(&format!("prompt {}", job.public_id), e))?;
                Ok(())
            }

            async fn update_job(
                &self,
                prompt_id: &str,
                state: JobState,
                backend: Option<&str>,
                error: Option<&str>,
            ) -> StoreResult<()> {
                let sql = format!(
                    "UPDATE jobs SET state = $1, backend = COALESCE($2, backend), error = $3, updated_at = $4 \
                     WHERE prompt_id = $5 AND state NOT IN {}",
                    ENDED_STATES
                );
                sqlx::query(&sql)
                .bind(state.as_str())
                .bind(backend)
                .bind(error)
                .bind($crate::time::now_ms())
                .bind(prompt_id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn job(&self, prompt_id: &str) -> StoreResult<Option<Job>> {
                let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE prompt_id = $1");
                let row: Option<JobRow> = sqlx::query_as(&sql).bind(prompt_id).fetch_optional(&self.pool).await?;
                row.map(Job::try_from).transpose()
            }

            async fn job_of(&self, user_id: i64, public_id: &str) -> StoreResult<Option<Job>> {
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND COALESCE(public_id, prompt_id) = $2"
                );
                let row: Option<JobRow> =
                    sqlx::query_as(&sql).bind(user_id).bind(public_id).fetch_optional(&self.pool).await?;
                row.map(Job::try_from).transpose()
            }

            async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
                if states.is_empty() {
                    return Ok(Vec::new());
                }
                let placeholders: Vec<String> = (1..=states.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({}) ORDER BY number, created_at",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query_as::<_, JobRow>(&sql);
                for state in states {
                    query = query.bind(state.as_str());
                }
                query.fetch_all(&self.pool).await?.into_iter().map(Job::try_from).collect()
            }

            async fn job_requests(
                &self,
                prompt_ids: &[String],
            ) -> StoreResult<std::collections::HashMap<String, String>> {
                let mut out = std::collections::HashMap::with_capacity(prompt_ids.len());
                for chunk in prompt_ids.chunks(500) {
                    let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let sql =
                        format!("SELECT prompt_id, request FROM jobs WHERE prompt_id IN ({})", placeholders.join(", "));
                    let mut query = sqlx::query_as::<_, (String, String)>(&sql);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    out.extend(query.fetch_all(&self.pool).await?);
                }
                Ok(out)
            }

            async fn end_job(
                &self,
                prompt_id: &str,
                state: JobState,
                backend: Option<&str>,
                error: Option<&str>,
                outcome: Option<&str>,
            ) -> StoreResult<()> {
                let sql = format!(
                    "UPDATE jobs SET state = $1, backend = COALESCE($2, backend), error = $3, outcome = $4, \
                     ended_at = $5, updated_at = $5 WHERE prompt_id = $6 AND state NOT IN {ENDED_STATES}"
                );
                sqlx::query(&sql)
                    .bind(state.as_str())
                    .bind(backend)
                    .bind(error)
                    .bind(outcome)
                    .bind($crate::time::now_ms())
                    .bind(prompt_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn history_count(&self, user_id: Option<i64>) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE outcome IS NOT NULL AND in_history \
                     AND ($1 IS NULL OR user_id = $1)",
                )
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn history_page(&self, user_id: Option<i64>, offset: i64, limit: i64) -> StoreResult<Vec<Job>> {
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE outcome IS NOT NULL AND in_history \
                     AND ($1 IS NULL OR user_id = $1) ORDER BY ended_at, number LIMIT $2 OFFSET $3"
                );
                let rows: Vec<JobRow> =
                    sqlx::query_as(&sql).bind(user_id).bind(limit).bind(offset).fetch_all(&self.pool).await?;
                rows.into_iter().map(Job::try_from).collect()
            }

            async fn ended_jobs(
                &self,
                user_id: Option<i64>,
                failed: Option<bool>,
                newest_first: bool,
                offset: i64,
                limit: i64,
            ) -> StoreResult<Vec<Job>> {
                // The direction is one of two fixed words, never client text.
                let order = if newest_first { "DESC" } else { "ASC" };
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE outcome IS NOT NULL AND in_history \
                     AND ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR (state = 'failed') = $2) \
                     ORDER BY created_at {order}, number {order} LIMIT $3 OFFSET $4"
                );
                let query = sqlx::query_as(&sql).bind(user_id).bind(failed).bind(limit).bind(offset);
                let rows: Vec<JobRow> = query.fetch_all(&self.pool).await?;
                rows.into_iter().map(Job::try_from).collect()
            }

            async fn ended_count(&self, user_id: Option<i64>, failed: Option<bool>) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE outcome IS NOT NULL AND in_history \
                     AND ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR (state = 'failed') = $2)",
                )
                .bind(user_id)
                .bind(failed)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn hide_history(&self, user_id: Option<i64>, prompt_ids: Option<&[String]>) -> StoreResult<u64> {
                let Some(ids) = prompt_ids else {
                    return Ok(sqlx::query(
                        "UPDATE jobs SET in_history = FALSE WHERE in_history AND ($1 IS NULL OR user_id = $1)",
                    )
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected());
                };
                let mut hidden = 0;
                for chunk in ids.chunks(500) {
                    let placeholders: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "UPDATE jobs SET in_history = FALSE WHERE ($1 IS NULL OR user_id = $1) AND prompt_id IN ({})",
                        placeholders.join(", ")
                    );
                    let mut query = sqlx::query(&sql).bind(user_id);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    hidden += query.execute(&self.pool).await?.rows_affected();
                }
                Ok(hidden)
            }

            async fn purge_jobs(&self, ended_before: i64) -> StoreResult<u64> {
                let sql = format!("DELETE FROM jobs WHERE state IN {ENDED_STATES} AND updated_at < $1");
                Ok(sqlx::query(&sql).bind(ended_before).execute(&self.pool).await?.rows_affected())
            }

            async fn submissions_since(&self, user_id: i64, since: i64, limit: i64) -> StoreResult<Vec<i64>> {
                Ok(sqlx::query_scalar(
                    "SELECT created_at FROM jobs WHERE user_id = $1 AND created_at >= $2 \
                     ORDER BY created_at DESC LIMIT $3",
                )
                .bind(user_id)
                .bind(since)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn user_limits(&self, user_id: i64) -> StoreResult<$crate::store::UserLimits> {
                let row: Option<$crate::store::UserLimits> = sqlx::query_as(
                    "SELECT max_waiting, max_running, jobs_per_hour, max_upload_bytes, max_workflow_bytes, \
                     max_priority, default_priority, share_weight, gpu_seconds_per_day FROM user_limits WHERE user_id = $1",
                )
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.unwrap_or_default())
            }

            async fn set_user_limits(&self, user_id: i64, limits: &$crate::store::UserLimits) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO user_limits (user_id, max_waiting, max_running, jobs_per_hour, max_upload_bytes, \
                     max_workflow_bytes, updated_at, max_priority, default_priority, share_weight, gpu_seconds_per_day) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (user_id) DO \
                     UPDATE SET max_waiting = excluded.max_waiting, max_running = excluded.max_running, \
                     jobs_per_hour = excluded.jobs_per_hour, max_upload_bytes = excluded.max_upload_bytes, \
                     max_workflow_bytes = excluded.max_workflow_bytes, updated_at = excluded.updated_at, \
                     max_priority = excluded.max_priority, default_priority = excluded.default_priority, \
                     share_weight = excluded.share_weight, gpu_seconds_per_day = excluded.gpu_seconds_per_day",
                )
                .bind(user_id)
                .bind(limits.max_waiting)
                .bind(limits.max_running)
                .bind(limits.jobs_per_hour)
                .bind(limits.max_upload_bytes)
                .bind(limits.max_workflow_bytes)
                .bind($crate::time::now_ms())
                .bind(limits.max_priority)
                .bind(limits.default_priority)
                .bind(limits.share_weight)
                .bind(limits.gpu_seconds_per_day)
                .execute(&mut *tx)
                .await?;
                // Running gateways re-read what they cached about accounts.
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn owner_active(&self, user_id: i64, token_id: Option<i64>, now: i64) -> StoreResult<bool> {
                let user: Option<bool> = sqlx::query_scalar("SELECT disabled FROM users WHERE id = $1")
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await?;
                if user != Some(false) {
                    return Ok(false);
                }
                let Some(token_id) = token_id else { return Ok(true) };
                let live: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM api_tokens WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $3)",
                )
                .bind(token_id)
                .bind(user_id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(live.is_some())
            }

            async fn max_job_number(&self) -> StoreResult<i64> {
                let max: Option<i64> = sqlx::query_scalar("SELECT MAX(number) FROM jobs").fetch_one(&self.pool).await?;
                Ok(max.unwrap_or(0))
            }

            async fn next_job_number(&self) -> StoreResult<Option<i64>> {
                if !$shared {
                    return Ok(None);
                }
                Ok(Some(sqlx::query_scalar("SELECT nextval('job_numbers')").fetch_one(&self.pool).await?))
            }

            async fn take_scheduler_term(&self, instance: &str, now: i64) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "UPDATE scheduler_term SET term = term + 1, instance = $1, since = $2 WHERE id = 1 RETURNING term",
                )
                .bind(instance)
                .bind(now)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn claim_job(&self, prompt_id: &str, backend: &str, term: i64) -> StoreResult<bool> {
                // FOR SHARE (PostgreSQL): a claim and a new term's bump never pass each other, so
                // what the new holder reads of the queue includes every claim made before it.
                let lock = if $shared { " FOR SHARE" } else { "" };
                let sql = format!(
                    "UPDATE jobs SET state = 'dispatched', backend = $1, updated_at = $2 \
                     WHERE prompt_id = $3 AND state NOT IN {ENDED_STATES} \
                     AND EXISTS (SELECT 1 FROM scheduler_term WHERE id = 1 AND term = $4{lock})"
                );
                let claimed = sqlx::query(&sql)
                    .bind(backend)
                    .bind($crate::time::now_ms())
                    .bind(prompt_id)
                    .bind(term)
                    .execute(&self.pool)
                    .await?;
                Ok(claimed.rows_affected() > 0)
            }

            async fn held_jobs_brief(&self) -> StoreResult<Vec<Job>> {
                let columns = JOB_COLUMNS.replace("request,", "'' AS request,");
                let sql = format!(
                    "SELECT {columns} FROM jobs WHERE state IN ('queued', 'dispatched', 'running') \
                     ORDER BY number, created_at"
                );
                sqlx::query_as::<_, JobRow>(&sql)
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(Job::try_from)
                    .collect()
            }

            async fn queued_job_ids(&self, before: i64) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT prompt_id FROM jobs WHERE state = 'queued' AND created_at < $1 ORDER BY number",
                )
                .bind(before)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn record_file(&self, file: &StoredFile) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO job_files (backend, kind, subfolder, filename, prompt_id, user_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, subfolder, filename, backend) DO UPDATE \
                     SET prompt_id = excluded.prompt_id, user_id = excluded.user_id, created_at = excluded.created_at",
                )
                .bind(&file.backend)
                .bind(&file.kind)
                .bind(&file.subfolder)
                .bind(&file.filename)
                .bind(&file.prompt_id)
                .bind(file.user_id)
                .bind($crate::time::now_ms())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn files_of(&self, user_id: i64, kind: &str, limit: i64) -> StoreResult<Vec<StoredFile>> {
                let rows: Vec<FileRow> = sqlx::query_as(
                    "SELECT backend, kind, subfolder, filename, prompt_id, user_id FROM job_files \
                     WHERE user_id = $1 AND kind = $2 ORDER BY created_at DESC LIMIT $3",
                )
                .bind(user_id)
                .bind(kind)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(StoredFile::from).collect())
            }

            async fn file(
                &self,
                kind: &str,
                subfolder: &str,
                filename: &str,
                prefer_user: i64,
            ) -> StoreResult<Option<StoredFile>> {
                let row: Option<FileRow> = sqlx::query_as(
                    "SELECT backend, kind, subfolder, filename, prompt_id, user_id FROM job_files \
                     WHERE kind = $1 AND subfolder = $2 AND filename = $3 \
                     ORDER BY CASE WHEN user_id = $4 THEN 0 ELSE 1 END, created_at DESC LIMIT 1",
                )
                .bind(kind)
                .bind(subfolder)
                .bind(filename)
                .bind(prefer_user)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(StoredFile::from))
            }

            async fn insert_audit_event(&self, record: &$crate::store::AuditRecord) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO audit_events (at, event, username, token_id, address, line) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(record.at)
                .bind(&record.event)
                .bind(&record.username)
                .bind(record.token_id)
                .bind(&record.address)
                .bind(&record.line)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn audit_events(&self, query: &$crate::store::AuditQuery) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT line FROM audit_events WHERE ($1 IS NULL OR username = $1) \
                     AND ($2 IS NULL OR event = $2) AND ($3 IS NULL OR at >= $3) \
                     ORDER BY at DESC, id DESC LIMIT $4 OFFSET $5",
                )
                .bind(&query.username)
                .bind(&query.event)
                .bind(query.since)
                .bind(query.limit)
                .bind(query.offset)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn purge_audit_events(&self, before: i64) -> StoreResult<u64> {
                Ok(sqlx::query("DELETE FROM audit_events WHERE at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn audit_token_addresses(&self, token_id: i64, event: &str, limit: i64) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT address FROM audit_events \
                     WHERE token_id = $1 AND event = $2 AND address IS NOT NULL LIMIT $3",
                )
                .bind(token_id)
                .bind(event)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn claim_idempotency_key(
                &self,
                user_id: i64,
                key: &str,
                body_sha256: &str,
                now: i64,
                expired_before: i64,
                abandoned_before: i64,
            ) -> StoreResult<bool> {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2 \
                     AND (created_at < $3 OR (status IS NULL AND created_at < $4))",
                )
                .bind(user_id)
                .bind(key)
                .bind(expired_before)
                .bind(abandoned_before)
                .execute(&self.pool)
                .await?;
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (user_id, idem_key, body_sha256, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, idem_key) DO NOTHING",
                )
                .bind(user_id)
                .bind(key)
                .bind(body_sha256)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(inserted == 1)
            }

            async fn idempotency_key(
                &self,
                user_id: i64,
                key: &str,
            ) -> StoreResult<Option<$crate::store::IdempotencyRecord>> {
                Ok(sqlx::query_as(
                    "SELECT body_sha256, status, answer, retry_after, created_at FROM idempotency_keys \
                     WHERE user_id = $1 AND idem_key = $2",
                )
                .bind(user_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn answer_idempotency_key(
                &self,
                user_id: i64,
                key: &str,
                status: i32,
                answer: &str,
                retry_after: Option<i64>,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE idempotency_keys SET status = $3, answer = $4, retry_after = $5 \
                     WHERE user_id = $1 AND idem_key = $2 AND status IS NULL",
                )
                .bind(user_id)
                .bind(key)
                .bind(status)
                .bind(answer)
                .bind(retry_after)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn release_idempotency_key(&self, user_id: i64, key: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2 AND status IS NULL")
                    .bind(user_id)
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn purge_idempotency_keys(&self, before: i64) -> StoreResult<u64> {
                Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn insert_delivery(&self, new: &$crate::store::NewDelivery) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO webhook_outbox (message_id, user_id, job_id, event, url, body, state, attempts, \
                     created_at, next_attempt_at, locked_until) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, 0) \
                     ON CONFLICT (message_id) DO NOTHING",
                )
                .bind(&new.message_id)
                .bind(new.user_id)
                .bind(&new.job_id)
                .bind(&new.event)
                .bind(&new.url)
                .bind(&new.body)
                .bind(new.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn claim_deliveries(&self, now: i64, lock_until: i64, limit: i64) -> StoreResult<Vec<$crate::store::Delivery>> {
                // The outer conditions are checked again on the row itself: a concurrent claim
                // that got there first leaves it out (PostgreSQL re-evaluates them after the
                // other transaction commits; SQLite writes one at a time).
                Ok(sqlx::query_as(
                    "UPDATE webhook_outbox SET locked_until = $1 WHERE id IN (SELECT id FROM webhook_outbox \
                     WHERE state = 'pending' AND next_attempt_at <= $2 AND locked_until <= $2 \
                     ORDER BY next_attempt_at, id LIMIT $3) AND state = 'pending' AND locked_until <= $2 \
                     RETURNING id, message_id, user_id, job_id, event, url, body, state, attempts, created_at, \
                     next_attempt_at, delivered_at, last_error",
                )
                .bind(lock_until)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn delivery_attempted(&self, id: i64, outcome: &$crate::store::Attempted) -> StoreResult<()> {
                use $crate::store::Attempted;
                let (state, next, delivered, error): (&str, Option<i64>, Option<i64>, Option<&str>) = match outcome {
                    Attempted::Delivered(at) => ("delivered", None, Some(*at), None),
                    Attempted::Retry(at, e) => ("pending", Some(*at), None, Some(e.as_str())),
                    Attempted::Failed(e) => ("failed", None, None, Some(e.as_str())),
                };
                sqlx::query(
                    "UPDATE webhook_outbox SET state = $1, attempts = attempts + 1, \
                     next_attempt_at = COALESCE($2, next_attempt_at), delivered_at = $3, \
                     last_error = COALESCE($4, last_error), locked_until = 0 WHERE id = $5 AND state = 'pending'",
                )
                .bind(state)
                .bind(next)
                .bind(delivered)
                .bind(error)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn deliveries(&self, user_id: Option<i64>, limit: i64) -> StoreResult<Vec<$crate::store::Delivery>> {
                Ok(sqlx::query_as(
                    "SELECT id, message_id, user_id, job_id, event, url, body, state, attempts, created_at, \
                     next_attempt_at, delivered_at, last_error FROM webhook_outbox \
                     WHERE ($1 IS NULL OR user_id = $1) ORDER BY created_at DESC, id DESC LIMIT $2",
                )
                .bind(user_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn next_delivery_due(&self) -> StoreResult<Option<i64>> {
                Ok(sqlx::query_scalar("SELECT MIN(CASE WHEN locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END) \
                     FROM webhook_outbox WHERE state = 'pending'",)
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn purge_deliveries(&self, before: i64) -> StoreResult<u64> {
                Ok(sqlx::query("DELETE FROM webhook_outbox WHERE state <> 'pending' AND created_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn set_token_webhook(&self, token_id: i64, spec: Option<&str>) -> StoreResult<()> {
                sqlx::query("UPDATE api_tokens SET webhook = $1 WHERE id = $2")
                    .bind(spec)
                    .bind(token_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn token_webhook(&self, token_id: i64) -> StoreResult<Option<String>> {
                let found: Option<Option<String>> = sqlx::query_scalar("SELECT webhook FROM api_tokens WHERE id = $1")
                    .bind(token_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(found.flatten())
            }

            async fn record_usage(&self, record: &$crate::store::UsageRecord) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO job_usage (prompt_id, user_id, username, token_id, backend, priority, created_at, \
                     started_at, ended_at, wait_ms, run_ms, outcome, outputs) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (prompt_id) DO NOTHING",
                )
                .bind(&record.prompt_id)
                .bind(record.user_id)
                .bind(&record.username)
                .bind(record.token_id)
                .bind(&record.backend)
                .bind(&record.priority)
                .bind(record.created_at)
                .bind(record.started_at)
                .bind(record.ended_at)
                .bind(record.wait_ms())
                .bind(record.run_ms)
                .bind(&record.outcome)
                .bind(record.outputs)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if inserted {
                    for model in &record.models {
                        sqlx::query(
                            "INSERT INTO job_usage_models (prompt_id, model) VALUES ($1, $2) \
                             ON CONFLICT (prompt_id, model) DO NOTHING",
                        )
                        .bind(&record.prompt_id)
                        .bind(model)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(inserted)
            }

            async fn usage_totals(
                &self,
                query: &$crate::store::UsageQuery,
            ) -> StoreResult<Vec<$crate::store::UsageTotals>> {
                let rows: Vec<$crate::store::usage::TotalsRow> =
                    sqlx::query_as(&$crate::store::usage::totals_sql(query.by))
                        .bind(query.since)
                        .bind(query.until)
                        .bind(query.user_id)
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().map(|r| r.into_totals(query.by)).collect())
            }

            async fn gpu_ms_since(&self, user_id: Option<i64>, since: i64) -> StoreResult<Vec<(i64, i64, i64)>> {
                Ok(sqlx::query_as(
                    "SELECT user_id, ended_at, run_ms FROM job_usage \
                     WHERE ended_at >= $1 AND ($2 IS NULL OR user_id = $2) AND run_ms IS NOT NULL \
                     ORDER BY ended_at, prompt_id",
                )
                .bind(since)
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn set_backend_drain(&self, name: &str, drained: bool, by: &str, now: i64) -> StoreResult<bool> {
                let changed = if drained {
                    sqlx::query(
                        "INSERT INTO backend_drains (name, drained_at, drained_by) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind(now)
                    .bind(by)
                    .execute(&self.pool)
                    .await?
                } else {
                    sqlx::query("DELETE FROM backend_drains WHERE name = $1").bind(name).execute(&self.pool).await?
                };
                Ok(changed.rows_affected() > 0)
            }

            async fn drained_backends(&self) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar("SELECT name FROM backend_drains ORDER BY name").fetch_all(&self.pool).await?)
            }

            async fn jobs_on_backends(&self) -> StoreResult<Vec<(String, i64)>> {
                Ok(sqlx::query_as(
                    "SELECT backend, COUNT(*) FROM jobs WHERE state IN ('dispatched', 'running') \
                     AND backend IS NOT NULL GROUP BY backend ORDER BY backend",
                )
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}

pub(super) use impl_store;
