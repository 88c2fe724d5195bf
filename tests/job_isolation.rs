#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A job's failure is never the backend's, and one user's jobs never reach into another's:
//! malformed submissions are refused before any backend sees them, a server error to one
//! dispatch fails that job (after other backends were tried) and leaves the backend in
//! service, queue position fields never reach ComfyUI, jobs of owners who are no longer
//! active stop, and client-chosen prompt ids belong to their owner alone.

mod common;

use std::time::Duration;

use comfyui_sim::Simulator;
use common::pool::{finished, gateway, job, sim, submit, submit_ok};
use common::{Auth, Gateway, client, poll};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn sim_json(sim: &Simulator, path: &str) -> Value {
    client().get(format!("{}{path}", sim.url())).send().await.unwrap().json().await.unwrap()
}

/// `POST /prompt` requests the simulator received.
fn dispatches(sim: &Simulator) -> usize {
    sim.requests().iter().filter(|r| r.method == "POST" && r.uri == "/prompt").count()
}

/// What the gateway's admin API says of each backend: (healthy, last_error).
async fn backend_health(gw: &Gateway, admin: &str) -> Vec<(bool, Value)> {
    let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(admin)).await;
    state["backends"].as_array().unwrap().iter().map(|b| (b["healthy"] == true, b["last_error"].clone())).collect()
}

#[tokio::test]
async fn malformed_fields_are_refused_in_comfyuis_shape_and_never_reach_a_backend() {
    let backend = sim(50).await;
    let gw = gateway(&[&backend], 2).await;
    let token = gw.token("admin", "t").await;
    let cases = [
        (json!({"number": "x"}), "invalid_number"),
        (json!({"front": "yes"}), "invalid_front"),
        (json!({"extra_data": []}), "invalid_extra_data"),
        (json!({"extra_data": "k"}), "invalid_extra_data"),
        (json!({"partial_execution_targets": "2"}), "invalid_partial_execution_targets"),
        (json!({"partial_execution_targets": [2]}), "invalid_partial_execution_targets"),
        (json!({"client_id": 7}), "invalid_client_id"),
        (json!({"prompt_id": {"a": 1}}), "invalid_prompt_id"),
    ];
    for (extra, kind) in &cases {
        let mut body = job("bad", 1, 50);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = submit(&gw, &token, body).await;
        assert_eq!(status, 400, "{extra}: {answer}");
        assert_eq!(answer["error"]["type"], *kind, "{extra}: {answer}");
        assert!(answer["node_errors"].is_object(), "ComfyUI's error shape: {answer}");
    }
    assert_eq!(dispatches(&backend), 0, "no backend saw a malformed submission");
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&token)).await;
    assert_eq!(queue, json!({"queue_running": [], "queue_pending": []}));
}

#[tokio::test]
async fn queue_position_fields_never_reach_comfyui() {
    let backend = sim(50).await;
    let gw = gateway(&[&backend], 2).await;
    let token = gw.token("admin", "t").await;
    let mut body = job("order", 2, 50);
    body["number"] = json!(-1_000_000_000);
    body["front"] = json!(true);
    body["unknown_field"] = json!({"x": 1});
    let id = submit_ok(&gw, &token, body).await;
    let entry = finished(&gw, &token, &id).await;
    assert_eq!(entry["status"]["status_str"], "success");
    let on_backend = sim_json(&backend, &format!("/history/{id}")).await;
    let number = on_backend[&id]["prompt"][0].as_f64().unwrap();
    assert!(number >= 0.0, "the client's number reached ComfyUI's queue: {number}");
}

#[tokio::test]
async fn a_server_error_to_one_job_fails_that_job_after_other_backends_and_no_backend_falls() {
    let (b1, b2) = (sim(1_500).await, sim(1_500).await);
    let gw = gateway(&[&b1, &b2], 2).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    gw.add_user("alice", "user").await;
    let (bob, alice) = (gw.token("bob", "t").await, gw.token("alice", "t").await);
    let running = submit_ok(&gw, &bob, job("bobs", 3, 1_500)).await;
    // Alice's submission makes every backend answer 500 (as a proxy in front of ComfyUI or a
    // crashing on_prompt hook would): her job fails, nobody else's does.
    let mut poison = job("poison", 4, 50);
    poison["extra_data"]["sim_prompt_status"] = json!(500);
    let mut poisoned = Vec::new();
    for _ in 0..3 {
        poisoned.push(submit_ok(&gw, &alice, poison.clone()).await);
    }
    for id in &poisoned {
        let entry = finished(&gw, &alice, id).await;
        assert_eq!(entry["status"]["status_str"], "error", "{entry}");
        let message = reason(&entry);
        assert!(message.contains("500"), "the failure says what the backend answered: {message}");
    }
    let entry = finished(&gw, &bob, &running).await;
    assert_eq!(entry["status"]["status_str"], "success", "another user's job completes: {entry}");
    // Each poisoned job was offered to both backends once (dispatch_attempts = 2), no more.
    assert_eq!(dispatches(&b1) + dispatches(&b2), 1 + 2 * poisoned.len());
    for (healthy, last_error) in backend_health(&gw, &admin).await {
        assert!(healthy && last_error.is_null(), "a 5xx to a job is not the backend's failure: {last_error}");
    }
    assert!(!gw.stderr().contains("taken out of service"), "{}", gw.stderr());
    // And the pool still works for everyone.
    let after = submit_ok(&gw, &alice, job("after", 5, 50)).await;
    assert_eq!(finished(&gw, &alice, &after).await["status"]["status_str"], "success");
}

