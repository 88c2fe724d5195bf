//! Notifications between replicas, over PostgreSQL's `LISTEN/NOTIFY`: one connection listens
//! on every [`channel`](super::channel) and fans the notes out in process; one connection
//! sends, one note after another, so a gateway's notes arrive everywhere in the order it sent
//! them. A note longer than one notification (PostgreSQL's limit is 8000 bytes) is sent in
//! parts and put together again on arrival.
//!
//! Nothing is kept: a gateway that is not listening when a note is sent never gets it (the
//! receivers resynchronise from the store when their connection comes back: [`Bus::resyncs`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener};
use tokio::sync::{broadcast, mpsc, watch};

/// Bytes of a note sent in one notification (with its header, under PostgreSQL's 8000).
const PART: usize = 7000;
/// Notes waiting to be sent; past this, new ones are dropped (and logged).
const SEND_QUEUE: usize = 65_536;
/// Notes the receivers of this process may lag behind.
const RECEIVE_QUEUE: usize = 16_384;
/// A note longer than this is not sent (a job event this large is not worth a replica's copy).
pub const MAX_NOTE: usize = 4 << 20;
/// How long a connection that failed waits before it is opened again.
const RECONNECT: Duration = Duration::from_millis(500);

/// A note from another gateway.
#[derive(Debug, Clone)]
pub struct Note {
    /// The channel it came on.
    pub channel: String,
    /// The gateway that sent it (empty for notes the store itself sends, such as revocations).
    pub from: String,
    /// What it says.
    pub body: String,
}

/// The notifications of one gateway.
pub struct Bus {
    instance: String,
    outgoing: mpsc::Sender<(&'static str, String)>,
    incoming: broadcast::Sender<Arc<Note>>,
    listening: watch::Sender<bool>,
    resyncs: watch::Sender<u64>,
    sequence: AtomicU64,
}

impl Bus {
    /// Starts listening and sending on the database at `url`, as `instance`, until `stop`
    /// turns true. Returns once the first listening connection is up (or failed: it is then
    /// retried in the background, and [`listening`](Self::listening) says so).
    pub async fn start(url: &str, instance: &str, stop: watch::Receiver<bool>) -> Arc<Self> {
        let (outgoing, queue) = mpsc::channel(SEND_QUEUE);
        let bus = Arc::new(Self {
            instance: instance.to_owned(),
            outgoing,
            incoming: broadcast::Sender::new(RECEIVE_QUEUE),
            listening: watch::Sender::new(false),
            resyncs: watch::Sender::new(0),
            sequence: AtomicU64::new(0),
        });
        tokio::spawn(send(url.to_owned(), queue, stop.clone()));
        let first = connect_listener(url).await;
        tokio::spawn(bus.clone().listen(url.to_owned(), first, stop));
        bus
    }

    /// This gateway's name on the bus.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Receives every note from other gateways (and the store), from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Note>> {
        self.incoming.subscribe()
    }

    /// Whether the listening connection is up: notes reach this gateway.
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
    }

    /// Counts the times the listening connection came back after being down (or this process
    /// fell behind its notes): what was sent meanwhile is lost, read the store again.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    /// Sends `body` on `channel` to every gateway listening (this one skips its own notes).
    /// Never waits: a note that cannot be queued is dropped, and logged.
    pub fn publish(&self, channel: &'static str, body: &str) {
        if body.len() > MAX_NOTE {
            tracing::warn!(channel, bytes = body.len(), "note too large for the other gateways; not sent");
            return;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let parts = split(body, PART);
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let payload = format!("{}\t{sequence}\t{i}\t{count}\t{part}", self.instance);
            if self.outgoing.try_send((channel, payload)).is_err() {
                tracing::warn!(channel, "too many notes waiting to be sent; one is dropped");
                return;
            }
        }
    }

    async fn listen(self: Arc<Self>, url: String, first: Option<PgListener>, mut stop: watch::Receiver<bool>) {
        let mut listener = first;
        let mut partial: HashMap<(String, u64), Vec<String>> = HashMap::new();
        let mut was_up = false;
        loop {
            let Some(current) = listener.as_mut() else {
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT) => {}
                    _ = stop.changed() => return,
                }
                listener = connect_listener(&url).await;
                continue;
            };
            if !was_up {
                was_up = true;
                self.listening.send_replace(true);
                self.resyncs.send_modify(|n| *n += 1);
            }
            let received = tokio::select! {
                received = current.try_recv() => received,
                _ = stop.changed() => return,
            };
            match received {
                Ok(Some(notification)) => {
                    if let Some(note) = self.assemble(&mut partial, notification.channel(), notification.payload()) {
                        if self.incoming.send(Arc::new(note)).is_err() {
                            // Nobody listens in this process yet: nothing to do.
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("the notification connection to PostgreSQL is down; reconnecting");
                    was_up = false;
                    self.listening.send_replace(false);
                    partial.clear();
                    listener = None;
                }
            }
        }
    }

    /// A whole note from one notification, once all its parts are in (parts of one note
    /// arrive in order: one sender, one connection).
    fn assemble(
        &self,
        partial: &mut HashMap<(String, u64), Vec<String>>,
        channel: &str,
        payload: &str,
    ) -> Option<Note> {
        let note = |from: &str, body: String| Note { channel: channel.to_owned(), from: from.to_owned(), body };
        let mut fields = payload.splitn(5, '\t');
        let (Some(from), Some(seq), Some(part), Some(count), Some(body)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            // Sent by the store itself (a trigger), not by a gateway.
            return Some(note("", payload.to_owned()));
        };
        if from == self.instance {
            return None;
        }
        let (Ok(seq), Ok(part), Ok(count)) = (seq.parse::<u64>(), part.parse::<usize>(), count.parse::<usize>()) else {
            return Some(note("", payload.to_owned()));
        };
        if count <= 1 {
            return Some(note(from, body.to_owned()));
        }
        let key = (from.to_owned(), seq);
        let parts = partial.entry(key.clone()).or_default();
        if parts.len() != part {
            // A part went missing (this process fell behind): the note is lost.
            partial.remove(&key);
            return None;
        }
        parts.push(body.to_owned());
        if parts.len() < count {
            if partial.len() > 1024 {
                partial.clear();
            }
            return None;
        }
        let parts = partial.remove(&key).unwrap_or_default();
        Some(note(from, parts.concat()))
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("instance", &self.instance).finish_non_exhaustive()
    }
}

