#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Connections are bounded by design: silent, slow and idle clients are closed on their
//! deadlines whatever the protocol, bodies must keep coming, connections are capped in total
//! and per address, WebSocket messages are small, and running short of file descriptors
//! neither spins nor floods the log.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use comfyui_sim::{SimConfig, Simulator};
use common::{ADMIN_PW, Gateway, Options, raw_request};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long past its deadline a connection may take to be closed, at most.
const SLACK: Duration = Duration::from_secs(8);
/// How much before its deadline a connection may be closed (timers are not exact).
const MARGIN: Duration = Duration::from_millis(300);

async fn setup(opts: Options) -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), opts).await;
    (sim, gw)
}

/// Reads (and discards) until the gateway closes the connection; the time from `since`.
async fn closed_after(mut reader: impl AsyncRead + Unpin, since: Instant, deadline: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline + SLACK, wait)
        .await
        .unwrap_or_else(|_| panic!("connection still open {:?} after its deadline", SLACK))
}

#[track_caller]
fn assert_not_before(elapsed: Duration, deadline: Duration) {
    assert!(elapsed + MARGIN >= deadline, "closed after {elapsed:?}, before its deadline {deadline:?}");
}

/// Sends `start`, then `drip` one byte every `every`, until the gateway closes the connection;
/// the time that took.
async fn drip(addr: SocketAddr, start: &[u8], drip: &[u8], every: Duration, deadline: Duration) -> Duration {
    let (reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let since = Instant::now();
    writer.write_all(start).await.unwrap();
    let drip = drip.to_vec();
    let dripping = tokio::spawn(async move {
        for byte in drip {
            tokio::time::sleep(every).await;
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
        }
        // Kept open: dropping the writer would end the request, not time it out.
        std::future::pending::<()>().await;
        drop(writer);
    });
    let elapsed = closed_after(reader, since, deadline).await;
    dripping.abort();
    elapsed
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_deadline() {
    let (_sim, gw) = setup(Options::default().server("first_byte_timeout = \"1s\"")).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let elapsed = closed_after(stream, Instant::now(), Duration::from_secs(1)).await;
    assert_not_before(elapsed, Duration::from_secs(1));
}

#[tokio::test]
async fn slow_request_heads_are_closed_at_the_head_deadline_whatever_the_protocol() {
    let opts = Options::default().server("first_byte_timeout = \"1s\"").server("header_read_timeout = \"2s\"");
    let (_sim, gw) = setup(opts).await;
    let head = Duration::from_secs(2);
    let every = Duration::from_millis(400);
    // An HTTP/1 head, and the start of an HTTP/2 preface (the protocol is never decided).
    let http1 = drip(gw.addr, b"GET / HTTP/1.1\r\n", &[b'x'; 64], every, head).await;
    assert_not_before(http1, head);
    let undecided = drip(gw.addr, b"PRI * ", b"HTTP/2.0\r\n\r\nSM\r\n\r\n", every, head).await;
    assert_not_before(undecided, head);
}

#[tokio::test]
async fn silent_and_idle_http2_connections_are_closed() {
    let opts = Options::default()
        .server("header_read_timeout = \"2s\"")
        .server("idle_timeout = \"2s\"")
        .server("http2_keepalive_interval = \"1s\"");
    let (_sim, gw) = setup(opts).await;
    let deadline = Duration::from_secs(2);
    // The preface and an empty SETTINGS frame, then nothing.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let since = Instant::now();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    assert_not_before(closed_after(stream, since, deadline).await, deadline);

    // One request, answered, then idle (pings are answered by the client).
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/comfygate/api/whoami", gw.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 401);
    http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
    let idle_since = Instant::now();
    let _ = tokio::time::timeout(deadline + SLACK, conn).await.expect("idle HTTP/2 connection still open");
    assert_not_before(idle_since.elapsed(), deadline);
    drop(sender);
}

#[tokio::test]
async fn a_trickling_body_is_cut_but_an_upload_that_keeps_streaming_is_not() {
    let opts = Options::default().server("min_body_rate = \"100B\"").server("body_rate_period = \"1s\"");
    let (_sim, gw) = setup(opts).await;
    let period = Duration::from_secs(1);
    let head = b"POST /login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: 1000\r\n\r\n";
    let elapsed = drip(gw.addr, head, &[b'a'; 1000], Duration::from_millis(200), period).await;
    assert_not_before(elapsed, period);

    // 20 MiB in 256 KiB chunks every 50 ms: ~4 s, several periods, never cut.
    let token = gw.token("admin", "upload").await;
    let boundary = "comfygate-test-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let chunks = futures_util::stream::iter(0..80).then(move |i| {
        let head = head.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut chunk = if i == 0 { head.into_bytes() } else { Vec::new() };
            chunk.extend(std::iter::repeat_n(b'p', 256 * 1024));
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        }
    });
    let body = chunks.chain(futures_util::stream::once(async move { Ok(Bytes::from(tail)) }));
    let started = Instant::now();
    let response = common::client()
        .post(gw.at("/upload/image"))
        .bearer_auth(&token)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(started.elapsed() > period * 3, "the upload took several periods");
}

/// Opens `n` connections that send nothing.
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(TcpStream::connect(addr).await.unwrap());
    }
    streams
}

