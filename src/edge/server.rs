//! The listener: plain HTTP or TLS, HTTP/1.1 (with upgrades) and HTTP/2, graceful shutdown.
//!
//! Every connection is bounded: its first byte within `first_byte_timeout`, then its TLS
//! handshake, protocol detection and first request head within `header_read_timeout`, no
//! request in progress for `idle_timeout` at most ([`super::activity`]), HTTP/2 peers that
//! answer pings, bodies no slower than `min_body_rate` ([`super::body_rate`]), and no more
//! connections than the caps ([`super::limits`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::activity::{ActiveBody, Activity, Deadlines, Expired};
use super::limits::{ConnectionLimits, LogThrottle, Refusal, Slot};
use crate::config::ServerConfig;
use crate::http::ApiError;

/// Time a connection closing on its idle deadline gets to say goodbye (at shutdown, open
/// requests get `server.shutdown_timeout`).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a refused connection's first byte and request head.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);
/// The first and the longest pause after `accept` fails (out of descriptors, mostly).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files hold no usable certificate or key.
    #[error("{0}")]
    Invalid(String),
}

/// The TLS acceptor in force; a reload puts a new one in (connections under way keep theirs).
pub type TlsSlot = Arc<std::sync::RwLock<TlsAcceptor>>;

/// Loads a certificate chain and key into a TLS acceptor (HTTP/2 and HTTP/1.1 by ALPN).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source });
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{} holds no certificate", cert_file.display())));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", key_file.display())))?
        .ok_or_else(|| TlsError::Invalid(format!("{} holds no private key", key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `edge` on `listener` until `shutdown` turns true, then drains open requests.
pub async fn serve(
    listener: TcpListener,
    edge: super::Edge,
    tls: Option<TlsSlot>,
    server: &ServerConfig,
    limits: Arc<ConnectionLimits>,
    mut shutdown: watch::Receiver<bool>,
) {
    let serving = Arc::new(builder(server, true));
    let refusing = Arc::new(builder(server, false));
    let rules = Rules {
        first_byte: server.first_byte_timeout,
        deadlines: Deadlines { first_head: server.header_read_timeout, idle: server.idle_timeout },
        drain: server.shutdown_timeout,
    };
    let refusal_rules = Rules {
        first_byte: rules.first_byte.min(REFUSAL_DEADLINE),
        deadlines: Deadlines { first_head: rules.deadlines.first_head.min(REFUSAL_DEADLINE), idle: Duration::ZERO },
        drain: rules.drain.min(REFUSAL_DEADLINE),
    };
    let edge = Arc::new(edge);
    // Each connection task holds a sender: the channel closes once every task has ended.
    let (tasks_running, mut all_tasks_ended) = tokio::sync::mpsc::channel::<Infallible>(1);
    let accept_failures = LogThrottle::default();
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF.0;
                pair
            }
            Err(e) => {
                // Out of descriptors, the next accept fails the same way: wait for some to close.
                if let Some(failures) = accept_failures.tick() {
                    tracing::warn!(error = %e, failures, "accepting connections failed; backing off");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.as_ref().map(|slot| slot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone());
        let client = Client { stream, peer, tls, shutdown: shutdown.clone(), _running: tasks_running.clone() };
        match limits.admit(peer.ip()) {
            Ok(slot) => {
                let (edge, builder) = (edge.clone(), serving.clone());
                let conn = Arc::new(super::Connection::new(peer));
                let answer = move |req| {
                    let (edge, conn) = (edge.clone(), conn.clone());
                    async move { edge.handle(&conn, req).await }
                };
                tokio::spawn(client.serve(builder, rules, answer, slot));
            }
            Err((refusal, Some(slot))) => {
                let edge = edge.clone();
                let answer = move |req: http::Request<Incoming>| {
                    let response = refusal_response(refusal);
                    edge.count_refused(&req, &response);
                    async move { response }
                };
                tokio::spawn(client.serve(refusing.clone(), refusal_rules, answer, slot));
            }
            Err((_, None)) => {} // dropped: closed unanswered
        }
    }
    drop((listener, tasks_running));
    // Upgraded connections (WebSockets) are on their own by then: only HTTP is drained (the
    // gateway's own `/ws` sockets close themselves, see `crate::lifecycle`).
    if tokio::time::timeout(rules.drain, all_tasks_ended.recv()).await.is_err() {
        tracing::warn!(
            "some requests were still under way after server.shutdown_timeout ({}): closed",
            humantime::format_duration(rules.drain)
        );
    }
}

/// The HTTP/1 and HTTP/2 settings; `keep_alive` false for connections that get one answer.
fn builder(server: &ServerConfig, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // ComfyUI (aiohttp) writes `Content-Type`, not `content-type`, and some clients look headers
    // up case-sensitively: HTTP/1 responses are written in the same Title-Case.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(keep_alive)
        .title_case_headers(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(server.http2_keepalive_interval)
        .keep_alive_timeout(server.http2_keepalive_interval);
    builder
}

/// What a refused connection is answered.
fn refusal_response(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Total => ApiError::Unavailable("the gateway has too many open connections; try again".to_owned()),
        Refusal::PerAddress => ApiError::TooManyRequests {
            message: "too many open connections from your address; close some and try again".to_owned(),
            retry_after: Duration::from_secs(1),
        },
    }
    .into_response()
}

/// The deadlines a connection is held to.
#[derive(Debug, Clone, Copy)]
struct Rules {
    first_byte: Duration,
    deadlines: Deadlines,
    /// Time open requests get to finish at shutdown.
    drain: Duration,
}

/// An accepted connection.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    _running: tokio::sync::mpsc::Sender<Infallible>,
}

impl Client {
    /// Serves the connection with `answer` for each request, within `rules`; `slot` counts it
    /// as open until it closes.
    async fn serve<F, Fut>(self, builder: Arc<auto::Builder<TokioExecutor>>, rules: Rules, answer: F, slot: Slot)
    where
        F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let Client { stream, peer, tls, shutdown, _running } = self;
        match tokio::time::timeout(rules.first_byte, stream.peek(&mut [0; 1])).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => return tracing::debug!(%peer, "closing a connection that sent nothing"),
        }
        let stream = slot.hold(stream);
        let first_byte = Instant::now();
        let activity = Arc::new(Activity::new(first_byte));
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |req| {
                let request = activity.begin();
                let response = answer(req);
                async move { Ok::<_, Infallible>(response.await.map(|body| ActiveBody::new(body, request))) }
            })
        };
        let served = Served { builder: &builder, activity: &activity, rules, peer, shutdown };
        match tls {
            None => served.run(stream, service).await,
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                match tokio::time::timeout_at(first_byte + rules.deadlines.first_head, handshake).await {
                    Ok(Ok(stream)) => served.run(stream, service).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }
}

/// One connection being served over HTTP.
struct Served<'a> {
    builder: &'a auto::Builder<TokioExecutor>,
    activity: &'a Activity,
    rules: Rules,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
}

impl Served<'_> {
    async fn run<I, S>(mut self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<ActiveBody>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let peer = self.peer;
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let grace = tokio::select! {
            result = conn.as_mut() => return log_end(result, peer),
            expired = self.activity.expired(self.rules.deadlines) => {
                tracing::debug!(%peer, ?expired, "closing a connection on its deadline");
                if expired == Expired::NoRequest {
                    return;
                }
                GOODBYE_TIMEOUT
            }
            _ = self.shutdown.wait_for(|stop| *stop) => self.rules.drain,
        };
        conn.as_mut().graceful_shutdown();
        match tokio::time::timeout(grace, conn).await {
            Ok(result) => log_end(result, peer),
            Err(_) => tracing::debug!(%peer, "connection still busy after its graceful shutdown: closed"),
        }
    }
}

fn log_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
