#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Many GPUs behind one address: the gateway-held queue with fair, model-aware dispatch across
//! several simulated ComfyUI backends, sticky history and files, failover, restarts, and
//! per-user privacy of WebSocket events and the queue.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::pool::{FAST_HEALTH as SCHEDULER, finished, gateway, job, model_job, submit, submit_ok};
use common::{Auth, Gateway, Options, client, poll, workflow};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn sim(job_ms: u64, models: &[&str]) -> Simulator {
    let mut config = SimConfig { job_duration: Duration::from_millis(job_ms), ..SimConfig::default() };
    for m in models {
        config.models.push(("checkpoints".to_owned(), (*m).to_owned()));
    }
    Simulator::start(config).await.unwrap()
}

/// Whether `sim` itself has the job in its history (it ran it).
async fn ran_on(sim: &Simulator, id: &str) -> bool {
    let h: Value = client().get(format!("{}/history/{id}", sim.url())).send().await.unwrap().json().await.unwrap();
    h.get(id).is_some()
}

async fn ws(gw: &Gateway, token: &str, client_id: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?clientId={client_id}&token={token}", gw.addr))
        .await
        .unwrap();
    ws
}

/// The next text message, within a deadline.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
            _ => return None,
        }
    }
}

#[tokio::test]
async fn fair_share_lets_a_light_user_finish_before_a_heavy_users_twentieth_job() {
    let sims = [sim(200, &[]).await, sim(200, &[]).await, sim(200, &[]).await];
    let gw = gateway(&[&sims[0], &sims[1], &sims[2]], 1).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let (a, b) = (gw.token("alice", "t").await, gw.token("bob", "t").await);
    // Alice queues 50 jobs at once (quicker than a job runs), then bob queues 5.
    let alice_jobs: Vec<String> =
        futures_util::future::join_all((0..50).map(|i| submit_ok(&gw, &a, job("alice", i, 200)))).await;
    let mut bob_jobs = Vec::new();
    for i in 0..5 {
        bob_jobs.push(submit_ok(&gw, &b, job("bob", i, 200)).await);
    }
    for id in &bob_jobs {
        finished(&gw, &b, id).await;
    }
    let (_, history) = gw.get_json("/history", &Auth::Bearer(&a)).await;
    let alice_done = history.as_object().unwrap().len();
    assert!(alice_done < 20, "bob's 5 jobs finished after {alice_done} of alice's");
    // Nobody sees the other's work in the queue or history.
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&b)).await;
    let items: Vec<&Value> =
        queue["queue_running"].as_array().unwrap().iter().chain(queue["queue_pending"].as_array().unwrap()).collect();
    assert!(items.is_empty(), "bob sees only his own (finished) jobs: {queue}");
    let (_, bob_history) = gw.get_json("/history", &Auth::Bearer(&b)).await;
    assert_eq!(bob_history.as_object().unwrap().len(), 5);
    for id in &alice_jobs {
        finished(&gw, &a, id).await;
    }
}

#[tokio::test]
async fn a_job_goes_to_the_backend_that_has_its_model_and_one_nobody_has_is_refused() {
    let sims = [sim(20, &[]).await, sim(20, &["only-on-b2.safetensors"]).await, sim(20, &[]).await];
    let gw = gateway(&[&sims[0], &sims[1], &sims[2]], 1).await;
    let token = gw.token("admin", "t").await;
    for round in 0..3 {
        let id = submit_ok(&gw, &token, model_job("only-on-b2.safetensors", &format!("m{round}"))).await;
        finished(&gw, &token, &id).await;
        assert!(ran_on(&sims[1], &id).await, "round {round} ran on b2");
    }
    let (status, answer) = submit(&gw, &token, model_job("nobody-has-this.safetensors", "x")).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "prompt_outputs_failed_validation");
    let node = &answer["node_errors"]["1"];
    assert_eq!(node["class_type"], "CheckpointLoaderSimple");
    assert_eq!(node["errors"][0]["type"], "value_not_in_list");
    assert!(node["errors"][0]["details"].as_str().unwrap().contains("nobody-has-this.safetensors"), "{answer}");
    // The merged object_info lists every backend's models.
    let (_, info) = gw.get_json("/object_info/CheckpointLoaderSimple", &Auth::Bearer(&token)).await;
    assert_eq!(info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0], json!(["only-on-b2.safetensors"]));
    let (status, answer) =
        submit(&gw, &token, json!({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})).await;
    assert_eq!((status, answer["error"]["type"].as_str()), (400, Some("invalid_prompt")));
}

