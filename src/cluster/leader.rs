//! Which gateway schedules: the one holding a PostgreSQL advisory lock on a connection of its
//! own. PostgreSQL releases the lock when that connection ends — the process exits, is killed
//! (`kill -9`), or loses the network — so another gateway takes it within one
//! [`TRY_EVERY`]. A holder that cannot reach its connection any more must stop scheduling at
//! once: it cannot know whether the lock is still its own ([`Leadership::run`] returns, and the
//! caller stops). The store's scheduling term fences what a holder that has not noticed yet can
//! still do (see `Store::claim_job`).

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;

/// The advisory lock's key ("comfygat" in ASCII): one scheduler per database.
pub const LOCK_KEY: i64 = 0x636f_6d66_7967_6174;
/// How often a gateway that does not hold the lock tries to take it.
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// How often the holder checks its connection.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a check may take before the holder gives up the lead.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the lead ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The gateway is stopping (the lock is released with the connection).
    Stopped,
    /// The lock's connection failed: another gateway may hold it now.
    Lost(String),
}

/// Taking and holding the scheduler's lock.
#[derive(Debug, Clone)]
pub struct Leadership {
    url: String,
}

impl Leadership {
    /// The lock in the database at `url`.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned() }
    }

    /// Waits until this gateway holds the lock (or `stop`), calls `elected`, then holds the lock
    /// until `stop` or until its connection fails; returns why it ended.
    pub async fn run<F, Fut>(&self, mut stop: watch::Receiver<bool>, elected: F) -> Ended
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut idle: Option<PgConnection> = None;
        let taken: Option<PgConnection> = loop {
            if *stop.borrow() {
                return Ended::Stopped;
            }
            match self.try_take(&mut idle).await {
                Ok(true) => break idle.take(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot try the scheduler's lock; trying again");
                    idle = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TRY_EVERY) => {}
                _ = stop.changed() => {}
            }
        };
        let Some(mut connection) = taken else { return Ended::Lost("no connection".to_owned()) };
        tracing::info!("this gateway holds the scheduler's lock: it schedules the queue");
        elected().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => {
                    if *stop.borrow() {
                        let _ = connection.close().await;
                        return Ended::Stopped;
                    }
                }
            }
            // The lock lives as long as its session: a connection that answers still holds it.
            let check = sqlx::query_scalar::<_, i32>("SELECT 1");
            match tokio::time::timeout(CHECK_TIMEOUT, check.fetch_one(&mut connection)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Ended::Lost(e.to_string()),
                Err(_) => return Ended::Lost(format!("no answer from PostgreSQL in {CHECK_TIMEOUT:?}")),
            }
        }
    }

    /// Tries to take the lock on `connection` (opened first if there is none): true when it
    /// now holds it.
    async fn try_take(&self, connection: &mut Option<PgConnection>) -> Result<bool, sqlx::Error> {
        if connection.is_none() {
            *connection = Some(PgConnection::connect(&self.url).await?);
        }
        let Some(conn) = connection.as_mut() else { return Ok(false) };
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(conn).await
    }
}
