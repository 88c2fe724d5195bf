#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `Idempotency-Key` on `POST /prompt`: a retried submission returns the first answer and
//! queues nothing new, whatever the number of concurrent duplicates; keys are per user.

mod common;

use std::time::Duration;

use common::pool::{finished, gateway, job, sim, submit_ok};
use common::{Auth, Gateway, client, client_requests, poll};
use serde_json::{Value, json};

/// `POST /prompt` with `key`: status, answer and whether it was a replay.
async fn submit_keyed(gw: &Gateway, token: &str, key: &str, body: &str) -> (u16, Value, Option<String>) {
    let r = client()
        .post(gw.at("/prompt"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

/// How many prompts `sim` received on behalf of clients.
fn prompts_run(sim: &comfyui_sim::Simulator) -> usize {
    client_requests(sim).iter().filter(|r| r.method == "POST" && r.uri.starts_with("/prompt")).count()
}

/// How many history entries `token`'s owner has at the gateway.
async fn history_len(gw: &Gateway, token: &str) -> usize {
    let (status, h) = gw.get_json("/history", &Auth::Bearer(token)).await;
    assert_eq!(status, 200, "{h}");
    h.as_object().unwrap().len()
}

/// Waits until the gateway holds no job of `token`'s owner (running or pending).
async fn queue_drained(gw: &Gateway, token: &str) {
    poll(Duration::from_secs(30), "an empty queue", || async {
        let (status, q) = gw.get_json("/queue", &Auth::Bearer(token)).await;
        let empty = q["queue_running"].as_array()?.is_empty() && q["queue_pending"].as_array()?.is_empty();
        (status == 200 && empty).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_retried_submission_with_the_same_key_and_body_returns_the_first_answer_and_queues_one_job() {
    let s = sim(50).await;
    let gw = gateway(&[&s], 1).await;
    gw.add_user("alice", "user").await;
    let a = gw.token("alice", "t").await;
    let body = job("retry", 1, 50).to_string();
    let (status, first, replayed) = submit_keyed(&gw, &a, "order-42", &body).await;
    assert_eq!((status, replayed), (200, None), "{first}");
    let id = first["prompt_id"].as_str().unwrap().to_owned();
    let (status, again, replayed) = submit_keyed(&gw, &a, "order-42", &body).await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")), "{again}");
    assert_eq!(again, first, "the replay is the first answer");
    finished(&gw, &a, &id).await;
    // After the job ran, the key still answers the same and queues nothing.
    let (status, late, replayed) = submit_keyed(&gw, &a, "order-42", &body).await;
    assert_eq!((status, replayed.as_deref(), &late), (200, Some("true"), &first));
    queue_drained(&gw, &a).await;
    assert_eq!(prompts_run(&s), 1, "the backend ran the prompt once");
    assert_eq!(history_len(&gw, &a).await, 1);
    // Without the header nothing changes: every submission is a job.
    let other = submit_ok(&gw, &a, job("plain", 2, 50)).await;
    assert_ne!(other, id);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_409_and_queues_nothing() {
    let s = sim(50).await;
    let gw = gateway(&[&s], 1).await;
    gw.add_user("alice", "user").await;
    let a = gw.token("alice", "t").await;
    let (status, first, _) = submit_keyed(&gw, &a, "k", &job("one", 1, 50).to_string()).await;
    assert_eq!(status, 200, "{first}");
    finished(&gw, &a, first["prompt_id"].as_str().unwrap()).await;
    let (status, answer, replayed) = submit_keyed(&gw, &a, "k", &job("two", 2, 50).to_string()).await;
    assert_eq!((status, replayed), (409, None), "{answer}");
    assert_eq!(answer["error"]["type"], "idempotency_key_reused", "{answer}");
    assert_eq!(answer["node_errors"], json!({}));
    queue_drained(&gw, &a).await;
    assert_eq!(prompts_run(&s), 1);
    assert_eq!(history_len(&gw, &a).await, 1);
}

#[tokio::test]
async fn two_hundred_concurrent_identical_requests_queue_exactly_one_job() {
    let s = sim(50).await;
    let gw = gateway(&[&s], 1).await;
    gw.add_user("alice", "user").await;
    let a = gw.token("alice", "t").await;
    let body = job("race", 1, 50).to_string();
    let answers = futures_util::future::join_all((0..200).map(|_| submit_keyed(&gw, &a, "same-key", &body))).await;
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(status, answer, _)| {
            assert_eq!(*status, 200, "{answer}");
            answer["prompt_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one prompt id for all: {ids:?}");
    let fresh = answers.iter().filter(|(_, _, replayed)| replayed.is_none()).count();
    assert_eq!(fresh, 1, "exactly one answer is not a replay");
    let id = ids.into_iter().next().unwrap().to_owned();
    finished(&gw, &a, &id).await;
    queue_drained(&gw, &a).await;
    assert_eq!(prompts_run(&s), 1, "the backend ran the prompt once");
    assert_eq!(history_len(&gw, &a).await, 1);
}

#[tokio::test]
async fn idempotency_keys_are_per_user() {
    let s = sim(50).await;
    let gw = gateway(&[&s], 1).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let (a, b) = (gw.token("alice", "t").await, gw.token("bob", "t").await);
    let body = job("shared", 1, 50).to_string();
    let (sa, alice, _) = submit_keyed(&gw, &a, "k", &body).await;
    let (sb, bob, replayed) = submit_keyed(&gw, &b, "k", &body).await;
    assert_eq!((sa, sb, replayed), (200, 200, None), "{alice} {bob}");
    assert_ne!(alice["prompt_id"], bob["prompt_id"], "bob's key is his own");
    // And bob's different body under the same key is no conflict with alice's.
    let (sb, other, _) = submit_keyed(&gw, &b, "k2", &job("bob", 2, 50).to_string()).await;
    assert_eq!(sb, 200, "{other}");
    finished(&gw, &b, bob["prompt_id"].as_str().unwrap()).await;
    finished(&gw, &b, other["prompt_id"].as_str().unwrap()).await;
    finished(&gw, &a, alice["prompt_id"].as_str().unwrap()).await;
    assert_eq!((history_len(&gw, &a).await, history_len(&gw, &b).await), (1, 2));
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400_and_queues_nothing() {
    let s = sim(50).await;
    let gw = gateway(&[&s], 1).await;
    gw.add_user("alice", "user").await;
    let a = gw.token("alice", "t").await;
    let body = job("bad", 1, 50).to_string();
    let long = "k".repeat(256);
    for key in [&b""[..], long.as_bytes(), b"caf\xc3\xa9", b"tab\tkey"] {
        let r = client()
            .post(gw.at("/prompt"))
            .bearer_auth(&a)
            .header("idempotency-key", http::HeaderValue::from_bytes(key).unwrap())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "key {key:?}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["type"], "invalid_idempotency_key", "{answer}");
    }
    let r = client()
        .post(gw.at("/prompt"))
        .bearer_auth(&a)
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "two keys");
    let (status, ok, _) = submit_keyed(&gw, &a, &"k".repeat(255), &body).await;
    assert_eq!(status, 200, "255 characters is a valid key: {ok}");
    finished(&gw, &a, ok["prompt_id"].as_str().unwrap()).await;
    assert_eq!(history_len(&gw, &a).await, 1, "only the valid key queued a job");
}

#[tokio::test]
async fn a_refused_submission_gives_its_key_back_for_a_corrected_retry() {
    let s = sim(50).await;
    let gw = gateway(&[&s], 1).await;
    gw.add_user("alice", "user").await;
    let a = gw.token("alice", "t").await;
    let broken = json!({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}).to_string();
    let (status, refused, _) = submit_keyed(&gw, &a, "fix-me", &broken).await;
    assert_eq!(status, 400, "{refused}");
    let (status, again, replayed) = submit_keyed(&gw, &a, "fix-me", &broken).await;
    assert_eq!((status, replayed), (400, None), "a refusal is not replayed: {again}");
    let fixed = job("fixed", 1, 50).to_string();
    let (status, ok, replayed) = submit_keyed(&gw, &a, "fix-me", &fixed).await;
    assert_eq!((status, replayed), (200, None), "{ok}");
    finished(&gw, &a, ok["prompt_id"].as_str().unwrap()).await;
}
