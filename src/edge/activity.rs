//! What a connection is doing, for its deadlines: a connection's first request head must come
//! within `header_read_timeout` of its first byte (whatever the protocol: hyper's own header
//! timeout starts only once HTTP/1 is chosen), and a connection with no request in progress
//! is closed after `idle_timeout`. A request is in progress from its head until its response
//! body has been sent (or dropped).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From the first byte to the first request head.
    pub first_head: Duration,
    /// With no request in progress.
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy)]
struct State {
    in_progress: usize,
    requests: u64,
    idle_since: Instant,
}

/// The requests in progress on one connection.
#[derive(Debug)]
pub struct Activity {
    state: watch::Sender<State>,
}

/// Why a connection is closed by its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head in time.
    NoRequest,
    /// Nothing in progress for the idle timeout.
    Idle,
}

impl Activity {
    /// A connection whose first byte came at `first_byte`.
    pub fn new(first_byte: Instant) -> Self {
        Self { state: watch::Sender::new(State { in_progress: 0, requests: 0, idle_since: first_byte }) }
    }

    /// A request has started; it is in progress until the returned guard is dropped.
    pub fn begin(&self) -> InProgress {
        self.state.send_modify(|s| {
            s.in_progress += 1;
            s.requests += 1;
        });
        InProgress { state: self.state.clone() }
    }

    /// Resolves when the connection has outlived its deadlines.
    pub async fn expired(&self, deadlines: Deadlines) -> Expired {
        let mut changes = self.state.subscribe();
        loop {
            let state = *changes.borrow_and_update();
            let (deadline, why) = match state {
                State { in_progress: 0, requests: 0, idle_since } => {
                    (idle_since + deadlines.first_head, Expired::NoRequest)
                }
                State { in_progress: 0, idle_since, .. } => (idle_since + deadlines.idle, Expired::Idle),
                _ => {
                    // The sender lives as long as `self`: `changed` fails only while dropping.
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return why,
                _ = changes.changed() => {}
            }
        }
    }
}

/// One request in progress.
#[derive(Debug)]
pub struct InProgress {
    state: watch::Sender<State>,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.state.send_modify(|s| {
            s.in_progress = s.in_progress.saturating_sub(1);
            if s.in_progress == 0 {
                s.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that keeps its request in progress until it has been sent.
pub struct ActiveBody {
    inner: axum::body::Body,
    _request: InProgress,
}

impl ActiveBody {
    /// `inner`, for the request `request`.
    pub fn new(inner: axum::body::Body, request: InProgress) -> Self {
        Self { inner, _request: request }
    }
}

impl Body for ActiveBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines = Deadlines { first_head: Duration::from_millis(100), idle: Duration::from_millis(300) };

    #[tokio::test]
    async fn a_connection_without_a_request_expires_after_the_head_deadline() {
        let start = Instant::now();
        let activity = Activity::new(start);
        assert_eq!(activity.expired(DEADLINES).await, Expired::NoRequest);
        assert!(start.elapsed() >= DEADLINES.first_head);
    }

    #[tokio::test]
    async fn a_request_in_progress_holds_the_connection_and_idleness_counts_from_its_end() {
        let activity = Activity::new(Instant::now());
        let request = activity.begin();
        let expiry = activity.expired(DEADLINES);
        tokio::pin!(expiry);
        assert!(tokio::time::timeout(DEADLINES.idle * 2, &mut expiry).await.is_err());
        let ended = Instant::now();
        drop(request);
        assert_eq!(expiry.await, Expired::Idle);
        assert!(ended.elapsed() >= DEADLINES.idle);
    }
}
