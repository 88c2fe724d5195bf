//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! hyper's own connections (`hyper::client::conn::http1`), kept in a LIFO list: a connection
//! goes back to the list when its response body has been read to the end, so a request never
//! waits behind another one's body, and no task is spawned per request (hyper-util's pooled
//! client spawns one to watch every HTTP/1 connection come back, and hashes its pool key twice
//! per request: ~17 % of the throughput of a small proxied request, `bench/` and docs/performance.md).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (ComfyUI's aiohttp closes
/// keep-alive connections after 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(std::io::Error),
    /// The connection failed while sending or waiting for the response.
    Lost(hyper::Error),
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The connections to one backend.
pub struct Pool {
    addr: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    /// A pool of connections to `addr` (`host:port`).
    pub fn new(addr: String, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self { addr, connect_timeout, idle: Mutex::new(Vec::new()) })
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled or a new connection. A request that
    /// a pooled connection could not take (the backend closed it meanwhile) goes to the next one
    /// or a new one; a request that may have reached the backend is never sent twice.
    pub async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<PooledBody>, SendError> {
        let mut req = req;
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.wrap(response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Lost(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(response) => Ok(self.wrap(response, sender)),
            Err(e) => Err(SendError::Lost(e)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < IDLE_TIMEOUT {
                return Some(conn.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: Instant::now() });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| SendError::Connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(SendError::Lost)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn wrap(self: &Arc<Self>, response: Response<Incoming>, sender: SendRequest<Body>) -> Response<PooledBody> {
        let back = if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            None // the connection now belongs to the upgrade
        } else if http_body::Body::is_end_stream(response.body()) {
            self.checkin(sender); // nothing to read: free now
            None
        } else {
            Some((self.clone(), sender))
        };
        response.map(|inner| PooledBody { inner, back })
    }
}

/// A backend's response body; its connection goes back to the pool once the body has been read
/// to the end (a body dropped half-read takes its connection with it).
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, SendRequest<Body>)>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if finished {
            if let Some((pool, sender)) = this.back.take() {
                pool.checkin(sender);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
