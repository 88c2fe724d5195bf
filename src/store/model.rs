//! The records the store keeps.

use super::StoreError;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including ComfyUI-Manager and user management.
    Admin,
    /// Run workflows and see their own work.
    User,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(StoreError::Corrupt(format!("unknown role `{other}`"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Store id.
    pub id: i64,
    /// Unique, lower-case.
    pub username: String,
    /// PHC string (argon2id) or a bcrypt hash imported from ComfyUI-Login.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// A disabled user cannot log in or use tokens.
    pub disabled: bool,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A user to create.
pub struct NewUser {
    /// Lower-case name.
    pub username: String,
    /// Hash of the initial password.
    pub password_hash: String,
    /// Role.
    pub role: Role,
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A `cg_` token made by comfygate.
    Api,
    /// A ComfyUI-Login token (its bcrypt hash string), imported so old clients keep working.
    Legacy,
}

impl TokenKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Legacy => "legacy",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "api" => Ok(TokenKind::Api),
            "legacy" => Ok(TokenKind::Legacy),
            other => Err(StoreError::Corrupt(format!("unknown token kind `{other}`"))),
        }
    }
}

/// An API token's record (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    /// Store id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Owner's name.
    pub username: String,
    /// The owner's label, unique among their active tokens.
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    /// Where it came from.
    pub kind: TokenKind,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, recorded lazily.
    pub last_used_at: Option<i64>,
    /// Unix ms; `None` never expires.
    pub expires_at: Option<i64>,
    /// Unix ms.
    pub revoked_at: Option<i64>,
    /// The login session that created it (`None`: the CLI, or another token).
    pub minted_by_session: Option<i64>,
    /// Whether it outlives the logout of that session and password changes.
    pub keep: bool,
}

impl ApiToken {
    /// `active`, `expired` or `revoked` at `now` (unix ms).
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|end| end <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// A token to store.
pub struct NewToken {
    /// Owner.
    pub user_id: i64,
    /// Label.
    pub name: String,
    /// SHA-256 hex of the secret.
    pub token_hash: String,
    /// Recognisable start of the secret.
    pub prefix: String,
    /// Where it came from.
    pub kind: TokenKind,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: Option<i64>,
    /// The login session creating it, if any.
    pub minted_by_session: Option<i64>,
    /// Keep it when that session ends or the password changes.
    pub keep: bool,
}

/// A login session's record (never the cookie value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Store id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, recorded lazily.
    pub last_seen_at: i64,
    /// Absolute end, unix ms.
    pub expires_at: i64,
    /// Client address at login.
    pub ip: String,
    /// Browser at login.
    pub user_agent: String,
    /// Unix ms.
    pub revoked_at: Option<i64>,
}

/// A session to store.
pub struct NewSession {
    /// SHA-256 hex of the cookie value.
    pub token_hash: String,
    /// Owner.
    pub user_id: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Absolute end, unix ms.
    pub expires_at: i64,
    /// Client address.
    pub ip: String,
    /// Browser.
    pub user_agent: String,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting in the gateway's queue.
    Queued,
    /// Handed to a backend, not started yet.
    Dispatched,
    /// Running on a backend.
    Running,
    /// Finished successfully.
    Done,
    /// Failed (validation, execution error, backend lost).
    Failed,
    /// Deleted from the queue or interrupted.
    Cancelled,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Dispatched => "dispatched",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => JobState::Queued,
            "dispatched" => JobState::Dispatched,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(StoreError::Corrupt(format!("unknown job state `{other}`"))),
        })
    }

    /// Whether the job still waits or runs.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Dispatched | JobState::Running)
    }
}

/// A job the gateway knows about.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The prompt id the backends see (unique per gateway).
    pub prompt_id: String,
    /// The prompt id the owner knows the job by: the one they chose (unique among their own
    /// jobs only), else `prompt_id`.
    pub public_id: String,
    /// Owner.
    pub user_id: i64,
    /// The API token that submitted it (`None` for a browser session).
    pub token_id: Option<i64>,
    /// Owner's name (sent to ComfyUI as `comfy-user`).
    pub username: String,
    /// The client id the owner submitted with (empty when none).
    pub client_id: String,
    /// ComfyUI-style queue number (lower runs first within an owner).
    pub number: i64,
    /// The JSON body to send to ComfyUI's `POST /prompt` (without `client_id`).
    pub request: String,
    /// Life stage.
    pub state: JobState,
    /// The backend it was handed to.
    pub backend: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Once it ended: its history entry without the prompt (`outputs`, `status`, `meta`,
    /// `outputs_to_execute`) as JSON.
    pub outcome: Option<String>,
    /// Whether its history entry is shown (the owner may delete it).
    pub in_history: bool,
}

/// A file on a backend (an output of a job, or an upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// The backend holding it.
    pub backend: String,
    /// `output`, `input` or `temp`.
    pub kind: String,
    /// Subfolder ('' for none).
    pub subfolder: String,
    /// File name.
    pub filename: String,
    /// The job that made it, if any.
    pub prompt_id: Option<String>,
    /// The user who made or uploaded it, if known.
    pub user_id: Option<i64>,
}

/// Limits set for one user by an admin; `None`: the configured default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct UserLimits {
    /// Jobs waiting in the gateway's queue at once.
    pub max_waiting: Option<i64>,
    /// Jobs on backends (dispatched or running) at once.
    pub max_running: Option<i64>,
    /// Submissions in any hour.
    pub jobs_per_hour: Option<i64>,
    /// Bytes of one upload.
    pub max_upload_bytes: Option<i64>,
    /// Bytes of one workflow (the forwarded `POST /prompt` body).
    pub max_workflow_bytes: Option<i64>,
    /// Highest priority class they may ask for (0 low, 1 normal, 2 high).
    pub max_priority: Option<i64>,
    /// Class of their jobs that ask for none (0 low, 1 normal, 2 high).
    pub default_priority: Option<i64>,
    /// Fair-share weight in percent (100: an equal share).
    pub share_weight: Option<i64>,
    /// GPU seconds per UTC day.
    pub gpu_seconds_per_day: Option<i64>,
}

/// One audit event as the store keeps it: the JSON line, and the columns it is looked up by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When (unix ms).
    pub at: i64,
    /// The event's name.
    pub event: String,
    /// The account concerned, when known.
    pub username: Option<String>,
    /// The token concerned, when there is one.
    pub token_id: Option<i64>,
    /// The client's address, when the event came over the network.
    pub address: Option<String>,
    /// The event's JSON line, exactly as written to the audit file.
    pub line: String,
}

/// Which audit events to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events concerning this account.
    pub username: Option<String>,
    /// Only events of this name.
    pub event: Option<String>,
    /// Only events at or after this time (unix ms).
    pub since: Option<i64>,
    /// At most this many.
    pub limit: i64,
    /// After skipping this many (pages).
    pub offset: i64,
}
