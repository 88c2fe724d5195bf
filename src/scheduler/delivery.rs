//! Delivering job events to the WebSocket of the client that owns the job.
//!
//! A client is `(user, clientId)`: another user guessing the same `clientId` gets nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// With replicas, the gateway that schedules sends every frame to the others too: the
    /// client's socket may be connected to any of them ([`Relayed`]).
    relay: std::sync::OnceLock<std::sync::Arc<crate::cluster::Bus>>,
    /// Jobs whose final `executing` another replica relayed lately: `(owner, public id)` → when.
    relayed_ends: Mutex<HashMap<(i64, String), Instant>>,
}

/// How long a relayed end is remembered (longer than [`END_GRACE`] and any relay's lag).
const END_MEMORY: Duration = Duration::from_secs(30);
/// Past this many remembered ends, the ones older than [`END_MEMORY`] are forgotten.
const END_MEMORY_PRUNE: usize = 1024;
/// How long a replica waits for the relayed final event of a job the store says ended, before
/// it sends that event itself (the scheduling replica died between recording the end and
/// relaying it).
pub const END_GRACE: Duration = Duration::from_millis(1500);

/// A job's end as the store announces it (migration 0014's trigger).
#[derive(Debug, serde::Deserialize)]
struct StoredEnd {
    #[serde(rename = "u")]
    user: i64,
    #[serde(rename = "c")]
    client: String,
    #[serde(rename = "p")]
    public_id: String,
}

/// Whether `text` is ComfyUI's final `executing` of a job, and for which prompt id.
fn final_executing(text: &str) -> Option<String> {
    if !text.contains("\"executing\"") {
        return None;
    }
    let message: serde_json::Value = serde_json::from_str(text).ok()?;
    let data = &message["data"];
    (message["type"] == "executing" && data["node"].is_null()).then(|| data["prompt_id"].as_str().map(str::to_owned))?
}

/// ComfyUI's final `executing` of the job the client knows as `public_id`.
pub fn final_executing_frame(public_id: &str) -> String {
    serde_json::json!({"type": "executing", "data": {"node": null, "prompt_id": public_id}}).to_string()
}

