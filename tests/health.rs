#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `/healthz` and `/readyz`: public, exact paths, and readiness that follows the store and the
//! backends. The gateway runs in this process so the test can close its store under it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use comfygate::store::{self, Store};
use comfygate::{App, Config};
use comfyui_sim::{SimConfig, Simulator};
use serde_json::Value;

use common::pool::FAST_HEALTH;
use common::{client, poll};

struct InProcess {
    url: String,
    store: Arc<dyn Store>,
    running: Option<comfygate::app::Running>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(backend_urls: &[String]) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\ndata_dir = {:?}\n{FAST_HEALTH}\n",
            dir.path().join("data").display().to_string()
        );
        for (i, url) in backend_urls.iter().enumerate() {
            text.push_str(&format!("[[backends]]\nname = \"b{i}\"\nurl = {url:?}\n"));
        }
        let path = dir.path().join("comfygate.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(Some(&path), std::iter::empty()).unwrap();
        let store = store::open(&config.store.database_url()).await.unwrap();
        let running = comfygate::app::start(App::new(config, store.clone()).await.unwrap()).await.unwrap();
        InProcess { url: format!("http://{}", running.addr), store, running: Some(running), _dir: dir }
    }

    async fn get(&self, path: &str) -> (u16, String, Option<String>) {
        let r = client().get(format!("{}{path}", self.url)).send().await.unwrap();
        let cache = r.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), r.text().await.unwrap(), cache)
    }

    async fn readyz(&self) -> (u16, Value) {
        let (status, body, _) = self.get("/readyz").await;
        (status, serde_json::from_str(&body).unwrap())
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A URL on which nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{body}"))
}

const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn healthz_answers_ok_without_authentication_and_is_not_cached() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = InProcess::start(&[sim.url()]).await;
    let (status, body, cache) = gw.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), serde_json::json!({"status": "ok"}));
    assert_eq!(cache.as_deref(), Some("no-store"));

    let head = client().head(format!("{}/healthz", gw.url)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    for path in ["/healthz", "/readyz"] {
        for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
            let r = client().request(method.clone(), format!("{}{path}", gw.url)).send().await.unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn readyz_is_ok_with_the_store_up_and_a_healthy_backend_and_reveals_no_urls() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = InProcess::start(&[sim.url()]).await;
    let (status, body, cache) = gw.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(check(&json, "store")["ok"], true);
    assert_eq!(check(&json, "backends")["reason"], "1 of 1 backends healthy");
    assert!(!body.contains("127.0.0.1") && !body.contains("http"), "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn readyz_fails_with_503_when_the_store_stops_answering() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = InProcess::start(&[sim.url()]).await;
    assert_eq!(gw.readyz().await.0, 200);
    // A real failure: the store's connection pool is closed, every query now fails.
    gw.store.close().await;
    let body = poll(DEADLINE, "readyz to fail on the closed store", || async {
        let (status, body) = gw.readyz().await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "fail");
    assert_eq!(check(&body, "store")["ok"], false);
    assert_eq!(check(&body, "backends")["ok"], true);
    // Liveness is not readiness: the process still serves.
    assert_eq!(gw.get("/healthz").await.0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn readyz_fails_when_every_backend_is_down_and_recovers_with_one_up() {
    let mut up = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = InProcess::start(&[up.url(), closed_port_url()]).await;
    let body = poll(DEADLINE, "the dead backend to be taken out", || async {
        let (status, body) = gw.readyz().await;
        (status == 200 && check(&body, "backends")["reason"] == "1 of 2 backends healthy").then_some(body)
    })
    .await;
    assert_eq!(body["status"], "ok");

    up.stop().await;
    let body = poll(DEADLINE, "readyz to fail with no backend up", || async {
        let (status, body) = gw.readyz().await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "fail");
    assert_eq!(check(&body, "backends")["ok"], false);
    assert_eq!(check(&body, "backends")["reason"], "0 of 2 backends healthy");
    assert_eq!(check(&body, "store")["ok"], true);

    up.restart().await.unwrap();
    poll(DEADLINE, "readyz to recover with one backend back", || async { (gw.readyz().await.0 == 200).then_some(()) })
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn only_the_exact_paths_are_public_other_spellings_need_authentication() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = InProcess::start(&[sim.url()]).await;
    // Other spellings are ComfyUI paths like any other (the normaliser may even make them
    // `/healthz`, which ComfyUI does not have): never answered without credentials.
    let cases = [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/healthz/", 401),
        ("/HEALTHZ", 401),
        ("/Readyz", 401),
        ("/%68ealthz", 401),
        ("/%72eadyz", 401),
        ("/./healthz", 401),
        ("//healthz", 401),
        ("/x/../healthz", 401),
        ("/api/healthz", 401),
        ("/api/readyz", 401),
        ("/healthz?x=1", 200),
    ];
    for (path, expected) in cases {
        // Sent as written: reqwest would resolve dot segments itself.
        let addr = gw.url.trim_start_matches("http://").parse().unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost");
        let (status, _, body) = common::raw_request(addr, head.as_bytes(), b"").await;
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, expected, "{path}: {body}");
        if expected == 401 {
            assert!(!body.contains("\"status\":\"ok\""), "{path}: {body}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_readiness_requests_all_answer() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = InProcess::start(&[sim.url()]).await;
    let url = format!("{}/readyz", gw.url);
    let requests = (0..200).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
    });
    let statuses = futures_util::future::join_all(requests).await;
    for status in statuses {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    gw.stop().await;
}
