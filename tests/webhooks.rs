#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Webhooks: job events POSTed signed (Standard Webhooks) to an allowed receiver, retried from
//! the store's outbox across a gateway restart, each delivered under one webhook-id; refused
//! destinations and specs; each user sees only their own deliveries.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::pool::{FAST_HEALTH, gateway_with, job, submit, submit_ok};
use common::{Auth, poll};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    event: String,
    body: Value,
    answered: u16,
}

/// A receiver that checks every signature with `secret` and answers 500 to the first
/// `fail_first` attempts of each message, 200 after.
#[derive(Clone, Default)]
struct Receiver {
    secret: Arc<Mutex<Option<Vec<u8>>>>,
    fail_first: usize,
    seen: Arc<Mutex<Vec<Received>>>,
    bad_signatures: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> (Receiver, SocketAddr) {
        let receiver = Receiver { fail_first, ..Default::default() };
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn set_secret(&self, shown: &str) {
        let key = STANDARD.decode(shown.strip_prefix("whsec_").expect("whsec_ prefix")).unwrap();
        *self.secret.lock().unwrap() = Some(key);
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// The accepted (200) requests of `event`.
    fn accepted(&self, event: &str) -> Vec<Received> {
        self.seen().into_iter().filter(|r| r.event == event && r.answered == 200).collect()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let key = r.secret.lock().unwrap().clone().unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let fresh = timestamp.parse::<i64>().is_ok_and(|t| (now - t).abs() < 300);
    if signature.split(' ').all(|s| s != expected) || !fresh || id.is_empty() {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    let mut seen = r.seen.lock().unwrap();
    let earlier = seen.iter().filter(|s| s.id == id).count();
    let answered = if earlier < r.fail_first { 500 } else { 200 };
    let event = body["type"].as_str().unwrap_or_default().to_owned();
    seen.push(Received { id, event, body, answered });
    StatusCode::from_u16(answered).unwrap()
}

fn config(receiver: SocketAddr, retry_base: &str) -> String {
    format!(
        "{FAST_HEALTH}\n\n[webhooks]\nallowed_hosts = [\"{receiver}\"]\nretry_base = \"{retry_base}\"\ntimeout = \"2s\"\n"
    )
}

async fn secret_of(gw: &common::Gateway, token: &str) -> String {
    let (status, answer) = gw.get_json("/comfygate/api/webhooks/secret", &Auth::Bearer(token)).await;
    assert_eq!(status, 200, "{answer}");
    answer["secret"].as_str().unwrap().to_owned()
}

async fn deliveries(gw: &common::Gateway, token: &str, query: &str) -> (u16, Value) {
    gw.get_json(&format!("/comfygate/api/webhooks/deliveries{query}"), &Auth::Bearer(token)).await
}

#[tokio::test]
async fn signed_events_are_retried_after_500s_and_each_delivered_under_one_id_across_a_restart() {
    let sim = common::pool::sim(50).await;
    let (receiver, at) = Receiver::start(2).await;
    let gw = gateway_with(&[&sim], 1, &config(at, "1s")).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let alice = gw.token("alice", "hooks").await;
    let bob = gw.token("bob", "hooks").await;
    let secret = secret_of(&gw, &alice).await;
    assert_ne!(secret, secret_of(&gw, &bob).await, "each user signs with their own secret");
    receiver.set_secret(&secret);

    let mut body = job("hooked", 1, 50);
    body["extra_data"]["webhook"] = json!({"url": format!("http://{at}/hook?token=receiver-secret")});
    let id = submit_ok(&gw, &alice, body).await;
    poll(Duration::from_secs(30), "the first attempt of job.completed", || async {
        receiver.seen().iter().any(|r| r.event == "job.completed").then_some(())
    })
    .await;
    // 500 twice with a 1 s base delay: the third attempt is at least 2.4 s away.
    assert!(receiver.accepted("job.completed").is_empty());
    let gw = gw.restart().await;

    poll(Duration::from_secs(60), "job.started and job.completed accepted", || async {
        (!receiver.accepted("job.started").is_empty() && !receiver.accepted("job.completed").is_empty()).then_some(())
    })
    .await;
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0, "every signature verifies with alice's secret");
    let (status, listed) = poll(Duration::from_secs(10), "both deliveries recorded as delivered", || async {
        let (status, listed) = deliveries(&gw, &alice, "").await;
        let all = listed["deliveries"].as_array()?;
        (all.len() == 2 && all.iter().all(|d| d["status"] == "delivered")).then_some((status, listed))
    })
    .await;
    assert_eq!(status, 200);
    for event in ["job.started", "job.completed"] {
        let tries: Vec<Received> = receiver.seen().into_iter().filter(|r| r.event == event).collect();
        let ids: std::collections::HashSet<&str> = tries.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "{event}: one webhook-id on every attempt: {tries:?}");
        assert_eq!(tries.iter().filter(|r| r.answered == 200).count(), 1, "{event} accepted once: {tries:?}");
        assert!(tries.iter().filter(|r| r.answered == 500).count() == 2, "{event}: retried after two 500s");
        let row = listed["deliveries"].as_array().unwrap().iter().find(|d| d["event"] == event).unwrap();
        assert_eq!(row["attempts"], 3, "{row}");
        assert_eq!(row["url"], format!("http://{at}/hook?…"), "the query string is not shown");
        assert_eq!(row["id"], tries[0].id);
    }
    let completed = &receiver.accepted("job.completed")[0].body;
    assert_eq!(completed["data"]["prompt_id"], id);
    assert_eq!(completed["data"]["status"], "success");
    let outputs = completed["data"]["outputs"].as_array().unwrap();
    assert!(!outputs.is_empty(), "{completed}");
    let url = outputs[0]["url"].as_str().unwrap();
    assert!(url.starts_with("/view?filename=hooked"), "{url}");
    // The gateway serves the URL to the job's owner.
    let view = common::client().get(gw.at(url)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(view.status(), 200);

    // Bob sees none of alice's deliveries, and may not ask for them; admins may.
    let (status, his) = deliveries(&gw, &bob, "").await;
    assert_eq!((status, his["deliveries"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(deliveries(&gw, &bob, "?user=alice").await.0, 403);
    assert_eq!(deliveries(&gw, &bob, "?all=true").await.0, 403);
    // Alice's account page lists them, the URL without its query string.
    let cookie = gw.login("alice", common::USER_PW).await;
    let page = common::client()
        .get(gw.at("/comfygate/account"))
        .header("cookie", format!("{}={cookie}", common::SESSION_COOKIE))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Webhook deliveries") && page.contains("job.completed"), "{page}");
    assert!(!page.contains("receiver-secret"), "the query string is not shown");
    let admin = gw.token("admin", "look").await;
    let (status, theirs) = deliveries(&gw, &admin, "?user=alice").await;
    assert_eq!((status, theirs["deliveries"].as_array().map(Vec::len)), (200, Some(2)));
}

#[tokio::test]
async fn webhooks_to_other_hosts_or_with_bad_specs_are_refused_with_invalid_webhook() {
    let sim = common::pool::sim(50).await;
    let (_receiver, at) = Receiver::start(0).await;
    let gw = gateway_with(&[&sim], 1, &config(at, "200ms")).await;
    let token = gw.token("admin", "hooks").await;
    let other_port = SocketAddr::new(at.ip(), at.port().wrapping_add(1).max(1));
    for hook in [
        json!({"url": "https://example.com/hook"}),
        json!({"url": format!("http://{other_port}/hook")}),
        json!({"url": format!("http://localhost:{}/hook", at.port())}),
        json!({"url": format!("http://user@{at}/hook")}),
        json!({"url": format!("ftp://{at}/hook")}),
        json!({"url": format!("http://{at}/hook"), "events": ["job.done"]}),
        json!({"url": format!("http://{at}/hook"), "events": "job.completed"}),
        json!({"url": format!("http://{at}/hook"), "secret": "mine"}),
        json!(format!("http://{at}/hook")),
    ] {
        let mut body = job("refused", 1, 10);
        body["extra_data"]["webhook"] = hook.clone();
        let (status, answer) = submit(&gw, &token, body).await;
        assert_eq!(status, 400, "{hook}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_webhook", "{hook}: {answer}");
        assert!(answer["node_errors"].is_object());
    }
    let (status, queue) = gw.get_json("/queue", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(queue["queue_pending"].as_array().map(Vec::len), Some(0), "nothing refused was queued");
    let mut fine = job("fine", 1, 10);
    fine["extra_data"]["webhook"] = json!({"url": format!("http://{at}/hook"), "events": ["job.failed"]});
    assert_eq!(submit(&gw, &token, fine).await.0, 200);
}

#[tokio::test]
async fn without_allowed_hosts_every_webhook_is_refused() {
    let sim = common::pool::sim(50).await;
    let gw = gateway_with(&[&sim], 1, FAST_HEALTH).await;
    let token = gw.token("admin", "hooks").await;
    let mut body = job("refused", 1, 10);
    body["extra_data"]["webhook"] = json!({"url": "https://hooks.example.com/hook"});
    let (status, answer) = submit(&gw, &token, body).await;
    assert_eq!((status, answer["error"]["type"].as_str()), (400, Some("invalid_webhook")), "{answer}");
}

#[tokio::test]
async fn a_tokens_default_webhook_is_used_for_the_events_it_names() {
    let sim = common::pool::sim(50).await;
    let (receiver, at) = Receiver::start(0).await;
    let gw = gateway_with(&[&sim], 1, &config(at, "200ms")).await;
    gw.add_user("carol", "user").await;
    let refused =
        gw.cli(&["token", "create", "carol", "--name", "bad", "--webhook", "https://example.com/h"], None).await;
    assert_ne!(refused.code, 0, "a host outside allowed_hosts is refused: {refused:?}");
    let url = format!("http://{at}/hook");
    let out = gw
        .cli(
            &["token", "create", "carol", "--name", "hooked", "--webhook", &url, "--webhook-events", "job.completed"],
            None,
        )
        .await
        .ok();
    let token = out.stdout.trim().to_owned();
    receiver.set_secret(&secret_of(&gw, &token).await);
    let id = submit_ok(&gw, &token, job("default", 2, 20)).await;
    poll(Duration::from_secs(30), "job.completed from the token's webhook", || async {
        (!receiver.accepted("job.completed").is_empty()).then_some(())
    })
    .await;
    assert_eq!(receiver.accepted("job.completed")[0].body["data"]["prompt_id"], id);
    // A plain token of the same user sends nothing; and only the named event was sent.
    let plain = gw.token("carol", "plain").await;
    let other = submit_ok(&gw, &plain, job("plain", 3, 20)).await;
    common::pool::finished(&gw, &plain, &other).await;
    let (_, listed) = deliveries(&gw, &plain, "").await;
    assert_eq!(listed["deliveries"].as_array().map(Vec::len), Some(1), "{listed}");
    assert!(receiver.seen().iter().all(|r| r.event == "job.completed" && r.body["data"]["prompt_id"] == id));
}

#[tokio::test]
async fn a_job_deleted_from_the_queue_sends_job_interrupted_and_only_the_events_asked_for() {
    let sim = common::pool::sim(50).await;
    let (receiver, at) = Receiver::start(0).await;
    let gw = gateway_with(&[&sim], 1, &config(at, "200ms")).await;
    let token = gw.token("admin", "hooks").await;
    receiver.set_secret(&secret_of(&gw, &token).await);
    let hook = json!({"url": format!("http://{at}/hook"), "events": ["job.interrupted"]});
    let mut first = job("long", 1, 3_000);
    first["extra_data"]["webhook"] = hook.clone();
    submit_ok(&gw, &token, first).await;
    let mut second = job("waiting", 2, 10);
    second["extra_data"]["webhook"] = hook;
    let waiting = submit_ok(&gw, &token, second).await;
    let r = common::client()
        .post(gw.at("/queue"))
        .bearer_auth(&token)
        .json(&json!({"delete": [waiting]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    poll(Duration::from_secs(20), "job.interrupted accepted", || async {
        (!receiver.accepted("job.interrupted").is_empty()).then_some(())
    })
    .await;
    let got = &receiver.accepted("job.interrupted")[0].body;
    assert_eq!(
        (got["data"]["prompt_id"].as_str(), got["data"]["status"].as_str()),
        (Some(waiting.as_str()), Some("interrupted"))
    );
    assert!(got["data"]["started_at"].is_null(), "{got}");
    assert!(receiver.seen().iter().all(|r| r.event == "job.interrupted"), "job.started was not asked for");
}
