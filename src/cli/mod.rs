//! The command line: parsing, dispatch, and the one mapping from errors to exit codes.

mod accounts;
mod audit;
mod backend;
mod backup;
mod doctor;
mod env;
mod logging;
mod models;
mod reload;
mod serve;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use comfygate::Config;
use comfygate::auth::AccountError;
use comfygate::config::ConfigError;
use comfygate::envfile::EnvFileError;
use comfygate::store::running::RunLockError;
use comfygate::store::schema::SchemaError;
use comfygate::store::{self, Store, StoreError};

/// A secure, multi-user front door for ComfyUI.
#[derive(Parser)]
#[command(name = "comfygate", version, about)]
pub struct Cli {
    /// Configuration file (default: ./comfygate.toml when it exists).
    #[arg(long, short, global = true, env = "COMFYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Say which configuration file and store a command uses (on standard error).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (creates the first admin on the very first start).
    Serve,
    /// Create the first admin non-interactively (for provisioning).
    Init(InitArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Import accounts from another tool.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Check the configuration, store, backends, the running gateway and a token; exit 0 when
    /// every check passes, 1 on a failure, 2 on warnings only.
    Doctor(doctor::DoctorArgs),
    /// List audit events from the store, newest first.
    Audit(AuditArgs),
    /// Tokens in dotenv files: write one (`env write`), check them all (`env check`).
    #[command(subcommand)]
    Env(env::EnvCommand),
    /// Make the running gateway re-read its configuration (as SIGHUP does) and say what it
    /// applied; exit 0 when it did, 1 when it refused the new one, 69 when none is running.
    Reload(reload::ReloadArgs),
    /// Copy the SQLite store to FILE (0600) while the gateway serves, and check the copy; exit
    /// 69 store missing, 73 FILE exists (use --force), 78 PostgreSQL store (use pg_dump).
    Backup(backup::BackupArgs),
    /// Replace the SQLite store with a copy made by `backup`, keeping the replaced one beside it;
    /// refused while a gateway serves (69); exit 65 when FILE is not an intact comfygate store.
    Restore(backup::RestoreArgs),
    /// Download and verify model files from a manifest (needs no configuration or store).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Totals of the usage ledger (jobs, outcomes, GPU seconds, waits, outputs) over a window,
    /// by user, token, model, backend or UTC day; exit 64 on a bad argument.
    Usage(usage::UsageArgs),
    /// Drain a backend (no new jobs; `--wait` until it is empty, exit 75 on timeout), resume it,
    /// or list the backends with their drains and jobs; exit 64 for an unknown backend.
    #[command(subcommand)]
    Backend(backend::BackendCommand),
}

#[derive(Args)]
struct AuditArgs {
    /// Only events concerning this account.
    #[arg(long)]
    user: Option<String>,
    /// Only events of this name (`login_failed`, `token_created`...).
    #[arg(long)]
    event: Option<String>,
    /// Only events this recent (`1h`, `30m`, `7d`).
    #[arg(long, value_parser = parse_since)]
    since: Option<std::time::Duration>,
    /// At most this many events.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    limit: u32,
    /// The JSON lines exactly as written, one per event.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InitArgs {
    /// Admin user name.
    #[arg(long, env = "COMFYGATE_ADMIN_USER", default_value = "admin")]
    admin_user: String,
    /// Read the admin password from this file (else $COMFYGATE_ADMIN_PASSWORD, else one is generated).
    #[arg(long, env = "COMFYGATE_ADMIN_PASSWORD_FILE")]
    admin_password_file: Option<PathBuf>,
}

/// Where a new password comes from; without either flag one is generated and printed once.
#[derive(Args)]
struct PasswordSource {
    /// Read the password from standard input (first line).
    #[arg(long, conflicts_with = "password_file")]
    password_stdin: bool,
    /// Read the password from a file (first line).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user.
    Add {
        /// User name.
        username: String,
        /// `user` or `admin`.
        #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
        role: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List users.
    List,
    /// Set a user's password (ends all their sessions).
    Passwd {
        /// User name.
        username: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Disable a user (sessions and tokens stop working at once).
    Disable {
        /// User name.
        username: String,
    },
    /// Enable a disabled user.
    Enable {
        /// User name.
        username: String,
    },
    /// Lift a user's login lockout (too many wrong passwords), from every address.
    Unlock {
        /// User name.
        username: String,
    },
    /// Change a user's role.
    Role {
        /// User name.
        username: String,
        /// `user` or `admin`.
        #[arg(value_parser = ["user", "admin"])]
        role: String,
    },
    /// Delete a user with their tokens and sessions.
    Remove {
        /// User name.
        username: String,
    },
    /// Show a user's limits, or set them (`default` returns one to `[limits]`; a count of 0
    /// means no limit).
    Limits {
        /// User name.
        username: String,
        /// Jobs waiting in the gateway's queue at once.
        #[arg(long, value_parser = parse_count)]
        max_waiting: Option<Setting>,
        /// Jobs on backends (dispatched or running) at once.
        #[arg(long, value_parser = parse_count)]
        max_running: Option<Setting>,
        /// Submissions in any hour.
        #[arg(long, value_parser = parse_count)]
        jobs_per_hour: Option<Setting>,
        /// Largest upload, e.g. `200MiB`.
        #[arg(long, value_parser = parse_size)]
        max_upload: Option<Setting>,
        /// Largest workflow, e.g. `4MiB`.
        #[arg(long, value_parser = parse_size)]
        max_workflow: Option<Setting>,
        /// Highest priority class they may ask for: low, normal or high.
        #[arg(long, value_parser = parse_priority)]
        max_priority: Option<Setting>,
        /// Class of their jobs that ask for none: low, normal or high.
        #[arg(long, value_parser = parse_priority)]
        default_priority: Option<Setting>,
        /// Fair-share weight, e.g. `2` for twice an equal share of the GPUs (0.01 to 1000).
        #[arg(long, value_parser = parse_weight)]
        weight: Option<Setting>,
        /// GPU seconds the user's jobs may run per UTC day.
        #[arg(long, value_parser = parse_count)]
        gpu_seconds_per_day: Option<Setting>,
    },
}

/// A limit given on the command line: a value, or back to the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// This value.
    Value(i64),
    /// The configured default.
    Default,
}

/// A duration back from now (`--since`); a bad one is a usage error (exit 2).
fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| "use a duration such as 1h, 30m or 7d".to_owned())
}

