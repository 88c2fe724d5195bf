//! PostgreSQL, for several gateway replicas sharing one state.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

use super::sql::{
    BLOCK_LOGIN_KEY, BUMP_EPOCH, ENDED_STATES, FileRow, JOB_COLUMNS, JobRow, REVOKE_SESSION_TOKENS,
    REVOKE_USER_SESSION_TOKENS, SESSION_SELECT, SessionRow, TAKE_LOGIN_ATTEMPT, TOKEN_SELECT, TokenRow, USER_COLUMNS,
    UserRow, impl_store, map_conflict,
};
use super::{
    ApiToken, Job, JobState, NewSession, NewToken, NewUser, Role, Session, StoreResult, StoredFile, UseTimes, User,
};

/// A [`Store`](super::Store) on a PostgreSQL database.
pub struct PostgresStore {
    pool: sqlx::PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://...` and migrates the schema.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let pool =
            PgPoolOptions::new().max_connections(10).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

impl_store!(PostgresStore, sqlx::Postgres, shared: true);
