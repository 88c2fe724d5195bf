//! Log output: `tracing` to standard error, as text or JSON lines.

use tracing_subscriber::EnvFilter;

use comfygate::config::{LogConfig, LogFormat};

/// Installs the subscriber; `COMFYGATE_LOG` overrides the configured filter.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = std::env::var("COMFYGATE_LOG").unwrap_or_else(|_| config.level.clone());
    let filter = EnvFilter::try_new(&filter).map_err(|e| anyhow::anyhow!("invalid log filter `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install logging: {e}"))
}
