//! WebSocket (and any other upgrade) passthrough: once both sides have switched protocols,
//! bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Small buffers keep thousands of idle sockets cheap; ComfyUI's frames are small or streamed.
const BUFFER: usize = 4 * 1024;

/// Joins the client's and ComfyUI's upgraded connections in a background task.
pub fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, upstream);
        match (client, upstream) {
            (Ok(client), Ok(upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                if let Err(e) =
                    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER).await
                {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            (client, upstream) => {
                tracing::debug!(client_ok = client.is_ok(), upstream_ok = upstream.is_ok(), "upgrade did not complete");
            }
        }
    });
}
