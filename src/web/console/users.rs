//! The console's users: the list (role, enabled, lockout, last login, tokens), creating users
//! with a generated password shown once, and per user their tokens, sessions and limits with
//! disable/enable, role, password reset, unlock, token revocation and sign-out.
//!
//! The last enabled admin cannot be disabled or demoted: the accounts layer refuses, and the
//! refusal comes back as the page's notice.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{Console, CsrfForm, FormResult, Frame, Tab, When, page};
use crate::auth::AuthMethod;
use crate::auth::accounts::{AccountError, generate_password};
use crate::auth::flash::Flash;
use crate::http::{ApiError, RequestContext};
use crate::state::AppState;
use crate::store::{Role, User};
use crate::time::now_ms;
use crate::web::actions;

const LIST: &str = "/comfygate/admin/users";

/// What a path segment may hold unencoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` as one URL path segment.
pub fn path_segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// The console page of user `name`.
fn user_page(name: &str) -> String {
    format!("{LIST}/{}", path_segment(name))
}

/// One user in the list.
pub struct UserRow {
    /// Name.
    pub name: String,
    /// Their page.
    pub page: String,
    /// `admin` or `user`.
    pub role: String,
    /// Whether the account is enabled.
    pub enabled: bool,
    /// Until when logins are refused, if locked out.
    pub locked_until: Option<When>,
    /// Latest login.
    pub last_login: Option<When>,
    /// Active tokens.
    pub tokens: usize,
    /// Created.
    pub created: When,
    /// Whether this is the admin looking.
    pub is_me: bool,
}

/// The list page.
#[derive(Template)]
#[template(path = "console/users.html")]
pub struct UsersPage {
    /// Around it.
    pub frame: Frame,
    /// Every user.
    pub users: Vec<UserRow>,
    /// Shortest password accepted.
    pub min_password: usize,
}

/// A token as a user's page shows it.
pub struct TokenRow {
    /// Store id.
    pub id: i64,
    /// Label.
    pub name: String,
    /// First characters of the secret.
    pub prefix: String,
    /// `active` or `expired`.
    pub status: &'static str,
    /// Created.
    pub created: When,
    /// Last used.
    pub last_used: Option<When>,
    /// Expires.
    pub expires: Option<When>,
}

/// A session as a user's page shows it.
pub struct SessionRow {
    /// Store id.
    pub id: i64,
    /// Opened.
    pub created: When,
    /// Last seen (recorded lazily).
    pub last_seen: When,
    /// Absolute end.
    pub expires: When,
    /// Address at login.
    pub ip: String,
    /// Browser at login.
    pub user_agent: String,
    /// Whether it is the admin's own, looking now.
    pub current: bool,
}

/// A user's page.
#[derive(Template)]
#[template(path = "console/user.html")]
pub struct UserPage {
    /// Around it.
    pub frame: Frame,
    /// The user.
    pub user: UserRow,
    /// Their tokens not revoked.
    pub tokens: Vec<TokenRow>,
    /// Their open sessions.
    pub sessions: Vec<SessionRow>,
    /// Their own limits: label, form field, value (blank: the gateway's default).
    pub limits: Vec<(&'static str, &'static str, String)>,
}

/// `GET /comfygate/admin/users`.
pub async fn list(State(app): State<AppState>, console: Console) -> Result<Response, ApiError> {
    let accounts = app.auth.accounts();
    let users = accounts.list_users().await?;
    let facts = Facts::read(&app).await?;
    let rows = users.iter().map(|u| facts.row(u, console.me())).collect();
    let frame = console.frame(&app, "Users", Tab::Users);
    page(&UsersPage { frame, users: rows, min_password: app.config.auth.min_password_length })
}

/// What the list adds to each user: lockouts, last logins, token counts.
struct Facts {
    lockouts: HashMap<String, i64>,
    last_logins: HashMap<i64, i64>,
    tokens: HashMap<i64, usize>,
}

