#![allow(clippy::unwrap_used, clippy::expect_used)]
//! User data belongs to the gateway: saved workflows and settings are kept per gateway user,
//! answered with ComfyUI's shapes, survive restarts, follow the user to every backend, and
//! never reach ComfyUI.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::{Gateway, Options, client, poll, workflow};
use serde_json::{Value, json};

const WORKFLOW: &str = r#"{"nodes": [], "links": [], "version": 0.4}"#;

struct Users {
    alice: String,
    bob: String,
}

async fn setup_with(opts: Options) -> (Simulator, Gateway, Users) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), opts).await;
    let users = users(&gw).await;
    (sim, gw, users)
}

async fn users(gw: &Gateway) -> Users {
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    Users { alice: gw.token("alice", "t").await, bob: gw.token("bob", "t").await }
}

/// A raw answer: status, content type, headers, body text.
struct Answer {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(gw: &Gateway, method: &str, path: &str, token: &str, body: Option<&str>) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = client().request(method, gw.at(path)).bearer_auth(token);
    if let Some(body) = body {
        rb = rb.body(body.to_owned());
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    Answer { status, content_type, headers, body: r.text().await.unwrap() }
}

async fn get(gw: &Gateway, path: &str, token: &str) -> Answer {
    send(gw, "GET", path, token, None).await
}

async fn post(gw: &Gateway, path: &str, token: &str, body: &str) -> Answer {
    send(gw, "POST", path, token, Some(body)).await
}

/// No request for user data, settings or users reached `sim`.
fn assert_no_user_data_reached(sim: &Simulator) {
    for r in sim.requests() {
        let path = r.uri.trim_start_matches("/api");
        assert!(
            !["/userdata", "/v2/userdata", "/settings", "/users"].iter().any(|p| path.starts_with(p)),
            "{} {} reached ComfyUI",
            r.method,
            r.uri
        );
    }
}

#[tokio::test]
async fn a_saved_workflow_is_listed_in_every_shape_comfyui_answers() {
    let (sim, gw, u) = setup_with(Options::default()).await;
    let saved = post(&gw, "/api/userdata/workflows%2Fa.json", &u.alice, WORKFLOW).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert_eq!(saved.content_type, "application/json; charset=utf-8");
    assert_eq!(saved.body, r#""workflows/a.json""#);
    post(&gw, "/userdata/workflows%2Fsub%2Fb.json?full_info=true", &u.alice, "{}").await;

    let plain = get(&gw, "/api/userdata?dir=workflows", &u.alice).await;
    assert_eq!((plain.status, plain.body.as_str()), (200, r#"["a.json"]"#));
    let recursive = get(&gw, "/userdata?dir=workflows&recurse=true", &u.alice).await;
    assert_eq!(recursive.body, r#"["a.json", "sub/b.json"]"#);
    let split = get(&gw, "/userdata?dir=workflows&recurse=true&split=true", &u.alice).await;
    assert_eq!(split.json(), json!([["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]));
    let full = get(&gw, "/userdata?dir=workflows&full_info=true", &u.alice).await.json();
    assert_eq!(full[0]["path"], "a.json");
    assert_eq!(full[0]["size"], WORKFLOW.len());
    assert!(full[0]["modified"].as_i64().unwrap() > 1_600_000_000_000, "{full}");
    assert!(full[0]["created"].is_i64(), "{full}");

    let v2 = get(&gw, "/api/v2/userdata?path=workflows", &u.alice).await.json();
    assert_eq!(v2[0], json!({"name": "sub", "path": "workflows/sub", "type": "directory"}));
    assert_eq!(v2[1]["name"], "a.json");
    assert_eq!(v2[1]["path"], "workflows/a.json");
    assert_eq!(v2[1]["type"], "file");
    assert!(v2[1]["modified"].is_f64(), "{v2}");
    assert_eq!(v2[2]["path"], "workflows/sub/b.json");

    let missing = get(&gw, "/userdata?dir=nothing", &u.alice).await;
    assert_eq!((missing.status, missing.body.as_str()), (404, "Directory not found"));
    assert_eq!(missing.content_type, "text/plain; charset=utf-8");
    let no_dir = get(&gw, "/userdata", &u.alice).await;
    assert_eq!((no_dir.status, no_dir.body.as_str()), (400, "Directory not provided"));
    let escape = get(&gw, "/userdata?dir=..%2F..", &u.alice).await;
    assert_eq!((escape.status, escape.body.as_str()), (403, "Invalid directory"));
    let v2_missing = get(&gw, "/v2/userdata?path=nothing", &u.alice).await;
    assert_eq!((v2_missing.status, v2_missing.body.as_str()), (404, "Requested path not found"));
    let v2_file = get(&gw, "/v2/userdata?path=workflows%2Fa.json", &u.alice).await;
    assert_eq!((v2_file.status, v2_file.body.as_str()), (400, "Requested path is not a directory"));
    let v2_escape = get(&gw, "/v2/userdata?path=..", &u.alice).await;
    assert_eq!((v2_escape.status, v2_escape.body.as_str()), (400, "Invalid path requested"));
    assert_eq!(get(&gw, "/v2/userdata", &u.bob).await.body, "[]", "an empty user has an empty listing");
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn another_user_cannot_see_read_overwrite_or_delete_a_workflow() {
    let (sim, gw, u) = setup_with(Options::default()).await;
    assert_eq!(post(&gw, "/userdata/workflows%2Fa.json", &u.alice, WORKFLOW).await.status, 200);

    assert_eq!(get(&gw, "/userdata?dir=workflows", &u.bob).await.status, 404);
    assert_eq!(get(&gw, "/v2/userdata", &u.bob).await.body, "[]");
    assert_eq!(get(&gw, "/userdata/workflows%2Fa.json", &u.bob).await.status, 404);
    assert_eq!(send(&gw, "DELETE", "/userdata/workflows%2Fa.json", &u.bob, None).await.status, 404);
    assert_eq!(post(&gw, "/userdata/workflows%2Fa.json", &u.bob, "bob's").await.status, 200);

    let alices = get(&gw, "/userdata/workflows%2Fa.json", &u.alice).await;
    assert_eq!((alices.status, alices.body.as_str()), (200, WORKFLOW));
    assert_eq!(get(&gw, "/userdata/workflows%2Fa.json", &u.bob).await.body, "bob's");
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn encoded_dot_segments_cannot_leave_the_users_folder() {
    let (sim, gw, u) = setup_with(Options::default()).await;
    post(&gw, "/userdata/secret.json", &u.bob, "bob's secret").await;
    for path in [
        "/userdata/..%2F2%2Fsecret.json",
        "/userdata/..%252F2%252Fsecret.json",
        "/userdata/workflows%2F..%2F..%2F3%2Fsecret.json",
        "/userdata/%2E%2E%2F%2E%2E%2Fcomfygate.db",
        "/api/userdata/workflows%252F..%252F..%252F..%252Fcomfygate.toml",
        "/userdata/%2Fetc%2Fpasswd",
    ] {
        let read = get(&gw, path, &u.alice).await;
        assert_eq!(read.status, 403, "{path}: {}", read.body);
        let write = post(&gw, path, &u.alice, "x").await;
        assert_eq!(write.status, 403, "{path}: {}", write.body);
    }
    let bad = get(&gw, "/userdata/a%255Cb", &u.alice).await;
    assert_eq!(bad.status, 400, "a backslash is not a name");
    // Dot segments that stay inside are the same file as ComfyUI resolves them.
    post(&gw, "/userdata/workflows%2Fx%2F..%2Fa.json", &u.alice, "mine").await;
    assert_eq!(get(&gw, "/userdata/workflows%252Fa.json", &u.alice).await.body, "mine");
    assert_eq!(get(&gw, "/userdata/secret.json", &u.bob).await.body, "bob's secret");
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn overwrite_false_conflicts_and_move_renames_within_the_users_folder() {
    let (sim, gw, u) = setup_with(Options::default()).await;
    post(&gw, "/userdata/workflows%2Fa.json", &u.alice, "one").await;
    let clash = post(&gw, "/userdata/workflows%2Fa.json?overwrite=false", &u.alice, "two").await;
    assert_eq!((clash.status, clash.body.as_str()), (409, "File already exists"));
    assert_eq!(get(&gw, "/userdata/workflows%2Fa.json", &u.alice).await.body, "one");

    let moved = post(&gw, "/userdata/workflows%2Fa.json/move/workflows%2Fb.json?full_info=true", &u.alice, "").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.json()["path"], "workflows/b.json");
    assert_eq!(moved.json()["size"], 3);
    assert_eq!(get(&gw, "/userdata/workflows%2Fa.json", &u.alice).await.status, 404);
    assert_eq!(get(&gw, "/userdata/workflows%2Fb.json", &u.alice).await.body, "one");

    post(&gw, "/userdata/workflows%2Fc.json", &u.alice, "other").await;
    let blocked = post(&gw, "/userdata/workflows%2Fc.json/move/workflows%2Fb.json?overwrite=false", &u.alice, "").await;
    assert_eq!(blocked.status, 409);
    let missing = post(&gw, "/userdata/workflows%2Fnone.json/move/workflows%2Fz.json", &u.alice, "").await;
    assert_eq!(missing.status, 404);
    let bobs = post(&gw, "/userdata/workflows%2Fb.json/move/stolen.json", &u.bob, "").await;
    assert_eq!(bobs.status, 404, "bob cannot move alice's file");

    let deleted = send(&gw, "DELETE", "/userdata/workflows%2Fb.json", &u.alice, None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(send(&gw, "DELETE", "/userdata/workflows%2Fb.json", &u.alice, None).await.status, 404);
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn settings_are_kept_per_user() {
    let (sim, gw, u) = setup_with(Options::default()).await;
    assert_eq!(get(&gw, "/api/settings", &u.alice).await.body, "{}");
    assert_eq!(get(&gw, "/settings/Comfy.ColorPalette", &u.alice).await.body, "null");
    let merged = post(&gw, "/settings", &u.alice, r#"{"Comfy.ColorPalette": "dark", "Comfy.Zoom": 2}"#).await;
    assert_eq!((merged.status, merged.body.as_str()), (200, ""));
    assert_eq!(post(&gw, "/api/settings/Comfy.Zoom", &u.alice, "[1, 2]").await.status, 200);
    let all = get(&gw, "/settings", &u.alice).await;
    assert_eq!(all.content_type, "application/json; charset=utf-8");
    assert_eq!(all.body, r#"{"Comfy.ColorPalette": "dark", "Comfy.Zoom": [1, 2]}"#);
    assert_eq!(get(&gw, "/settings/Comfy.ColorPalette", &u.alice).await.body, r#""dark""#);
    assert_eq!(get(&gw, "/settings", &u.bob).await.body, "{}", "bob has his own settings");
    assert_eq!(post(&gw, "/settings", &u.alice, "[1]").await.status, 400, "settings are an object");
    assert_eq!(post(&gw, "/settings", &u.alice, "not json").await.status, 400);

    let users = get(&gw, "/users", &u.alice).await;
    assert_eq!(users.body, r#"{"storage": "server", "migrated": true}"#);
    assert_eq!(post(&gw, "/users", &u.alice, r#"{"username": "x"}"#).await.status, 403, "creating users is for admins");
    let admin = gw.token("admin", "a").await;
    let refused = post(&gw, "/users", &admin, r#"{"username": "x"}"#).await;
    assert_eq!(refused.status, 400);
    assert!(refused.json()["error"].as_str().unwrap().contains("comfygate"), "{}", refused.body);
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn user_data_survives_a_gateway_restart() {
    let (sim, gw, u) = setup_with(Options::default()).await;
    post(&gw, "/userdata/workflows%2Fa.json", &u.alice, WORKFLOW).await;
    post(&gw, "/settings/Comfy.Zoom", &u.alice, "3").await;
    let gw = gw.restart().await;
    assert_eq!(get(&gw, "/userdata/workflows%2Fa.json", &u.alice).await.body, WORKFLOW);
    assert_eq!(get(&gw, "/settings/Comfy.Zoom", &u.alice).await.body, "3");
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn a_saved_workflow_is_read_back_after_the_next_job_runs_on_the_other_backend() {
    let config = || SimConfig { job_duration: Duration::from_millis(400), ..SimConfig::default() };
    let (first, second) = (Simulator::start(config()).await.unwrap(), Simulator::start(config()).await.unwrap());
    let opts =
        Options::default().backend("max_inflight = 1").another_backend("b2", &second.url(), &["max_inflight = 1"]);
    let gw = Gateway::start_with(&first.url(), opts).await;
    let u = users(&gw).await;
    post(&gw, "/userdata/workflows%2Fa.json", &u.alice, WORKFLOW).await;

    // Two jobs at once, one backend each: whichever served the first, the next ran elsewhere.
    for i in 0..2 {
        let body = json!({"prompt": workflow(&format!("j{i}"), 100 + i)});
        let r = client().post(gw.at("/prompt")).bearer_auth(&u.alice).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let ran = |sim: &Simulator| sim.requests().iter().any(|r| r.method == "POST" && r.uri.ends_with("/prompt"));
    poll(Duration::from_secs(20), "a job on each backend", || async { (ran(&first) && ran(&second)).then_some(()) })
        .await;
    assert_eq!(get(&gw, "/userdata/workflows%2Fa.json", &u.alice).await.body, WORKFLOW);
    assert_no_user_data_reached(&first);
    assert_no_user_data_reached(&second);
}

#[tokio::test]
async fn saved_active_files_are_downloads_but_user_css_stays_a_stylesheet() {
    let (_sim, gw, u) = setup_with(Options::default()).await;
    for name in ["evil.svg", "page.html", "workflows%2Fx.js"] {
        post(&gw, &format!("/userdata/{name}"), &u.alice, "<svg onload=alert(1)>").await;
        let served = get(&gw, &format!("/userdata/{name}"), &u.alice).await;
        assert_eq!(served.status, 200, "{name}");
        assert_eq!(served.headers["x-content-type-options"], "nosniff", "{name}");
        assert_eq!(served.content_type, "application/octet-stream", "{name}");
        assert!(served.headers["content-disposition"].to_str().unwrap().starts_with("attachment"), "{name}");
    }
    post(&gw, "/userdata/workflows%2Fa.json", &u.alice, WORKFLOW).await;
    let json_file = get(&gw, "/userdata/workflows%2Fa.json", &u.alice).await;
    assert!(json_file.headers["content-disposition"].to_str().unwrap().starts_with("attachment"));
    assert_eq!(json_file.headers["x-content-type-options"], "nosniff");

    post(&gw, "/userdata/user.css", &u.alice, "body { color: red }").await;
    let css = get(&gw, "/userdata/user.css", &u.alice).await;
    assert_eq!(css.content_type, "text/css");
    assert_eq!(css.headers["content-disposition"], "inline");
    assert_eq!(css.headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn a_user_beyond_the_quota_is_refused_with_413() {
    let opts = Options::default().extra("[userdata]\nmax_bytes_per_user = \"1KiB\"\nmax_file_bytes = \"800B\"");
    let (sim, gw, u) = setup_with(opts).await;
    let big = "x".repeat(700);
    assert_eq!(post(&gw, "/userdata/a.json", &u.alice, &big).await.status, 200);
    assert_eq!(post(&gw, "/userdata/b.json", &u.alice, &big).await.status, 413, "over the quota");
    assert_eq!(post(&gw, "/userdata/a.json", &u.alice, &big).await.status, 200, "replacing a file frees its size");
    assert_eq!(post(&gw, "/userdata/c.json", &u.alice, &"y".repeat(900)).await.status, 413, "over the file size");
    assert_eq!(post(&gw, "/userdata/b.json", &u.bob, &big).await.status, 200, "bob has his own quota");
    let listing = get(&gw, "/userdata?dir=.", &u.alice).await;
    assert_eq!(listing.body, r#"["a.json"]"#, "refused writes leave nothing behind");
    assert_no_user_data_reached(&sim);
}

#[tokio::test]
async fn concurrent_writes_to_one_file_never_leave_it_torn() {
    let (_sim, gw, u) = setup_with(Options::default()).await;
    let bodies: Vec<String> = (0..8).map(|i| char::from(b'a' + i).to_string().repeat(200_000)).collect();
    let writes = bodies.iter().map(|b| post(&gw, "/userdata/w.json", &u.alice, b));
    for answer in futures_util::future::join_all(writes).await {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let read = get(&gw, "/userdata/w.json", &u.alice).await.body;
    assert!(bodies.contains(&read), "the file is exactly one of the writes");
    let listing = get(&gw, "/v2/userdata", &u.alice).await.json();
    assert_eq!(listing.as_array().unwrap().len(), 1, "no temporary file is left: {listing}");
}
