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

/// Whether `sim` itself ran the job (has it in its history).
async fn ran_on(sim: &comfyui_sim::Simulator, id: &str) -> bool {
    let h: serde_json::Value =
        client().get(format!("{}/history/{id}", sim.url())).send().await.unwrap().json().await.unwrap();
    h.get(id).is_some()
}

/// The id of the job `sim` runs now, once it runs one.
async fn running_on(sim: &comfyui_sim::Simulator) -> String {
    poll(Duration::from_secs(15), "a job running on the backend", || async {
        let q: serde_json::Value = client().get(format!("{}/queue", sim.url())).send().await.ok()?.json().await.ok()?;
        q["queue_running"][0][1].as_str().map(str::to_owned)
    })
    .await
}

/// The gateway's view of its backends: (name, retiring) in order.
async fn backends(gw: &Gateway, token: &str) -> Vec<(String, bool)> {
    let (status, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(token)).await;
    assert_eq!(status, 200, "{state}");
    state["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_owned(), b["retiring"].as_bool().unwrap()))
        .collect()
}

fn backend_block(name: &str, url: &str) -> String {
    format!("\n[[backends]]\nname = \"{name}\"\nurl = \"{url}\"\nmax_inflight = 1\n")
}

/// The configuration without the `[[backends]]` table named `name`.
fn without_backend(config: &str, name: &str) -> String {
    let start = config.find(&format!("\n[[backends]]\nname = \"{name}\"")).unwrap();
    let rest = &config[start + 1..];
    let end = rest.find("\n[").map_or(config.len(), |i| start + 1 + i);
    format!("{}{}", &config[..start], &config[end..])
}

/// Audit lines of `event` in the gateway's audit file.
fn audited(gw: &Gateway, event: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gw.dir.path().join("data").join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

#[tokio::test]
async fn reload_adding_a_backend_runs_the_next_job_there_while_an_open_websocket_stays_open() {
    let (first, second) = (sim(3_000).await, sim(200).await);
    let gw = gateway(&[&first], 1).await;
    let token = gw.token("admin", "t").await;
    let mut socket = ws(&gw, &token).await;
    let busy = submit_ok(&gw, &token, job("busy", 1, 3_000)).await;
    assert_eq!(running_on(&first).await, busy);

    let mut config = std::fs::read_to_string(&gw.config).unwrap();
    config.push_str(&backend_block("b2", &second.url()));
    std::fs::write(&gw.config, config).unwrap();
    let out = gw.cli(&["reload"], None).await.ok();
    assert!(out.stdout.contains("backends added: b2"), "{out:?}");
    assert_eq!(backends(&gw, &token).await, [("sim".to_owned(), false), ("b2".to_owned(), false)]);

    let mut next = job("next", 2, 200);
    next["client_id"] = "lifecycle".into();
    let next = submit_ok(&gw, &token, next).await;
    let entry = finished(&gw, &token, &next).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert!(ran_on(&second, &next).await, "the first backend was busy: the new one ran it");
    // The socket opened before the reload still carries the owner's events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut saw_next = false;
    while !saw_next {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => saw_next = text.contains(&next),
            Ok(Some(Ok(Message::Close(frame)))) => panic!("the socket was closed by the reload: {frame:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no event of the new job on the socket opened before the reload: {other:?}"),
        }
    }
    let entry = finished(&gw, &token, &busy).await;
    assert_eq!(entry["status"]["status_str"], "success");
}

#[tokio::test]
async fn reload_removing_a_backend_lets_its_running_job_finish_then_the_backend_leaves() {
    let (kept, removed) = (sim(200).await, sim(2_500).await);
    let gw = gateway(&[&kept, &removed], 1).await;
    let token = gw.token("admin", "t").await;
    // The first job goes to the first backend, the second to the one to remove.
    let on_kept = submit_ok(&gw, &token, job("kept", 1, 2_500)).await;
    let on_removed = submit_ok(&gw, &token, job("removed", 2, 2_500)).await;
    assert_eq!(running_on(&removed).await, on_removed, "{on_kept}");

    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, without_backend(&config, "b2")).unwrap();
    let out = gw.cli(&["reload"], None).await.ok();
    assert!(out.stdout.contains("backends removed"), "{out:?}");
    assert_eq!(backends(&gw, &token).await, [("sim".to_owned(), false), ("b2".to_owned(), true)], "draining");
    let later = submit_ok(&gw, &token, job("later", 3, 100)).await;

    let entry = finished(&gw, &token, &on_removed).await;
    assert_eq!(entry["status"]["status_str"], "success", "the running job finished where it ran");
    assert!(ran_on(&removed, &on_removed).await);
    poll(Duration::from_secs(10), "the drained backend gone", || async {
        (backends(&gw, &token).await == [("sim".to_owned(), false)]).then_some(())
    })
    .await;
    let entry = finished(&gw, &token, &later).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert!(ran_on(&kept, &later).await && !ran_on(&removed, &later).await, "no new job on the drained backend");
}