impl Facts {
    async fn read(app: &AppState) -> Result<Self, ApiError> {
        let accounts = app.auth.accounts();
        let lockouts = accounts.lockouts().await?;
        let store = app.scheduler.store();
        let last_logins = store.last_logins().await.map_err(AccountError::from)?.into_iter().collect();
        let now = now_ms();
        let mut tokens: HashMap<i64, usize> = HashMap::new();
        for t in accounts.list_tokens(None).await? {
            if t.status(now) == "active" {
                *tokens.entry(t.user_id).or_default() += 1;
            }
        }
        Ok(Facts { lockouts, last_logins, tokens })
    }

    fn row(&self, u: &User, me: &str) -> UserRow {
        UserRow {
            name: u.username.clone(),
            page: user_page(&u.username),
            role: u.role.to_string(),
            enabled: !u.disabled,
            locked_until: self.lockouts.get(&u.username).copied().map(When::at),
            last_login: self.last_logins.get(&u.id).copied().map(When::at),
            tokens: self.tokens.get(&u.id).copied().unwrap_or(0),
            created: When::at(u.created_at),
            is_me: u.username == me,
        }
    }
}

/// `GET /comfygate/admin/users/{name}`.
pub async fn show(
    State(app): State<AppState>,
    console: Console,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let accounts = app.auth.accounts();
    let user = accounts.user(&name).await?;
    let facts = Facts::read(&app).await?;
    let now = now_ms();
    let tokens = accounts
        .list_tokens(Some(&user.username))
        .await?
        .iter()
        .filter(|t| t.revoked_at.is_none())
        .map(|t| TokenRow {
            id: t.id,
            name: t.name.clone(),
            prefix: t.prefix.clone(),
            status: t.status(now),
            created: When::at(t.created_at),
            last_used: t.last_used_at.map(When::at),
            expires: t.expires_at.map(When::at),
        })
        .collect();
    let store = app.scheduler.store();
    let mine = match console.caller.identity.method {
        AuthMethod::Session { session_id, .. } => Some(session_id),
        AuthMethod::Token { .. } => None,
    };
    let sessions = store
        .sessions_of(user.id, now)
        .await
        .map_err(AccountError::from)?
        .into_iter()
        .map(|s| SessionRow {
            id: s.id,
            created: When::at(s.created_at),
            last_seen: When::at(s.last_seen_at),
            expires: When::at(s.expires_at),
            ip: s.ip,
            user_agent: s.user_agent,
            current: Some(s.id) == mine,
        })
        .collect();
    let set = store.user_limits(user.id).await.map_err(AccountError::from)?;
    let count = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
    let size = |n: Option<i64>| {
        n.and_then(|n| u64::try_from(n).ok())
            .map(|n| bytesize::ByteSize::b(n).display().iec().to_string())
            .unwrap_or_default()
    };
    let limits = vec![
        ("Jobs waiting at once", "max_waiting", count(set.max_waiting)),
        ("Jobs on backends at once", "max_running", count(set.max_running)),
        ("Submissions per hour", "jobs_per_hour", count(set.jobs_per_hour)),
        ("Largest upload", "max_upload", size(set.max_upload_bytes)),
        ("Largest workflow", "max_workflow", size(set.max_workflow_bytes)),
        ("GPU seconds per UTC day", "gpu_seconds_per_day", count(set.gpu_seconds_per_day)),
    ];
    let frame = console.frame(&app, &user.username, Tab::Users);
    page(&UserPage { frame, user: facts.row(&user, console.me()), tokens, sessions, limits })
}

/// The user-creation form.
#[derive(Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

/// The role form.
#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
}

fn parse_role(text: &str) -> Result<Role, ApiError> {
    match text {
        "admin" => Ok(Role::Admin),
        "user" => Ok(Role::User),
        _ => Err(ApiError::BadRequest("the role must be `user` or `admin`".to_owned())),
    }
}

/// A refusal people can act on becomes the page's notice; a failure of the store or the
/// audit log is the request's error.
fn refused(e: AccountError) -> Result<Flash, ApiError> {
    match ApiError::from(e) {
        e @ (ApiError::BadRequest(_) | ApiError::Conflict(_) | ApiError::NotFound(_)) => {
            Ok(Flash::error(e.to_string()))
        }
        other => Err(other),
    }
}

