//! Delivering job events to the WebSocket of the client that owns the job.
//!
//! A client is `(user, clientId)`: another user guessing the same `clientId` gets nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A frame for a client's socket.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A JSON message.
    Text(String),
    /// A binary message (previews).
    Binary(Bytes),
}

/// Frames a slow client may have waiting; one whose queue is full is disconnected.
const CLIENT_BUFFER: usize = 1024;
/// Previews are dropped while this many frames wait: the rest of the queue is kept for events.
const PREVIEWS_WHILE_FEWER_THAN: usize = 64;

/// Connected clients by `(user id, clientId)`.
#[derive(Default)]
pub struct Subscribers {
    clients: Mutex<HashMap<(i64, String), mpsc::Sender<Outgoing>>>,
}

impl Subscribers {
    /// Registers a client (replacing an older socket with the same id, as ComfyUI does).
    pub fn subscribe(&self, user_id: i64, client_id: &str) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert((user_id, client_id.to_owned()), tx);
        }
        rx
    }

    /// Sends to one client, if connected. A slow client misses previews first; one that
    /// cannot take an event any more is disconnected (its socket closes), never left behind.
    pub fn send(&self, user_id: i64, client_id: &str, frame: Outgoing) {
        let Ok(mut clients) = self.clients.lock() else { return };
        let key = (user_id, client_id.to_owned());
        let Some(tx) = clients.get(&key) else { return };
        let waiting = tx.max_capacity() - tx.capacity();
        if matches!(frame, Outgoing::Binary(_)) && waiting >= PREVIEWS_WHILE_FEWER_THAN {
            return tracing::debug!(user_id, "client too slow: preview dropped");
        }
        if !accepted(tx, frame) {
            clients.remove(&key);
        }
    }

    /// Sends to every connected client.
    pub fn broadcast(&self, text: &str) {
        let Ok(mut clients) = self.clients.lock() else { return };
        clients.retain(|_, tx| accepted(tx, Outgoing::Text(text.to_owned())));
    }
}

/// Queues `frame`; false if the client is gone or too slow to keep (then it is let go).
fn accepted(tx: &mpsc::Sender<Outgoing>, frame: Outgoing) -> bool {
    match tx.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::info!("disconnecting a WebSocket client too slow to take its events");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// ComfyUI's `status` message.
pub fn status_message(queue_remaining: usize, sid: Option<&str>) -> String {
    let mut data = serde_json::json!({"status": {"exec_info": {"queue_remaining": queue_remaining}}});
    if let Some(sid) = sid {
        data["sid"] = serde_json::Value::String(sid.to_owned());
    }
    serde_json::json!({"type": "status", "data": data}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_reach_only_the_owner_of_the_client_id() {
        let subs = Subscribers::default();
        let mut alice = subs.subscribe(1, "shared-id");
        let mut bob = subs.subscribe(2, "shared-id");
        subs.send(1, "shared-id", Outgoing::Text("for alice".into()));
        assert!(matches!(alice.recv().await, Some(Outgoing::Text(t)) if t == "for alice"));
        assert!(bob.try_recv().is_err());
        subs.broadcast("all");
        assert!(matches!(bob.recv().await, Some(Outgoing::Text(t)) if t == "all"));
    }

    #[tokio::test]
    async fn a_slow_client_misses_previews_first_and_is_disconnected_when_events_cannot_wait() {
        let subs = Subscribers::default();
        let mut slow = subs.subscribe(1, "slow");
        for _ in 0..PREVIEWS_WHILE_FEWER_THAN {
            subs.send(1, "slow", Outgoing::Binary(Bytes::from_static(b"preview")));
        }
        subs.send(1, "slow", Outgoing::Binary(Bytes::from_static(b"dropped")));
        for _ in PREVIEWS_WHILE_FEWER_THAN..CLIENT_BUFFER {
            subs.send(1, "slow", Outgoing::Text("event".into()));
        }
        let mut received = Vec::new();
        while let Ok(frame) = slow.try_recv() {
            received.push(frame);
        }
        assert_eq!(received.len(), CLIENT_BUFFER);
        assert!(!received.iter().any(|f| matches!(f, Outgoing::Binary(b) if b == "dropped")));
        // Full again: the next event cannot be queued, so the client is let go.
        for _ in 0..=CLIENT_BUFFER {
            subs.send(1, "slow", Outgoing::Text("event".into()));
        }
        while slow.try_recv().is_ok() {}
        assert!(slow.recv().await.is_none(), "the slow client's channel is closed");
    }

    #[test]
    fn status_messages_match_comfyui() {
        assert_eq!(
            status_message(2, Some("abc")),
            r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":2}},"sid":"abc"}}"#
        );
    }
}
