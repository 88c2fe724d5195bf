//! `backup` and `restore`: a consistent copy of the SQLite store while the gateway serves, and
//! putting one back while it does not (the work is in [`comfygate::store::backup`]).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use comfygate::Config;
use comfygate::audit::{Audit, Context as Audited, Event};
use comfygate::store::backup::{self, BackupError};
use comfygate::store::schema::Schema;
use comfygate::store::{self};

/// `comfygate backup` arguments.
#[derive(Args)]
pub struct BackupArgs {
    /// Where to write the copy (mode 0600; its folder must exist).
    pub file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `comfygate restore` arguments.
#[derive(Args)]
pub struct RestoreArgs {
    /// A copy written by `comfygate backup`.
    pub file: PathBuf,
    /// Only check FILE and say what would be replaced.
    #[arg(long)]
    pub dry_run: bool,
}

/// Exit codes (sysexits) of backup and restore errors.
pub fn exit_code(error: &BackupError) -> u8 {
    match error {
        BackupError::Postgres | BackupError::NoFile => 78,
        BackupError::NotSqlite(_)
        | BackupError::Damaged { .. }
        | BackupError::NotAStore(_)
        | BackupError::Newer { .. }
        | BackupError::FailedMigration { .. } => 65,
        BackupError::Missing(_) | BackupError::Serving { .. } | BackupError::Database { .. } | BackupError::Lock(_) => {
            69
        }
        BackupError::Exists(_) | BackupError::NoFolder(_) => 73,
        BackupError::Io { .. } => 74,
        // A wrong argument, as clap's usage errors.
        BackupError::SameFile(_) => 2,
    }
}

/// `schema 8`, and what the next `serve` does about an older one.
fn describe(schema: &Schema) -> String {
    let latest = schema.latest.map_or_else(|| "none".to_owned(), |v| v.to_string());
    if schema.pending.is_empty() {
        format!("schema {latest}")
    } else {
        format!("schema {latest}, {} migration(s) behind this comfygate", schema.pending.len())
    }
}

/// `comfygate backup FILE`.
pub async fn backup(config: &Config, args: BackupArgs) -> anyhow::Result<()> {
    let url = config.store.database_url();
    let copy = backup::backup(&url, &args.file, args.force).await?;
    let size = bytesize::ByteSize::b(copy.bytes).display().iec().to_string();
    println!("backup: {} ({size}, {}, integrity ok)", copy.path.display(), describe(&copy.schema));
    if !copy.schema.pending.is_empty() {
        eprintln!("note: the store is not migrated yet; the next `comfygate serve` migrates it");
    }
    // Recorded only when the store is current: opening it to write the event would migrate it.
    if copy.schema.is_current() {
        let event =
            Event::success("store_backed_up").field("file", copy.path.display().to_string()).field("bytes", copy.bytes);
        if let Err(e) = record(config, &url, event).await {
            eprintln!("warning: the backup is written, but its audit event is not: {e:#}");
        }
    }
    Ok(())
}

/// Records `event` in the audit file and the store at `url`.
async fn record(config: &Config, url: &str, event: Event) -> anyhow::Result<()> {
    let store = store::open(url).await?;
    let audit = Arc::new(Audit::open(config, store.clone())?);
    let recorded = audit.record(&Audited::cli(), event).await;
    store.close().await;
    Ok(recorded?)
}

/// `comfygate restore FILE`.
pub async fn restore(config: &Config, args: RestoreArgs) -> anyhow::Result<()> {
    let url = config.store.database_url();
    let data_dir = &config.store.data_dir;
    if args.dry_run {
        let target = backup::store_file(&url)?;
        if let Some(holder) = comfygate::store::running::RunLock::holder(data_dir).map_err(BackupError::Lock)? {
            return Err(BackupError::Serving { path: data_dir.clone(), pid: holder.pid }.into());
        }
        let schema = backup::check(&args.file).await?;
        println!("restore: {} is a comfygate store ({}, integrity ok)", args.file.display(), describe(&schema));
        if target.exists() {
            println!(
                "restore: would replace {} (kept beside it as {}.replaced-<time>)",
                target.display(),
                target.display()
            );
        } else {
            println!("restore: would install it as {} (there is no store yet)", target.display());
        }
        return Ok(());
    }
    let restored = backup::restore(&url, data_dir, &args.file).await?;
    println!(
        "restore: installed {} as {} ({}, integrity ok)",
        args.file.display(),
        restored.installed.display(),
        describe(&restored.schema)
    );
    match restored.kept.split_first() {
        Some((store, side)) => {
            println!("restore: the replaced store is kept as {}", store.display());
            for file in side {
                println!("restore: with {}", file.display());
            }
        }
        None => println!("restore: there was no store before"),
    }
    if restored.schema.is_current() {
        let kept = restored.kept.first().map(|k| k.display().to_string());
        let event = Event::success("store_restored").field("file", args.file.display().to_string()).field("kept", kept);
        if let Err(e) = record(config, &url, event).await {
            eprintln!("warning: the store is restored, but its audit event is not: {e:#}");
        }
    } else {
        // Not recorded in the store: opening it to write the event would migrate it.
        println!("restore: the next `comfygate serve` migrates it to this comfygate's schema");
    }
    println!(
        "restore: tokens, sessions and users revoked or removed since the copy was taken are valid again: \
         check `comfygate token list` and `comfygate user list`"
    );
    Ok(())
}