#[tokio::test]
async fn a_backend_that_has_the_checkpoint_loaded_is_preferred() {
    let models = ["m1.safetensors", "m2.safetensors"];
    let sims = [sim(150, &models).await, sim(150, &models).await];
    let gw = gateway(&[&sims[0], &sims[1]], 1).await;
    let token = gw.token("admin", "t").await;
    // Two jobs at once: m1 lands on the first backend, m2 on the second.
    let first = submit_ok(&gw, &token, model_job("m1.safetensors", "a")).await;
    let second = submit_ok(&gw, &token, model_job("m2.safetensors", "b")).await;
    finished(&gw, &token, &first).await;
    finished(&gw, &token, &second).await;
    assert!(ran_on(&sims[0], &first).await && ran_on(&sims[1], &second).await);
    // Both idle now: each model goes back where it is loaded, not to the first free backend.
    let again_m2 = submit_ok(&gw, &token, model_job("m2.safetensors", "c")).await;
    finished(&gw, &token, &again_m2).await;
    assert!(ran_on(&sims[1], &again_m2).await, "m2 went back to the backend that has it loaded");
    let again_m1 = submit_ok(&gw, &token, model_job("m1.safetensors", "d")).await;
    finished(&gw, &token, &again_m1).await;
    assert!(ran_on(&sims[0], &again_m1).await);
}

#[tokio::test]
async fn history_and_view_are_answered_by_the_backend_that_ran_the_job() {
    let sims = [sim(200, &[]).await, sim(200, &[]).await];
    let gw = gateway(&[&sims[0], &sims[1]], 1).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let tokens = [gw.token("alice", "t").await, gw.token("bob", "t").await];
    // Same prefix, one job on each backend: both backends write `sticky_00001_.png`.
    let ids = [
        submit_ok(&gw, &tokens[0], job("sticky", 10, 200)).await,
        submit_ok(&gw, &tokens[1], job("sticky", 20, 200)).await,
    ];
    for (id, token) in ids.iter().zip(&tokens) {
        let entry = finished(&gw, token, id).await;
        assert_eq!(entry["status"]["status_str"], "success");
        let sim = if ran_on(&sims[0], id).await { &sims[0] } else { &sims[1] };
        let image = &entry["outputs"]["2"]["images"][0];
        let query = format!(
            "filename={}&subfolder={}&type={}",
            image["filename"].as_str().unwrap(),
            image["subfolder"].as_str().unwrap(),
            image["type"].as_str().unwrap()
        );
        let through = client().get(gw.at(&format!("/view?{query}"))).bearer_auth(token).send().await.unwrap();
        assert_eq!(through.status(), 200);
        let direct = client().get(format!("{}/view?{query}", sim.url())).send().await.unwrap();
        assert_eq!(through.bytes().await.unwrap(), direct.bytes().await.unwrap());
    }
    assert!(ran_on(&sims[0], &ids[0]).await != ran_on(&sims[0], &ids[1]).await, "one job on each backend");
    let admin = gw.token("admin", "t").await;
    let (_, last) = gw.get_json("/history?max_items=1", &Auth::Bearer(&admin)).await;
    assert_eq!(last.as_object().unwrap().len(), 1);
    let (_, all) = gw.get_json("/history", &Auth::Bearer(&admin)).await;
    assert_eq!(all.as_object().unwrap().len(), 2, "from both backends");
    // ComfyUI's order: oldest first; `max_items` alone gives the latest ones.
    assert_eq!(all.as_object().unwrap().keys().next_back(), last.as_object().unwrap().keys().next());
    let (_, first) = gw.get_json("/history?max_items=1&offset=0", &Auth::Bearer(&admin)).await;
    assert_eq!(all.as_object().unwrap().keys().next(), first.as_object().unwrap().keys().next());
}

