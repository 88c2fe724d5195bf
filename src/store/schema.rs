//! Whether a database is migrated, looked at without changing it (`comfygate doctor`): the
//! migrations recorded in `_sqlx_migrations` against those this binary carries. Opening a store
//! ([`super::open`]) would create a missing SQLite file and apply what is pending; this does
//! neither.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{StoreError, StoreResult};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// How long connecting and reading the migration table may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A database's migrations compared with this binary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Migrations applied that this binary knows.
    pub applied: usize,
    /// This binary's migrations not applied yet (`version_description`).
    pub pending: Vec<String>,
    /// Versions applied that this binary does not know (a newer comfygate migrated it).
    pub unknown: Vec<i64>,
    /// Versions whose last run failed part-way.
    pub failed: Vec<i64>,
    /// The highest version applied successfully (`None`: nothing applied, or no migration table).
    pub latest: Option<i64>,
}

impl Schema {
    /// Whether the database is exactly at this binary's schema.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.failed.is_empty()
    }
}

/// Why the schema could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// The store itself failed (unreachable, missing file, bad URL).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the migration state of the database at `url`, creating and changing nothing.
pub async fn inspect(url: &str) -> Result<Schema, SchemaError> {
    match tokio::time::timeout(TIMEOUT, read(url)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SchemaError::Timeout(TIMEOUT)),
    }
}

async fn read(url: &str) -> StoreResult<Schema> {
    let (rows, migrator) = if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(false).read_only(true);
        let mut conn = options.connect().await?;
        let rows = applied_sqlite(&mut conn).await;
        let _ = conn.close().await;
        (rows?, &SQLITE)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut conn = PgConnectOptions::from_str(url)?.connect().await?;
        let rows = applied_postgres(&mut conn).await;
        let _ = conn.close().await;
        (rows?, &POSTGRES)
    } else {
        return Err(StoreError::UnsupportedUrl);
    };
    Ok(compare(&rows, migrator))
}

const APPLIED: &str = "SELECT version, success FROM _sqlx_migrations ORDER BY version";

/// The migration state of an open SQLite connection (a copy being checked by
/// [`super::backup`]), compared with this binary's.
pub(super) async fn sqlite_schema(conn: &mut sqlx::SqliteConnection) -> StoreResult<Schema> {
    Ok(compare(&applied_sqlite(conn).await?, &SQLITE))
}

/// `(version, success)` of every recorded migration.
async fn applied_sqlite(conn: &mut sqlx::SqliteConnection) -> StoreResult<Vec<(i64, bool)>> {
    no_table_is_none(sqlx::query_as(APPLIED).fetch_all(conn).await)
}

/// `(version, success)` of every recorded migration.
async fn applied_postgres(conn: &mut sqlx::PgConnection) -> StoreResult<Vec<(i64, bool)>> {
    no_table_is_none(sqlx::query_as(APPLIED).fetch_all(conn).await)
}

/// A database nothing has migrated yet has no migration table: everything is pending.
fn no_table_is_none(rows: Result<Vec<(i64, bool)>, sqlx::Error>) -> StoreResult<Vec<(i64, bool)>> {
    match rows {
        Ok(rows) => Ok(rows),
        Err(sqlx::Error::Database(e)) if e.message().contains("_sqlx_migrations") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn compare(rows: &[(i64, bool)], migrator: &Migrator) -> Schema {
    let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    let done: Vec<i64> = rows.iter().filter(|(_, ok)| *ok).map(|(v, _)| *v).collect();
    Schema {
        applied: done.iter().filter(|v| known.contains(v)).count(),
        pending: migrator
            .iter()
            .filter(|m| !done.contains(&m.version))
            .map(|m| format!("{:04}_{}", m.version, m.description))
            .collect(),
        unknown: done.iter().copied().filter(|v| !known.contains(v)).collect(),
        failed: rows.iter().filter(|(_, ok)| !ok).map(|(v, _)| *v).collect(),
        latest: done.iter().copied().max(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_store_opened_by_the_gateway_is_current() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = super::super::open(&url).await.unwrap();
        store.close().await;
        let schema = inspect(&url).await.unwrap();
        assert!(schema.is_current(), "{schema:?}");
        assert_eq!(schema.applied, SQLITE.iter().count());
    }

    #[tokio::test]
    async fn a_missing_database_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("absent").join("db.sqlite");
        let url = format!("sqlite://{}", file.display());
        assert!(matches!(inspect(&url).await, Err(SchemaError::Store(_))));
        assert!(!file.exists() && !file.parent().unwrap().exists());
    }

    #[test]
    fn pending_unknown_and_failed_versions_are_told_apart() {
        let first = SQLITE.iter().next().unwrap().version;
        let schema = compare(&[(first, true), (9999, true), (first + 1, false)], &SQLITE);
        assert_eq!(schema.applied, 1);
        assert_eq!(schema.unknown, vec![9999]);
        assert_eq!(schema.failed, vec![first + 1]);
        assert_eq!(schema.pending.len(), SQLITE.iter().count() - 1);
        assert!(!schema.is_current());
    }
}
