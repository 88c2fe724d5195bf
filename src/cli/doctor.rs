//! `comfygate doctor`: where the token comes from, and how the report is printed. The checks
//! are [`comfygate::doctor`]'s.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use comfygate::config::{Config, ConfigError};
use comfygate::doctor::{self, Options};

/// `comfygate doctor` options.
#[derive(Args)]
pub struct DoctorArgs {
    /// A token to diagnose (also `COMFYUI_TOKEN`); never printed.
    #[arg(long, env = "COMFYUI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this dotenv file (as the client reads it).
    #[arg(long, conflicts_with = "token")]
    env_file: Option<PathBuf>,
    /// The variable of `--env-file` that holds the token.
    #[arg(long, default_value = "COMFYUI_TOKEN", requires = "env_file")]
    env_key: String,
    /// A workflow file (API or UI format): which backends have its node classes and model files.
    #[arg(long)]
    workflow: Option<PathBuf>,
    /// Run a job without models (EmptyImage → PreviewImage) through the running gateway with the token.
    #[arg(long)]
    run_test_job: bool,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs every check and prints the report; exit 0 when all passed, 1 on a failure, 2 when
/// some only warned.
pub async fn run(config: Result<Config, ConfigError>, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.env_file {
        Some(path) => Some(token_from_env_file(path, &args.env_key)?),
        None => args.token,
    };
    let report =
        doctor::run(config, &Options { token, workflow: args.workflow, run_test_job: args.run_test_job }).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn token_from_env_file(path: &std::path::Path, key: &str) -> anyhow::Result<String> {
    // Read as python-dotenv reads it (no `$VAR` expansion: a legacy `$2b$...` value stays whole),
    // by the same reader as `comfygate env check`.
    let text = comfygate::envfile::read_text(path)?;
    let file = comfygate::envfile::EnvFile::parse(&text);
    let entry = file.get(key).ok_or_else(|| anyhow::anyhow!("{} has no {key}= line", path.display()))?;
    Ok(entry.value.clone())
}
