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

/// Frames a slow client may have waiting before the oldest previews are dropped.
const CLIENT_BUFFER: usize = 1024;

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

    /// Sends to one client, if connected; a full buffer drops the frame (previews first).
    pub fn send(&self, user_id: i64, client_id: &str, frame: Outgoing) {
        let Ok(mut clients) = self.clients.lock() else { return };
        let key = (user_id, client_id.to_owned());
        let Some(tx) = clients.get(&key) else { return };
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => tracing::debug!(user_id, "client too slow: frame dropped"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                clients.remove(&key);
            }
        }
    }

    /// Sends to every connected client.
    pub fn broadcast(&self, text: &str) {
        let Ok(mut clients) = self.clients.lock() else { return };
        clients.retain(|_, tx| {
            !matches!(tx.try_send(Outgoing::Text(text.to_owned())), Err(mpsc::error::TrySendError::Closed(_)))
        });
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

    #[test]
    fn status_messages_match_comfyui() {
        assert_eq!(
            status_message(2, Some("abc")),
            r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":2}},"sid":"abc"}}"#
        );
    }
}