fn parse_count(text: &str) -> Result<Setting, String> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(Setting::Default);
    }
    text.parse::<u32>()
        .map(|n| Setting::Value(i64::from(n)))
        .map_err(|_| format!("`{text}` is not a count or `default`"))
}

fn parse_priority(text: &str) -> Result<Setting, String> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(Setting::Default);
    }
    let class: comfygate::scheduler::priority::Priority = text.parse().map_err(|e| format!("{e}"))?;
    Ok(Setting::Value(i64::try_from(class.index()).unwrap_or(1)))
}

fn parse_weight(text: &str) -> Result<Setting, String> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(Setting::Default);
    }
    match text.parse::<f64>() {
        Ok(w) if (0.01..=1000.0).contains(&w) => Ok(Setting::Value((w * 100.0).round() as i64)),
        _ => Err(format!("`{text}` is not a weight from 0.01 to 1000 or `default`")),
    }
}

fn parse_size(text: &str) -> Result<Setting, String> {
    if text.eq_ignore_ascii_case("default") {
        return Ok(Setting::Default);
    }
    let size: bytesize::ByteSize =
        text.parse().map_err(|_| format!("`{text}` is not a size (e.g. 200MiB) or `default`"))?;
    i64::try_from(size.as_u64()).map(Setting::Value).map_err(|_| format!("`{text}` is too large"))
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it once on standard output.
    Create {
        /// Owner.
        username: String,
        /// A label, unique among the owner's active tokens.
        #[arg(long)]
        name: String,
        /// Lifetime such as 30d or 12h, or `never` (admins only: the CLI may exceed
        /// `auth.token_max_lifetime`); default: that maximum, or 90d when it is `never`.
        #[arg(long)]
        expires: Option<String>,
        /// A default webhook URL for the jobs this token submits without `extra_data.webhook`
        /// (its host must be in `[webhooks] allowed_hosts`).
        #[arg(long)]
        webhook: Option<String>,
        /// The events of `--webhook`, comma-separated (default: all).
        #[arg(long, requires = "webhook", value_delimiter = ',')]
        webhook_events: Option<Vec<String>>,
    },
    /// List tokens (of one user, or everyone's).
    List {
        /// Owner.
        username: Option<String>,
    },
    /// Revoke a token by name or id (takes effect on the next request).
    Revoke {
        /// Owner.
        username: String,
        /// Token name or id.
        token: String,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import ComfyUI-Login's `login/PASSWORD` file as an admin account.
    ComfyuiLogin {
        /// Path to the `PASSWORD` file.
        path: PathBuf,
        /// User name when the file has none on line 2 (default `admin`).
        #[arg(long)]
        username: Option<String>,
        /// Keep accepting ComfyUI-Login's old token (the hash string) as a revocable legacy token.
        #[arg(long)]
        keep_legacy_token: bool,
    },
}

/// Exit codes (sysexits): a bad `usage` argument 64, data errors 65, store unavailable 69, configuration 78, a dotenv
/// file that cannot be read or written 2 (as usage errors), a backup that cannot be written 73
/// (exists) or 74 (I/O), other 1.
fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<ConfigError>().is_some() {
        return 78;
    }
    if let Some(e) = error.downcast_ref::<comfygate::store::backup::BackupError>() {
        return backup::exit_code(e);
    }
    if error.downcast_ref::<usage::UsageArgError>().is_some() {
        return 64;
    }
    if error.downcast_ref::<EnvFileError>().is_some() {
        return 2;
    }
    if let Some(e) = error.downcast_ref::<AccountError>() {
        return match e {
            AccountError::Store(_) | AccountError::Hash(_) | AccountError::Random(_) | AccountError::Audit(_) => 69,
            _ => 65,
        };
    }
    if error.downcast_ref::<StoreError>().is_some()
        || error.downcast_ref::<SchemaError>().is_some()
        || error.downcast_ref::<RunLockError>().is_some()
    {
        return 69;
    }
    1
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let failed = |error: anyhow::Error| {
        eprintln!("error: {error:#}");
        ExitCode::from(exit_code(&error))
    };
    if let Command::Models(cmd) = cli.command {
        return models::main(cmd);
    }
    let config_path = config_path(cli.config);
    if cli.verbose {
        VERBOSE.store(true, Ordering::Relaxed);
        match &config_path {
            Some(path) => eprintln!("configuration: {}", std::path::absolute(path).unwrap_or(path.clone()).display()),
            None => eprintln!("configuration: built-in defaults (no --config, no ./comfygate.toml)"),
        }
    }
    let config = Config::load(config_path.as_deref(), std::env::vars());
    if let Command::Doctor(args) = cli.command {
        // The doctor reports a bad configuration as one of its checks.
        return match runtime(0).map_err(anyhow::Error::from) {
            Ok(rt) => rt.block_on(doctor::run(config, args)).unwrap_or_else(failed),
            Err(error) => failed(error),
        };
    }
    let config = match config {
        Ok(config) => config,
        Err(error) => return failed(error.into()),
    };
    let runtime = match runtime(config.server.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command, config, config_path)) {
        Ok(code) => code,
        Err(error) => failed(error),
    }
}

