//! Log output: `tracing` to standard error, as text or JSON lines, with a filter a reload can
//! replace.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, fmt, reload};

use comfygate::config::{LogConfig, LogFormat};

/// `COMFYGATE_LOG`: when set, it is the filter, whatever the configuration says.
const OVERRIDE: &str = "COMFYGATE_LOG";

/// The installed subscriber's filter.
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogFilter {
    /// Puts `[log] level` in force (unless `COMFYGATE_LOG` overrides it); an invalid filter
    /// changes nothing.
    pub fn set(&self, config: &LogConfig) -> anyhow::Result<()> {
        if std::env::var_os(OVERRIDE).is_some() {
            return Ok(());
        }
        let filter = parse(&config.level)?;
        self.handle.reload(filter).map_err(|e| anyhow::anyhow!("cannot change the log filter: {e}"))
    }
}

/// Checks a `[log] level` filter.
pub fn parse(filter: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(filter).map_err(|e| anyhow::anyhow!("invalid log filter `{filter}` ([log] level): {e}"))
}

/// Installs the subscriber; `COMFYGATE_LOG` overrides the configured filter.
pub fn init(config: &LogConfig) -> anyhow::Result<LogFilter> {
    let filter = std::env::var(OVERRIDE).unwrap_or_else(|_| config.level.clone());
    let (filter, handle) = reload::Layer::new(parse(&filter)?);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal (https://no-color.org), never into files or pipes.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let result = match config.format {
        LogFormat::Text => registry.with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install logging: {e}"))?;
    Ok(LogFilter { handle })
}
