//! `init`, `user`, `token` and `import`: account management against the store, then a wait
//! until every running gateway has applied the change.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use comfygate::Config;
use comfygate::audit::{Audit, Context as Audited};
use comfygate::auth::accounts::{Accounts, generate_password, parse_expiry};
use comfygate::auth::legacy::parse_password_file;
use comfygate::auth::maintenance::wait_until_applied;
use comfygate::store::{self, Role, Store};
use comfygate::time::format_ms;

use comfygate::limits::Limits;
use comfygate::store::UserLimits;

use super::{InitArgs, PasswordSource, Setting, TokenCommand, UserCommand};

/// Prints the limits in force for a user, saying which are their own.
fn print_limits(username: &str, limits: &Limits, set: &UserLimits) {
    let count = |n: Option<u64>| n.map_or_else(|| "no limit".to_owned(), |n| n.to_string());
    let size = |n: u64| bytesize::ByteSize::b(n).display().iec().to_string();
    let origin = |own: Option<i64>| if own.is_some() { "" } else { " (default)" };
    println!("limits of `{username}`:");
    println!("  max-waiting    {}{}", count(limits.max_waiting), origin(set.max_waiting));
    println!("  max-running    {}{}", count(limits.max_running), origin(set.max_running));
    println!("  jobs-per-hour  {}{}", count(limits.jobs_per_hour), origin(set.jobs_per_hour));
    println!("  max-upload     {}{}", size(limits.max_upload), origin(set.max_upload_bytes));
    println!("  max-workflow   {}{}", size(limits.max_workflow), origin(set.max_workflow_bytes));
}

/// How long to wait for running gateways to confirm a revocation.
const APPLY_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn open(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Accounts)> {
    let store = store::open(&config.store.database_url()).await.context("cannot open the store")?;
    let audit = Arc::new(Audit::open(config, store.clone())?);
    let accounts = Accounts::new(store.clone(), &config.auth, audit);
    Ok((store, accounts))
}