/// Polls until a request is answered with something else than `refused`.
async fn served_again(gw: &Gateway, refused: u16) {
    common::poll(Duration::from_secs(10), "the gateway to serve again", || async {
        let (status, _, _) = raw_request(gw.addr, b"GET /comfygate/api/whoami HTTP/1.1\r\nHost: gw", b"").await;
        (status != refused && status != 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_cap_per_address_get_429_until_some_close() {
    let opts = Options::default().server("max_connections_per_address = 5").server("first_byte_timeout = \"30s\"");
    let (_sim, gw) = setup(opts).await;
    let open = silent(gw.addr, 5).await;
    let (status, head, _) = raw_request(gw.addr, b"GET /comfygate/api/whoami HTTP/1.1\r\nHost: gw", b"").await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    drop(open);
    served_again(&gw, 429).await;
    // The stderr reader may lag behind the process under load: polled.
    common::poll(Duration::from_secs(10), "the refusal logged", || async {
        gw.stderr().contains("max_connections_per_address").then_some(())
    })
    .await;

    // Upgraded connections count as long as they are open.
    let token = gw.token("admin", "ws").await;
    let mut sockets = Vec::new();
    for i in 0..5 {
        let url = format!("ws://{}/ws?clientId=c{i}&token={token}", gw.addr);
        sockets.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let (status, head, _) = raw_request(gw.addr, b"GET /comfygate/api/whoami HTTP/1.1\r\nHost: gw", b"").await;
    assert_eq!(status, 429, "{head}");
    drop(sockets);
    served_again(&gw, 429).await;
}

#[tokio::test]
async fn connections_beyond_the_total_cap_get_503_until_some_close() {
    let opts = Options::default().server("max_connections = 5").server("first_byte_timeout = \"30s\"");
    let (_sim, gw) = setup(opts).await;
    let open = silent(gw.addr, 5).await;
    for _ in 0..20 {
        let (status, head, _) = raw_request(gw.addr, b"GET /comfygate/api/whoami HTTP/1.1\r\nHost: gw", b"").await;
        assert_eq!(status, 503, "{head}");
    }
    drop(open);
    served_again(&gw, 503).await;
    let refusals_logged = gw.stderr().matches("too many open (server.max_connections)").count();
    assert_eq!(refusals_logged, 1, "refusals are logged once, not one line each:\n{}", gw.stderr());
}

#[tokio::test]
async fn a_websocket_message_over_the_limit_closes_the_socket_without_being_held() {
    let (_sim, gw) = setup(Options::default()).await;
    let token = gw.token("admin", "ws").await;
    let before = gw.peak_rss_kib();
    let mut sockets = Vec::new();
    for i in 0..4 {
        let url = format!("ws://{}/ws?clientId=big{i}&token={token}", gw.addr);
        sockets.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let big = "x".repeat(16 * 1024 * 1024);
    for ws in &mut sockets {
        // The gateway may close before the whole message is written.
        let _ = ws.send(Message::Text(big.clone().into())).await;
    }
    for ws in &mut sockets {
        let closed = tokio::time::timeout(SLACK, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        });
        closed.await.expect("socket still open after an oversized message");
    }
    let grown_mib = gw.peak_rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 32, "the gateway's peak memory grew by {grown_mib} MiB");
}

/// A gateway run with a low open file limit (`ulimit -n`, soft and hard); killed on drop.
struct LimitedGateway {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl LimitedGateway {
    async fn start(backend_url: &str, open_files: u32, opts: &Options) -> LimitedGateway {
        let dir = tempfile::tempdir().unwrap();
        let config = common::write_config(dir.path(), backend_url, opts);
        let gateway = common::command(&config);
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("ulimit -n {open_files} && exec \"$@\"")).arg("sh").arg(gateway.get_program());
        cmd.args(gateway.get_args()).arg("serve");
        for (key, value) in gateway.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.env("COMFYGATE_ADMIN_PASSWORD", ADMIN_PW)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stdout).lines().map_while(Result::ok);
            let line = lines.find(|l| l.starts_with("comfygate listening on http://"));
            std::thread::spawn(move || lines.for_each(drop));
            line
        })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("gateway did not start: {}", stderr.lock().unwrap()));
        let addr = addr.trim_start_matches("comfygate listening on http://");
        let addr = addr.split_whitespace().next().unwrap().parse().unwrap();
        LimitedGateway { child, addr, stderr, _dir: dir }
    }
}

impl Drop for LimitedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_flood_of_silent_connections_on_few_descriptors_neither_starves_requests_nor_floods_the_log() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let opts = Options::default().server("first_byte_timeout = \"2s\"");
    let gw = LimitedGateway::start(&sim.url(), 128, &opts).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    assert!(open_files.split_whitespace().any(|w| w == "128"), "{open_files}");

    let flood = silent(gw.addr, 300).await;
    common::poll(Duration::from_secs(20), "a request served despite the flood", || async {
        let request = raw_request(gw.addr, b"GET /comfygate/api/whoami HTTP/1.1\r\nHost: gw", b"");
        match tokio::time::timeout(Duration::from_secs(2), request).await {
            Ok((401, _, _)) => Some(()),
            _ => None,
        }
    })
    .await;
    drop(flood);
    let stderr = gw.stderr.lock().unwrap().clone();
    assert!(stderr.matches("Too many open files").count() <= 2, "{stderr}");
}
