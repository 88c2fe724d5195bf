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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;

    /// A backend answering `/big` with 1 MiB and everything else with `ok`, closing the
    /// connection after `/close`; counts the connections it accepted.
    async fn backend() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let mut response = match req.uri().path() {
                            "/big" => Response::new(http_body_util::Full::new(Bytes::from(vec![7u8; 1 << 20]))),
                            _ => Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))),
                        };
                        if req.uri().path() == "/close" {
                            response.headers_mut().insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder().uri(path).header(http::header::HOST, "backend").body(Body::empty()).unwrap()
    }

    async fn read(response: Response<PooledBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read_and_never_while_it_is_busy() {
        let (addr, accepted) = backend().await;
        let pool = Pool::new(addr, Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(&read(pool.send(get("/")).await.unwrap()).await[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "sequential requests share one connection");

        // A response being read keeps its connection: a second request meanwhile gets another.
        let big = pool.send(get("/big")).await.unwrap();
        let meanwhile = tokio::time::timeout(Duration::from_secs(5), pool.send(get("/"))).await;
        assert_eq!(&read(meanwhile.expect("waited for a busy connection").unwrap()).await[..], b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(read(big).await.len(), 1 << 20);

        // A body dropped half-read takes its connection with it; the pool still answers.
        let mut big = pool.send(get("/big")).await.unwrap().into_body();
        let _first = big.frame().await.unwrap().unwrap();
        drop(big);
        assert_eq!(&read(pool.send(get("/")).await.unwrap()).await[..], b"ok");
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_not_used_again() {
        let (addr, accepted) = backend().await;
        let pool = Pool::new(addr, Duration::from_secs(5));
        assert_eq!(&read(pool.send(get("/close")).await.unwrap()).await[..], b"ok");
        for _ in 0..3 {
            assert_eq!(&read(pool.send(get("/")).await.unwrap()).await[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "one closed by the backend, one reused after it");
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = Pool::new(addr, Duration::from_secs(5));
        assert!(matches!(pool.send(get("/")).await, Err(SendError::Connect(_))));
    }
}