#[tokio::test]
async fn an_invalid_configuration_on_sighup_is_refused_and_the_one_in_force_stays() {
    let backend = sim(100).await;
    let gw = Gateway::start_with(&backend.url(), Options::default().extra("[limits]\nmax_waiting = 50")).await;
    let token = gw.token("admin", "t").await;
    let mut socket = ws(&gw, &token).await;
    let good = std::fs::read_to_string(&gw.config).unwrap();
    // What is wrong, and the word the refusal names it by.
    let broken = [
        ("not TOML", format!("{good}\n[[backends]\nname = ")),
        ("an unknown key", format!("{good}\n[scheduler]\nhealth_intervall = \"1s\"\n")),
        ("an unusable backend URL", good.replace(&format!("url = \"{}\"", backend.url()), "url = \"http://\"")),
        ("a bad log filter", format!("{good}\n[log]\nlevel = \"info,=[\"\n")),
        ("a bad route", format!("{good}\n[policy]\nuser_routes = [\"GET /a/**/b\"]\n")),
    ];
    let expected = ["TOML", "health_intervall", "backend", "log filter", "policy"];
    for (i, (what, text)) in broken.iter().enumerate() {
        std::fs::write(&gw.config, text).unwrap();
        gw.signal(Signal::HUP);
        poll(Duration::from_secs(10), &format!("the reload of {what} refused"), || async {
            (audited(&gw, "config_reload_refused").len() > i).then_some(())
        })
        .await;
        let reason = audited(&gw, "config_reload_refused")[i]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains(expected[i]), "{what}: {reason}");
    }
    assert!(audited(&gw, "config_reloaded").is_empty(), "nothing was applied");
    // The one in force serves on: its backend, its socket.
    let id = submit_ok(&gw, &token, job("still", 1, 100)).await;
    assert_eq!(finished(&gw, &token, &id).await["status"]["status_str"], "success");
    let alive = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
    assert!(matches!(alive, Ok(Some(Ok(Message::Text(_))))), "the socket still carries events: {alive:?}");

    // `comfygate reload` checks the file before it signals, and says what is wrong.
    std::fs::write(&gw.config, &broken[1].1).unwrap();
    let out = gw.cli(&["reload"], None).await;
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("health_intervall"), "{out:?}");
    // A valid one is applied, limits included: one waiting job at most.
    std::fs::write(&gw.config, good.replace("max_waiting = 50", "max_waiting = 1")).unwrap();
    let out = gw.cli(&["reload"], None).await.ok();
    assert!(out.stdout.contains("[limits] updated"), "{out:?}");
}

