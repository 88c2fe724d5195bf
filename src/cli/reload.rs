//! `comfygate reload`: signals the gateway serving from the configured data folder (SIGHUP, as
//! `systemctl reload` does) and reports what it did, read from its audit log.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use comfygate::Config;
use comfygate::store::running::{Holder, RunLock};

/// `comfygate reload`'s options.
#[derive(Args)]
pub struct ReloadArgs {
    /// How long to wait for the gateway's answer (`10s`).
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| "use a duration such as 10s or 1m".to_owned())
}

/// The audit events a reload ends with.
const ANSWERS: [&str; 2] = ["config_reloaded", "config_reload_refused"];

/// Sends SIGHUP and waits for the gateway's verdict.
pub async fn run(config: &Config, args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &config.store.data_dir;
    let pid = match RunLock::holder(data_dir)? {
        Some(Holder { pid: Some(pid) }) => pid,
        Some(Holder { pid: None }) => anyhow::bail!("a gateway holds {} but its pid is unreadable", data_dir.display()),
        None => {
            eprintln!("error: no gateway is serving from the data folder {} (is it running?)", data_dir.display());
            return Ok(ExitCode::from(69));
        }
    };
    let audit = config.audit.file_in(data_dir);
    let from = std::fs::metadata(&audit).map_or(0, |m| m.len());
    let target = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
    let target = target.ok_or_else(|| anyhow::anyhow!("{} names no valid pid ({pid})", data_dir.display()))?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(|e| anyhow::anyhow!("cannot signal the gateway (pid {pid}): {e}"))?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        if let Some(answer) = answer_after(&audit, from) {
            return Ok(report(pid, &answer));
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "comfygate reload: sent SIGHUP to pid {pid}, but no answer in {} within {}; see the gateway's log",
                audit.display(),
                humantime::format_duration(args.timeout)
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first reload verdict written to `file` past `offset` (from the start if the file was
/// rotated meanwhile).
fn answer_after(file: &Path, offset: u64) -> Option<Value> {
    let mut f = std::fs::File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(if len < offset { 0 } else { offset })).ok()?;
    let mut text = String::new();
    f.take(16 * 1024 * 1024).read_to_string(&mut text).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v["event"].as_str().is_some_and(|e| ANSWERS.contains(&e)))
}

fn report(pid: u32, answer: &Value) -> ExitCode {
    let list = |key: &str| -> Vec<String> {
        answer[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    if answer["event"] == "config_reload_refused" {
        eprintln!(
            "comfygate reload: the gateway (pid {pid}) refused the new configuration and keeps the one in force: {}",
            answer["reason"].as_str().unwrap_or("no reason given")
        );
        return ExitCode::from(1);
    }
    let applied = list("applied");
    if applied.is_empty() {
        println!("comfygate reload: the gateway (pid {pid}) re-read its configuration: nothing to change");
    } else {
        println!("comfygate reload: the gateway (pid {pid}) applied:");
        for line in &applied {
            println!("  - {line}");
        }
    }
    let restart = list("needs_restart");
    if !restart.is_empty() {
        println!("changed but applied only at the next start: {}", restart.join(", "));
    }
    ExitCode::SUCCESS
}
