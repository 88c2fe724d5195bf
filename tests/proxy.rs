#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The proxy end to end: credentials stripped, identity set, WebSockets, a full job, streaming
//! uploads, backend failures, admin-only routes and cross-site protection.

mod common;

use std::time::Duration;

use bytes::Bytes;
use comfyui_sim::{SimConfig, Simulator};
use common::{ADMIN_PW, Auth, Gateway, Options, SESSION_COOKIE, USER_PW, client, code_of, workflow};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn setup() -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    (sim, gw)
}

fn ws_url(gw: &Gateway, query: &str) -> String {
    format!("ws://{}/ws?{query}", gw.addr)
}

/// Opens a WebSocket with extra headers; `Err(status)` when the handshake is refused.
async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket failed: {e}"),
    }
}

/// The next JSON text frame (binary frames are skipped), with a deadline.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("no WebSocket frame in time")
            .expect("WebSocket closed")
            .expect("WebSocket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn assert_first_frame_is_status(ws: &mut Ws, client_id: &str) {
    let first = next_json(ws).await;
    assert_eq!(first["type"], "status", "{first}");
    assert_eq!(first["data"]["sid"], client_id, "{first}");
}

#[tokio::test]
async fn bearer_and_query_tokens_work_for_websockets() {
    let (_sim, gw) = setup().await;
    let token = gw.token("admin", "ws").await;

    let mut ws = ws_connect(&ws_url(&gw, &format!("clientId=q-client&token={token}")), &[]).await.unwrap();
    assert_first_frame_is_status(&mut ws, "q-client").await;
    ws.close(None).await.unwrap();

    let auth = format!("Bearer {token}");
    let mut ws = ws_connect(&ws_url(&gw, "clientId=b-client"), &[("authorization", &auth)]).await.unwrap();
    assert_first_frame_is_status(&mut ws, "b-client").await;
    // Client messages reach ComfyUI too.
    ws.send(Message::Text(r#"{"type": "feature_flags", "data": {}}"#.into())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "feature_flags", "{reply}");
}

#[tokio::test]
async fn websocket_upgrade_without_valid_credentials_is_rejected_with_401() {
    let (sim, gw) = setup().await;
    assert_eq!(ws_connect(&ws_url(&gw, "clientId=x"), &[]).await.err(), Some(401));
    let bogus = "cg_bogusbogusbogusbogusbogusbogusbogusbogus00";
    assert_eq!(ws_connect(&ws_url(&gw, &format!("clientId=x&token={bogus}")), &[]).await.err(), Some(401));
    assert!(common::client_requests(&sim).is_empty());
}

#[tokio::test]
async fn session_cookie_websocket_works_same_origin_and_is_refused_cross_site() {
    let (sim, gw) = setup().await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let cookie_header = format!("{SESSION_COOKIE}={cookie}");
    let mut ws =
        ws_connect(&ws_url(&gw, "clientId=c1"), &[("cookie", &cookie_header), ("origin", &gw.url)]).await.unwrap();
    assert_first_frame_is_status(&mut ws, "c1").await;
    sim.clear_requests();
    let refused =
        ws_connect(&ws_url(&gw, "clientId=c2"), &[("cookie", &cookie_header), ("origin", "https://evil.test")]).await;
    assert_eq!(refused.err(), Some(403));
    assert!(common::client_requests(&sim).is_empty(), "the refused upgrade never reached ComfyUI");
}

#[tokio::test]
async fn credentials_never_reach_the_backend() {
    let (sim, gw) = setup().await;
    let token = gw.token("admin", "secret-check").await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    sim.clear_requests();

    let r = client().get(gw.at("/embeddings")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(gw.at(&format!("/view?filename=nothing.png&token={token}&type=output"))).send().await.unwrap();
    assert_eq!(r.status(), 404, "forwarded to ComfyUI, which has no such file");
    let r = client()
        .get(gw.at("/features"))
        .header("cookie", format!("theme=dark; {SESSION_COOKIE}={cookie}; lang=en"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut ws = ws_connect(&ws_url(&gw, &format!("token={token}&clientId=w1")), &[]).await.unwrap();
    assert_first_frame_is_status(&mut ws, "w1").await;

    let seen = common::client_requests(&sim);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].uri, "/embeddings");
    assert_eq!(seen[1].uri, "/view?filename=nothing.png&type=output", "other parameters pass unchanged");
    let cookie_seen: Vec<&str> =
        seen[2].headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")).map(|(_, v)| v.as_str()).collect();
    assert_eq!(cookie_seen, ["theme=dark; lang=en"], "other cookies pass");
    // Nothing ComfyUI received, the gateway's own requests included, carries a credential.
    for req in &sim.requests() {
        assert!(!req.uri.contains("token"), "token in uri: {}", req.uri);
        for (name, value) in &req.headers {
            assert!(!name.eq_ignore_ascii_case("authorization"), "{req:?}");
            assert!(!value.contains(&token) && !value.contains(&cookie), "credential in {name}: {value}");
            assert!(!value.contains(SESSION_COOKIE), "{name}: {value}");
        }
    }
}

#[tokio::test]
async fn spoofed_comfy_user_header_is_replaced_by_the_authenticated_user() {
    let (sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let token = gw.token("bob", "t").await;
    sim.clear_requests();
    let r = client()
        .get(gw.at("/embeddings"))
        .bearer_auth(&token)
        .header("comfy-user", "admin")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = common::client_requests(&sim);
    let users: Vec<&str> =
        seen[0].headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("comfy-user")).map(|(_, v)| v.as_str()).collect();
    assert_eq!(users, ["bob"]);
    let xff: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(xff, ["127.0.0.1"], "an untrusted client cannot spoof its address");
}

#[tokio::test]
async fn full_job_over_the_gateway_streams_events_and_serves_identical_output() {
    full_job(Options::default()).await;
}

/// One worker thread: the gateway runs on tokio's single-threaded scheduler (what the benchmark
/// and one-CPU containers use); password hashing and SQLite still run beside it.
#[tokio::test]
async fn a_single_worker_gateway_logs_in_and_runs_a_full_job() {
    full_job(Options::default().server("workers = 1")).await;
}

async fn full_job(options: Options) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), options).await;
    let session = gw.login("admin", ADMIN_PW).await;
    assert_eq!(gw.get_json("/comfygate/api/whoami", &Auth::Cookie(&session)).await.0, 200);
    let token = gw.token("admin", "job").await;
    let client_id = "job-client-1";
    let mut ws = ws_connect(&ws_url(&gw, &format!("clientId={client_id}&token={token}")), &[]).await.unwrap();
    assert_first_frame_is_status(&mut ws, client_id).await;

    let body = json!({
        "prompt": workflow("gwtest", 0x3366cc),
        "client_id": client_id,
        "extra_data": {"sim_duration_ms": 150}
    });
    let r = client().post(gw.at("/prompt")).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let queued: Value = r.json().await.unwrap();
    let pid = queued["prompt_id"].as_str().unwrap().to_owned();

    let mut events: Vec<Value> = Vec::new();
    loop {
        let msg = next_json(&mut ws).await;
        let done = msg["type"] == "executing" && msg["data"]["node"].is_null() && msg["data"]["prompt_id"] == pid;
        events.push(msg);
        if done {
            break;
        }
    }
    let position = |kind: &str| {
        events
            .iter()
            .position(|e| e["type"] == kind && e["data"]["prompt_id"] == pid)
            .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
    };
    let start = position("execution_start");
    let executing = position("executing");
    let executed = position("executed");
    let success = position("execution_success");
    assert!(start < executing && executing < executed && executed < success, "{events:?}");
    assert_eq!(events[executed]["data"]["node"], "2");

    let (status, history) = gw.get_json(&format!("/history/{pid}"), &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    let image = &history[&pid]["outputs"]["2"]["images"][0];
    let filename = image["filename"].as_str().unwrap();
    assert!(filename.starts_with("gwtest_"), "{image}");
    let query = format!(
        "/view?filename={}&subfolder={}&type={}",
        common::enc(filename),
        common::enc(image["subfolder"].as_str().unwrap()),
        image["type"].as_str().unwrap()
    );
    let via_gateway = client().get(gw.at(&query)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(via_gateway.status(), 200);
    assert_eq!(via_gateway.headers()["content-type"], "image/png");
    let via_gateway = via_gateway.bytes().await.unwrap();
    let direct = client().get(format!("{}{query}", sim.url())).send().await.unwrap().bytes().await.unwrap();
    assert!(via_gateway.starts_with(b"\x89PNG"));
    assert_eq!(via_gateway, direct);
}

#[tokio::test]
async fn a_200_mb_upload_streams_through_without_buffering() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 3200; // 200 MiB
    static DATA: [u8; CHUNK] = [0x5a; CHUNK];
    let (sim, gw) = setup().await;
    let token = gw.token("admin", "upload").await;
    // Warm up the gateway's allocator and connection pool before measuring.
    let png = comfyui_sim::sample_png();
    let part = reqwest::multipart::Part::bytes(png).file_name("warm.png").mime_str("image/png").unwrap();
    let r = client()
        .post(gw.at("/upload/image"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("image", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = gw.peak_rss_kib();

    let stream = futures_util::stream::iter(0..CHUNKS).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&DATA)));
    let total = (CHUNK * CHUNKS) as u64;
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), total)
        .file_name("big.png")
        .mime_str("image/png")
        .unwrap();
    let r = client()
        .post(gw.at("/upload/image"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("image", part))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let uploaded: Value = r.json().await.unwrap();
    let name = uploaded["name"].as_str().unwrap();
    assert_eq!(uploaded["subfolder"], "", "the caller's own folder is not shown");
    let size = std::fs::metadata(common::user_input_dir(&sim, "1").join(name)).unwrap().len();
    assert_eq!(size, total);

    let after = gw.peak_rss_kib();
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(growth_mib < 64, "peak RSS grew by {growth_mib} MiB ({before} KiB → {after} KiB)");
}

