//! Active health checks: `GET /system_stats` on an interval; a backend that fails
//! `unhealthy_after` checks in a row is taken out, and put back (capabilities re-read) when a
//! check succeeds. Capabilities are also refreshed on their own interval.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use tokio::sync::watch;

use super::capabilities::Capabilities;
use super::{Backend, BackendEvent, Pool};
use crate::config::SchedulerConfig;
use crate::metrics::{Device, MAX_DEVICES};

/// Checks `backend` until `shutdown`.
pub async fn watch_backend(
    pool: Arc<Pool>,
    backend: Arc<Backend>,
    config: SchedulerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refreshed: Option<Instant> = None;
    // While it is down: when it was last said (the first time by `request_failed`).
    let mut said_down: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let result = backend.proxy.call(Method::GET, "/system_stats", None, config.health_timeout).await;
        match result {
            Ok((StatusCode::OK, body)) => {
                let devices = devices(&body);
                let version = comfyui_version(&body);
                let came_back = {
                    let mut load = backend.load();
                    load.devices = devices;
                    load.comfyui_version = version;
                    load.failures = 0;
                    let back = !load.healthy;
                    if back || load.healthy_since.is_none() {
                        load.healthy_since = Some(crate::time::now_ms());
                    }
                    load.healthy = true;
                    back
                };
                let stale = refreshed.is_none_or(|t| t.elapsed() >= config.capabilities_refresh);
                if came_back || stale {
                    if refresh_capabilities(&backend, &config).await {
                        refreshed = Some(Instant::now());
                    }
                    pool.forget_merged();
                }
                if came_back {
                    tracing::info!(backend = backend.name(), "backend back in service");
                    pool.announce(BackendEvent::Up(backend.name().to_owned()));
                } else if stale {
                    pool.announce(BackendEvent::Changed);
                }
            }
            Ok((status, _)) => {
                pool.request_failed(&backend, &format!("health check answered {status}"), config.unhealthy_after);
                remind_while_down(&backend, &mut said_down);
            }
            Err(e) => {
                pool.request_failed(&backend, &e.to_string(), config.unhealthy_after);
                remind_while_down(&backend, &mut said_down);
            }
        }
        if backend.is_healthy() {
            said_down = None;
        }
    }
}

/// How often a backend that stays down is mentioned again.
const DOWN_REMINDER: std::time::Duration = std::time::Duration::from_secs(300);

/// A backend out of service is logged when it goes down, then every [`DOWN_REMINDER`], not at
/// every failed check.
fn remind_while_down(backend: &Backend, said: &mut Option<Instant>) {
    let (down, failures, error) = {
        let load = backend.load();
        (!load.healthy, load.failures, load.last_error.clone().unwrap_or_default())
    };
    match *said {
        _ if !down => {}
        None => *said = Some(Instant::now()),
        Some(at) if at.elapsed() >= DOWN_REMINDER => {
            tracing::warn!(backend = backend.name(), failures, error, "backend still out of service");
            *said = Some(Instant::now());
        }
        Some(_) => {}
    }
}

/// The devices of a `/system_stats` answer with their memory (ComfyUI's `devices` list:
/// `name`, `vram_total`, `vram_free`); at most [`MAX_DEVICES`], unreadable entries skipped.
fn devices(system_stats: &[u8]) -> Vec<Device> {
    let Ok(stats) = serde_json::from_slice::<serde_json::Value>(system_stats) else { return Vec::new() };
    let Some(list) = stats["devices"].as_array() else { return Vec::new() };
    list.iter()
        .filter_map(|d| {
            Some(Device {
                name: d["name"].as_str()?.to_owned(),
                vram_total: d["vram_total"].as_u64()?,
                vram_free: d["vram_free"].as_u64()?,
            })
        })
        .take(MAX_DEVICES)
        .collect()
}

/// The ComfyUI version of a `/system_stats` answer (`system.comfyui_version`), at most 64
/// characters.
fn comfyui_version(system_stats: &[u8]) -> Option<String> {
    let stats: serde_json::Value = serde_json::from_slice(system_stats).ok()?;
    Some(stats["system"]["comfyui_version"].as_str()?.chars().take(64).collect())
}

/// Reads `/object_info`; false when it could not.
async fn refresh_capabilities(backend: &Backend, config: &SchedulerConfig) -> bool {
    let timeout = config.health_timeout.max(std::time::Duration::from_secs(30));
    match backend.proxy.call(Method::GET, "/object_info", None, timeout).await {
        Ok((StatusCode::OK, body)) => match serde_json::from_slice(&body) {
            Ok(raw) => {
                backend.set_capabilities(Capabilities::from_object_info(raw));
                true
            }
            Err(e) => {
                tracing::warn!(backend = backend.name(), error = %e, "unreadable /object_info");
                false
            }
        },
        Ok((status, _)) => {
            tracing::warn!(backend = backend.name(), %status, "/object_info failed");
            false
        }
        Err(e) => {
            tracing::warn!(backend = backend.name(), error = %e, "/object_info failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_read_from_system_stats_and_bad_entries_skipped() {
        let body = br#"{"system": {}, "devices": [
            {"name": "cuda:0 NVIDIA A100", "type": "cuda", "index": 0, "vram_total": 100, "vram_free": 60},
            {"name": "cuda:1", "vram_total": "lots", "vram_free": 1},
            {"name": "cpu", "type": "cpu", "vram_total": 0, "vram_free": 0}]}"#;
        let found = devices(body);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], Device { name: "cuda:0 NVIDIA A100".into(), vram_total: 100, vram_free: 60 });
        assert!(devices(b"not json").is_empty());
        assert_eq!(comfyui_version(br#"{"system": {"comfyui_version": "0.3.64"}}"#).as_deref(), Some("0.3.64"));
        assert_eq!(comfyui_version(b"{}"), None);
        assert!(devices(br#"{"devices": {}}"#).is_empty());
    }
}