async fn connect_listener(url: &str) -> Option<PgListener> {
    let connected = async {
        let mut listener = PgListener::connect(url).await?;
        listener.listen_all(super::channel::ALL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(listener)) => Some(listener),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot listen for notifications from the other gateways");
            None
        }
        Err(_) => {
            tracing::warn!("timed out connecting to PostgreSQL for notifications");
            None
        }
    }
}

/// Sends the queued notes in order on one connection, reconnecting when it fails (the note
/// that failed is tried once more on the new connection).
async fn send(url: String, mut queue: mpsc::Receiver<(&'static str, String)>, mut stop: watch::Receiver<bool>) {
    let mut connection: Option<PgConnection> = None;
    loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            _ = stop.changed() => return,
        };
        let Some((channel, payload)) = next else { return };
        for _ in 0..2 {
            if connection.is_none() {
                connection = match PgConnection::connect(&url).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to PostgreSQL to notify the other gateways");
                        tokio::time::sleep(RECONNECT).await;
                        None
                    }
                };
            }
            let Some(conn) = connection.as_mut() else { continue };
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(&payload).execute(&mut *conn).await;
            match sent {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, channel, "notifying the other gateways failed; reconnecting");
                    connection = None;
                }
            }
        }
    }
}

/// `body` in pieces of at most `max` bytes, cut at character boundaries (one piece when
/// short; never an empty list).
fn split(body: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = body;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_at_character_boundaries_and_rejoin() {
        let body = "é".repeat(5000) + "tail";
        let parts = split(&body, PART);
        assert!(parts.len() > 1 && parts.iter().all(|p| p.len() <= PART));
        assert_eq!(parts.concat(), body);
        assert_eq!(split("", PART), vec![""]);
        assert_eq!(split("short", PART), vec!["short"]);
    }

    fn bus(instance: &str) -> Bus {
        let (outgoing, _) = mpsc::channel(1);
        Bus {
            instance: instance.to_owned(),
            outgoing,
            incoming: broadcast::Sender::new(4),
            listening: watch::Sender::new(true),
            resyncs: watch::Sender::new(0),
            sequence: AtomicU64::new(0),
        }
    }

    #[test]
    fn parts_rejoin_in_order_own_notes_are_skipped_and_a_gap_loses_the_note() {
        let me = bus("me");
        let mut partial = HashMap::new();
        assert!(me.assemble(&mut partial, "c", "me\t0\t0\t1\tmine").is_none());
        let whole = me.assemble(&mut partial, "c", "other\t0\t0\t1\ta\tb").unwrap();
        assert_eq!((whole.from.as_str(), whole.body.as_str()), ("other", "a\tb"));
        assert!(me.assemble(&mut partial, "c", "other\t1\t0\t2\thel").is_none());
        assert_eq!(me.assemble(&mut partial, "c", "other\t1\t1\t2\tlo").unwrap().body, "hello");
        // Part 1 of 3 is missing: the note is dropped, not joined wrongly.
        assert!(me.assemble(&mut partial, "c", "other\t2\t0\t3\ta").is_none());
        assert!(me.assemble(&mut partial, "c", "other\t2\t2\t3\tc").is_none());
        assert!(partial.is_empty());
        // The store's own notes (a trigger's) have no header.
        let store = me.assemble(&mut partial, "c", "42").unwrap();
        assert_eq!((store.from.as_str(), store.body.as_str()), ("", "42"));
    }
}
