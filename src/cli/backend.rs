//! `comfygate backend drain|resume|list`: drains kept in the store, which every running gateway
//! applies within a second (and at its next start).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;

use comfygate::Config;
use comfygate::audit::{Audit, Context as Audited, Event};
use comfygate::time::now_ms;

use super::usage::UsageArgError;

/// `comfygate backend ...`.
#[derive(Subcommand)]
pub enum BackendCommand {
    /// Drain a backend: it takes no new job, its running ones finish (exit 64: no such backend).
    Drain {
        /// The backend's configured name.
        name: String,
        /// Wait until no job is on it any more (exit 75 on timeout).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits, e.g. `10m`.
        #[arg(long, default_value = "10m", requires = "wait", value_parser = super::parse_since)]
        timeout: Duration,
    },
    /// Put a drained backend back in service.
    Resume {
        /// The backend's configured name.
        name: String,
    },
    /// Each configured backend: its URL, whether it is drained, and the jobs on it.
    List,
}

/// How often `--wait` looks at the store.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// `comfygate backend ...`.
pub async fn run(config: &Config, command: BackendCommand) -> anyhow::Result<ExitCode> {
    let known = |name: &str| -> Result<String, UsageArgError> {
        let names: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
        names.iter().find(|n| **n == name).map(|n| (*n).to_owned()).ok_or_else(|| {
            let shown: String = name.chars().filter(|c| !c.is_control()).take(60).collect();
            UsageArgError(format!("no backend named `{shown}` (configured: {})", names.join(", ")))
        })
    };
    let store = super::open_store(config, false).await?;
    match command {
        BackendCommand::Drain { name, wait, timeout } => {
            let name = known(&name)?;
            set(config, store.clone(), &name, true).await?;
            println!("backend `{name}` drained: it takes no new job; its jobs finish");
            if wait {
                let deadline = Instant::now() + timeout;
                loop {
                    let jobs = jobs_on(store.as_ref(), &name).await?;
                    if jobs == 0 {
                        println!("backend `{name}` is empty");
                        break;
                    }
                    if Instant::now() >= deadline {
                        eprintln!(
                            "error: backend `{name}` still has {jobs} job(s) after {}",
                            humantime::format_duration(timeout)
                        );
                        return Ok(ExitCode::from(75));
                    }
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
        }
        BackendCommand::Resume { name } => {
            let name = known(&name)?;
            set(config, store.clone(), &name, false).await?;
            println!("backend `{name}` back in service");
        }
        BackendCommand::List => {
            let drained = store.drained_backends().await?;
            let jobs = store.jobs_on_backends().await?;
            let rows = config.backends.iter().map(|b| {
                let on = jobs.iter().find(|(n, _)| *n == b.name).map_or(0, |(_, j)| *j);
                vec![b.name.clone(), b.url.clone(), drained.contains(&b.name).to_string(), on.to_string()]
            });
            print!("{}", super::accounts::table(&["NAME", "URL", "DRAINED", "JOBS"], rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records the drain (audited as `backend_drained` / `backend_resumed` when it changed anything).
async fn set(
    config: &Config,
    store: Arc<dyn comfygate::store::Store>,
    name: &str,
    drained: bool,
) -> anyhow::Result<()> {
    let audit = Audit::open(config, store.clone())?;
    if store.set_backend_drain(name, drained, "cli", now_ms()).await? {
        let event = if drained { "backend_drained" } else { "backend_resumed" };
        audit.record(&Audited::cli(), Event::success(event).field("backend", name)).await?;
    }
    Ok(())
}

async fn jobs_on(store: &dyn comfygate::store::Store, name: &str) -> anyhow::Result<i64> {
    Ok(store.jobs_on_backends().await?.into_iter().find(|(n, _)| n == name).map_or(0, |(_, j)| j))
}
