//! What keeps an eye on each backend: its health checks ([`super::health`]) and the gateway's
//! WebSocket to it ([`super::monitor`]), started for every backend at start and for each one a
//! reload adds, and ended when the gateway stops or the backend leaves the pool.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::monitor::Frame;
use super::{Backend, Pool, health, monitor};
use crate::config::SchedulerConfig;

/// Starts the watchers of a backend.
#[derive(Clone)]
pub struct Watchers {
    pool: Arc<Pool>,
    frames: mpsc::Sender<(String, Frame)>,
    config: SchedulerConfig,
    shutdown: watch::Receiver<bool>,
}

impl Watchers {
    /// Watchers sending the backends' frames to `frames` until `shutdown`.
    pub fn new(
        pool: Arc<Pool>,
        frames: mpsc::Sender<(String, Frame)>,
        config: SchedulerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { pool, frames, config, shutdown }
    }

    /// Starts watching every backend of the pool.
    pub fn start_all(&self) {
        for backend in self.pool.all().iter() {
            self.start(backend);
        }
    }

    /// Starts watching `backend` until the gateway stops or it leaves the pool.
    pub fn start(&self, backend: &Arc<Backend>) {
        let (stop, stopped) = watch::channel(false);
        let (mut shutdown, leaving) = (self.shutdown.clone(), backend.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {}
                () = leaving.gone() => {}
            }
            stop.send_replace(true);
        });
        let health = health::watch_backend(self.pool.clone(), backend.clone(), self.config.clone(), stopped.clone());
        tokio::spawn(health);
        tokio::spawn(monitor::follow(backend.clone(), self.frames.clone(), stopped));
    }
}
