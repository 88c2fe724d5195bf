#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The usage ledger end to end: jobs over two simulators and two users become one ledger row
//! each (done, failed and cancelled alike), `comfygate usage` totals them as a table, CSV or
//! JSON by user, model, backend or day, and `GET /comfygate/api/usage` shows a user only their
//! own usage.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::pool::{finished, gateway, job, model_job, submit_ok};
use common::{Auth, Gateway, client, poll};
use serde_json::{Value, json};

async fn sim_with_model(job_ms: u64) -> Simulator {
    let mut config = SimConfig { job_duration: Duration::from_millis(job_ms), ..SimConfig::default() };
    config.models.push(("checkpoints".to_owned(), "m1.safetensors".to_owned()));
    Simulator::start(config).await.unwrap()
}

async fn usage_json(gw: &Gateway, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["usage", "--json"];
    all.extend_from_slice(args);
    let out = gw.cli(&all, None).await.ok();
    serde_json::from_str::<Vec<Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn row<'a>(rows: &'a [Value], key: &str) -> &'a Value {
    rows.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("no row {key} in {rows:?}"))
}

#[tokio::test]
async fn every_finished_job_is_one_ledger_row_reported_by_the_cli_and_the_api_per_user() {
    let (a, b) = (sim_with_model(50).await, sim_with_model(50).await);
    let gw = gateway(&[&a, &b], 1).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    gw.add_user("carol", "user").await;
    let (bob, carol) = (gw.token("bob", "t").await, gw.token("carol", "t").await);

    // Bob: two jobs of 300 ms each, one on each backend at once.
    let bobs = [submit_ok(&gw, &bob, job("bob", 1, 300)).await, submit_ok(&gw, &bob, job("bob", 2, 300)).await];
    for id in &bobs {
        finished(&gw, &bob, id).await;
    }
    // Carol: one checkpoint job, one that fails on the backend (it may not save outside the
    // output folder), and one cancelled while it waits behind two long admin jobs.
    let model = submit_ok(&gw, &carol, model_job("m1.safetensors", "carol")).await;
    finished(&gw, &carol, &model).await;
    let mut bad = job("x", 3, 10);
    bad["prompt"]["2"]["inputs"]["filename_prefix"] = json!("../../outside");
    let failed = submit_ok(&gw, &carol, bad).await;
    let entry = finished(&gw, &carol, &failed).await;
    assert_eq!(entry["status"]["status_str"], "error", "{entry}");
    let long =
        [submit_ok(&gw, &admin, job("long", 4, 1_500)).await, submit_ok(&gw, &admin, job("long", 5, 1_500)).await];
    let waiting = submit_ok(&gw, &carol, job("wait", 6, 10)).await;
    let r =
        client().post(gw.at("/queue")).bearer_auth(&carol).json(&json!({"delete": [waiting]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for id in &long {
        finished(&gw, &admin, id).await;
    }

    let by_user = poll(Duration::from_secs(10), "seven ledger rows", || async {
        let rows = usage_json(&gw, &["--by", "user"]).await;
        (rows.iter().map(|r| r["jobs"].as_i64().unwrap_or(0)).sum::<i64>() == 7).then_some(rows)
    })
    .await;
    assert_eq!(by_user.len(), 3, "{by_user:?}");
    let bob_row = row(&by_user, "bob");
    assert_eq!((bob_row["jobs"].as_i64(), bob_row["done"].as_i64()), (Some(2), Some(2)), "{bob_row}");
    let gpu = bob_row["gpu_seconds"].as_f64().unwrap();
    assert!((0.5..5.0).contains(&gpu), "two 300 ms runs: {gpu}");
    let carol_row = row(&by_user, "carol");
    let counts = ["jobs", "done", "failed", "cancelled"].map(|k| carol_row[k].as_i64().unwrap());
    assert_eq!(counts, [3, 1, 1, 1], "{carol_row}");
    assert_eq!(row(&by_user, "admin")["jobs"], 2);

    let by_model = usage_json(&gw, &["--by", "model"]).await;
    assert_eq!(row(&by_model, "m1.safetensors")["jobs"], 1, "{by_model:?}");
    let by_backend = usage_json(&gw, &["--by", "backend"]).await;
    assert!(
        by_backend.iter().any(|r| r["key"] == "sim") && by_backend.iter().any(|r| r["key"] == "b2"),
        "{by_backend:?}"
    );
    let by_day = usage_json(&gw, &["--by", "day", "--since", "2d"]).await;
    let today = comfygate::time::format_ms(comfygate::time::now_ms())[..10].to_owned();
    assert_eq!(by_day.len(), 1, "{by_day:?}");
    assert_eq!((by_day[0]["key"].as_str(), by_day[0]["jobs"].as_i64()), (Some(today.as_str()), Some(7)));
    assert_eq!(usage_json(&gw, &["--user", "bob", "--by", "user"]).await.len(), 1);

    let csv = gw.cli(&["usage", "--csv", "--by", "user"], None).await.ok().stdout;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "key,jobs,done,failed,cancelled,gpu_seconds,mean_wait_seconds,outputs");
    assert!(lines.iter().any(|l| l.starts_with("carol,3,1,1,1,")), "{csv}");
    let table = gw.cli(&["usage"], None).await.ok().stdout;
    assert!(table.starts_with("USER") && table.contains("GPU_SECONDS") && table.contains("carol"), "{table}");
    let bad = gw.cli(&["usage", "--since", "last tuesday"], None).await;
    assert_eq!(bad.code, 64, "{bad:?}");
    assert!(bad.stderr.contains("--since"), "{bad:?}");
    assert_eq!(gw.cli(&["usage", "--by", "colour"], None).await.code, 64);
    assert_eq!(gw.cli(&["usage", "--user", "nobody"], None).await.code, 64);

    // The API: a user sees their own usage only; an admin anyone's.
    let (status, mine) = gw.get_json("/comfygate/api/usage?by=user", &Auth::Bearer(&bob)).await;
    assert_eq!(status, 200, "{mine}");
    let keys: Vec<&str> = mine["rows"].as_array().unwrap().iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, ["bob"], "{mine}");
    let (status, mine) = gw.get_json("/comfygate/api/usage?by=backend", &Auth::Bearer(&bob)).await;
    assert_eq!(status, 200);
    let jobs: i64 = mine["rows"].as_array().unwrap().iter().filter_map(|r| r["jobs"].as_i64()).sum();
    assert_eq!(jobs, 2, "only bob's jobs, whatever the grouping: {mine}");
    assert_eq!(gw.get_json("/comfygate/api/usage?user=carol", &Auth::Bearer(&bob)).await.0, 403);
    let (status, carols) = gw.get_json("/comfygate/api/usage?user=Carol&by=day", &Auth::Bearer(&admin)).await;
    assert_eq!(status, 200, "{carols}");
    assert_eq!(carols["rows"][0]["jobs"], 3, "{carols}");
    let (status, all) = gw.get_json("/comfygate/api/usage", &Auth::Bearer(&admin)).await;
    assert_eq!((status, all["rows"].as_array().map(Vec::len)), (200, Some(3)), "{all}");
    for bad in ["since=tuesday", "by=colour", "until=1d&since=1h", "extra=1"] {
        let (status, body) = gw.get_json(&format!("/comfygate/api/usage?{bad}"), &Auth::Bearer(&admin)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(gw.get_json("/comfygate/api/usage", &Auth::None).await.0, 401);
}

#[tokio::test]
async fn a_user_over_their_daily_gpu_seconds_is_refused_until_the_next_utc_midnight() {
    let backend = common::pool::sim(50).await;
    let gw = gateway(&[&backend], 1).await;
    gw.add_user("dave", "user").await;
    gw.add_user("erin", "user").await;
    let (dave, erin) = (gw.token("dave", "t").await, gw.token("erin", "t").await);
    let shown = gw.cli(&["user", "limits", "dave", "--gpu-seconds-per-day", "1"], None).await.ok().stdout;
    assert!(shown.contains("gpu-seconds-per-day  1\n"), "{shown}");
    let id = submit_ok(&gw, &dave, job("dave", 1, 1_200)).await;
    finished(&gw, &dave, &id).await;
    let (retry, body) = poll(Duration::from_secs(10), "dave refused once his run is in the ledger", || async {
        let r = client().post(gw.at("/prompt")).bearer_auth(&dave).json(&job("dave", 2, 10)).send().await.unwrap();
        let retry: Option<u64> = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status == 429).then_some((retry, body))
    })
    .await;
    assert_eq!(body["error"]["type"], "gpu_quota_exceeded", "{body}");
    let now = comfygate::time::now_ms();
    let to_midnight = u64::try_from((now / 86_400_000 + 1) * 86_400_000 - now).unwrap().div_ceil(1000);
    let retry = retry.expect("Retry-After");
    assert!(retry.abs_diff(to_midnight) <= 5, "Retry-After {retry} is the next UTC midnight ({to_midnight})");
    // Nobody else is held to dave's quota.
    submit_ok(&gw, &erin, job("erin", 3, 10)).await;
    // Back to the default (no limit): dave may submit again.
    gw.cli(&["user", "limits", "dave", "--gpu-seconds-per-day", "default"], None).await.ok();
    poll(Duration::from_secs(10), "dave accepted again", || async {
        let r = client().post(gw.at("/prompt")).bearer_auth(&dave).json(&job("dave", 4, 10)).send().await.unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
}

/// The `sim` row of `comfygate backend list`: name, URL, drained, jobs.
fn list_row(list: &str) -> Option<Vec<&str>> {
    list.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|r| r.len() == 4 && r[0] == "sim")
}

async fn backends_api(gw: &Gateway, token: &str) -> Value {
    let (status, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(token)).await;
    assert_eq!(status, 200, "{state}");
    state["backends"][0].clone()
}

async fn not_run_yet(gw: &Gateway, token: &str, id: &str) {
    let (_, history) = gw.get_json(&format!("/history/{id}"), &Auth::Bearer(token)).await;
    assert!(history.get(id).is_none(), "{id} ran on a drained backend: {history}");
    let (_, queue) = gw.get_json("/queue", &Auth::Bearer(token)).await;
    assert!(queue["queue_pending"].to_string().contains(id), "{id} waits in the gateway's queue: {queue}");
}

#[tokio::test]
async fn a_drained_backend_finishes_its_job_takes_no_new_one_across_a_restart_until_resumed() {
    let backend = common::pool::sim(50).await;
    let gw = gateway(&[&backend], 1).await;
    let admin = gw.token("admin", "t").await;
    let unknown = gw.cli(&["backend", "drain", "nope"], None).await;
    assert_eq!(unknown.code, 64, "{unknown:?}");
    assert!(unknown.stderr.contains("configured: sim"), "{unknown:?}");

    let running = submit_ok(&gw, &admin, job("run", 1, 2_000)).await;
    poll(Duration::from_secs(10), "the job on the backend", || async {
        let list = gw.cli(&["backend", "list"], None).await.ok().stdout;
        list_row(&list).is_some_and(|r| r[2..] == ["false", "1"]).then_some(())
    })
    .await;
    // Drained with a job on it: a short --wait times out with 75.
    let timed_out = gw.cli(&["backend", "drain", "sim", "--wait", "--timeout", "100ms"], None).await;
    assert_eq!(timed_out.code, 75, "{timed_out:?}");
    poll(Duration::from_secs(5), "the gateway applies the drain", || async {
        (backends_api(&gw, &admin).await["drained"] == true).then_some(())
    })
    .await;
    let waiting = submit_ok(&gw, &admin, job("wait", 2, 10)).await;
    let empty = gw.cli(&["backend", "drain", "sim", "--wait", "--timeout", "20s"], None).await.ok();
    assert!(empty.stdout.contains("backend `sim` is empty"), "{empty:?}");
    let entry = finished(&gw, &admin, &running).await;
    assert_eq!(entry["status"]["status_str"], "success", "the running job finished: {entry}");
    not_run_yet(&gw, &admin, &waiting).await;
    let list = gw.cli(&["backend", "list"], None).await.ok().stdout;
    assert_eq!(list_row(&list).map(|r| r[2..].to_vec()), Some(vec!["true", "0"]), "{list}");

    // The drain is in the store: it holds from the gateway's first dispatch after a restart.
    let gw = gw.restart().await;
    assert_eq!(backends_api(&gw, &admin).await["drained"], true);
    not_run_yet(&gw, &admin, &waiting).await;

    let resumed = gw.cli(&["backend", "resume", "sim"], None).await.ok();
    assert!(resumed.stdout.contains("back in service"), "{resumed:?}");
    finished(&gw, &admin, &waiting).await;
    assert_eq!(backends_api(&gw, &admin).await["drained"], false);
    let audit = gw.cli(&["audit", "--json"], None).await.ok().stdout;
    assert!(audit.contains("\"backend_drained\"") && audit.contains("\"backend_resumed\""), "{audit}");
}

#[tokio::test]
async fn admins_drain_and_resume_a_backend_through_the_api_and_users_cannot() {
    let backend = common::pool::sim(50).await;
    let gw = gateway(&[&backend], 1).await;
    let admin = gw.token("admin", "t").await;
    gw.add_user("bob", "user").await;
    let bob = gw.token("bob", "t").await;
    let post = |token: &str, path: &str, body: Option<Value>| {
        let rb = client().post(gw.at(path)).bearer_auth(token);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(&bob, "/comfygate/api/backends/sim/drain", Some(json!({}))).await, 403);
    assert_eq!(post(&admin, "/comfygate/api/backends/nope/drain", Some(json!({}))).await, 404);
    assert_ne!(post(&admin, "/comfygate/api/backends/sim/drain", None).await, 200, "a JSON body is required");
    assert_eq!(post(&admin, "/comfygate/api/backends/sim/drain", Some(json!({"x": 1}))).await, 400);
    assert_eq!(post(&admin, "/comfygate/api/backends/sim/drain", Some(json!({}))).await, 200);
    let state = backends_api(&gw, &admin).await;
    assert_eq!((state["drained"].as_bool(), state["jobs"].as_i64()), (Some(true), Some(0)), "{state}");
    let list = gw.cli(&["backend", "list"], None).await.ok().stdout;
    assert_eq!(list_row(&list).map(|r| r[2].to_owned()), Some("true".to_owned()), "the store has it: {list}");
    let waiting = submit_ok(&gw, &bob, job("b", 1, 10)).await;
    not_run_yet(&gw, &bob, &waiting).await;
    assert_eq!(post(&admin, "/comfygate/api/backends/sim/resume", Some(json!({}))).await, 200);
    finished(&gw, &bob, &waiting).await;
    assert_eq!(backends_api(&gw, &admin).await["drained"], false);
}
