//! `comfygate models pull|verify MANIFEST`: model files for ComfyUI, without a comfygate
//! configuration or store. Exit 0 all ok, 1 a file failed (or no room), 65 a bad manifest, 66
//! an unreadable one, 130 stopped by Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use comfygate::models::{self, Manifest, PullOptions};

/// Exit code of a manifest that does not parse or validate (sysexits EX_DATAERR).
const BAD_MANIFEST: u8 = 65;

/// `comfygate models`'s commands.
#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Download the manifest's files into the models folder (in parallel, resuming partial
    /// downloads; a file gets its name only once its sha256 matches).
    Pull(PullArgs),
    /// Check the manifest's files on disk (size and sha256); exit 0 only when all are ok.
    Verify(VerifyArgs),
}

/// `models pull`'s options.
#[derive(Args)]
pub struct PullArgs {
    /// The manifest (TOML, `[[file]]` tables; see docs/models.md).
    manifest: PathBuf,
    #[command(flatten)]
    dir: ModelsDir,
    /// Say what would be downloaded and check the disk space; download nothing.
    #[arg(long)]
    dry_run: bool,
    /// Downloads at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=32))]
    jobs: u8,
}

/// `models verify`'s options.
#[derive(Args)]
pub struct VerifyArgs {
    /// The manifest (TOML, `[[file]]` tables; see docs/models.md).
    manifest: PathBuf,
    #[command(flatten)]
    dir: ModelsDir,
}

#[derive(Args)]
struct ModelsDir {
    /// The ComfyUI `models` folder (default: the manifest's `models_dir`, else ./models).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
}

impl ModelsDir {
    fn resolve(&self, manifest: &Manifest) -> PathBuf {
        self.models_dir.clone().or_else(|| manifest.models_dir.clone()).unwrap_or_else(|| PathBuf::from("models"))
    }
}

/// Runs a models command on its own runtime.
pub fn main(command: ModelsCommand) -> ExitCode {
    match super::runtime(0) {
        Ok(runtime) => runtime.block_on(run(command)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// [`run`] for the dispatcher of commands that may fail with an error.
pub async fn run_command(command: ModelsCommand) -> anyhow::Result<ExitCode> {
    Ok(run(command).await)
}

/// The manifest, or the exit code after saying what is wrong with it.
fn load(path: &Path) -> Result<Manifest, ExitCode> {
    models::manifest::load(path).map_err(|error| {
        eprintln!("error: {error}");
        match error {
            models::ManifestError::Read { .. } => ExitCode::from(66),
            _ => ExitCode::from(BAD_MANIFEST),
        }
    })
}

/// Runs `command`, saying what went wrong on standard error; the exit code.
pub async fn run(command: ModelsCommand) -> ExitCode {
    let path = match &command {
        ModelsCommand::Pull(args) => &args.manifest,
        ModelsCommand::Verify(args) => &args.manifest,
    };
    let manifest = match load(path) {
        Ok(manifest) => manifest,
        Err(code) => return code,
    };
    match command {
        ModelsCommand::Pull(args) => {
            let options =
                PullOptions { models_dir: args.dir.resolve(&manifest), dry_run: args.dry_run, jobs: args.jobs.into() };
            match models::pull(&manifest, &options).await {
                Ok(_) if options.dry_run => ExitCode::SUCCESS,
                Ok(summary) if summary.stopped => {
                    eprintln!(
                        "stopped: {} of {} files ok, {} not finished; run `comfygate models pull` again to resume",
                        summary.ok,
                        manifest.files.len(),
                        summary.failed
                    );
                    ExitCode::from(130)
                }
                Ok(summary) if summary.failed == 0 => {
                    println!(
                        "{} of {} files ok ({} downloaded) in {}",
                        summary.ok,
                        manifest.files.len(),
                        summary.downloaded,
                        options.models_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(summary) => {
                    eprintln!(
                        "error: {} of {} files failed ({} ok); run `comfygate models pull` again after fixing the cause",
                        summary.failed,
                        manifest.files.len(),
                        summary.ok
                    );
                    ExitCode::from(1)
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                }
            }
        }
        ModelsCommand::Verify(args) => {
            let models_dir = args.dir.resolve(&manifest);
            let bad = models::verify(&manifest, &models_dir).await;
            if bad == 0 {
                println!("all {} files ok in {}", manifest.files.len(), models_dir.display());
                ExitCode::SUCCESS
            } else {
                eprintln!("error: {bad} of {} files are not ok in {}", manifest.files.len(), models_dir.display());
                ExitCode::from(1)
            }
        }
    }
}