#[tokio::test]
async fn reloaded_limits_hold_the_next_submission() {
    let backend = sim(3_000).await;
    let gw = gateway(&[&backend], 1).await;
    let token = gw.token("admin", "t").await;
    gw.add_user("alice", "user").await;
    let alice = gw.token("alice", "a").await;
    let mut config = std::fs::read_to_string(&gw.config).unwrap();
    config.push_str("\n[limits]\nmax_waiting = 1\n");
    std::fs::write(&gw.config, config).unwrap();
    let out = gw.cli(&["reload"], None).await.ok();
    assert!(out.stdout.contains("[limits] updated"), "{out:?}");
    let running = submit_ok(&gw, &alice, job("a", 1, 3_000)).await;
    assert_eq!(running_on(&backend).await, running);
    submit_ok(&gw, &alice, job("a", 2, 100)).await;
    let (status, answer) = common::pool::submit(&gw, &alice, job("a", 3, 100)).await;
    assert_eq!(status, 429, "a second waiting job is over the reloaded max_waiting: {answer}");
    let _ = token;
}

#[tokio::test]
async fn reload_without_a_running_gateway_says_so_with_exit_69() {
    let backend = sim(100).await;
    let mut gw = Gateway::start(&backend.url()).await;
    gw.signal(Signal::TERM);
    assert_eq!(gw.exited(Duration::from_secs(40)).await.code(), Some(0));
    let out = gw.cli(&["reload"], None).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(out.stderr.contains("no gateway is serving"), "{out:?}");
}

/// A certificate for `localhost` signed by a CA of its own: (CA PEM, certificate PEM, key PEM).
fn certificate(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// A client that trusts only `ca`, reaching the gateway as `localhost`.
fn trusting(ca: &str, gw: &Gateway) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", gw.addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn handshake_ok(client: &reqwest::Client, gw: &Gateway) -> bool {
    client.get(format!("https://localhost:{}/healthz", gw.addr.port())).send().await.is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn reload_puts_new_tls_certificate_files_in_force_for_new_connections() {
    let backend = sim(100).await;
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    let (old_ca, old_cert, old_key) = certificate("old");
    let (new_ca, new_cert, new_key) = certificate("new");
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    let tls = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let gw = Gateway::start_with(&backend.url(), Options::default().extra(&tls)).await;
    let (trusts_old, trusts_new) = (trusting(&old_ca, &gw), trusting(&new_ca, &gw));
    assert!(handshake_ok(&trusts_old, &gw).await && !handshake_ok(&trusts_new, &gw).await, "the old certificate");
    // A connection opened before the reload keeps working after it.
    let kept = trusting(&old_ca, &gw);
    assert!(handshake_ok(&kept, &gw).await);

    std::fs::write(&cert, &new_cert).unwrap();
    std::fs::write(&key, &new_key).unwrap();
    let out = gw.cli(&["reload"], None).await.ok();
    assert!(out.stdout.contains("TLS certificate reloaded"), "{out:?}");
    assert!(handshake_ok(&trusts_new, &gw).await, "new connections get the new certificate");
    assert!(!handshake_ok(&trusting(&old_ca, &gw), &gw).await, "and no longer the old one");
    assert!(handshake_ok(&kept, &gw).await, "the pooled connection from before is still open and served");

    // Unusable files are refused and the certificate in force stays.
    std::fs::write(&key, "not a key").unwrap();
    let out = gw.cli(&["reload"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("refused") && out.stderr.contains("TLS"), "{out:?}");
    assert!(handshake_ok(&trusting(&new_ca, &gw), &gw).await);
}

#[tokio::test]
async fn a_backend_that_stays_down_is_logged_once_not_at_every_check_and_logs_carry_no_colours() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let fast = "[scheduler]\nhealth_interval = \"50ms\"\nhealth_timeout = \"1s\"\nunhealthy_after = 2";
    let gw = Gateway::start_with(&dead, Options::default().extra(fast)).await;
    let token = gw.token("admin", "t").await;
    poll(Duration::from_secs(20), "30 failed health checks", || async {
        let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
        (state["backends"][0]["failures"].as_u64()? >= 30).then_some(())
    })
    .await;
    let log = gw.stderr();
    assert_eq!(log.matches("backend taken out of service").count(), 1, "{log}");
    assert!(!log.contains("backend connection failed"), "not one line per check: {log}");
    assert!(log.contains("Connection refused") || log.contains("connection failed ("), "the cause is named: {log}");
    assert!(!log.contains('\u{1b}'), "no ANSI colours into a pipe: {log:?}");
}
