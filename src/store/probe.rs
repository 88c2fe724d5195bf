//! Whether the store answers, asked at most once a second however many ask: readiness
//! (`/readyz`) and the metrics scrape (`comfygate_ready`) share one probe per gateway, so a flood
//! of either costs one trivial query per interval.

use std::time::{Duration, Instant};

use super::Store;

/// How long the store may take to answer the probe's query.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long one probe's answer serves later askers.
const TTL: Duration = Duration::from_secs(1);

/// The store's last answer to a trivial query, shared by concurrent askers.
#[derive(Default)]
pub struct Probe {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Probe {
    /// `Ok` when the store answers, else why not (no URL, no credentials): from a probe younger
    /// than a second, else a new one (one at a time: concurrent askers wait for it and share it).
    pub async fn check(&self, store: &dyn Store) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((_, result)) = last.as_ref().filter(|(at, _)| at.elapsed() < TTL) {
            return result.clone();
        }
        let result = match tokio::time::timeout(TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the store does not answer");
                Err("the store does not answer".to_owned())
            }
            Err(_) => Err(format!("the store did not answer within {}s", TIMEOUT.as_secs())),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}