/// Waits until `sim` runs `id`.
async fn running_on(sim: &Simulator, id: &str) {
    poll(Duration::from_secs(10), &format!("{id} running on the backend"), || async {
        let q = sim_json(sim, "/queue").await;
        (q["queue_running"][0][1].as_str() == Some(id)).then_some(())
    })
    .await;
}

/// The reason the gateway gives for a job that did not run to its end.
fn reason(entry: &Value) -> String {
    entry["status"]["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m[1]["exception_message"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn disabling_a_user_cancels_their_waiting_jobs_and_interrupts_the_running_one() {
    let backend = sim(3_000).await;
    let gw = gateway(&[&backend], 1).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    gw.add_user("carol", "user").await;
    let (bob, carol) = (gw.token("bob", "t").await, gw.token("carol", "t").await);
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(submit_ok(&gw, &bob, job("bob", 10 + i, 3_000)).await);
        }
        ids
    };
    let carols = submit_ok(&gw, &carol, job("carol", 20, 50)).await;
    running_on(&backend, &ids[0]).await;
    gw.cli(&["user", "disable", "bob"], None).await.ok();

    let entry = finished(&gw, &carol, &carols).await;
    assert_eq!(entry["status"]["status_str"], "success", "others' jobs run: {entry}");
    for id in &ids[1..] {
        let entry = finished(&gw, &admin, id).await;
        assert_eq!(entry["status"]["status_str"], "error", "{entry}");
        assert!(reason(&entry).contains("disabled"), "the reason is given: {entry}");
    }
    // The running one was interrupted on the backend, well before its 3 s were up.
    let on_backend = poll(Duration::from_secs(10), "the running job interrupted", || async {
        let h = sim_json(&backend, &format!("/history/{}", ids[0])).await;
        h.get(&ids[0]).cloned()
    })
    .await;
    let messages = on_backend["status"]["messages"].to_string();
    assert!(messages.contains("execution_interrupted"), "{messages}");
    assert_eq!(dispatches(&backend), 2, "bob's waiting jobs never reached the backend");
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&admin)).await;
    assert_eq!(queue, json!({"queue_running": [], "queue_pending": []}));
    let audit = gw.stderr().matches("job_cancelled").count();
    assert_eq!(audit, 3, "one audit line per cancelled job: {}", gw.stderr());
}

#[tokio::test]
async fn revoking_the_submitting_token_stops_its_jobs_and_only_its_jobs() {
    let backend = sim(2_000).await;
    let gw = gateway(&[&backend], 1).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    let (script, laptop) = (gw.token("bob", "script").await, gw.token("bob", "laptop").await);
    let first = submit_ok(&gw, &script, job("script", 30, 2_000)).await;
    let second = submit_ok(&gw, &script, job("script", 31, 2_000)).await;
    let other = submit_ok(&gw, &laptop, job("laptop", 32, 50)).await;
    running_on(&backend, &first).await;
    gw.cli(&["token", "revoke", "bob", "script"], None).await.ok();

    let entry = finished(&gw, &laptop, &other).await;
    assert_eq!(entry["status"]["status_str"], "success", "the owner's other token's job runs: {entry}");
    let entry = finished(&gw, &admin, &second).await;
    assert!(reason(&entry).contains("revoked"), "{entry}");
    let on_backend = poll(Duration::from_secs(10), "the running job interrupted", || async {
        let h = sim_json(&backend, &format!("/history/{first}")).await;
        h.get(&first).cloned()
    })
    .await;
    assert!(on_backend["status"]["messages"].to_string().contains("execution_interrupted"));
    assert_eq!(dispatches(&backend), 2, "the revoked token's waiting job never reached the backend");
}

