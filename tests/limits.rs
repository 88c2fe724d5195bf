#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Per-user limits: waiting jobs, running jobs, jobs per hour, workflow and upload sizes.
//! Each refusal is ComfyUI's error shape with 429 (413 for sizes) and `Retry-After`, holds
//! under concurrency, and nobody else's work is affected.

mod common;

use std::time::Duration;

use common::pool::{gateway_with, job, sim};
use common::{Auth, Gateway, client};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

/// Status, `Retry-After`, and body of a submission.
async fn submit(gw: &Gateway, token: &str, body: &Value) -> (u16, Option<u64>, Value) {
    let r = client().post(gw.at("/prompt")).bearer_auth(token).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

async fn limits(gw: &Gateway, args: &[&str]) -> String {
    let mut all = vec!["user", "limits"];
    all.extend_from_slice(args);
    gw.cli(&all, None).await.ok().stdout
}

/// Keeps the only backend slot busy with an admin job for a while.
async fn occupy(gw: &Gateway, admin: &str, ms: u64) {
    let (status, _, answer) = submit(gw, admin, &job("busy", 1, ms)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn waiting_jobs_are_limited_per_user_even_when_submitted_at_once() {
    let backend = sim(3_000).await;
    let gw = gateway_with(&[&backend], 1, "").await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    gw.add_user("alice", "user").await;
    let (bob, alice) = (gw.token("bob", "t").await, gw.token("alice", "t").await);
    let shown = limits(&gw, &["bob", "--max-waiting", "5"]).await;
    assert!(
        shown.contains("max-waiting          5") && shown.contains("max-running          no limit (default)"),
        "{shown}"
    );
    occupy(&gw, &admin, 3_000).await;

    let attempts = (0..40).map(|i| {
        let (gw, bob) = (&gw, &bob);
        async move { submit(gw, bob, &job("bob", 10 + i, 50)).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let accepted = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(accepted, 5, "exactly the limit's worth is queued");
    for (status, retry, body) in results.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert!(retry.is_some_and(|s| s > 0), "Retry-After is given");
        assert_eq!(body["error"]["type"], "too_many_waiting_jobs", "ComfyUI's error shape: {body}");
        assert!(body["node_errors"].is_object());
    }
    // Another user is not affected.
    let (status, _, answer) = submit(&gw, &alice, &job("alice", 2, 50)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn running_jobs_are_limited_per_user_while_others_use_the_free_slots() {
    let (b1, b2) = (sim(800).await, sim(800).await);
    let gw = gateway_with(&[&b1, &b2], 2, "").await;
    gw.add_user("bob", "user").await;
    gw.add_user("alice", "user").await;
    let (bob, alice) = (gw.token("bob", "t").await, gw.token("alice", "t").await);
    limits(&gw, &["bob", "--max-running", "1"]).await;
    for i in 0..3 {
        assert_eq!(submit(&gw, &bob, &job("bob", 20 + i, 800)).await.0, 200);
    }
    for i in 0..2 {
        assert_eq!(submit(&gw, &alice, &job("alice", 30 + i, 800)).await.0, 200);
    }
    let mut peak = 0;
    for _ in 0..30 {
        let mut bobs = 0;
        for sim in [&b1, &b2] {
            let q: Value = client().get(format!("{}/queue", sim.url())).send().await.unwrap().json().await.unwrap();
            let items = q["queue_running"].as_array().unwrap().iter().chain(q["queue_pending"].as_array().unwrap());
            bobs += items.filter(|item| item[2]["2"]["inputs"]["filename_prefix"] == "bob").count();
        }
        peak = peak.max(bobs);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peak, 1, "one of bob's jobs at a time reaches the backends");
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&alice)).await;
    assert!(queue["queue_pending"].as_array().unwrap().len() <= 1, "alice's jobs used the free slots: {queue}");
}

#[tokio::test]
async fn jobs_per_hour_are_limited_with_the_wait_until_the_window_frees() {
    let backend = sim(20).await;
    let gw = gateway_with(&[&backend], 2, "").await;
    gw.add_user("bob", "user").await;
    let bob = gw.token("bob", "t").await;
    limits(&gw, &["bob", "--jobs-per-hour", "3"]).await;
    for i in 0..3 {
        assert_eq!(submit(&gw, &bob, &job("bob", 40 + i, 20)).await.0, 200);
    }
    let (status, retry, body) = submit(&gw, &bob, &job("bob", 50, 20)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "too_many_jobs_per_hour");
    let retry = retry.unwrap();
    assert!((3_500..=3_600).contains(&retry), "until the first one leaves the hour: {retry}");
    // Back to the default (no limit): accepted again.
    limits(&gw, &["bob", "--jobs-per-hour", "default"]).await;
    assert_eq!(submit(&gw, &bob, &job("bob", 51, 20)).await.0, 200);
}

#[tokio::test]
async fn workflow_and_upload_sizes_are_limited_per_user() {
    let backend = sim(20).await;
    let gw = gateway_with(&[&backend], 2, "").await;
    gw.add_user("bob", "user").await;
    gw.add_user("alice", "user").await;
    let (bob, alice) = (gw.token("bob", "t").await, gw.token("alice", "t").await);
    limits(&gw, &["bob", "--max-workflow", "2KiB", "--max-upload", "4KiB"]).await;
    let mut big = job("bob", 60, 20);
    big["prompt"]["1"]["_meta"] = json!({"title": "x".repeat(4096)});
    let (status, retry, body) = submit(&gw, &bob, &big).await;
    assert_eq!((status, retry), (413, None), "{body}");
    assert_eq!(body["error"]["type"], "workflow_too_large");
    assert_eq!(submit(&gw, &alice, &big).await.0, 200, "the default (4 MiB) holds for others");

    let upload = |token: String, size: usize| {
        let gw = &gw;
        async move {
            let part = Part::bytes(vec![7u8; size]).file_name("big.png").mime_str("image/png").unwrap();
            let form = Form::new().part("image", part);
            client().post(gw.at("/upload/image")).bearer_auth(token).multipart(form).send().await.unwrap().status()
        }
    };
    assert_eq!(upload(bob.clone(), 16 * 1024).await, 413, "over bob's upload limit");
    assert_eq!(upload(bob.clone(), 1024).await, 200, "within it");
    assert_eq!(upload(alice.clone(), 16 * 1024).await, 200, "others keep the default");
    // A chunked upload (no Content-Length) is cut while it streams, not after.
    let body = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 2048])));
    let form = Form::new().part(
        "image",
        Part::stream(reqwest::Body::wrap_stream(body)).file_name("s.png").mime_str("image/png").unwrap(),
    );
    let r = client().post(gw.at("/upload/image")).bearer_auth(&bob).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // Both size refusals are in the audit log, as quota refusals of bob's.
    let audit = std::fs::read_to_string(gw.dir.path().join("data/audit.jsonl")).unwrap();
    let refused: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["event"] == "quota_refused" && l["user"] == "bob")
        .collect();
    for limit in ["workflow_too_large", "upload_too_large"] {
        assert!(refused.iter().any(|l| l["limit"] == limit && l["status"] == 413), "{limit}: {audit}");
    }
    assert!(
        !audit.lines().any(|l| l.contains("\"quota_refused\"") && l.contains("\"user\":\"alice\"")),
        "alice was refused nothing: {audit}"
    );
}
