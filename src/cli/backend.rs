//! `comfygate backend drain|resume|list`: drains kept in the store, which every running gateway
//! applies within a second (and at its next start).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;

use comfygate::Config;
use comfygate::audit::{Audit, Context as Audited, Event};
use comfygate::backends::discovery;
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
    /// Each configured backend: its URL, whether it is drained, and the jobs on it; a
    /// `discover` entry's workers as its DNS name resolves now (and those still holding jobs).
    List,
}

/// How often `--wait` looks at the store.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// `comfygate backend ...`.
pub async fn run(config: &Config, command: BackendCommand) -> anyhow::Result<ExitCode> {
    let known = |name: &str| -> Result<String, UsageArgError> {
        let names: Vec<&str> =
            config.backends.iter().filter(|b| b.discover.is_none()).map(|b| b.name.as_str()).collect();
        let discovering: Vec<&str> =
            config.backends.iter().filter(|b| b.discover.is_some()).map(|b| b.name.as_str()).collect();
        let found = names.contains(&name) || discovering.iter().any(|entry| is_discovered_by(entry, name));
        if found {
            return Ok(name.to_owned());
        }
        let shown: String = name.chars().filter(|c| !c.is_control()).take(60).collect();
        let mut listed = names.join(", ");
        for entry in discovering {
            listed.push_str(&format!("{}{entry}-<address> (discovered)", if listed.is_empty() { "" } else { ", " }));
        }
        Err(UsageArgError(format!("no backend named `{shown}` (configured: {listed})")))
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
            let row = |name: &str, url: String| {
                let on = jobs.iter().find(|(n, _)| n == name).map_or(0, |(_, j)| *j);
                vec![name.to_owned(), url, drained.iter().any(|d| d == name).to_string(), on.to_string()]
            };
            let mut rows = Vec::new();
            for b in &config.backends {
                let Some(target) = &b.discover else {
                    rows.push(row(&b.name, b.url.clone()));
                    continue;
                };
                let workers = discovered_now(config, b, target).await;
                let summary = match &workers {
                    Ok(w) => format!("{target}: {} worker(s) now", w.len()),
                    Err(why) => format!("{target}: lookup failed ({why})"),
                };
                rows.push(vec![b.name.clone(), summary, "-".to_owned(), "-".to_owned()]);
                let workers = workers.unwrap_or_default();
                for w in &workers {
                    rows.push(row(&w.name, w.url.clone()));
                }
                // Workers gone from DNS that the store still knows of (draining, or drained).
                let mut left: Vec<&str> =
                    jobs.iter().map(|(n, _)| n.as_str()).chain(drained.iter().map(String::as_str)).collect();
                left.sort_unstable();
                left.dedup();
                for name in
                    left.into_iter().filter(|n| is_discovered_by(&b.name, n) && !workers.iter().any(|w| w.name == *n))
                {
                    rows.push(row(name, "(no longer in DNS)".to_owned()));
                }
            }
            print!("{}", super::accounts::table(&["NAME", "URL", "DRAINED", "JOBS"], rows.into_iter()));
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

/// Whether `name` is the name of a backend the `discover` entry `entry` finds (see
/// `backends::discovery::backend_name`).
fn is_discovered_by(entry: &str, name: &str) -> bool {
    name.strip_prefix(entry)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|address| !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

/// The workers `entry`'s DNS name resolves to now, as backends.
async fn discovered_now(
    config: &Config,
    entry: &comfygate::config::BackendConfig,
    target: &comfygate::config::DnsTarget,
) -> Result<Vec<comfygate::config::BackendConfig>, String> {
    let resolver = discovery::Resolver::new(&config.discovery).map_err(|e| e.to_string())?;
    let lookup = resolver.lookup(target).await;
    if let (Some(why), true) = (lookup.failure(), lookup.merged(&[]).is_empty()) {
        return Err(why.to_owned());
    }
    Ok(lookup.merged(&[]).into_iter().map(|ip| discovery::discovered(entry, target, ip)).collect())
}

async fn jobs_on(store: &dyn comfygate::store::Store, name: &str) -> anyhow::Result<i64> {
    Ok(store.jobs_on_backends().await?.into_iter().find(|(n, _)| n == name).map_or(0, |(_, j)| j))
}
