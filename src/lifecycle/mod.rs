//! The gateway's life after start: the stop signal every long-lived task listens to, and the
//! sockets that must be told goodbye before the process exits (live reloads of the
//! configuration are [`crate::reload`]'s).
//!
//! At SIGTERM/SIGINT ([`Lifecycle::stop`]) the listeners stop accepting, open requests get
//! `server.shutdown_timeout` to finish, the scheduler hands out no more jobs (waiting ones stay
//! in the store for the next start) and every `/ws` socket is closed with 1001 "going away".

use tokio::sync::watch;

/// The stop signal and the count of sockets still saying goodbye.
#[derive(Debug)]
pub struct Lifecycle {
    stopping: watch::Sender<bool>,
    held: watch::Sender<usize>,
    /// Why the gateway stops by itself, when it does (the process then exits with an error).
    failure: std::sync::Mutex<Option<String>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { stopping: watch::Sender::new(false), held: watch::Sender::new(0), failure: Default::default() }
    }
}

impl Lifecycle {
    /// Tells every listener and task to stop (idempotent).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Stops the gateway because it cannot go on (`why` is reported at exit).
    pub fn fail(&self, why: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(why);
        }
        self.stop();
    }

    /// Why the gateway stopped by itself, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Whether the gateway is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// A receiver that turns true when the gateway stops.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Resolves when the gateway stops.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    /// Counts a task that must end before the process exits (a WebSocket sending its close
    /// frame); released when the guard drops.
    pub fn hold(&self) -> Held {
        self.held.send_modify(|n| *n += 1);
        Held { held: self.held.clone() }
    }

    /// Resolves when no guard of [`hold`](Self::hold) is left.
    pub async fn released(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|n| *n == 0).await;
    }
}

/// A task the process waits for at shutdown (see [`Lifecycle::hold`]).
#[derive(Debug)]
pub struct Held {
    held: watch::Sender<usize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn released_waits_for_every_guard_and_stop_reaches_every_subscriber() {
        let life = std::sync::Arc::new(Lifecycle::default());
        let (a, b) = (life.hold(), life.hold());
        let mut sub = life.subscribe();
        let waiter = tokio::spawn({
            let life = life.clone();
            async move { life.released().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one guard is still held");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("released() did not resolve once every guard was dropped"));
        assert!(!life.is_stopping());
        life.stop();
        life.stop();
        assert!(sub.wait_for(|s| *s).await.is_ok());
        assert!(life.is_stopping());
    }
}
