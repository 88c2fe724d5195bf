//! The gateway's own WebSocket to each backend. Jobs are dispatched with its `clientId`, so
//! every event of every job arrives here; [`crate::scheduler`] tracks job states from them and
//! forwards each to the client that owns the job.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::Backend;

/// A frame from a backend.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A JSON message (`{"type", "data"}`).
    Text(String),
    /// A binary message (previews).
    Binary(Bytes),
    /// The socket (re)connected: events may have been missed.
    Connected,
    /// The socket closed: events sent now are lost (ComfyUI sends a job's events only to the
    /// socket of its `client_id`), so no job is dispatched until it is back.
    Disconnected,
}

/// Time allowed to open the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_millis(250);

/// Keeps the gateway's socket to `backend` open until `shutdown`, sending its frames to
/// `frames`.
pub async fn follow(backend: Arc<Backend>, frames: mpsc::Sender<(String, Frame)>, mut shutdown: watch::Receiver<bool>) {
    let url = format!("ws://{}/ws?clientId={}", backend.proxy.authority(), backend.monitor_id);
    let name = backend.name().to_owned();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await;
        match connected {
            Ok(Ok((mut socket, _))) => {
                tracing::debug!(backend = %name, "monitor socket connected");
                if frames.send((name.clone(), Frame::Connected)).await.is_err() {
                    return;
                }
                loop {
                    let message = tokio::select! {
                        m = socket.next() => m,
                        _ = shutdown.changed() => return,
                    };
                    let frame = match message {
                        Some(Ok(Message::Text(text))) => Frame::Text(text.as_str().to_owned()),
                        Some(Ok(Message::Binary(data))) => Frame::Binary(data),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break,
                    };
                    if frames.send((name.clone(), frame)).await.is_err() {
                        return;
                    }
                }
                tracing::debug!(backend = %name, "monitor socket closed");
                if frames.send((name.clone(), Frame::Disconnected)).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => tracing::debug!(backend = %name, error = %e, "monitor socket failed"),
            Err(_) => tracing::debug!(backend = %name, "monitor socket timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
