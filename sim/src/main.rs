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
    let config = SimConfig {
        job_duration: Duration::from_millis(args.job_ms),
        models,
        device_name: args.device_name,
        max_upload_bytes: args.max_upload_bytes,
        data_dir: args.data_dir,
        web_root: args.web_root,
        ..SimConfig::default()
    };
    let mut sim = Simulator::start_on(SocketAddr::new(args.listen, args.port), config).await?;
    println!("comfyui-sim listening on http://{}", sim.addr());
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}