/// The async runtime with `workers` threads (0: `TOKIO_WORKER_THREADS`, else one per CPU). One
/// worker gets tokio's single-threaded scheduler: no work-stealing bookkeeping, ~20 % less CPU
/// per proxied request (docs/performance.md); blocking work (password hashing, SQLite) still
/// runs on its own threads either way.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    };
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    }
}

async fn run(command: Command, config: Config, config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Env(cmd) => return env::run(&config, cmd).await,
        Command::Backend(cmd) => return backend::run(&config, cmd).await,
        Command::Serve => serve::run(config, config_path).await,
        Command::Reload(args) => return reload::run(&config, args).await,
        Command::Init(args) => accounts::init(&config, args).await,
        Command::User(cmd) => accounts::user(&config, cmd).await,
        Command::Token(cmd) => accounts::token(&config, cmd).await,
        Command::Audit(args) => audit::list(&config, args).await,
        Command::Usage(args) => usage::run(&config, args).await,
        Command::Backup(args) => backup::backup(&config, args).await,
        Command::Restore(args) => backup::restore(&config, args).await,
        Command::Import(ImportCommand::ComfyuiLogin { path, username, keep_legacy_token }) => {
            accounts::import_comfyui_login(&config, &path, username.as_deref(), keep_legacy_token).await
        }
        // Normally run by `main` (a bad configuration is one of its checks); here it is valid.
        Command::Doctor(args) => return doctor::run(Ok(config), args).await,
        // Normally run by `main`, before a configuration is required.
        Command::Models(cmd) => return models::run_command(cmd).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

/// `--verbose`: commands name the store they open.
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Opens the configured store for a command. Only `serve` and `init` create a missing one
/// (`create`); `--verbose` names it.
pub async fn open_store(config: &Config, create: bool) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.store.database_url();
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!("store: {}", store::describe(&url));
    }
    match if create { store::open(&url).await } else { store::open_existing(&url).await } {
        Ok(store) => Ok(store),
        Err(e @ StoreError::Missing(_)) => Err(e.into()),
        Err(e) => Err(e).with_context(|| format!("cannot open the store ({})", store::describe(&url))),
    }
}

/// The configuration file: the one named, else `./comfygate.toml` when it exists.
fn config_path(path: Option<PathBuf>) -> Option<PathBuf> {
    let default = PathBuf::from("comfygate.toml");
    path.or_else(|| default.exists().then_some(default))
}
