//! `GET /ws?clientId=X`.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::json::{self, J};
use crate::state::{AppState, Client, message};

pub async fn ws_handler(
    State(state): State<Arc<AppState>>,
    Query(q): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Response {
    let sid = q
        .iter()
        .find(|(k, _)| k == "clientId")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    ws.on_upgrade(move |socket| serve(socket, state, sid))
}

async fn serve(socket: WebSocket, state: Arc<AppState>, sid: String) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let conn = {
        let mut inner = state.lock();
        inner.next_conn += 1;
        let conn = inner.next_conn;
        let _ = tx.send(inner.status_message(Some(&sid)).dumps());
        if let Some(r) = &inner.running
            && r.item.client_id().as_deref() == Some(sid.as_str())
            && let Some(node) = &r.last_node
        {
            let _ = tx.send(message("executing", J::obj([("node", J::s(node.as_str()))])).dumps());
        }
        inner.clients.insert(sid.clone(), Client { conn, tx: tx.clone() });
        conn
    };
    let (mut sink, mut stream) = socket.split();
    let writer = async {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(t) => {
                    let Ok(v) = json::parse(t.as_bytes()) else {
                        continue;
                    };
                    if v.get("type").and_then(J::as_str) == Some("feature_flags") {
                        let reply = message(
                            "feature_flags",
                            J::obj([
                                ("supports_preview_metadata", J::Bool(true)),
                                ("max_upload_size", J::u(state.config().max_upload_bytes)),
                            ]),
                        );
                        let _ = tx.send(reply.dumps());
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = state.cancel.cancelled() => {}
    }
    let mut inner = state.lock();
    if inner.clients.get(&sid).is_some_and(|c| c.conn == conn) {
        inner.clients.remove(&sid);
    }
}