/// `POST /comfygate/admin/users`: creates a user with a generated password, shown once on
/// the page the browser is sent back to.
pub async fn create(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    form: FormResult<NewUserForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let role = parse_role(&form.role)?;
    let password = generate_password().map_err(AccountError::from)?;
    let flash = match app.auth.accounts().create_user(&form.username, &password, role, &console.context(&context)).await
    {
        Ok(user) => Flash::secret(format!("Created {} `{}`. Their password:", user.role, user.username), password),
        Err(e) => refused(e)?,
    };
    Ok(console.done(&app, LIST, flash))
}

/// `POST .../disable`.
pub async fn disable(
    State(app): State<AppState>,
    console: Console,
    context: RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    set_disabled(app, console, context, name, form, true).await
}

/// `POST .../enable`.
pub async fn enable(
    State(app): State<AppState>,
    console: Console,
    context: RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    set_disabled(app, console, context, name, form, false).await
}

async fn set_disabled(
    app: AppState,
    console: Console,
    RequestContext(context): RequestContext,
    name: String,
    form: FormResult<CsrfForm>,
    disabled: bool,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let result = app.auth.accounts().set_disabled(&name, disabled, &console.context(&context)).await;
    app.auth.revoked();
    let flash = match result {
        Ok(user) if disabled => {
            Flash::notice(format!("Disabled `{}`: their sessions and tokens stop working now.", user.username))
        }
        Ok(user) => Flash::notice(format!("Enabled `{}`.", user.username)),
        Err(e) => refused(e)?,
    };
    Ok(console.done(&app, &user_page(&name), flash))
}

/// The limits form: each field blank for the gateway's default.
#[derive(Deserialize)]
pub struct LimitsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    max_waiting: String,
    #[serde(default)]
    max_running: String,
    #[serde(default)]
    jobs_per_hour: String,
    #[serde(default)]
    max_upload: String,
    #[serde(default)]
    max_workflow: String,
    #[serde(default)]
    gpu_seconds_per_day: String,
}

/// A limit field: blank is the default (`None`), else a count or, for sizes, `200MiB`.
fn limit_field(label: &str, text: &str, size: bool) -> Result<Option<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let value = if size {
        text.parse::<bytesize::ByteSize>().ok().and_then(|b| i64::try_from(b.as_u64()).ok())
    } else {
        text.parse::<u32>().ok().map(i64::from)
    };
    value.map(Some).ok_or_else(|| {
        let example = if size { "a size such as 200MiB" } else { "a whole number such as 4 (0: no limit)" };
        format!("{label}: `{text}` is not {example}; leave it blank for the gateway's default.")
    })
}

/// `POST .../limits`: the user's own limits (blank fields: the gateway's default), audited as
/// `user_changed`.
pub async fn limits(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<LimitsForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let user = app.auth.accounts().user(&name).await?;
    // Settings this form does not show (priorities, weight) stay as they are.
    let current = app.scheduler.store().user_limits(user.id).await.map_err(crate::auth::AccountError::from)?;
    let parsed = (|| {
        Ok::<_, String>(crate::store::UserLimits {
            max_waiting: limit_field("Jobs waiting at once", &form.max_waiting, false)?,
            max_running: limit_field("Jobs on backends at once", &form.max_running, false)?,
            jobs_per_hour: limit_field("Submissions per hour", &form.jobs_per_hour, false)?,
            max_upload_bytes: limit_field("Largest upload", &form.max_upload, true)?,
            max_workflow_bytes: limit_field("Largest workflow", &form.max_workflow, true)?,
            gpu_seconds_per_day: limit_field("GPU seconds per UTC day", &form.gpu_seconds_per_day, false)?,
            ..current
        })
    })();
    let flash = match parsed {
        Err(why) => Flash::error(why),
        Ok(set) => match app.auth.accounts().set_limits(&user, &set, &console.context(&context)).await {
            Ok(()) => {
                Flash::notice(format!("Limits of `{}` saved; they hold from their next submission.", user.username))
            }
            Err(e) => refused(e)?,
        },
    };
    Ok(console.done(&app, &user_page(&name), flash))
}

