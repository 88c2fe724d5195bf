//! `comfyui-sim`: run the ComfyUI simulator as a process.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use comfyui_sim::{SimConfig, Simulator};

/// A ComfyUI 0.3.64 simulator (HTTP + WebSocket API) for tests and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "comfyui-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8188)]
    port: u16,
    /// How long one job runs, in milliseconds.
    #[arg(long, default_value_t = 50)]
    job_ms: u64,
    /// A model file as FOLDER/FILE, e.g. checkpoints/sd15.safetensors (repeatable).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Device name in /system_stats.
    #[arg(long, default_value = "cpu")]
    device_name: String,
    /// Upload size limit in bytes.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    max_upload_bytes: u64,
    /// Folder for input/, output/ and temp/ (a temporary directory when absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Folder of static web files to serve at / (ComfyUI's frontend).
    #[arg(long)]
    web_root: Option<PathBuf>,
    /// How long loading a model file takes when it is not resident, as FILE=MS (repeatable).
    #[arg(long = "load-time")]
    load_times: Vec<String>,
    /// GPU memory in MB: models stay loaded while they fit (least recently used evicted first);
    /// without it only the last job's models stay loaded.
    #[arg(long)]
    vram_mb: Option<u64>,
    /// How many MB a model file takes once loaded, as FILE=MB (repeatable; unlisted files take 0).
    #[arg(long = "model-vram")]
    model_vram: Vec<String>,
}

/// `FILE=N` with a non-empty file and a whole number.
fn file_eq_number(flag: &str, s: &str) -> anyhow::Result<(String, u64)> {
    match s.rsplit_once('=') {
        Some((file, n)) if !file.is_empty() => match n.trim().parse::<u64>() {
            Ok(n) => Ok((file.to_string(), n)),
            Err(_) => anyhow::bail!("{flag} must be FILE=NUMBER, got {s:?}"),
        },
        _ => anyhow::bail!("{flag} must be FILE=NUMBER, got {s:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let mut models = Vec::new();
    for m in &args.models {
        match m.split_once('/') {
            Some((folder, file)) if !folder.is_empty() && !file.is_empty() => {
                models.push((folder.to_string(), file.to_string()))
            }
            _ => anyhow::bail!("--model must be FOLDER/FILE, got {m:?}"),
        }
    }
    let mut model_load = Vec::new();
    for s in &args.load_times {
        let (file, ms) = file_eq_number("--load-time", s)?;
        model_load.push((file, Duration::from_millis(ms)));
    }
    let mut model_vram = Vec::new();
    for s in &args.model_vram {
        model_vram.push(file_eq_number("--model-vram", s)?);
    }
    let config = SimConfig {
        job_duration: Duration::from_millis(args.job_ms),
        models,
        device_name: args.device_name,
        max_upload_bytes: args.max_upload_bytes,
        data_dir: args.data_dir,
        web_root: args.web_root,
        model_load,
        vram_mb: args.vram_mb,
        model_vram,
        ..SimConfig::default()
    };
    let mut sim = Simulator::start_on(SocketAddr::new(args.listen, args.port), config).await?;
    println!("comfyui-sim listening on http://{}", sim.addr());
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}
