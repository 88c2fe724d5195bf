#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The process's life through the real binary: SIGTERM lets requests under way finish, says
//! goodbye to WebSockets (1001), keeps the queue for the next start and exits 0; a second
//! signal exits at once; SIGHUP and `comfygate reload` apply a new configuration without
//! dropping a connection, and an invalid one is refused with the old one kept.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::pool::{finished, gateway, job, sim, submit_ok};
use common::{Auth, Gateway, Options, client, poll};
use futures_util::StreamExt;
use rustix::process::Signal;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const BOUNDARY: &str = "comfygate-lifecycle-test";

/// A multipart `/upload/image` body sent as `chunks` pieces of 8 KiB, one every `every`; the
/// returned receiver hears once the third piece has been taken (the upload is under way).
fn slow_upload(chunks: usize, every: Duration) -> (reqwest::Body, tokio::sync::oneshot::Receiver<()>) {
    let (under_way, heard) = tokio::sync::oneshot::channel();
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"slow.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let pieces = std::iter::once(Bytes::from(head))
        .chain((0..chunks).map(|i| Bytes::from(vec![u8::try_from(i % 251).unwrap(); 8 * 1024])))
        .chain(std::iter::once(Bytes::from(tail)));
    let mut under_way = Some(under_way);
    let stream = futures_util::stream::iter(pieces.enumerate()).then(move |(i, piece)| {
        if i == 3 {
            if let Some(tx) = under_way.take() {
                let _ = tx.send(());
            }
        }
        async move {
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            Ok::<_, std::io::Error>(piece)
        }
    });
    (reqwest::Body::wrap_stream(stream), heard)
}

fn post_upload(gw: &Gateway, token: &str, body: reqwest::Body) -> tokio::task::JoinHandle<reqwest::Result<u16>> {
    let request = client()
        .post(gw.at("/upload/image"))
        .bearer_auth(token)
        .header("Content-Type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body);
    tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
}

async fn ws(gw: &Gateway, token: &str) -> Ws {
    let url = format!("ws://{}/ws?clientId=lifecycle&token={token}", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // The first status message: the socket is served.
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
    ws
}

/// The close frame the socket receives next, within a deadline (other messages skipped).
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

async fn refuses_connections(gw: &Gateway) {
    poll(Duration::from_secs(10), "the listener closed", || async {
        tokio::net::TcpStream::connect(gw.addr).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_lets_a_30s_upload_finish_closes_websockets_with_1001_and_exits_0() {
    let backend = sim(100).await;
    let mut gw = Gateway::start(&backend.url()).await;
    let token = gw.token("admin", "t").await;
    let mut socket = ws(&gw, &token).await;
    // 60 pieces, one every 500 ms: an upload of 30 s, the default shutdown_timeout.
    let (body, under_way) = slow_upload(60, Duration::from_millis(500));
    let upload = post_upload(&gw, &token, body);
    under_way.await.unwrap();

    gw.signal(Signal::TERM);
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Away), "the socket is told: going away");
    refuses_connections(&gw).await;
    assert!(gw.is_running() && !upload.is_finished(), "the gateway waits for the upload under way");
    let status = tokio::time::timeout(Duration::from_secs(60), upload).await.unwrap().unwrap().unwrap();
    assert_eq!(status, 200, "the upload under way completed");
    let exit = gw.exited(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "exit 0 after the drain; stderr:\n{}", gw.stderr());

    let gw = gw.start_again().await;
    let (status, _) = gw.whoami(&Auth::Bearer(&token)).await;
    assert_eq!(status, 200, "the next start serves the same store");
}

#[tokio::test]
async fn waiting_jobs_stay_in_the_store_at_sigterm_and_run_after_the_next_start() {
    let backend = sim(1_500).await;
    let mut gw = gateway(&[&backend], 1).await;
    let token = gw.token("admin", "t").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit_ok(&gw, &token, job("drain", i, 1_500)).await);
    }
    poll(Duration::from_secs(10), "the first job running on the backend", || async {
        let q: serde_json::Value =
            client().get(format!("{}/queue", backend.url())).send().await.ok()?.json().await.ok()?;
        (!q["queue_running"].as_array()?.is_empty()).then_some(())
    })
    .await;
    gw.signal(Signal::TERM);
    let exit = gw.exited(Duration::from_secs(40)).await;
    assert_eq!(exit.code(), Some(0), "{}", gw.stderr());
    let gw = gw.start_again().await;
    for id in &ids {
        let entry = finished(&gw, &token, id).await;
        assert_eq!(entry["status"]["status_str"], "success", "{id}: {entry}");
    }
}

#[tokio::test]
async fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let backend = sim(100).await;
    let mut gw = Gateway::start_with(&backend.url(), Options::default().server("shutdown_timeout = \"120s\"")).await;
    let token = gw.token("admin", "t").await;
    let mut socket = ws(&gw, &token).await;
    let (body, under_way) = slow_upload(240, Duration::from_millis(500));
    let _upload = post_upload(&gw, &token, body);
    under_way.await.unwrap();
    gw.signal(Signal::TERM);
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Away));
    refuses_connections(&gw).await;
    gw.signal(Signal::INT);
    let exit = gw.exited(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(1), "the second signal ends it at once; stderr:\n{}", gw.stderr());
    poll(Duration::from_secs(5), "the forced exit said", || async {
        gw.stderr().contains("again: exiting without waiting").then_some(())
    })
    .await;
}