/// `POST .../remove`: the account goes with its tokens and sessions (not the last admin, not
/// oneself).
pub async fn remove(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    if name.trim().eq_ignore_ascii_case(&console.caller.identity.username) {
        return Ok(console.done(&app, &user_page(&name), Flash::error("You cannot remove your own account here.")));
    }
    let result = app.auth.accounts().remove_user(&name, &console.context(&context)).await;
    app.auth.revoked();
    match result {
        Ok(user) => {
            let flash = Flash::notice(format!("Removed `{}` with their tokens and sessions.", user.username));
            Ok(console.done(&app, LIST, flash))
        }
        Err(e) => Ok(console.done(&app, &user_page(&name), refused(e)?)),
    }
}

/// `POST .../role`.
pub async fn role(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<RoleForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let role = parse_role(&form.role)?;
    let result = app.auth.accounts().set_role(&name, role, &console.context(&context)).await;
    app.auth.revoked();
    let flash = match result {
        Ok(user) => Flash::notice(format!("`{}` is now {role}.", user.username)),
        Err(e) => refused(e)?,
    };
    Ok(console.done(&app, &user_page(&name), flash))
}

/// `POST .../password`: a generated password, shown once; every session of the user ends.
/// Not for the admin's own account (their session would end before they saw it).
pub async fn reset_password(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    if app.auth.accounts().user(&name).await.is_ok_and(|u| u.username == console.me()) {
        // It would end this very session, and the one-time password with it.
        let flash = Flash::error("Change your own password on your account page.");
        return Ok(console.done(&app, &user_page(&name), flash));
    }
    let password = generate_password().map_err(AccountError::from)?;
    let result = app.auth.accounts().set_password(&name, &password, &console.context(&context)).await;
    app.auth.revoked();
    let flash = match result {
        Ok(user) => {
            Flash::secret(format!("New password for `{}` (their sessions have ended):", user.username), password)
        }
        Err(e) => refused(e)?,
    };
    Ok(console.done(&app, &user_page(&name), flash))
}

/// `POST .../unlock`: lifts the user's login lockout.
pub async fn unlock(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let accounts = app.auth.accounts();
    let flash = match accounts.unlock(&name, &console.context(&context)).await {
        Ok(_) => Flash::notice(format!("Unlocked `{}`: they may log in again.", accounts.user(&name).await?.username)),
        Err(e) => refused(e)?,
    };
    Ok(console.done(&app, &user_page(&name), flash))
}

/// `POST .../tokens/{id}/revoke`.
pub async fn revoke_token(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path((name, id)): Path<(String, i64)>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let accounts = app.auth.accounts();
    let user = accounts.user(&name).await?;
    let token =
        accounts.list_tokens(Some(&user.username)).await?.into_iter().find(|t| t.id == id && t.revoked_at.is_none());
    let flash = match token {
        None => Flash::error("That token is not active."),
        Some(token) => {
            accounts.revoke_token_record(&token, &console.context(&context)).await?;
            app.auth.revoked();
            Flash::notice(format!("Revoked token “{}” of `{}`.", token.name, user.username))
        }
    };
    Ok(console.done(&app, &user_page(&name), flash))
}

/// `POST .../sessions/{id}/revoke`: signs the session out (and revokes the tokens it minted
/// without `keep`), audited first.
pub async fn revoke_session(
    State(app): State<AppState>,
    console: Console,
    RequestContext(context): RequestContext,
    Path((name, id)): Path<(String, i64)>,
    form: FormResult<CsrfForm>,
) -> Result<Response, ApiError> {
    let Form(form) = form?;
    console.check_form(&form.csrf)?;
    let user = app.auth.accounts().user(&name).await?;
    let context = console.context(&context);
    if !actions::sign_out_session(&app, &user.username, user.id, id, &context).await? {
        return Ok(console.done(&app, &user_page(&name), Flash::error("That session is not open.")));
    }
    let flash = Flash::notice(format!("Signed out a session of `{}`.", user.username));
    Ok(console.done(&app, &user_page(&name), flash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_path_segments() {
        assert_eq!(path_segment("a.b_c-d"), "a.b_c-d");
        assert_eq!(path_segment("x@y"), "x%40y");
        assert_eq!(path_segment("../a/b?c#d"), "..%2Fa%2Fb%3Fc%23d");
    }
}
