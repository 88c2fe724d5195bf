//! The outbox worker: claims due deliveries, POSTs them signed, and records each attempt —
//! delivered on 2xx, else retried with exponential backoff and jitter until `max_age` after
//! the event, then failed. At most [`MAX_IN_FLIGHT`] attempts run at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Webhooks, destination, spec};
use crate::store::{Attempted, Delivery};
use crate::time::{ms, now_ms};

/// Attempts running at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Most of a receiver's answer read (for the error note; the rest is dropped).
const MAX_ANSWER: usize = 64 * 1024;
/// How often the outbox is looked at when nothing wakes the worker (rows of other replicas).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Delivered and failed rows are kept this long.
const KEEP_ENDED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs until `stop`; attempts under way are let finish (each bounded by `timeout`).
pub async fn run(hooks: Arc<Webhooks>, mut stop: watch::Receiver<bool>) {
    let mut running = JoinSet::new();
    let mut last_purge = 0;
    loop {
        let now = now_ms();
        if now - last_purge > 3_600_000 {
            last_purge = now;
            if let Err(e) = hooks.store.purge_deliveries(now - ms(KEEP_ENDED)).await {
                tracing::warn!(error = %e, "cannot purge old webhook deliveries");
            }
        }
        let room = MAX_IN_FLIGHT.saturating_sub(running.len());
        if room > 0 {
            // A claim outlives the attempt; a process that dies mid-attempt leaves the row to
            // be taken again once it lapses.
            let lock_until = now + ms(hooks.config.timeout) + 5_000;
            match hooks.store.claim_deliveries(now, lock_until, i64::try_from(room).unwrap_or(1)).await {
                Ok(rows) => {
                    for row in rows {
                        let hooks = hooks.clone();
                        running.spawn(async move { attempt(&hooks, row).await });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries"),
            }
        }
        let wait = match hooks.store.next_delivery_due().await {
            Ok(Some(due)) => Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)).min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        // A due row with no room waits for an attempt to end, not for the clock.
        let wait = if running.len() >= MAX_IN_FLIGHT { IDLE_POLL } else { wait.max(Duration::from_millis(10)) };
        tokio::select! {
            () = hooks.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    while running.join_next().await.is_some() {}
}

/// One attempt of `row`, recorded.
async fn attempt(hooks: &Webhooks, row: Delivery) {
    let outcome = match send(hooks, &row).await {
        Ok(()) => Attempted::Delivered(now_ms()),
        Err(why) => {
            let delay = backoff(&hooks.config, row.attempts + 1);
            let next = now_ms() + ms(delay);
            if next > row.created_at + ms(hooks.config.max_age) {
                tracing::warn!(delivery = row.id, attempts = row.attempts + 1, error = %why, "webhook delivery failed for good");
                Attempted::Failed(why)
            } else {
                tracing::debug!(delivery = row.id, error = %why, "webhook attempt failed; will retry");
                Attempted::Retry(next, why)
            }
        }
    };
    if let Err(e) = hooks.store.delivery_attempted(row.id, &outcome).await {
        tracing::error!(error = %e, delivery = row.id, "cannot record a webhook attempt");
    }
}

/// The delay before attempt `attempts + 1`: `retry_base` doubling per attempt, capped at
/// `retry_max`, times a random 0.8–1.2 so failed receivers are not hit in step.
pub fn backoff(config: &crate::config::WebhooksConfig, attempts: i64) -> Duration {
    let doublings = u32::try_from((attempts - 1).clamp(0, 30)).unwrap_or(30);
    let delay = config.retry_base.saturating_mul(1u32 << doublings).min(config.retry_max);
    let jitter = 0.8 + f64::from(getrandom::u32().unwrap_or(u32::MAX / 2) % 4001) / 10_000.0;
    delay.mul_f64(jitter)
}

/// POSTs `row` once: `Ok` on a 2xx answer, else why not.
async fn send(hooks: &Webhooks, row: &Delivery) -> Result<(), String> {
    let (url, explicit) = spec::destination(&row.url, &hooks.config)?;
    let (host, port) = spec::host_port(&url).ok_or_else(|| "the webhook URL has no host".to_owned())?;
    let bare = host.trim_matches(['[', ']']).to_owned();
    let resolved: Vec<std::net::SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![(ip, port).into()],
        Err(_) => tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let target = destination::choose(&resolved, &hooks.backend_addresses().await, explicit)?;
    // The connection goes to the address just checked, whatever DNS says next; no redirect is
    // followed and no proxy from the environment is used.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(hooks.config.timeout)
        .resolve(&bare, target)
        .build()
        .map_err(|e| format!("cannot build a client: {e}"))?;
    let key = hooks.user_key(row.user_id).await.map_err(|e| {
        tracing::error!(error = %e, "no webhook signing key");
        "the gateway cannot sign webhooks now".to_owned()
    })?;
    let timestamp = now_ms() / 1000;
    let signature = super::signing::signature(&key, &row.message_id, timestamp, row.body.as_bytes());
    let answer = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, concat!("comfygate-webhooks/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", &row.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(row.body.clone())
        .send()
        .await
        .map_err(|e| format!("request failed: {}", without_url(&e)))?;
    let status = answer.status();
    // Read (bounded) so the connection ends cleanly; only the start is kept for the note.
    let mut stream = answer.bytes_stream();
    let mut head = Vec::new();
    let mut read = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len();
        if head.len() < 200 {
            head.extend_from_slice(&chunk[..chunk.len().min(200 - head.len())]);
        }
        if read >= MAX_ANSWER {
            break;
        }
    }
    if status.is_success() {
        return Ok(());
    }
    let text: String = String::from_utf8_lossy(&head).chars().filter(|c| !c.is_control()).take(200).collect();
    Err(format!("HTTP {}: {text}", status.as_u16()))
}

/// A reqwest error's text without the URL (its query string may be a receiver's secret).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "error"
    };
    let mut source = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    match last {
        Some(cause) => format!("{kind} ({cause})"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let config = crate::config::WebhooksConfig {
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            ..Default::default()
        };
        for (attempts, nominal) in [(1, 5.0), (2, 10.0), (3, 20.0), (12, 3600.0), (1000, 3600.0)] {
            let got = backoff(&config, attempts).as_secs_f64();
            assert!(got >= nominal * 0.8 - 1e-6 && got <= nominal * 1.2 + 1e-6, "{attempts}: {got}");
        }
    }
}