/// `$COMFYGATE_ADMIN_PASSWORD`, or the file named by `$COMFYGATE_ADMIN_PASSWORD_FILE`.
pub fn admin_password_from_env() -> anyhow::Result<Option<String>> {
    if let Ok(path) = std::env::var("COMFYGATE_ADMIN_PASSWORD_FILE") {
        return read_first_line(Path::new(&path)).map(Some);
    }
    Ok(std::env::var("COMFYGATE_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty()))
}

fn read_first_line(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The new password and whether it was generated (then it is printed once).
fn new_password(source: &PasswordSource) -> anyhow::Result<(String, bool)> {
    if source.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
        return Ok((line.trim_end_matches(['\r', '\n']).to_owned(), false));
    }
    if let Some(path) = &source.password_file {
        return Ok((read_first_line(path)?, false));
    }
    Ok((generate_password()?, true))
}

pub(super) async fn confirm_applied(store: &dyn Store) -> anyhow::Result<()> {
    let lagging = wait_until_applied(store, APPLY_TIMEOUT).await?;
    if lagging > 0 {
        eprintln!(
            "warning: {lagging} running gateway(s) did not confirm within {} s; they apply the change as soon as they reach the store",
            APPLY_TIMEOUT.as_secs()
        );
    }
    Ok(())
}

fn role(name: &str) -> Role {
    if name == "admin" { Role::Admin } else { Role::User }
}

/// `comfygate init`.
pub async fn init(config: &Config, args: InitArgs) -> anyhow::Result<()> {
    let password = match &args.admin_password_file {
        Some(path) => Some(read_first_line(path)?),
        None => admin_password_from_env()?,
    };
    let (_, accounts) = open(config).await?;
    match accounts.ensure_first_admin(&args.admin_user, password.as_deref(), &Audited::cli()).await? {
        Some(first) => {
            println!("created admin `{}`", first.user.username);
            if let Some(p) = first.generated_password {
                println!("password: {p}");
            }
        }
        None => println!("already initialised: users exist, nothing changed"),
    }
    Ok(())
}

/// `comfygate user ...`.
pub async fn user(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let (store, accounts) = open(config).await?;
    match command {
        UserCommand::Add { username, role: r, password } => {
            let (password, generated) = new_password(&password)?;
            let user = accounts.create_user(&username, &password, role(&r), &Audited::cli()).await?;
            println!("created {} `{}`", user.role, user.username);
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::List => {
            println!("{:<24} {:<6} {:<9} CREATED", "USER", "ROLE", "STATUS");
            for u in accounts.list_users().await? {
                let status = if u.disabled { "disabled" } else { "active" };
                println!("{:<24} {:<6} {:<9} {}", u.username, u.role, status, format_ms(u.created_at));
            }
        }
        UserCommand::Passwd { username, password } => {
            let (password, generated) = new_password(&password)?;
            let user = accounts.set_password(&username, &password, &Audited::cli()).await?;
            confirm_applied(store.as_ref()).await?;
            println!(
                "password of `{}` changed; their sessions and the tokens those minted (unless kept) have ended",
                user.username
            );
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Disable { username } => {
            let user = accounts.set_disabled(&username, true, &Audited::cli()).await?;
            confirm_applied(store.as_ref()).await?;
            println!("disabled `{}`", user.username);
        }
        UserCommand::Enable { username } => {
            let user = accounts.set_disabled(&username, false, &Audited::cli()).await?;
            confirm_applied(store.as_ref()).await?;
            println!("enabled `{}`", user.username);
        }
        UserCommand::Unlock { username } => {
            let cleared = accounts.unlock(&username, &Audited::cli()).await?;
            let name = accounts.user(&username).await?.username;
            match cleared {
                0 => println!("`{name}` was not locked out"),
                _ => println!("unlocked `{name}`: they may log in again"),
            }
        }
        UserCommand::Role { username, role: r } => {
            let user = accounts.set_role(&username, role(&r), &Audited::cli()).await?;
            confirm_applied(store.as_ref()).await?;
            println!("`{}` is now {}", user.username, r);
        }
        UserCommand::Remove { username } => {
            let user = accounts.remove_user(&username, &Audited::cli()).await?;
            confirm_applied(store.as_ref()).await?;
            println!("removed `{}` with their tokens and sessions", user.username);
        }
        UserCommand::Limits { username, max_waiting, max_running, jobs_per_hour, max_upload, max_workflow } => {
            let user = accounts.user(&username).await?;
            let mut set = store.user_limits(user.id).await?;
            let apply = |slot: &mut Option<i64>, setting: Option<Setting>| match setting {
                Some(Setting::Value(n)) => *slot = Some(n),
                Some(Setting::Default) => *slot = None,
                None => {}
            };
            let changed =
                [max_waiting, max_running, jobs_per_hour, max_upload, max_workflow].iter().any(Option::is_some);
            apply(&mut set.max_waiting, max_waiting);
            apply(&mut set.max_running, max_running);
            apply(&mut set.jobs_per_hour, jobs_per_hour);
            apply(&mut set.max_upload_bytes, max_upload);
            apply(&mut set.max_workflow_bytes, max_workflow);
            if changed {
                accounts.set_limits(&user, &set, &Audited::cli()).await?;
            }
            let limits = Limits::resolve(&config.limits, &set, config.server.max_request_body.as_u64());
            print_limits(&user.username, &limits, &set);
        }
    }
    Ok(())
}

/// `comfygate token ...`.
pub async fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let (store, accounts) = open(config).await?;
    match command {
        TokenCommand::Create { username, name, expires } => {
            let issued = accounts
                .create_token(
                    &username,
                    &name,
                    parse_expiry(expires.as_deref().unwrap_or_default(), config.auth.default_token_lifetime())?,
                    &Audited::cli(),
                )
                .await?;
            let until = issued.token.expires_at.map(format_ms).unwrap_or_else(|| "never".to_owned());
            eprintln!(
                "created token `{}` for `{}` (expires: {until}); it is shown only once:",
                issued.token.name, issued.token.username
            );
            println!("{}", issued.secret);
        }
        TokenCommand::List { username } => {
            println!(
                "{:<6} {:<16} {:<24} {:<12} {:<8} {:<21} {:<21} EXPIRES",
                "ID", "USER", "NAME", "PREFIX", "STATUS", "CREATED", "LAST USED"
            );
            let now = comfygate::time::now_ms();
            for t in accounts.list_tokens(username.as_deref()).await? {
                let status = t.status(now);
                println!(
                    "{:<6} {:<16} {:<24} {:<12} {:<8} {:<21} {:<21} {}",
                    t.id,
                    t.username,
                    t.name,
                    t.prefix,
                    status,
                    format_ms(t.created_at),
                    t.last_used_at.map(format_ms).unwrap_or_else(|| "never".to_owned()),
                    t.expires_at.map(format_ms).unwrap_or_else(|| "never".to_owned()),
                );
            }
        }
        TokenCommand::Revoke { username, token } => {
            let revoked = accounts.revoke_token(&username, &token, &Audited::cli()).await?;
            confirm_applied(store.as_ref()).await?;
            println!("revoked token `{}` (#{}) of `{}`", revoked.name, revoked.id, revoked.username);
        }
    }
    Ok(())
}

/// `comfygate import comfyui-login PATH`.
pub async fn import_comfyui_login(
    config: &Config,
    path: &PathBuf,
    username: Option<&str>,
    keep_legacy_token: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let legacy = parse_password_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (_, accounts) = open(config).await?;
    let imported = accounts.import_comfyui_login(&legacy, username, keep_legacy_token, &Audited::cli()).await?;
    println!(
        "imported ComfyUI-Login admin `{}`: log in with the old password (it is upgraded to argon2id on first login)",
        imported.user.username
    );
    match imported.legacy_token {
        Some(t) => println!(
            "kept the old ComfyUI-Login token as legacy token `{}` (#{}); rotate clients to a cg_ token, then `comfygate token revoke {} {}`",
            t.name, t.id, t.username, t.name
        ),
        None => println!("the old ComfyUI-Login token is NOT accepted (use --keep-legacy-token to keep it working)"),
    }
    Ok(())
}