async fn ws(
    gw: &Gateway,
    token: &str,
    client_id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/ws?clientId={client_id}&token={token}", gw.addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

#[tokio::test]
async fn client_chosen_prompt_ids_belong_to_their_owner_alone() {
    let backend = sim(50).await;
    let gw = gateway(&[&backend], 2).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    gw.add_user("alice", "user").await;
    let (bob, alice) = (gw.token("bob", "t").await, gw.token("alice", "t").await);
    let mut socket = ws(&gw, &alice, "alice-tab").await;

    let mut bobs = job("bob", 40, 50);
    bobs["prompt_id"] = json!("job-0001");
    assert_eq!(submit_ok(&gw, &bob, bobs).await, "job-0001");
    let bob_entry = finished(&gw, &bob, "job-0001").await;

    // Alice uses the same id: no collision, no hint that bob has it.
    let mut alices = job("alice", 41, 50);
    alices["prompt_id"] = json!("job-0001");
    alices["client_id"] = json!("alice-tab");
    let (status, answer) = submit(&gw, &alice, alices.clone()).await;
    assert_eq!((status, answer["prompt_id"].as_str()), (200, Some("job-0001")), "{answer}");
    let alice_entry = finished(&gw, &alice, "job-0001").await;
    assert_eq!(alice_entry["status"]["status_str"], "success");
    assert_eq!(alice_entry["prompt"][1], "job-0001", "her own id in her history: {alice_entry}");
    let (alice_file, bob_file) =
        (&alice_entry["outputs"]["2"]["images"][0]["filename"], &bob_entry["outputs"]["2"]["images"][0]["filename"]);
    assert_ne!(alice_file, bob_file, "each sees their own job");
    assert!(alice_file.as_str().unwrap().starts_with("alice"), "{alice_entry}");
    // Her socket's events name the job by her id.
    let mut named = false;
    for _ in 0..200 {
        let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await else {
            break;
        };
        let m: Value = serde_json::from_str(&t).unwrap();
        if let Some(id) = m["data"]["prompt_id"].as_str() {
            assert_eq!(id, "job-0001", "only her own id reaches her: {m}");
            if m["type"] == "executing" && m["data"]["node"].is_null() {
                named = true;
                break;
            }
        }
    }
    assert!(named, "the job's end reached her socket under her id");
    // Her list shows her job under her id, and not bob's.
    let (_, list) = gw.get_json("/history", &Auth::Bearer(&alice)).await;
    assert_eq!(list.as_object().unwrap().keys().collect::<Vec<_>>(), ["job-0001"]);
    assert!(list["job-0001"]["outputs"]["2"]["images"][0]["filename"].as_str().unwrap().starts_with("alice"));
    // Reusing one's own id is refused, naming only one's own id.
    let (status, answer) = submit(&gw, &alice, alices).await;
    assert_eq!(status, 409, "{answer}");
    // Deleting or interrupting by the shared id touches only one's own job.
    let r = client().post(gw.at("/history")).bearer_auth(&alice).json(&json!({"delete": ["job-0001"]})).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(finished(&gw, &bob, "job-0001").await["status"]["status_str"], "success", "bob's entry stays");
    let (_, gone) = gw.get_json("/history/job-0001", &Auth::Bearer(&alice)).await;
    assert_eq!(gone, json!({}), "hers is deleted");
    // An admin finds bob's job under its own id too.
    let (_, own_view) = gw.get_json("/history/job-0001", &Auth::Bearer(&admin)).await;
    assert_eq!(own_view, json!({}), "the admin has no job of that id");
}

#[tokio::test]
async fn removing_a_user_cancels_their_jobs_before_any_backend_sees_them() {
    let backend = sim(1_500).await;
    let gw = gateway(&[&backend], 1).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("dave", "user").await;
    let dave = gw.token("dave", "t").await;
    let first = submit_ok(&gw, &admin, job("admin", 50, 1_500)).await;
    running_on(&backend, &first).await;
    let waiting = submit_ok(&gw, &dave, job("dave", 51, 50)).await;
    gw.cli(&["user", "remove", "dave"], None).await.ok();
    poll(Duration::from_secs(10), "dave's job gone from the queue", || async {
        let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&admin)).await;
        (!queue.to_string().contains(&waiting)).then_some(())
    })
    .await;
    assert_eq!(finished(&gw, &admin, &first).await["status"]["status_str"], "success");
    assert_eq!(dispatches(&backend), 1, "the removed user's job never reached the backend");
    poll(Duration::from_secs(10), "job_cancelled logged", || async {
        gw.stderr().contains("job_cancelled").then_some(())
    })
    .await;
}
