//! `init`, `user`, `token` and `import`: account management against the store, then a wait
//! until every running gateway has applied the change.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use comfygate::Config;
use comfygate::audit::{Audit, Context as Audited};
use comfygate::auth::accounts::{AccountError, Accounts, generate_password, parse_expiry};
use comfygate::auth::legacy::parse_password_file;
use comfygate::auth::maintenance::wait_until_applied;
use comfygate::store::{Role, Store};
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
    println!("  {:<20} {}{}", "max-waiting", count(limits.max_waiting), origin(set.max_waiting));
    println!("  {:<20} {}{}", "max-running", count(limits.max_running), origin(set.max_running));
    println!("  {:<20} {}{}", "jobs-per-hour", count(limits.jobs_per_hour), origin(set.jobs_per_hour));
    println!("  {:<20} {}{}", "max-upload", size(limits.max_upload), origin(set.max_upload_bytes));
    println!("  {:<20} {}{}", "max-workflow", size(limits.max_workflow), origin(set.max_workflow_bytes));
    println!("  {:<20} {}{}", "max-priority", limits.max_priority, origin(set.max_priority));
    println!("  {:<20} {}{}", "default-priority", limits.default_priority, origin(set.default_priority));
    println!("  {:<20} {}{}", "weight", limits.weight, origin(set.share_weight));
    println!(
        "  {:<20} {}{}",
        "gpu-seconds-per-day",
        count(limits.gpu_seconds_per_day),
        origin(set.gpu_seconds_per_day)
    );
}

/// How long to wait for running gateways to confirm a revocation.
const APPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the configured store and its accounts (`create`: `init` only).
pub(super) async fn open(config: &Config, create: bool) -> anyhow::Result<(Arc<dyn Store>, Accounts)> {
    let store = super::open_store(config, create).await?;
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
    let (_, accounts) = open(config, true).await?;
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
    let (store, accounts) = open(config, false).await?;
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
            let rows = accounts.list_users().await?.into_iter().map(|u| {
                let status = if u.disabled { "disabled" } else { "active" };
                vec![u.username, u.role.to_string(), status.to_owned(), format_ms(u.created_at)]
            });
            print!("{}", table(&["USER", "ROLE", "STATUS", "CREATED"], rows));
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
        UserCommand::Limits {
            username,
            max_waiting,
            max_running,
            jobs_per_hour,
            max_upload,
            max_workflow,
            max_priority,
            default_priority,
            weight,
            gpu_seconds_per_day,
        } => {
            let user = accounts.user(&username).await?;
            let mut set = store.user_limits(user.id).await?;
            let apply = |slot: &mut Option<i64>, setting: Option<Setting>| match setting {
                Some(Setting::Value(n)) => *slot = Some(n),
                Some(Setting::Default) => *slot = None,
                None => {}
            };
            let changed = [
                max_waiting,
                max_running,
                jobs_per_hour,
                max_upload,
                max_workflow,
                max_priority,
                default_priority,
                weight,
                gpu_seconds_per_day,
            ]
            .iter()
            .any(Option::is_some);
            apply(&mut set.max_waiting, max_waiting);
            apply(&mut set.max_running, max_running);
            apply(&mut set.jobs_per_hour, jobs_per_hour);
            apply(&mut set.max_upload_bytes, max_upload);
            apply(&mut set.max_workflow_bytes, max_workflow);
            apply(&mut set.max_priority, max_priority);
            apply(&mut set.default_priority, default_priority);
            apply(&mut set.share_weight, weight);
            apply(&mut set.gpu_seconds_per_day, gpu_seconds_per_day);
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
    let (store, accounts) = open(config, false).await?;
    match command {
        TokenCommand::Create { username, name, expires, webhook, webhook_events } => {
            // Checked before the token exists, so a refused webhook leaves no token behind.
            let webhook = match webhook {
                Some(url) => {
                    let mut spec = serde_json::json!({ "url": url });
                    if let Some(events) = webhook_events {
                        spec["events"] = serde_json::json!(events);
                    }
                    comfygate::webhooks::spec::parse(&spec, &config.webhooks)
                        .map_err(|why| anyhow::anyhow!("--webhook refused: {why}"))?;
                    Some(spec.to_string())
                }
                None => None,
            };
            let issued = accounts
                .create_token(
                    &username,
                    &name,
                    parse_expiry(expires.as_deref().unwrap_or_default(), config.auth.default_token_lifetime())?,
                    &Audited::cli(),
                )
                .await?;
            if let Some(spec) = &webhook {
                store.set_token_webhook(issued.token.id, Some(spec)).await.map_err(|e| {
                    anyhow::anyhow!(
                        "token `{}` was created, but its webhook could not be saved: {e}",
                        issued.token.name
                    )
                })?;
            }
            let until = issued.token.expires_at.map(format_ms).unwrap_or_else(|| "never".to_owned());
            eprintln!(
                "created token `{}` for `{}` (expires: {until}); it is shown only once:",
                issued.token.name, issued.token.username
            );
            println!("{}", issued.secret);
        }
        TokenCommand::List { username } => {
            let now = comfygate::time::now_ms();
            let rows = accounts.list_tokens(username.as_deref()).await?.into_iter().map(|t| {
                let never = || "never".to_owned();
                vec![
                    t.id.to_string(),
                    t.username.clone(),
                    t.name.clone(),
                    t.prefix.clone(),
                    t.status(now).to_string(),
                    format_ms(t.created_at),
                    t.last_used_at.map(format_ms).unwrap_or_else(never),
                    t.expires_at.map(format_ms).unwrap_or_else(never),
                ]
            });
            let headers = ["ID", "USER", "NAME", "PREFIX", "STATUS", "CREATED", "LAST USED", "EXPIRES"];
            print!("{}", table(&headers, rows));
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
    // Not a ComfyUI-Login file is bad input (65), like every other refused import.
    let legacy = parse_password_file(&text).map_err(|e| AccountError::Import(format!("{}: {e}", path.display())))?;
    let (_, accounts) = open(config, true).await?;
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

/// Rows under `headers`, each column as wide as its widest cell (names can be long).
/// Aligned columns under `headers`, two spaces apart (the last column unpadded).
pub(super) fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).chain([headers[i].len()]).max().unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_fit_their_widest_cell() {
        let rows = vec![
            vec!["a-very-long-user-name".to_owned(), "user".to_owned()],
            vec!["bo".to_owned(), "admin".to_owned()],
        ];
        let text = table(&["USER", "ROLE"], rows.into_iter());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "USER                   ROLE");
        assert_eq!(lines[1], "a-very-long-user-name  user");
        assert_eq!(lines[2], "bo                     admin");
    }
}
