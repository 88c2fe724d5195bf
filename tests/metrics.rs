#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `/metrics` (issue 11): every family moves with the traffic that should move it, label sets
//! stay bounded whatever paths and names clients send, only admins scrape the main listener,
//! the `[metrics] listen` listener serves `/metrics` alone without authentication, and every
//! metric the shipped dashboard and alert rules use is in a real scrape.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::pool::{FAST_HEALTH, finished, gateway_with, model_job, submit_ok};
use common::{Gateway, Options, USER_PW, client, poll};
use futures_util::future::join_all;

const DEADLINE: Duration = Duration::from_secs(20);

async fn checkpoint_sim() -> Simulator {
    let mut config = SimConfig { job_duration: Duration::from_millis(30), ..SimConfig::default() };
    config.models.push(("checkpoints".to_owned(), "m1.safetensors".to_owned()));
    config.models.push(("checkpoints".to_owned(), "m2.safetensors".to_owned()));
    Simulator::start(config).await.unwrap()
}

/// `GET /metrics` as `token`'s owner: the text (panics unless 200).
async fn scrape(gw: &Gateway, token: &str) -> String {
    let r = client().get(gw.at("/metrics")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    r.text().await.unwrap()
}

/// The value of the series `series` (name and labels exactly as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

/// `sum(comfygate_queue_waiting_jobs)`: the waiting jobs of every model set.
fn waiting(text: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("comfygate_queue_waiting_jobs{"))
        .filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Every series (name and labels, without the value) of a scrape.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

async fn poll_value(gw: &Gateway, token: &str, series: &str, wanted: impl Fn(f64) -> bool) -> String {
    poll(DEADLINE, series, || async {
        let text = scrape(gw, token).await;
        value(&text, series).is_some_and(&wanted).then_some(text)
    })
    .await
}

#[tokio::test]
async fn a_scrape_after_traffic_shows_every_family_moved() {
    let a = checkpoint_sim().await;
    let mut b = checkpoint_sim().await;
    let gw = gateway_with(&[&a, &b], 1, FAST_HEALTH).await;
    let admin = gw.token("admin", "scrape").await;
    gw.add_user("alice", "user").await;
    let alice = gw.token("alice", "jobs").await;
    let before = scrape(&gw, &admin).await;
    assert_eq!(value(&before, "comfygate_jobs_submitted_total"), Some(0.0));
    assert_eq!(value(&before, "comfygate_backend_up{backend=\"b2\"}"), Some(1.0));
    assert_eq!(value(&before, "comfygate_ready"), Some(1.0));
    assert!(before.contains("comfygate_backend_vram_total_bytes{backend=\"sim\",device="), "{before}");

    // A failed login, an unknown token, a good login.
    let r = gw.login_response("alice", "wrong-password", "/").await;
    assert_ne!(r.status(), 303);
    let r = client().get(gw.at("/queue")).bearer_auth("cg_not_a_token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    gw.login("alice", USER_PW).await;

    // Two jobs with different checkpoints: each start is a model load.
    let first = submit_ok(&gw, &alice, model_job("m1.safetensors", "one")).await;
    finished(&gw, &alice, &first).await;
    let second = submit_ok(&gw, &alice, model_job("m2.safetensors", "two")).await;
    finished(&gw, &alice, &second).await;

    // A client WebSocket, open then closed.
    let url = format!("ws://{}/ws?clientId=metrics-test&token={alice}", gw.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    poll_value(&gw, &admin, "comfygate_websocket_connections", |v| v == 1.0).await;
    drop(ws);
    poll_value(&gw, &admin, "comfygate_websocket_connections", |v| v == 0.0).await;

    // A backend stops: the health check notices.
    b.stop().await;
    let text = poll_value(&gw, &admin, "comfygate_backend_up{backend=\"b2\"}", |v| v == 0.0).await;
    assert!(!text.contains("comfygate_backend_vram_total_bytes{backend=\"b2\""), "a down backend's devices stay out");

    assert!(value(&text, "comfygate_http_requests_total{class=\"user\",code=\"200\"}").unwrap() >= 2.0, "{text}");
    assert!(value(&text, "comfygate_http_requests_total{class=\"login\",code=\"303\"}").unwrap() >= 1.0, "{text}");
    assert!(value(&text, "comfygate_http_request_duration_seconds_count{class=\"user\"}").unwrap() >= 2.0);
    assert_eq!(value(&text, "comfygate_auth_failures_total{reason=\"invalid_login\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "comfygate_auth_failures_total{reason=\"unknown_token\"}"), Some(1.0), "{text}");
    assert!(value(&text, "comfygate_auth_failures_top_source").unwrap() >= 2.0, "{text}");
    assert!(value(&text, "comfygate_sessions_active").unwrap() >= 1.0, "{text}");
    assert_eq!(value(&text, "comfygate_jobs_submitted_total"), Some(2.0), "{text}");
    assert_eq!(value(&text, "comfygate_jobs_finished_total{outcome=\"success\"}"), Some(2.0), "{text}");
    assert_eq!(value(&text, "comfygate_job_wait_seconds_count"), Some(2.0), "{text}");
    assert_eq!(value(&text, "comfygate_job_run_seconds_count"), Some(2.0), "{text}");
    let loads = value(&text, "comfygate_backend_model_loads_total{backend=\"sim\"}").unwrap()
        + value(&text, "comfygate_backend_model_loads_total{backend=\"b2\"}").unwrap();
    assert_eq!(loads, 2.0, "{text}");
    assert_eq!(waiting(&text), 0.0);
    assert_eq!(value(&text, "comfygate_desired_backends"), Some(0.0), "nothing held: {text}");
    assert_eq!(value(&text, "comfygate_backend_inflight_jobs{backend=\"sim\"}"), Some(0.0));
    assert_eq!(value(&text, "comfygate_ready"), Some(1.0), "one backend is still up");
    assert!(value(&text, "comfygate_process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&text, "comfygate_process_open_fds").unwrap() > 0.0);
    assert!(text.contains("comfygate_build_info{version=\""));
    // Nothing names a user, a token or a path.
    for secret in ["alice", &alice, "cg_not_a_token", "/queue", "metrics-test"] {
        assert!(!text.contains(secret), "{secret} leaked into the scrape");
    }
}

#[tokio::test]
async fn label_sets_stay_bounded_for_a_thousand_paths_and_user_names() {
    let backend = comfyui_sim::Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&backend.url()).await;
    let admin = gw.token("admin", "scrape").await;
    gw.add_user("bob", "user").await;
    let bob = gw.token("bob", "paths").await;
    let traffic = |round: &'static str, n: usize| {
        let (gw, bob) = (&gw, &bob);
        async move {
            for batch in (0..n).collect::<Vec<_>>().chunks(50) {
                join_all(batch.iter().map(|i| async move {
                    let c = client();
                    let _ = c.get(gw.at(&format!("/{round}-{i}/x%2e%2e/y?z={i}"))).bearer_auth(bob).send().await;
                    let _ = c.get(gw.at(&format!("/api/{round}/{i}"))).send().await;
                    let _ = c.get(gw.at("/queue")).bearer_auth(format!("cg_{round}{i}")).send().await;
                    let _ = gw.login_response(&format!("{round}-user-{i}"), "wrong", "/").await;
                }))
                .await;
            }
        }
    };
    // Warm-up: every kind of request and refusal once (the throttle included), and a scrape.
    traffic("warm", 100).await;
    scrape(&gw, &admin).await;
    let before = series(&scrape(&gw, &admin).await);
    traffic("many", 1000).await;
    let text = scrape(&gw, &admin).await;
    let after = series(&text);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.len() <= 4, "1,000 paths and names added series: {new:?}");
    assert!(after.len() < 200, "{} series", after.len());
    for leaked in ["many-", "warm-", "cg_"] {
        assert!(!text.contains(leaked), "{leaked} reached the labels");
    }
}

#[tokio::test]
async fn metrics_are_for_admins_only_on_the_main_listener() {
    let backend = comfyui_sim::Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&backend.url()).await;
    gw.add_user("carol", "user").await;
    let user = gw.token("carol", "t").await;
    let admin = gw.token("admin", "t").await;
    let r = client().get(gw.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(gw.at("/metrics")).bearer_auth(&user).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let session = gw.login("carol", USER_PW).await;
    let r = client().get(gw.at("/metrics")).header("cookie", format!("comfygate_session={session}")).send().await;
    assert_eq!(r.unwrap().status(), 403);
    let r = client().head(gw.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().head(gw.at("/metrics")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().is_empty());
    // 200 scrapes at once: each is answered (they take turns), none is refused or hangs.
    let scrapes = join_all((0..200).map(|_| client().get(gw.at("/metrics")).bearer_auth(&admin).send())).await;
    assert!(scrapes.iter().all(|r| r.as_ref().is_ok_and(|r| r.status() == 200)));
    let admin_session = gw.login("admin", common::ADMIN_PW).await;
    let r = client().get(gw.at("/metrics")).header("cookie", format!("comfygate_session={admin_session}")).send();
    let text = r.await.unwrap().text().await.unwrap();
    assert!(text.contains("comfygate_build_info"), "{text}");
    // Other spellings are ComfyUI paths: admin-only there, never the scrape for a user.
    for path in ["/metrics/", "/%6detrics", "/api/metrics", "/./metrics", "/METRICS"] {
        let r = client().get(gw.at(path)).bearer_auth(&user).send().await.unwrap();
        assert!(r.status() == 403 || r.status() == 404 || r.status() == 400, "{path}: {}", r.status());
        assert!(!r.text().await.unwrap().contains("comfygate_build_info"), "{path}");
    }
}

#[tokio::test]
async fn the_metrics_listener_serves_only_metrics_without_authentication() {
    let backend = comfyui_sim::Simulator::start(SimConfig::default()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = Options::default().extra(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\""));
    let gw = Gateway::start_with(&backend.url(), opts).await;
    let base = format!("http://127.0.0.1:{port}");
    let r = client().get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("comfygate_build_info"));
    let r = client().head(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().is_empty());
    let r = client().post(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    for path in ["/", "/prompt", "/queue", "/metrics/", "/%6detrics", "/api/metrics", "/login", "/comfygate/health"] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let text = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("comfygate_http_requests_total{class=\"other\",code=\"404\"} 8"), "{text}");
    // The main listener still wants an admin.
    let r = client().get(gw.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// Metric names (`comfygate_...`) used in `text`.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("comfygate_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("expr" | "query", Some(expr)) => out.push(expr.to_owned()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alert_rules_is_in_a_real_scrape() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/comfygate.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has {} queries", exprs.len());
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    assert!(rules.matches("alert:").count() >= 5, "{rules}");
    let mut used = names_used(&exprs.join("\n"));
    used.extend(names_used(&rules));

    let a = checkpoint_sim().await;
    // A `discover` entry whose DNS server does not answer: its series are there too.
    let dead_dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let discovery = format!(
        "{FAST_HEALTH}\n[discovery]\ninterval = \"100ms\"\nnameservers = [\"{}\"]\n\n[[backends]]\nname = \"w\"\n\
         discover = \"dns://workers.test\"\n",
        dead_dns.local_addr().unwrap()
    );
    drop(dead_dns);
    let gw = gateway_with(&[&a], 1, &discovery).await;
    let admin = gw.token("admin", "scrape").await;
    let id = submit_ok(&gw, &admin, model_job("m1.safetensors", "x")).await;
    finished(&gw, &admin, &id).await;
    poll_value(&gw, &admin, "comfygate_discovery_lookup_failures_total{entry=\"w\"}", |v| v > 0.0).await;
    let _ = client().get(gw.at("/queue")).send().await;
    let text = scrape(&gw, &admin).await;
    let scraped: BTreeSet<String> =
        series(&text).iter().map(|s| s.split('{').next().unwrap_or_default().to_owned()).collect();
    let missing: Vec<&String> = used.iter().filter(|n| !scraped.contains(*n)).collect();
    assert!(missing.is_empty(), "used by the dashboard or the rules but not scraped: {missing:?}\n{text}");
}

#[tokio::test]
async fn connections_refused_over_the_caps_are_counted_too() {
    let backend = comfyui_sim::Simulator::start(SimConfig::default()).await.unwrap();
    let opts = Options::default().server("max_connections_per_address = 2");
    let gw = Gateway::start_with(&backend.url(), opts).await;
    let admin = gw.token("admin", "t").await;
    let held = [
        tokio::net::TcpStream::connect(gw.addr).await.unwrap(),
        tokio::net::TcpStream::connect(gw.addr).await.unwrap(),
    ];
    let (status, _, _) = common::raw_request(gw.addr, b"GET /queue HTTP/1.1\r\nHost: x", b"").await;
    assert_eq!(status, 429);
    drop(held);
    let text = poll(DEADLINE, "a scrape once the held connections closed", || async {
        let r = client().get(gw.at("/metrics")).bearer_auth(&admin).send().await.ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    })
    .await;
    assert_eq!(value(&text, "comfygate_http_requests_total{class=\"user\",code=\"429\"}"), Some(1.0), "{text}");
}

#[tokio::test]
async fn jobs_that_only_a_stopped_backend_can_run_are_counted_as_unrunnable() {
    let plain = comfyui_sim::Simulator::start(SimConfig::default()).await.unwrap();
    let mut models = checkpoint_sim().await;
    let gw = gateway_with(&[&plain, &models], 1, FAST_HEALTH).await;
    let admin = gw.token("admin", "t").await;
    models.stop().await;
    poll_value(&gw, &admin, "comfygate_backend_up{backend=\"b2\"}", |v| v == 0.0).await;
    let id = submit_ok(&gw, &admin, model_job("m1.safetensors", "wait")).await;
    let text = scrape(&gw, &admin).await;
    assert_eq!(value(&text, "comfygate_queue_waiting_jobs{models=\"m1.safetensors\"}"), Some(1.0), "{text}");
    assert_eq!(waiting(&text), 1.0, "{text}");
    assert_eq!(value(&text, "comfygate_queue_unrunnable_jobs"), Some(1.0), "{text}");
    assert_eq!(value(&text, "comfygate_ready"), Some(1.0), "a backend is up");
    models.restart().await.unwrap();
    finished(&gw, &admin, &id).await;
    let text = scrape(&gw, &admin).await;
    assert_eq!(value(&text, "comfygate_queue_unrunnable_jobs"), Some(0.0), "{text}");
    assert_eq!(waiting(&text), 0.0, "{text}");
    assert!(!text.contains("m1.safetensors"), "a set nothing waits for has no series: {text}");
}

#[tokio::test]
async fn waiting_jobs_by_model_files_and_desired_backends_follow_a_queue_on_a_saturated_backend() {
    let mut config = SimConfig { job_duration: Duration::from_secs(30), ..SimConfig::default() };
    config.models.push(("checkpoints".to_owned(), "m1.safetensors".to_owned()));
    config.models.push(("checkpoints".to_owned(), "m2.safetensors".to_owned()));
    let sim = Simulator::start(config).await.unwrap();
    // Unmeasured jobs are taken to run 15 s; the work should drain within 10 s.
    let extra = format!("{FAST_HEALTH}\ndefault_run_time = \"15s\"\n\n[discovery]\nscale_target = \"10s\"\n");
    let gw = gateway_with(&[&sim], 1, &extra).await;
    let admin = gw.token("admin", "scrape").await;
    let idle = scrape(&gw, &admin).await;
    assert_eq!(value(&idle, "comfygate_desired_backends"), Some(0.0), "{idle}");
    assert_eq!(value(&idle, "comfygate_queue_waiting_jobs{models=\"\"}"), Some(0.0), "{idle}");

    let running = submit_ok(&gw, &admin, model_job("m1.safetensors", "run")).await;
    for (i, ckpt) in ["m1.safetensors", "m1.safetensors", "m2.safetensors"].iter().enumerate() {
        submit_ok(&gw, &admin, model_job(ckpt, &format!("wait{i}"))).await;
    }
    let text = poll_value(&gw, &admin, "comfygate_queue_waiting_jobs{models=\"m2.safetensors\"}", |v| v == 1.0).await;
    assert_eq!(value(&text, "comfygate_queue_waiting_jobs{models=\"m1.safetensors\"}"), Some(2.0), "{text}");
    assert_eq!(waiting(&text), 3.0, "{text}");
    assert_eq!(value(&text, "comfygate_backend_inflight_jobs{backend=\"sim\"}"), Some(1.0), "{text}");
    // 3 waiting × 15 s + what is left of the running one (≤ 15 s), over 10 s: 5 or 6 backends.
    let desired = value(&text, "comfygate_desired_backends").unwrap();
    assert!((5.0..=6.0).contains(&desired), "desired {desired}: {text}");

    // The queue cleared and the running job interrupted: nothing is needed any more.
    let r = client().post(gw.at("/queue")).bearer_auth(&admin).json(&serde_json::json!({"clear": true})).send().await;
    assert_eq!(r.unwrap().status(), 200);
    let r = client().post(gw.at("/interrupt")).bearer_auth(&admin).json(&serde_json::json!({})).send().await;
    assert_eq!(r.unwrap().status(), 200);
    finished(&gw, &admin, &running).await;
    let text = poll_value(&gw, &admin, "comfygate_desired_backends", |v| v == 0.0).await;
    assert_eq!(waiting(&text), 0.0, "{text}");
    assert!(!text.contains("models=\"m1.safetensors\""), "{text}");
}