#[tokio::test]
async fn a_dead_backend_loses_no_waiting_job_and_reports_the_running_one() {
    let mut doomed = sim(100, &[]).await;
    let healthy = sim(100, &[]).await;
    let gw = gateway(&[&doomed, &healthy], 2).await;
    let token = gw.token("admin", "t").await;
    let mut socket = ws(&gw, &token, "watcher").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut body = job("failover", i, 3_000);
        body["client_id"] = json!("watcher");
        ids.push(submit_ok(&gw, &token, body).await);
    }
    // Wait until the doomed backend runs one job (and holds a second, not started).
    let running = poll(Duration::from_secs(10), "a job running on the doomed backend", || async {
        let q: Value = client().get(format!("{}/queue", doomed.url())).send().await.ok()?.json().await.ok()?;
        let running = q["queue_running"][0][1].as_str()?.to_owned();
        (q["queue_pending"].as_array()?.len() == 1).then_some(running)
    })
    .await;
    let waiting: Value = client().get(format!("{}/queue", doomed.url())).send().await.unwrap().json().await.unwrap();
    let waiting = waiting["queue_pending"][0][1].as_str().unwrap().to_owned();
    doomed.stop().await;

    let entry = finished(&gw, &token, &running).await;
    assert_eq!(entry["status"]["status_str"], "error");
    let messages = entry["status"]["messages"].as_array().unwrap();
    let error = messages.iter().find(|m| m[0] == "execution_error").unwrap();
    let message = error[1]["exception_message"].as_str().unwrap();
    assert!(message.contains("sim"), "the history names the failed backend: {message}");
    let (_, listed) = gw.get_json("/history", &Auth::Bearer(&token)).await;
    assert_eq!(listed[&running]["status"]["status_str"], "error", "GET /history lists the lost job too: {listed}");
    // Frames for the other jobs come too; read (bounded) until the error shows up.
    let mut seen = false;
    for _ in 0..500 {
        let Some(m) = next_json(&mut socket).await else { break };
        if m["type"] == "execution_error" && m["data"]["prompt_id"] == running.as_str() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the owner's socket got execution_error for the lost job");

    for id in ids.iter().filter(|id| **id != running) {
        let entry = finished(&gw, &token, id).await;
        assert_eq!(entry["status"]["status_str"], "success", "{id}: {entry}");
        assert!(ran_on(&healthy, id).await, "{id} ran on the surviving backend");
    }
    assert!(ran_on(&healthy, &waiting).await, "the waiting job moved with the same prompt_id");
}

#[tokio::test]
async fn restarting_the_gateway_keeps_the_queue() {
    let backend = sim(300, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    let token = gw.token("admin", "t").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(submit_ok(&gw, &token, job("restart", i, 300)).await);
    }
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&token)).await;
    let held = queue["queue_running"].as_array().unwrap().len() + queue["queue_pending"].as_array().unwrap().len();
    assert!(held >= 3, "jobs wait in the gateway: {queue}");
    let gw = gw.restart().await;
    let (status, queue) = gw.get_json("/queue", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    assert!(!queue["queue_pending"].as_array().unwrap().is_empty(), "the queue survived the restart: {queue}");
    for id in &ids {
        let entry = finished(&gw, &token, id).await;
        assert_eq!(entry["status"]["status_str"], "success");
    }
}

#[tokio::test]
async fn another_user_guessing_a_client_id_receives_nothing() {
    let backend = sim(50, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    gw.add_user("alice", "user").await;
    gw.add_user("mallory", "user").await;
    let (a, m) = (gw.token("alice", "t").await, gw.token("mallory", "t").await);
    let mut alice = ws(&gw, &a, "shared-id").await;
    let mut mallory = ws(&gw, &m, "shared-id").await;
    for socket in [&mut alice, &mut mallory] {
        let first = next_json(socket).await.unwrap();
        assert_eq!((first["type"].as_str(), first["data"]["sid"].as_str()), (Some("status"), Some("shared-id")));
    }
    let mut body = job("private", 1, 50);
    body["client_id"] = json!("shared-id");
    let id = submit_ok(&gw, &a, body).await;
    let mut types = Vec::new();
    while let Some(m) = next_json(&mut alice).await {
        types.push(m["type"].as_str().unwrap_or_default().to_owned());
        if m["type"] == "executing" && m["data"]["node"].is_null() && m["data"]["prompt_id"] == id.as_str() {
            break;
        }
    }
    assert!(types.contains(&"execution_start".to_owned()) && types.contains(&"executed".to_owned()), "{types:?}");
    // Mallory gets the gateway-wide status only, never alice's events.
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(300), mallory.next()).await {
        let m: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(m["type"], "status", "mallory received {m}");
    }
    let (_, h) = gw.get_json(&format!("/history/{id}"), &Auth::Bearer(&m)).await;
    assert_eq!(h, json!({}), "nor her history");
    let (_, h) = gw.get_json(&format!("/history/{id}"), &Auth::Bearer(&a)).await;
    assert_eq!(h[&id]["prompt"][3]["client_id"], "shared-id", "the owner sees her own client id");
}

