//! `comfygate env write` and `env check`: tokens in the dotenv files clients read. The secret
//! goes into the file and nowhere else: output names tokens by id, name and fingerprint.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use comfygate::Config;
use comfygate::audit::Context as Audited;
use comfygate::auth::AccountError;
use comfygate::auth::accounts::{Accounts, IssuedToken, parse_expiry};
use comfygate::auth::diagnosis::{Diagnosis, Verdict, diagnose};
use comfygate::doctor::remote::gateway_url;
use comfygate::envfile::{self, EnvFile, Placement, Report, is_token_like};
use comfygate::store::schema;
use comfygate::time::{format_ms, now_ms};

use super::accounts::{confirm_applied, open};

/// `comfygate env ...`.
#[derive(Subcommand)]
pub enum EnvCommand {
    /// Mint a token for a user and write it (and the gateway's URL) into a dotenv file, other
    /// lines untouched, mode 0600; run again to rotate (the token replaced is revoked after the
    /// new one is written). The token is printed nowhere.
    Write(WriteArgs),
    /// Judge every token in dotenv files (folders are searched for `.env`, `.env.*`, `*.env`),
    /// and flag one key holding different tokens in different files; exit 0 when all are valid
    /// and none drift, 1 otherwise, 2 when a file cannot be read.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct WriteArgs {
    /// The token's owner.
    #[arg(long)]
    user: String,
    /// The dotenv file (created if missing; its folder must exist; a symbolic link is refused).
    #[arg(long)]
    file: PathBuf,
    /// The key holding the token.
    #[arg(long, default_value = "COMFYUI_TOKEN")]
    key: String,
    /// The key holding the gateway's URL.
    #[arg(long, default_value = "COMFYUI_URL")]
    url_key: String,
    /// The URL written (default: `server.public_url`, else the `server.listen` address).
    #[arg(long)]
    url: Option<String>,
    /// Don't write the URL.
    #[arg(long, conflicts_with_all = ["url"])]
    no_url: bool,
    /// The token's label (default `env:<file name>`, numbered when that is taken).
    #[arg(long)]
    name: Option<String>,
    /// Lifetime such as 90d, or `never`; default as `comfygate token create`.
    #[arg(long)]
    expires: Option<String>,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Dotenv files and folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// One JSON document.
    #[arg(long)]
    json: bool,
}

/// Runs an `env` command.
pub async fn run(config: &Config, command: EnvCommand) -> anyhow::Result<ExitCode> {
    match command {
        EnvCommand::Write(args) if args.key == args.url_key && !args.no_url => {
            eprintln!("error: --key and --url-key must differ");
            Ok(ExitCode::from(2))
        }
        EnvCommand::Write(args) => write(config, args).await.map(|()| ExitCode::SUCCESS),
        EnvCommand::Check(args) => check(config, args).await,
    }
}

/// The URL clients are given: `--url`, else the first public URL, else where the gateway listens.
fn client_url(config: &Config, given: Option<String>) -> String {
    given
        .or_else(|| {
            let public = config.server.public_url.as_deref()?;
            public.split(',').map(str::trim).find(|u| !u.is_empty()).map(str::to_owned)
        })
        .unwrap_or_else(|| gateway_url(config))
}

/// What the file's current value is, and the token to revoke once the new one is written.
async fn judge_old_value(
    accounts: &Accounts,
    store: &dyn comfygate::store::Store,
    user: &str,
    value: &str,
) -> anyhow::Result<(Option<comfygate::store::ApiToken>, String)> {
    if !is_token_like(value) {
        return Ok((None, "its previous value was not a token; nothing to revoke".to_owned()));
    }
    let diagnosis = diagnose(store, value, now_ms()).await?;
    let owner = accounts.user(user).await?;
    match &diagnosis.verdict {
        Verdict::Valid { token } if token.owner == owner.username => {
            let record = accounts.list_tokens(Some(&owner.username)).await?.into_iter().find(|t| t.id == token.id);
            Ok((record, String::new()))
        }
        Verdict::Valid { token } | Verdict::OwnerDisabled { token } if token.owner != owner.username => Ok((
            None,
            format!(
                "its previous value ({}) is token #{} of `{}`, not of `{}`: left alone (not revoked)",
                diagnosis.fingerprint, token.id, token.owner, owner.username
            ),
        )),
        _ => Ok((
            None,
            format!(
                "its previous value ({}) was not a valid token ({}); nothing to revoke",
                diagnosis.fingerprint,
                diagnosis.verdict.code()
            ),
        )),
    }
}

/// Mints the token, numbering the default name when an active token already has it.
async fn mint(accounts: &Accounts, args: &WriteArgs, config: &Config) -> anyhow::Result<IssuedToken> {
    let expires = parse_expiry(args.expires.as_deref().unwrap_or_default(), config.auth.default_token_lifetime())?;
    if let Some(name) = &args.name {
        return Ok(accounts.create_token(&args.user, name, expires, &Audited::cli()).await?);
    }
    let file_name = args.file.file_name().map_or_else(|| ".env".into(), |n| n.to_string_lossy().into_owned());
    let base: String = format!("env:{file_name}").chars().take(56).collect();
    for n in 1..=20 {
        let name = if n == 1 { base.clone() } else { format!("{base}#{n}") };
        match accounts.create_token(&args.user, &name, expires, &Audited::cli()).await {
            Err(AccountError::TokenNameTaken(_)) => continue,
            other => return Ok(other?),
        }
    }
    anyhow::bail!("`{base}` and 19 numbered variants are taken by active tokens of `{}`: give --name", args.user)
}