#[tokio::test]
async fn bodies_over_max_request_body_get_413() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), Options::default().server("max_request_body = \"1MiB\"")).await;
    let token = gw.token("admin", "t").await;
    sim.clear_requests();
    let r = client()
        .post(gw.at("/upload/image"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(code_of(&body), "payload_too_large");
    assert!(common::client_requests(&sim).is_empty(), "a declared oversize body is refused before forwarding");

    // Without a Content-Length the limit is enforced while streaming.
    let stream = futures_util::stream::iter(0..48).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 64 * 1024])));
    let sent =
        client().post(gw.at("/prompt")).bearer_auth(&token).body(reqwest::Body::wrap_stream(stream)).send().await;
    match sent {
        Ok(r) => assert_eq!(r.status(), 413),
        // The gateway may answer 413 and close while the client is still sending: the client
        // then sees the connection end instead. Either way nothing was queued.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert!(common::client_requests(&sim).is_empty(), "nothing reached ComfyUI");

    // Under the limit is fine.
    let r = client()
        .post(gw.at("/prompt"))
        .bearer_auth(&token)
        .json(&json!({"prompt": workflow("small", 0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn backend_down_gives_502_json_and_an_html_page_then_recovers_after_restart() {
    let (mut sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    assert_eq!(gw.get_json("/embeddings", &Auth::Bearer(&token)).await.0, 200);

    sim.stop().await;
    let (status, body) = gw.get_json("/embeddings", &Auth::Bearer(&token)).await;
    assert_eq!(status, 502);
    assert_eq!(code_of(&body), "backend_unavailable");
    assert!(body["error"].as_str().unwrap().contains("sim"), "names the backend: {body}");

    let r = client()
        .get(gw.at("/"))
        .header("accept", "text/html,*/*")
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("502"), "{html}");

    sim.restart().await.unwrap();
    let (status, body) = gw.get_json("/embeddings", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200, "{body}");
    // Aggregated answers wait until the health check has put the backend back in service.
    common::poll(Duration::from_secs(10), "system_stats after restart", || async {
        (gw.get_json("/system_stats", &Auth::Bearer(&token)).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn hanging_backend_gives_504_after_the_response_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let gw =
        Gateway::start_with(&format!("http://{addr}"), Options::default().backend("response_timeout = \"1s\"")).await;
    let token = gw.token("admin", "t").await;
    let (status, body) = gw.get_json("/embeddings", &Auth::Bearer(&token)).await;
    assert_eq!(status, 504);
    assert_eq!(code_of(&body), "backend_timeout");
    hold.abort();
}

#[tokio::test]
async fn admin_only_routes_are_forbidden_for_users_and_forwarded_for_admins() {
    let (sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let user = gw.token("bob", "t").await;
    let admin = gw.token("admin", "t").await;
    let routes: &[(&str, &str)] = &[
        ("GET", "/manager/reboot"),
        ("POST", "/api/manager/queue/install"),
        ("POST", "/customnode/install/git_url"),
        ("GET", "/internal/logs"),
        ("POST", "/free"),
        ("POST", "/api/free"),
        ("GET", "/api/%6Danager/reboot"),
        ("GET", "/Manager/reboot"),
        ("GET", "/x/%2e%2e/manager/reboot"),
    ];
    for (method, path) in routes {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        sim.clear_requests();
        let r = client().request(m.clone(), gw.at(path)).bearer_auth(&user).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path} as a user");
        let body: Value = r.json().await.unwrap();
        assert_eq!(code_of(&body), "forbidden");
        assert!(common::client_requests(&sim).is_empty(), "{method} {path} reached ComfyUI for a user");

        let r = client().request(m, gw.at(path)).bearer_auth(&admin).body("{}").send().await.unwrap();
        assert_ne!(r.status(), 403, "{method} {path} as an admin");
        assert_eq!(common::client_requests(&sim).len(), 1, "{method} {path} forwarded for an admin");
    }
    // Admin-only routes of user data are answered by the gateway itself, for admins too.
    for path in ["/users", "/userdata/ComfyUI-Manager%2Fconfig.ini"] {
        sim.clear_requests();
        let r = client().post(gw.at(path)).bearer_auth(&user).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 403, "POST {path} as a user");
        let r = client().post(gw.at(path)).bearer_auth(&admin).body("{}").send().await.unwrap();
        assert_ne!(r.status(), 403, "POST {path} as an admin");
        assert!(common::client_requests(&sim).is_empty(), "POST {path} never reaches ComfyUI");
    }
    // Everyday routes stay open to users.
    assert_eq!(gw.get_json("/object_info/EmptyImage", &Auth::Bearer(&user)).await.0, 200);
    assert_eq!(gw.get_json("/users", &Auth::Bearer(&user)).await.0, 200, "GET /users is the gateway's");
}

#[tokio::test]
async fn role_change_via_cli_applies_to_admin_routes_on_the_next_request() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let token = gw.token("bob", "t").await;
    assert_eq!(gw.get_json("/internal/logs", &Auth::Bearer(&token)).await.0, 403);
    gw.cli(&["user", "role", "bob", "admin"], None).await.ok();
    assert_eq!(gw.get_json("/internal/logs", &Auth::Bearer(&token)).await.0, 404, "forwarded to ComfyUI");
    gw.cli(&["user", "role", "bob", "user"], None).await.ok();
    assert_eq!(gw.get_json("/internal/logs", &Auth::Bearer(&token)).await.0, 403);
}

#[tokio::test]
async fn cross_site_cookie_post_is_refused_but_the_same_with_a_bearer_token_is_forwarded() {
    let (sim, gw) = setup().await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let token = gw.token("admin", "t").await;
    let body = json!({"prompt": workflow("xs", 0)});
    sim.clear_requests();

    let r = client()
        .post(gw.at("/prompt"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("origin", "https://evil.test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(gw.at("/prompt"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("sec-fetch-site", "cross-site")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(common::client_requests(&sim).is_empty(), "refused requests never reach ComfyUI");

    // Same-origin cookie POST: forwarded, with the Origin rewritten for ComfyUI's own check
    // (the simulator, like ComfyUI, would answer 403 to a foreign Origin and 404 here).
    let r = client()
        .post(gw.at("/custom/notes.json"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("origin", gw.url.clone())
        .header("sec-fetch-site", "same-origin")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .post(gw.at("/prompt"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("origin", gw.url.clone())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "same-origin prompts are queued");

    let r = client()
        .post(gw.at("/custom/notes.json"))
        .bearer_auth(&token)
        .header("origin", "https://evil.test")
        .header("sec-fetch-site", "cross-site")
        .json(&body)
        .send()
        .await
        .unwrap();
    // A bearer token carries no ambient authority: the gateway forwards it, and what answers is
    // ComfyUI's own check of the `Sec-Fetch-Site` it now receives unchanged.
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "", "ComfyUI's empty 403, not the gateway's JSON");
    let seen: Vec<_> = common::client_requests(&sim).into_iter().filter(|r| r.uri == "/custom/notes.json").collect();
    assert_eq!(seen.len(), 2);
    for (req, fetch_site) in seen.iter().zip(["same-origin", "cross-site"]) {
        let values = |name: &str| -> Vec<&str> {
            req.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
        };
        assert_eq!(values("origin"), [sim.url().as_str()]);
        assert_eq!(values("sec-fetch-site"), [fetch_site], "Sec-Fetch-* pass unchanged: {req:?}");
    }
}

#[tokio::test]
async fn browser_navigation_with_a_session_gets_comfyui_pages_and_errors_as_html() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let cookie = gw.login("bob", USER_PW).await;
    let r = client()
        .get(gw.at("/internal/logs"))
        .header("accept", "text/html")
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

/// Sends one request on an open keep-alive connection and reads the response: (status, body).
async fn on_connection(stream: &mut tokio::net::TcpStream, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A keep-alive connection remembers the digest of its last credential: other credentials on
/// the same connection are still told apart, and a revoked one fails on its next request.
#[tokio::test]
async fn credentials_alternating_on_one_connection_are_each_verified() {
    let (sim, gw) = setup().await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let alice = gw.token("alice", "t").await;
    let bob = gw.token("bob", "t").await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    sim.clear_requests();
    for token in [&alice, &alice, &bob, &alice, &bob] {
        assert_eq!(on_connection(&mut stream, "/embeddings", token).await.0, 200);
    }
    let forwarded_as: Vec<String> = common::client_requests(&sim)
        .iter()
        .map(|r| r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("comfy-user")).unwrap().1.clone())
        .collect();
    assert_eq!(forwarded_as, ["alice", "alice", "bob", "alice", "bob"]);
    let (status, body) = on_connection(&mut stream, "/embeddings", &format!("{bob}x")).await;
    assert_eq!((status, code_of(&serde_json::from_str(&body).unwrap())), (401, "unknown_token"));

    gw.cli(&["token", "revoke", "bob", "t"], None).await.ok();
    let (status, body) = on_connection(&mut stream, "/embeddings", &bob).await;
    assert_eq!((status, code_of(&serde_json::from_str(&body).unwrap())), (401, "token_revoked"), "{body}");
    assert_eq!(on_connection(&mut stream, "/embeddings", &alice).await.0, 200);
}

/// Every response carries an `X-Request-Id`, on the direct path to ComfyUI and through the
/// router alike; a client's own id is kept and reaches ComfyUI.
#[tokio::test]
async fn request_ids_are_set_kept_and_forwarded() {
    let (sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    for path in ["/embeddings", "/comfygate/api/whoami", "/prompt"] {
        let r = client().get(gw.at(path)).bearer_auth(&token).send().await.unwrap();
        let id = r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(id.as_deref().map(str::len), Some(36), "{path}: {id:?}");
    }
    let r = client().get(gw.at("/queue")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"), "errors carry one too");

    sim.clear_requests();
    let r =
        client().get(gw.at("/embeddings")).bearer_auth(&token).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let seen = common::client_requests(&sim);
    let forwarded =
        seen[0].headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("x-request-id")).map(|(_, v)| v.as_str());
    assert_eq!(forwarded, Some("trace-42"));
}
