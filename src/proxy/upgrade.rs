//! WebSocket (and any other upgrade) passthrough: once both sides have switched protocols,
//! bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Small buffers keep thousands of idle sockets cheap; ComfyUI's frames are small or streamed.
/// They are also all a tunnel ever holds: bytes are copied, never reassembled into messages,
/// and a side that stops reading stops the copy towards it (no queue grows behind it).
const BUFFER: usize = 4 * 1024;

/// Resolves when the connection must be closed (its credential was revoked).
pub type CloseWhen = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Joins the client's and ComfyUI's upgraded connections in a background task, until either
/// side closes or `close_when` resolves.
pub fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade, close_when: Option<CloseWhen>) {
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, upstream);
        match (client, upstream) {
            (Ok(client), Ok(upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let close_when = close_when.unwrap_or_else(|| Box::pin(std::future::pending()));
                tokio::select! {
                    result = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER) => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    () = close_when => tracing::info!("closed an upgraded connection whose credential was revoked"),
                }
            }
            (client, upstream) => {
                tracing::debug!(client_ok = client.is_ok(), upstream_ok = upstream.is_ok(), "upgrade did not complete");
            }
        }
    });
}