fn placed(key: &str, placement: &Placement) -> String {
    match placement {
        Placement::Updated { line, .. } => format!("{key} (line {line}, updated)"),
        Placement::Appended { line } => format!("{key} (line {line}, added)"),
    }
}

/// `comfygate env write`.
async fn write(config: &Config, args: WriteArgs) -> anyhow::Result<()> {
    let path = args.file.as_path();
    let text = envfile::read(path)?;
    let mut file = EnvFile::parse(text.as_deref().unwrap_or_default());
    let (store, accounts) = open(config, false).await?;
    let (replaced, note) = match file.get(&args.key) {
        Some(entry) => judge_old_value(&accounts, store.as_ref(), &args.user, &entry.value.clone()).await?,
        None => (None, String::new()),
    };
    let issued = mint(&accounts, &args, config).await?;
    let placement = file.set(&args.key, &issued.secret);
    let mut written = vec![placed(&args.key, &placement)];
    let mut duplicates = Vec::new();
    if let Placement::Updated { earlier, .. } = &placement {
        duplicates.push((args.key.clone(), earlier.clone()));
    }
    let url = (!args.no_url).then(|| client_url(config, args.url.clone()));
    if let Some(url) = &url {
        let placement = file.set(&args.url_key, url);
        if let Placement::Updated { earlier, .. } = &placement {
            duplicates.push((args.url_key.clone(), earlier.clone()));
        }
        written.push(format!("{} = {url}", placed(&args.url_key, &placement)));
    }
    if let Err(error) = envfile::write_private(path, file.render()) {
        // Never written anywhere: withdraw it rather than leave a live token nobody holds.
        let withdrawn = accounts.revoke_token_record(&issued.token, &Audited::cli()).await;
        return Err(anyhow::Error::from(error).context(match withdrawn {
            Ok(()) => format!("the new token #{} was revoked again", issued.token.id),
            Err(e) => format!("the new token #{} was not written and could not be revoked ({e})", issued.token.id),
        }));
    }
    let until = issued.token.expires_at.map(format_ms).unwrap_or_else(|| "never".to_owned());
    println!("wrote {} (mode 0600): {}", path.display(), written.join(", "));
    println!(
        "token #{} `{}` of `{}` ({}…), expires: {until}",
        issued.token.id, issued.token.name, issued.token.username, issued.token.prefix
    );
    for (key, earlier) in duplicates.iter().filter(|(_, e)| !e.is_empty()) {
        let lines: Vec<String> = earlier.iter().map(usize::to_string).collect();
        println!(
            "note: {key} is also assigned on line(s) {}, left as they are: dotenv readers use the last one, which was updated",
            lines.join(", ")
        );
    }
    if !note.is_empty() {
        println!("note: {}: {note}", args.key);
    }
    if let Some(old) = replaced {
        accounts.revoke_token_record(&old, &Audited::cli()).await.context("the file holds the new token, but")?;
        confirm_applied(store.as_ref()).await?;
        println!("revoked the token it replaces: #{} `{}`", old.id, old.name);
    }
    Ok(())
}

/// `comfygate env check`.
async fn check(config: &Config, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let paths = envfile::find_env_files(&args.paths)?;
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = envfile::read_text(&path)?;
        files.push((path, text));
    }
    // Looked at before opening: opening would create a missing SQLite file (every token would
    // then read as unknown) and migrate.
    let url = config.store.database_url();
    let schema = schema::inspect(&url).await.context("cannot read the store (`comfygate doctor` says why)")?;
    if !schema.is_current() {
        eprintln!("error: the store is not at this binary's schema: `comfygate doctor` says why");
        return Ok(ExitCode::from(69));
    }
    let store = super::open_store(config, false).await?;
    let now = now_ms();
    let report = envfile::check(store.as_ref(), &files, now).await?;
    if args.json {
        let document = serde_json::json!({
            "files": files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            "clean": report.is_clean(),
            "findings": report.findings,
            "drift": report.drift,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print_report(&report, files.len(), now);
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_report(report: &Report, files: usize, now: i64) {
    for f in &report.findings {
        let unused = if f.used { "" } else { " (not used: a later line assigns the key again)" };
        println!(
            "{}:{} {} {} {}: {}{unused}",
            f.file.display(),
            f.line,
            f.key,
            f.diagnosis.fingerprint,
            f.diagnosis.verdict.code(),
            f.diagnosis.explain(now)
        );
    }
    for d in &report.drift {
        let copies: Vec<String> = d
            .copies
            .iter()
            .map(|c| {
                let state = if c.valid { "valid" } else { "invalid" };
                format!("{}:{} {} ({state})", c.file.display(), c.line, c.fingerprint)
            })
            .collect();
        println!("drift: {} holds different tokens in {} files: {}", d.key, d.copies.len(), copies.join(", "));
    }
    let used: Vec<&Diagnosis> = report.findings.iter().filter(|f| f.used).map(|f| &f.diagnosis).collect();
    let valid = used.iter().filter(|d| d.is_valid()).count();
    println!(
        "{} token(s) in {files} file(s): {valid} valid, {} invalid, {} key(s) drifting",
        used.len(),
        used.len() - valid,
        report.drift.len()
    );
}