/// A frame as it travels between replicas.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Relayed {
    /// For this user's client (absent: for every client).
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    user: Option<i64>,
    /// Its `clientId`.
    #[serde(rename = "c", default, skip_serializing_if = "String::is_empty")]
    client: String,
    /// A JSON message.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// A binary one, base64.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    binary: Option<String>,
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

    /// From now on, every frame sent here goes to the other replicas too.
    pub fn relay_to(&self, bus: std::sync::Arc<crate::cluster::Bus>) {
        let _ = self.relay.set(bus);
    }

    /// Sends to one client, wherever it is connected (this gateway, or with replicas any).
    pub fn send(&self, user_id: i64, client_id: &str, frame: Outgoing) {
        if let Some(bus) = self.relay.get() {
            let (text, binary) = match &frame {
                Outgoing::Text(t) => (Some(t.clone()), None),
                Outgoing::Binary(b) => {
                    use base64::Engine as _;
                    (None, Some(base64::engine::general_purpose::STANDARD.encode(b)))
                }
            };
            let relayed = Relayed { user: Some(user_id), client: client_id.to_owned(), text, binary };
            bus.publish(crate::cluster::channel::EVENTS, &serde_json::to_string(&relayed).unwrap_or_default());
        }
        self.deliver(user_id, client_id, frame);
    }

    /// Delivers a frame another replica relayed to the clients connected here.
    pub fn deliver_relayed(&self, body: &str) {
        let Ok(relayed) = serde_json::from_str::<Relayed>(body) else {
            return tracing::debug!("unreadable relayed frame dropped");
        };
        let frame = match (relayed.text, relayed.binary) {
            (Some(text), _) => Outgoing::Text(text),
            (None, Some(b64)) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(b64) {
                    Ok(bytes) => Outgoing::Binary(Bytes::from(bytes)),
                    Err(_) => return,
                }
            }
            (None, None) => return,
        };
        if let (Some(user), Outgoing::Text(text)) = (relayed.user, &frame) {
            if let Some(public_id) = final_executing(text) {
                self.remember_relayed_end(user, public_id);
            }
        }
        match (relayed.user, frame) {
            (Some(user), frame) => self.deliver(user, &relayed.client, frame),
            (None, Outgoing::Text(text)) => self.broadcast_here(&text),
            (None, Outgoing::Binary(_)) => {}
        }
    }

    fn remember_relayed_end(&self, user: i64, public_id: String) {
        let Ok(mut ends) = self.relayed_ends.lock() else { return };
        if ends.len() >= END_MEMORY_PRUNE {
            ends.retain(|_, at| at.elapsed() < END_MEMORY);
        }
        ends.insert((user, public_id), Instant::now());
    }

    /// A job ended in the store (`body`: the trigger's note) [`END_GRACE`] ago: unless its
    /// final `executing` was relayed meanwhile, the owner's client connected here gets it now
    /// (the replica that recorded the end died before relaying it).
    pub fn ended_in_store(&self, body: &str) {
        let Ok(end) = serde_json::from_str::<StoredEnd>(body) else {
            return tracing::debug!("unreadable job end from the store dropped");
        };
        let relayed = match self.relayed_ends.lock() {
            Ok(mut ends) => ends.remove(&(end.user, end.public_id.clone())).is_some(),
            Err(_) => return,
        };
        if !relayed {
            self.deliver(end.user, &end.client, Outgoing::Text(final_executing_frame(&end.public_id)));
        }
    }

    /// Sends to one client connected here. A slow client misses previews first; one that
    /// cannot take an event any more is disconnected (its socket closes), never left behind.
    fn deliver(&self, user_id: i64, client_id: &str, frame: Outgoing) {
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

    /// Sends to every connected client (with replicas, of every gateway).
    pub fn broadcast(&self, text: &str) {
        if let Some(bus) = self.relay.get() {
            let relayed = Relayed { user: None, client: String::new(), text: Some(text.to_owned()), binary: None };
            bus.publish(crate::cluster::channel::EVENTS, &serde_json::to_string(&relayed).unwrap_or_default());
        }
        self.broadcast_here(text);
    }

    /// Sends to every client connected here.
    fn broadcast_here(&self, text: &str) {
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
    async fn relayed_frames_reach_only_the_owner_of_the_client_id_here() {
        let subs = Subscribers::default();
        let mut alice = subs.subscribe(1, "tab");
        let mut bob = subs.subscribe(2, "tab");
        let text = Relayed { user: Some(1), client: "tab".into(), text: Some("for alice".into()), binary: None };
        subs.deliver_relayed(&serde_json::to_string(&text).unwrap_or_default());
        let preview = Relayed { user: Some(1), client: "tab".into(), text: None, binary: Some("AAEC".into()) };
        subs.deliver_relayed(&serde_json::to_string(&preview).unwrap_or_default());
        assert!(matches!(alice.recv().await, Some(Outgoing::Text(t)) if t == "for alice"));
        assert!(matches!(alice.recv().await, Some(Outgoing::Binary(b)) if b.as_ref() == [0, 1, 2]));
        assert!(bob.try_recv().is_err());
        let all = Relayed { user: None, client: String::new(), text: Some("status".into()), binary: None };
        subs.deliver_relayed(&serde_json::to_string(&all).unwrap_or_default());
        assert!(matches!(bob.recv().await, Some(Outgoing::Text(t)) if t == "status"));
        subs.deliver_relayed("not json");
        subs.deliver_relayed(r#"{"u":2,"c":"tab","b":"not base64!"}"#);
        assert!(bob.try_recv().is_err());
    }

    fn relayed(user: i64, text: &str) -> String {
        let frame = Relayed { user: Some(user), client: "tab".into(), text: Some(text.into()), binary: None };
        serde_json::to_string(&frame).unwrap_or_default()
    }

    #[test]
    fn only_the_final_executing_of_a_job_counts_as_its_end() {
        let cases = [
            (r#"{"type":"executing","data":{"node":null,"prompt_id":"p1"}}"#, Some("p1")),
            (r#"{"type": "executing", "data": {"prompt_id": "p1", "node": null}}"#, Some("p1")),
            (r#"{"type":"executing","data":{"prompt_id":"p1"}}"#, Some("p1")),
            (r#"{"type":"executing","data":{"node":"3","prompt_id":"p1"}}"#, None),
            (r#"{"type":"executed","data":{"node":null,"prompt_id":"p1"}}"#, None),
            (r#"{"type":"executing","data":{"node":null}}"#, None),
            (r#"{"type":"status","data":{"note":"\"executing\""}}"#, None),
            ("executing", None),
        ];
        for (text, want) in cases {
            assert_eq!(final_executing(text).as_deref(), want, "{text}");
        }
        assert_eq!(final_executing(&final_executing_frame("p\"2")).as_deref(), Some("p\"2"));
    }

    #[tokio::test]
    async fn an_end_the_store_announced_is_sent_here_only_when_its_final_event_was_not_relayed() {
        let subs = Subscribers::default();
        let mut alice = subs.subscribe(1, "tab");
        let mut bob = subs.subscribe(2, "tab");
        // Relayed as usual: the store's note adds nothing.
        subs.deliver_relayed(&relayed(1, &final_executing_frame("relayed")));
        assert!(
            matches!(alice.recv().await, Some(Outgoing::Text(t)) if final_executing(&t).as_deref() == Some("relayed"))
        );
        subs.ended_in_store(r#"{"u":1,"c":"tab","p":"relayed"}"#);
        assert!(alice.try_recv().is_err());
        // Never relayed (the scheduling replica died): sent from here, to its owner only.
        subs.ended_in_store(r#"{"u":1,"c":"tab","p":"lost"}"#);
        assert!(
            matches!(alice.recv().await, Some(Outgoing::Text(t)) if final_executing(&t).as_deref() == Some("lost"))
        );
        assert!(bob.try_recv().is_err());
        // Another user's relayed end with the same id does not stand for alice's.
        subs.deliver_relayed(&relayed(2, &final_executing_frame("same")));
        assert!(bob.recv().await.is_some());
        subs.ended_in_store(r#"{"u":1,"c":"tab","p":"same"}"#);
        assert!(
            matches!(alice.recv().await, Some(Outgoing::Text(t)) if final_executing(&t).as_deref() == Some("same"))
        );
        // A relayed end counts once; junk is dropped.
        subs.ended_in_store(r#"{"u":1,"c":"tab","p":"relayed"}"#);
        assert!(alice.recv().await.is_some());
        subs.ended_in_store("not json");
        subs.ended_in_store(r#"{"u":"1","c":"tab","p":"x"}"#);
        assert!(alice.try_recv().is_err());
    }

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
