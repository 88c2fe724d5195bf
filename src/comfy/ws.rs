//! `/ws`: the gateway terminates the client's WebSocket. The client receives the events of its
//! own jobs (whichever backend runs them) and the gateway-wide `status`; another user who
//! guesses its `clientId` receives nothing.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use serde_json::{Value, json};
use std::time::Duration;

use crate::http::{ApiError, Caller};
use crate::scheduler::delivery::{Outgoing, status_message};
use crate::state::AppState;

/// Bytes read from a client socket at once (clients send little; the default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;

/// Longest `clientId` accepted.
const MAX_CLIENT_ID: usize = 128;

/// Time a frame may take to be written to the client: a client that stops reading is
/// disconnected, its frames are not kept for it.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Upgrades the request and serves the socket.
pub async fn upgrade(app: &AppState, caller: Caller, req: Request<Body>) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let client_id = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "clientId")
        .map(|(_, v)| v.into_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if client_id.len() > MAX_CLIENT_ID || client_id.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("clientId must be at most 128 printable characters".to_owned()));
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket upgrade: {}", e.body_text())))?;
    let app = app.clone();
    // Idle sockets stay cheap: small read buffer, writes go out at once. Clients send small
    // JSON: a larger message (or frame) closes the socket before it is buffered.
    let max_message = usize::try_from(app.config.server.max_websocket_message.as_u64()).unwrap_or(usize::MAX);
    let ws =
        ws.read_buffer_size(READ_BUFFER).write_buffer_size(0).max_message_size(max_message).max_frame_size(max_message);
    Ok(ws.on_upgrade(move |socket| serve(app, caller, client_id, socket)))
}

async fn serve(app: AppState, caller: Caller, client_id: String, socket: WebSocket) {
    let _counted = app.metrics.websocket_opened();
    // The process waits for this socket's close frame before it exits.
    let _held = app.lifecycle.hold();
    if app.lifecycle.is_stopping() {
        return;
    }
    let user = caller.identity.user_id;
    let mut frames = app.scheduler.subscribe(user, &client_id);
    let (mut sink, mut stream) = socket.split();
    app.scheduler.fresh().await;
    let first = status_message(app.scheduler.queue_remaining(), Some(&client_id));
    if !send(&mut sink, Message::Text(first.into())).await {
        return;
    }
    let revoked = app.auth.clone().until_invalid(caller.presented.clone());
    tokio::pin!(revoked);
    let stopping = app.lifecycle.stopped();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let message = match frame {
                    Some(Outgoing::Text(text)) => Message::Text(text.into()),
                    Some(Outgoing::Binary(data)) => Message::Binary(data),
                    None => break,
                };
                if !send(&mut sink, message).await {
                    break;
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = answer(text.as_str()) {
                        if !send(&mut sink, Message::Text(reply.into())).await {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            () = &mut revoked => {
                tracing::info!(username = %caller.identity.username, "closing a WebSocket whose credential was revoked");
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            () = &mut stopping => {
                let goodbye = CloseFrame { code: close_code::AWAY, reason: "the gateway is shutting down".into() };
                let _ = send(&mut sink, Message::Close(Some(goodbye))).await;
                break;
            }
        }
    }
}

/// Writes one message; false if the socket failed or the client did not take it in time.
async fn send(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, message: Message) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(result) => result.is_ok(),
        Err(_) => {
            tracing::info!("closing a WebSocket whose client stopped reading");
            false
        }
    }
}

/// ComfyUI answers a client's `feature_flags` with its own.
fn answer(text: &str) -> Option<String> {
    let message: Value = serde_json::from_str(text).ok()?;
    (message["type"] == "feature_flags")
        .then(|| json!({"type": "feature_flags", "data": {"supports_preview_metadata": false}}).to_string())
}
