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

/// `GET path` with `token`: status and JSON body.
async fn get(gw: &Gateway, token: &str, path: &str) -> (u16, Value) {
    gw.get_json(path, &Auth::Bearer(token)).await
}

/// The ids of a `GET /api/jobs` answer, in order.
fn ids_of(list: &Value) -> Vec<String> {
    list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_jobs_api_shows_each_user_their_own_jobs_across_the_pool_and_admins_everyones() {
    let (s1, s2) = (sim(50).await, sim(50).await);
    let gw = gateway(&[&s1, &s2], 1).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let (alice, bob) = (gw.token("alice", "t").await, gw.token("bob", "t").await);

    // Both users choose the same prompt id: each knows only their own job by it.
    let mut mine = job("alice-long", 1, 600);
    mine["prompt_id"] = json!("mine-1");
    mine["extra_data"]["extra_pnginfo"] = json!({"workflow": {"id": "wf-alice"}});
    let a_long = submit_ok(&gw, &alice, mine).await;
    assert_eq!(a_long, "mine-1");
    finished(&gw, &alice, &a_long).await;
    let a_quick = submit_ok(&gw, &alice, job("alice-quick", 2, 20)).await;
    finished(&gw, &alice, &a_quick).await;
    let mut poison = job("alice-poison", 3, 20);
    poison["extra_data"]["sim_prompt_status"] = json!(500);
    let a_fail = submit_ok(&gw, &alice, poison).await;
    assert_eq!(finished(&gw, &alice, &a_fail).await["status"]["status_str"], "error");
    let mut theirs = job("bob-done", 4, 20);
    theirs["prompt_id"] = json!("mine-1");
    assert_eq!(submit_ok(&gw, &bob, theirs).await, "mine-1");
    finished(&gw, &bob, "mine-1").await;
    // Both backends busy (one job each), then one of alice's waits in the gateway.
    let a_run = submit_ok(&gw, &alice, job("alice-run", 5, 60_000)).await;
    let b_run = submit_ok(&gw, &bob, job("bob-run", 6, 60_000)).await;
    poll(Duration::from_secs(20), "both long jobs running", || async {
        let (_, list) = get(&gw, &admin, "/api/jobs?status=in_progress").await;
        (list["pagination"]["total"] == 2).then_some(())
    })
    .await;
    let mut waiting = job("alice-wait", 7, 20);
    waiting["extra_data"]["extra_pnginfo"] = json!({"workflow": {"id": "wf-wait"}});
    let a_wait = submit_ok(&gw, &alice, waiting).await;

    // Alice: her five jobs, newest first, in ComfyUI's shape.
    let (status, list) = get(&gw, &alice, "/api/jobs").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        ids_of(&list),
        [a_wait.as_str(), a_run.as_str(), a_fail.as_str(), a_quick.as_str(), a_long.as_str()],
        "{list}"
    );
    assert_eq!(list["pagination"], json!({"offset": 0, "limit": 500, "total": 5}));
    let statuses: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["pending", "in_progress", "failed", "completed", "completed"]);
    let long = &list["jobs"][4];
    assert_eq!(long["workflow_id"], "wf-alice");
    assert_eq!(long["outputs_count"], 1);
    assert_eq!(long["preview_output"]["mediaType"], "images");
    assert_eq!(long["preview_output"]["nodeId"], "2", "{long}");
    assert!(long["execution_end_time"].as_i64().unwrap() > long["execution_start_time"].as_i64().unwrap());
    assert!(long.get("outputs").is_none() && long.get("comfygate").is_none(), "list form, no owner for users");
    assert_eq!(list["jobs"][0]["outputs_count"], 0);
    assert_eq!(list["jobs"][0]["workflow_id"], "wf-wait", "a held job's workflow id: {list}");
    assert!(list["jobs"][1].get("workflow_id").is_none());
    assert!(list["jobs"][0].get("execution_start_time").is_none(), "null keys are left out: {list}");
    assert!(list["jobs"][0]["create_time"].as_i64().unwrap() >= long["create_time"].as_i64().unwrap());
    // The same jobs /queue shows, under the same ids.
    let (_, queue) = get(&gw, &alice, "/queue").await;
    assert_eq!(queue["queue_running"][0][1], a_run.as_str());
    assert_eq!(queue["queue_pending"][0][1], a_wait.as_str());

    // Bob sees only his own, his "mine-1" included.
    let (_, list) = get(&gw, &bob, "/api/jobs").await;
    assert_eq!(ids_of(&list), [b_run.as_str(), "mine-1"], "{list}");
    assert_eq!(list["pagination"]["total"], 2);
    let (status, one) = get(&gw, &bob, "/api/jobs/mine-1").await;
    assert_eq!(status, 200);
    assert_eq!(one["workflow"]["prompt"]["2"]["inputs"]["filename_prefix"], "bob-done", "his own mine-1: {one}");
    // Another user's id and an unknown id are the same 404.
    let (status, theirs) = get(&gw, &bob, &format!("/api/jobs/{a_quick}")).await;
    let (unknown_status, unknown) = get(&gw, &bob, "/api/jobs/no-such-job").await;
    assert_eq!((status, unknown_status), (404, 404));
    assert_eq!(theirs, unknown);

    // The admin sees all seven, with owners; others' jobs by the gateway's ids.
    let (_, list) = get(&gw, &admin, "/api/jobs").await;
    assert_eq!(list["pagination"]["total"], 7, "{list}");
    let owners: Vec<&str> =
        list["jobs"].as_array().unwrap().iter().map(|j| j["comfygate"]["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.iter().filter(|o| **o == "alice").count(), 5);
    assert!(!ids_of(&list).contains(&"mine-1".to_owned()), "admins see the gateway's ids: {list}");
    let (status, _) = get(&gw, &admin, &format!("/api/jobs/{a_quick}")).await;
    assert_eq!(status, 200, "a gateway id that is also alice's own");

    // Status filter, sort, pagination.
    let (_, list) = get(&gw, &alice, "/api/jobs?status=completed,failed").await;
    assert_eq!(ids_of(&list), [a_fail.as_str(), a_quick.as_str(), a_long.as_str()]);
    assert_eq!(list["pagination"]["total"], 3);
    let (_, list) = get(&gw, &alice, "/api/jobs?status=pending").await;
    assert_eq!(ids_of(&list), [a_wait.as_str()]);
    let (_, list) = get(&gw, &alice, "/api/jobs?sort_order=asc").await;
    assert_eq!(ids_of(&list), [a_long.as_str(), a_quick.as_str(), a_fail.as_str(), a_run.as_str(), a_wait.as_str()]);
    let (_, list) = get(&gw, &alice, "/api/jobs?status=completed&sort_by=execution_duration&sort_order=desc").await;
    assert_eq!(ids_of(&list), [a_long.as_str(), a_quick.as_str()], "the 600 ms job ran longest");
    let (_, list) = get(&gw, &alice, "/api/jobs?status=completed&sort_by=execution_duration&sort_order=asc").await;
    assert_eq!(ids_of(&list), [a_quick.as_str(), a_long.as_str()]);
    let (_, list) = get(&gw, &alice, "/api/jobs?limit=2&offset=1").await;
    assert_eq!(ids_of(&list), [a_run.as_str(), a_fail.as_str()]);
    assert_eq!(list["pagination"], json!({"offset": 1, "limit": 2, "total": 5}));
    let (_, list) = get(&gw, &alice, "/api/jobs?limit=2&offset=4").await;
    assert_eq!(ids_of(&list), [a_long.as_str()]);

    // One job, in every state.
    let (status, one) = get(&gw, &alice, &format!("/api/jobs/{a_wait}")).await;
    assert_eq!((status, one["status"].as_str()), (200, Some("pending")), "{one}");
    assert_eq!(one["workflow"]["prompt"]["2"]["inputs"]["filename_prefix"], "alice-wait");
    let (_, one) = get(&gw, &alice, &format!("/api/jobs/{a_run}")).await;
    assert_eq!(one["status"], "in_progress", "{one}");
    let (_, one) = get(&gw, &alice, "/api/jobs/mine-1").await;
    assert_eq!(one["status"], "completed", "{one}");
    assert_eq!(one["execution_status"]["status_str"], "success");
    assert_eq!(one["outputs"]["2"]["images"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"], "wf-alice");
    assert!(!one.to_string().contains("sim_prompt_status"));
    let (_, one) = get(&gw, &alice, &format!("/api/jobs/{a_fail}")).await;
    assert_eq!(one["status"], "failed", "{one}");
    assert_eq!(one["execution_status"]["status_str"], "error");
    assert_eq!(one["execution_error"]["prompt_id"], a_fail.as_str(), "{one}");

    // Bad parameters are a clear 400; ComfyUI serves the jobs API only under /api.
    for bad in
        ["status=done", "status=pending,nope", "sort_by=name", "sort_order=up", "limit=-1", "limit=ten", "offset=x"]
    {
        let (status, body) = get(&gw, &alice, &format!("/api/jobs?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }
    let (status, _) = get(&gw, &alice, "/jobs").await;
    assert_eq!(status, 404);
    for spelling in ["/api//jobs", "/api/jobs/", "/api/./jobs"] {
        let (status, list) = get(&gw, &alice, spelling).await;
        assert_eq!((status, list["pagination"]["total"].as_u64()), (200, Some(5)), "{spelling}");
    }
    // ComfyUI also serves `/api/api/jobs`: outside the users' allow-list, answered by the
    // gateway (never forwarded) for admins.
    let (status, _) = get(&gw, &alice, "/api/api/jobs").await;
    assert_eq!(status, 403);
    let (status, list) = get(&gw, &admin, "/api/api/jobs").await;
    assert_eq!((status, list["pagination"]["total"].as_u64()), (200, Some(7)));
    let (status, _) = get(&gw, &alice, "/API/jobs").await;
    assert_eq!(status, 403, "another case is another route, for admins");
    let (status, queue) = get(&gw, &alice, "/api/jobs/%2e%2e/queue").await;
    assert_eq!((status, queue["queue_running"][0][1].as_str()), (200, Some(a_run.as_str())));
    let head = client().head(gw.at("/api/jobs")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let r = client().post(gw.at("/api/jobs")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Nothing about jobs was forwarded to a backend.
    for s in [&s1, &s2] {
        assert!(!client_requests(s).iter().any(|r| r.uri.contains("jobs")), "never forwarded");
    }
}

#[tokio::test]
async fn the_simulator_serves_comfyuis_jobs_api_from_its_own_queue_and_history() {
    let s = sim(50).await;
    let post = |body: Value| {
        let url = format!("{}/prompt", s.url());
        async move {
            let r = client().post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["prompt_id"].as_str().unwrap().to_owned()
        }
    };
    let sim_get = |path: &str| {
        let url = format!("{}{path}", s.url());
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let done = post(job("sim-done", 1, 20)).await;
    poll(Duration::from_secs(10), "the first job in history", || async {
        let (_, list) = sim_get("/api/jobs?status=completed").await;
        (list["pagination"]["total"] == 1).then_some(())
    })
    .await;
    let running = post(job("sim-run", 2, 60_000)).await;
    let waiting = post(job("sim-wait", 3, 20)).await;
    let (status, list) = poll(Duration::from_secs(10), "one running, one pending", || async {
        let (status, list) = sim_get("/api/jobs").await;
        (list["jobs"].as_array()?.iter().any(|j| j["status"] == "in_progress")).then_some((status, list))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["pagination"], json!({"offset": 0, "limit": null, "total": 3}), "{list}");
    let by_id = |id: &str| list["jobs"].as_array().unwrap().iter().find(|j| j["id"] == id).unwrap().clone();
    assert_eq!(by_id(&running)["status"], "in_progress");
    assert_eq!(by_id(&waiting)["status"], "pending");
    let ended = by_id(&done);
    assert_eq!((ended["status"].as_str(), ended["outputs_count"].as_u64()), (Some("completed"), Some(1)), "{ended}");
    assert_eq!(ended["preview_output"]["type"], "output");
    assert!(ended["execution_end_time"].as_i64() >= ended["execution_start_time"].as_i64());
    let (_, pending) = sim_get("/api/jobs?status=pending").await;
    assert_eq!(ids_of(&pending), [waiting.as_str()]);
    let (_, page) = sim_get("/api/jobs?limit=1&offset=1").await;
    assert_eq!((page["jobs"].as_array().unwrap().len(), page["pagination"]["total"].as_u64()), (1, Some(3)));
    let (status, one) = sim_get(&format!("/api/jobs/{done}")).await;
    assert_eq!((status, one["execution_status"]["status_str"].as_str()), (200, Some("success")), "{one}");
    assert_eq!(one["workflow"]["prompt"]["2"]["inputs"]["filename_prefix"], "sim-done");
    let (status, one) = sim_get(&format!("/api/jobs/{waiting}")).await;
    assert_eq!((status, one["status"].as_str()), (200, Some("pending")));
    assert_eq!(sim_get("/api/jobs/nope").await.0, 404);
    assert_eq!(sim_get("/api/jobs?status=done").await.0, 400);
    assert_eq!(sim_get("/api/jobs?sort_by=name").await.0, 400);
}
