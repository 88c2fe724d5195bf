//! Replicas on one PostgreSQL store: which gateway schedules ([`leader`]: a PostgreSQL
//! advisory lock), and the notifications between them ([`bus`]: `LISTEN/NOTIFY`). A leaf: it
//! knows PostgreSQL, not the gateway; the scheduler and authentication use it. With SQLite
//! there is one gateway per store and no cluster.
//!
//! See docs/architecture.md, "Replicas".

pub mod bus;
pub mod leader;

pub use bus::{Bus, Note};
pub use leader::Leadership;

/// The channels replicas talk on.
pub mod channel {
    /// Submissions and queue operations for the gateway that schedules.
    pub const JOBS: &str = "comfygate_jobs";
    /// Job events for the clients' sockets, wherever they are connected.
    pub const EVENTS: &str = "comfygate_events";
    /// The revocation epoch moved (sent by a trigger in the store, see migration 0013).
    pub const REVOCATIONS: &str = "comfygate_revocations";
    /// A dispatched job ended (sent by a trigger in the store in the transaction that records
    /// the end, see migration 0014).
    pub const ENDS: &str = "comfygate_ends";
    /// Every channel a gateway listens on.
    pub const ALL: [&str; 4] = [JOBS, EVENTS, REVOCATIONS, ENDS];
}

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