#[tokio::test]
async fn revoking_a_token_closes_its_websocket() {
    let backend = sim(50, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    let token = gw.token("admin", "ws").await;
    let mut socket = ws(&gw, &token, "c1").await;
    assert_eq!(next_json(&mut socket).await.unwrap()["type"], "status");
    gw.cli(&["token", "revoke", "admin", "ws"], None).await.ok();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the socket was closed after the revocation");
}

#[tokio::test]
async fn deleting_a_waiting_job_removes_it_from_the_gateway_queue() {
    let backend = sim(400, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    let token = gw.token("admin", "t").await;
    let first = submit_ok(&gw, &token, job("del", 1, 400)).await;
    let second = submit_ok(&gw, &token, job("del", 2, 400)).await;
    let third = submit_ok(&gw, &token, job("del", 3, 400)).await;
    let r = client().post(gw.at("/queue")).bearer_auth(&token).json(&json!({"delete": [third]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&token)).await;
    assert!(!queue.to_string().contains(&third), "{queue}");
    finished(&gw, &token, &first).await;
    finished(&gw, &token, &second).await;
    let (_, prompt) = gw.get_json("/prompt", &Auth::Bearer(&token)).await;
    assert_eq!(prompt["exec_info"]["queue_remaining"], 0);
    assert!(!ran_on(&backend, &third).await);
}

#[tokio::test]
async fn a_job_only_a_stopped_backend_can_run_waits_says_why_and_runs_when_it_returns() {
    let plain = sim(20, &[]).await;
    let mut special = sim(20, &["rare.safetensors"]).await;
    let gw = gateway(&[&plain, &special], 1).await;
    let token = gw.token("admin", "t").await;
    special.stop().await;
    poll(Duration::from_secs(10), "the stopped backend taken out", || async {
        let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
        (state["backends"][1]["healthy"] == false).then_some(())
    })
    .await;
    let id = submit_ok(&gw, &token, model_job("rare.safetensors", "rare")).await;
    let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
    let waiting = &state["waiting"][0];
    assert_eq!(waiting["prompt_id"], id.as_str(), "{state}");
    let reason = waiting["reason"].as_str().unwrap();
    assert!(reason.contains("no healthy backend") && reason.contains("rare.safetensors"), "{reason}");
    special.restart().await.unwrap();
    let entry = finished(&gw, &token, &id).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert!(ran_on(&special, &id).await);
}

/// A backend that looks healthy but fails every `POST /prompt` with 503.
async fn failing_backend() -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::{get, post};
    let object_info: Value = serde_json::from_str(include_str!("../sim/fixtures/object_info.json")).unwrap();
    let stats: Value = serde_json::from_str(include_str!("../sim/fixtures/system_stats.json")).unwrap();
    let app = axum::Router::new()
        .route("/system_stats", get(move || async move { axum::Json(stats) }))
        .route("/object_info", get(move || async move { axum::Json(object_info) }))
        .route("/prompt", post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

#[tokio::test]
async fn a_backend_answering_5xx_to_dispatch_loses_its_jobs_to_a_working_one_and_stays_in_service() {
    let (broken, server) = failing_backend().await;
    let working = sim(20, &[]).await;
    let opts = Options::default().backend("max_inflight = 1").extra(SCHEDULER).another_backend(
        "working",
        &working.url(),
        &["max_inflight = 1"],
    );
    let gw = Gateway::start_with(&broken, opts).await;
    let token = gw.token("admin", "t").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, answer) = submit(&gw, &token, job("retry", i, 20)).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(answer["prompt_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let entry = finished(&gw, &token, id).await;
        assert_eq!(entry["status"]["status_str"], "success");
        assert!(ran_on(&working, id).await);
    }
    // A 5xx to a job is that job's trouble: the backend is not taken out.
    let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
    assert_eq!(state["backends"][0]["healthy"], true, "{state}");
    assert!(state["backends"][0]["last_error"].is_null(), "{state}");
    assert!(!gw.stderr().contains("taken out of service"), "{}", gw.stderr());
    server.abort();
}

#[tokio::test]
async fn api_keys_reach_the_backend_but_no_view_and_no_store() {
    let backend = sim(300, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    gw.add_user("bob", "user").await;
    let (bob, admin) = (gw.token("bob", "t").await, gw.token("admin", "t").await);
    let secret = "comfy-org-key-of-bob";
    let body = |i: u32| json!({"prompt": workflow("keys", i), "extra_data": {"sim_duration_ms": 300, "api_key_comfy_org": secret}});
    let first = submit_ok(&gw, &bob, body(1)).await;
    let second = submit_ok(&gw, &bob, body(2)).await;
    let (_, mine) = gw.get_json("/queue", &Auth::Bearer(&bob)).await;
    assert!(mine.to_string().contains(&second), "{mine}");
    assert!(!mine.to_string().contains(secret), "credentials are not kept, so not shown: {mine}");
    let (_, theirs) = gw.get_json("/queue", &Auth::Bearer(&admin)).await;
    assert!(theirs.to_string().contains(&second), "admins see everyone's jobs: {theirs}");
    assert!(!theirs.to_string().contains(secret), "but not their keys: {theirs}");
    for id in [&first, &second] {
        finished(&gw, &bob, id).await;
        let (_, entry) = gw.get_json(&format!("/history/{id}"), &Auth::Bearer(&admin)).await;
        assert!(entry.get(id.as_str()).is_some() && !entry.to_string().contains(secret), "{entry}");
    }
    let (_, all) = gw.get_json("/history", &Auth::Bearer(&admin)).await;
    assert_eq!(all.as_object().unwrap().len(), 2);
    assert!(!all.to_string().contains(secret));
    // The backend got the key with the job (the simulator keeps extra_data in its history);
    // the gateway's history, kept in its store, does not have it.
    let on_backend: Value =
        client().get(format!("{}/history", backend.url())).send().await.unwrap().json().await.unwrap();
    assert!(on_backend.to_string().contains(secret));
    let (_, own) = gw.get_json("/history", &Auth::Bearer(&bob)).await;
    assert_eq!(own.as_object().unwrap().len(), 2);
    assert!(!own.to_string().contains(secret));
    // The store never held it.
    let db = std::fs::read(gw.dir.path().join("data").join("comfygate.db")).unwrap();
    let wal = std::fs::read(gw.dir.path().join("data").join("comfygate.db-wal")).unwrap_or_default();
    let needle = secret.as_bytes();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "a credential reached the store");
    }
}

#[tokio::test]
async fn jobs_held_by_a_backend_removed_from_the_config_run_elsewhere_after_a_restart() {
    let kept = sim(2_000, &[]).await;
    let removed = sim(2_000, &[]).await;
    let gw = gateway(&[&kept, &removed], 1).await;
    let token = gw.token("admin", "t").await;
    let ids =
        [submit_ok(&gw, &token, job("moved", 1, 2_000)).await, submit_ok(&gw, &token, job("moved", 2, 2_000)).await];
    // One job on each backend; then the second backend leaves the configuration.
    let on_removed = poll(Duration::from_secs(10), "a job on the backend to remove", || async {
        let q: Value = client().get(format!("{}/queue", removed.url())).send().await.ok()?.json().await.ok()?;
        q["queue_running"][0][1].as_str().map(str::to_owned)
    })
    .await;
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let cut = config.find("\n[[backends]]\nname = \"b2\"").unwrap();
    let rest = &config[cut + 1..];
    let end = rest.find("\n\n").map_or(config.len(), |i| cut + 1 + i);
    std::fs::write(&gw.config, format!("{}{}", &config[..cut], &config[end..])).unwrap();
    let gw = gw.restart().await;
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(&token)).await;
    assert!(queue.to_string().matches(on_removed.as_str()).count() <= 1, "listed once, as waiting: {queue}");
    let entry = finished(&gw, &token, &on_removed).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert!(ran_on(&kept, &on_removed).await, "re-dispatched to the backend still configured");
    for id in &ids {
        finished(&gw, &token, id).await;
    }
}

#[tokio::test]
async fn object_info_is_answered_while_a_backends_nodes_are_still_loading() {
    // A ComfyUI with many custom nodes takes seconds to list them: until the gateway has read
    // them, `/object_info` is asked of a backend directly rather than refused.
    let delay = Duration::from_secs(2);
    let sim = Simulator::start(SimConfig { object_info_delay: delay, ..SimConfig::default() }).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    let token = gw.token("admin", "t").await;
    let (status, body) = gw.get_json("/object_info/EmptyImage", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["EmptyImage"]["output"], json!(["IMAGE"]), "{body}");
    // Asked of the backend: the gateway's own read was still under way (once it is done, the
    // answer comes from memory and the backend never sees this path).
    let asked: Vec<String> = sim.requests().into_iter().map(|r| r.uri).collect();
    assert!(asked.iter().any(|uri| uri == "/object_info/EmptyImage"), "{asked:?}");
    let (status, all) = gw.get_json("/object_info", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    assert!(all.as_object().is_some_and(|nodes| nodes.contains_key("SaveImage")));
}

#[tokio::test]
async fn system_stats_lists_every_backend_a_down_one_as_down_with_the_devices_of_those_up() {
    let up = sim(100, &[]).await;
    let mut down = sim(100, &[]).await;
    let gw = gateway(&[&up, &down], 1).await;
    let token = gw.token("admin", "t").await;
    let (status, stats) = gw.get_json("/system_stats", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        stats["comfygate"]["backends"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sim", "b2"]);
    assert!(stats["comfygate"]["warnings"].as_array().unwrap().is_empty(), "one version: {stats}");
    down.stop().await;
    let stats = poll(Duration::from_secs(10), "b2 listed as down", || async {
        let (_, stats) = gw.get_json("/system_stats", &Auth::Bearer(&token)).await;
        (stats["comfygate"]["backends"][1]["up"] == false).then_some(stats)
    })
    .await;
    assert_eq!(stats["comfygate"]["backends"][0]["up"], true);
    assert_eq!(stats["comfygate"]["backends"][0]["comfyui_version"], stats["system"]["comfyui_version"]);
    let devices = stats["devices"].as_array().unwrap();
    assert!(!devices.is_empty() && devices.iter().all(|d| d["comfygate_backend"] == "sim"), "{stats}");
    assert!(stats["comfygate"]["backends"][1].get("error").is_none(), "no error text (addresses) for users");
}

#[tokio::test]
async fn an_admins_queue_and_history_say_whose_each_job_is_and_where_it_runs_a_users_do_not() {
    let backend = sim(1_500, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    gw.add_user("alice", "user").await;
    let alice = gw.token("alice", "a").await;
    let admin = gw.token("admin", "t").await;
    let running = submit_ok(&gw, &alice, job("whose", 1, 1_500)).await;
    let waiting = submit_ok(&gw, &alice, job("whose", 2, 100)).await;
    poll(Duration::from_secs(10), "the first job running", || async {
        let (_, q) = gw.get_json("/queue", &Auth::Bearer(&admin)).await;
        (!q["queue_running"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let (_, q) = gw.get_json("/queue", &Auth::Bearer(&admin)).await;
    assert_eq!(q["queue_running"][0][3]["comfygate"], json!({"owner": "alice", "backend": "sim"}), "{q}");
    assert_eq!(q["queue_pending"][0][3]["comfygate"], json!({"owner": "alice", "backend": null}), "{q}");
    let (_, mine) = gw.get_json("/queue", &Auth::Bearer(&alice)).await;
    assert!(!mine.to_string().contains("\"comfygate\""), "a user's own view is ComfyUI's: {mine}");
    finished(&gw, &alice, &waiting).await;
    let (_, h) = gw.get_json("/history", &Auth::Bearer(&admin)).await;
    assert_eq!(h[&running]["prompt"][3]["comfygate"], json!({"owner": "alice", "backend": "sim"}), "{h}");
    let (_, one) = gw.get_json(&format!("/history/{running}"), &Auth::Bearer(&admin)).await;
    assert_eq!(one[&running]["prompt"][3]["comfygate"]["owner"], "alice");
    let (_, h) = gw.get_json("/history", &Auth::Bearer(&alice)).await;
    assert!(!h.to_string().contains("\"comfygate\""), "{h}");
}

#[tokio::test]
async fn the_log_says_where_every_job_was_dispatched_even_when_its_run_started_before_the_answer() {
    // A backend with room starts a job as it queues it, so its execution_start often reaches the
    // gateway before the answer to the dispatch does: the log still names the backend of each one.
    let backend = sim(300, &[]).await;
    let gw = gateway(&[&backend], 1).await;
    let token = gw.token("admin", "t").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(submit_ok(&gw, &token, job("logged", i, 300)).await);
    }
    for id in &ids {
        finished(&gw, &token, id).await;
    }
    let log = gw.stderr();
    let dispatched: Vec<&str> = log.lines().filter(|l| l.contains("job dispatched")).collect();
    for id in &ids {
        let lines = dispatched.iter().filter(|l| l.contains(id.as_str()) && l.contains("backend=\"sim\"")).count();
        assert_eq!(lines, 1, "one `job dispatched` line naming `sim` for {id}:\n{}", dispatched.join("\n"));
    }
}
