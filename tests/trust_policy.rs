#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every way around the gateway, end to end: routes users may not reach, names resolved inside
//! ComfyUI's folders, and requests from another site riding on a session cookie.

mod common;

use comfyui_sim::{SimConfig, Simulator};
use common::{ADMIN_PW, Auth, Gateway, Options, SESSION_COOKIE, USER_PW, client, code_of};

async fn setup_with(opts: Options) -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), opts).await;
    (sim, gw)
}

/// Whether ComfyUI received a client request for `path_and_query`.
fn reached(sim: &Simulator, path_and_query: &str) -> bool {
    common::client_requests(sim).iter().any(|r| r.uri == path_and_query)
}

/// A GET carrying `cookie` as the session, with extra headers.
async fn get_with_cookie(gw: &Gateway, path: &str, cookie: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = client().get(gw.at(path)).header("cookie", format!("{SESSION_COOKIE}={cookie}"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn an_unknown_comfyui_route_is_403_for_a_user_and_reaches_comfyui_for_an_admin() {
    let (sim, gw) = setup_with(Options::default()).await;
    gw.add_user("bob", "user").await;
    let user = gw.token("bob", "t").await;
    let admin = gw.token("admin", "t").await;
    sim.clear_requests();
    let (status, body) = gw.get_json("/api/widgets", &Auth::Bearer(&user)).await;
    assert_eq!((status, code_of(&body)), (403, "forbidden"));
    assert!(!reached(&sim, "/api/widgets"), "refused requests never reach ComfyUI");
    assert_eq!(gw.get_json("/api/widgets", &Auth::Bearer(&admin)).await.0, 404, "the simulator has no /api/widgets");
    assert!(reached(&sim, "/api/widgets"));
}

#[tokio::test]
async fn policy_user_routes_open_more_routes_to_users() {
    let opts = Options::default().extra("[policy]\nuser_routes = [\"GET /api/widgets\", \"POST /my/custom/**\"]");
    let (sim, gw) = setup_with(opts).await;
    gw.add_user("bob", "user").await;
    let user = gw.token("bob", "t").await;
    sim.clear_requests();
    assert_eq!(gw.get_json("/api/widgets", &Auth::Bearer(&user)).await.0, 404, "forwarded to ComfyUI");
    assert_eq!(gw.get_json("/widgets", &Auth::Bearer(&user)).await.0, 404, "the /x form too");
    assert!(reached(&sim, "/api/widgets") && reached(&sim, "/widgets"));
    let r = client().post(gw.at("/my/custom/a/b")).bearer_auth(&user).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(reached(&sim, "/my/custom/a/b"));
    assert_eq!(gw.get_json("/my/custom/a", &Auth::Bearer(&user)).await.0, 403, "only the methods named");
    assert_eq!(gw.get_json("/manager/reboot", &Auth::Bearer(&user)).await.0, 403);
}

#[tokio::test]
async fn a_cross_site_get_to_an_admin_route_with_an_admin_session_is_refused_but_same_origin_is_forwarded() {
    let (sim, gw) = setup_with(Options::default()).await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    sim.clear_requests();
    for path in ["/manager/reboot", "/api/snapshot/restore"] {
        let r = get_with_cookie(&gw, path, &cookie, &[("sec-fetch-site", "cross-site")]).await;
        assert_eq!(r.status(), 403, "{path}");
        let r =
            get_with_cookie(&gw, path, &cookie, &[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate")])
                .await;
        assert_eq!(r.status(), 403, "{path}: admin routes take no navigation from another site either");
        let r = get_with_cookie(&gw, path, &cookie, &[("origin", "https://evil.test")]).await;
        assert_eq!(r.status(), 403, "{path}: foreign Origin");
        assert!(!reached(&sim, path), "{path}: refused requests never reach ComfyUI");
        let r = get_with_cookie(&gw, path, &cookie, &[("sec-fetch-site", "same-origin")]).await;
        assert_eq!(r.status(), 404, "{path}: forwarded (the simulator has no Manager)");
        assert!(reached(&sim, path), "{path}");
    }
}

#[tokio::test]
async fn a_cross_site_read_of_the_queue_with_a_session_is_refused_but_a_navigation_to_the_page_is_not() {
    let (sim, gw) = setup_with(Options::default()).await;
    gw.add_user("bob", "user").await;
    let cookie = gw.login("bob", USER_PW).await;
    let token = gw.token("bob", "t").await;
    sim.clear_requests();
    let cross = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors"), ("sec-fetch-dest", "script")];
    assert_eq!(get_with_cookie(&gw, "/api/queue", &cookie, &cross).await.status(), 403);
    let r = client()
        .head(gw.at("/api/queue"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("sec-fetch-site", "same-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a sibling host of the same site is another origin");
    let r = client()
        .get(gw.at("/api/queue"))
        .bearer_auth(&token)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a bearer token is no ambient credential");
    assert_eq!(get_with_cookie(&gw, "/api/queue", &cookie, &[("sec-fetch-site", "same-origin")]).await.status(), 200);

    let navigate = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("accept", "text/html"),
    ];
    let r = get_with_cookie(&gw, "/", &cookie, &navigate).await;
    assert_ne!(r.status(), 302, "the session is accepted");
    assert!(reached(&sim, "/"), "the navigation reaches ComfyUI's page");
    let frame = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")];
    sim.clear_requests();
    assert_eq!(
        get_with_cookie(&gw, "/", &cookie, &frame).await.status(),
        403,
        "framing from another site is not a navigation"
    );
    assert!(!reached(&sim, "/"));
}

#[tokio::test]
async fn sec_fetch_headers_reach_comfyui_unchanged() {
    let (sim, gw) = setup_with(Options::default()).await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    sim.clear_requests();
    let headers = [("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "cors"), ("sec-fetch-dest", "empty")];
    assert_eq!(get_with_cookie(&gw, "/embeddings", &cookie, &headers).await.status(), 200);
    let seen = common::client_requests(&sim);
    let request = seen.iter().find(|r| r.uri == "/embeddings").expect("forwarded");
    for (name, value) in headers {
        let got: Vec<&str> =
            request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
        assert_eq!(got, [value], "{name}");
    }
}

#[tokio::test]
async fn comfyui_manager_files_in_user_data_are_403_for_a_user_in_every_spelling() {
    let (sim, gw) = setup_with(Options::default()).await;
    gw.add_user("bob", "user").await;
    let user = gw.token("bob", "t").await;
    sim.clear_requests();
    for path in [
        "/api/userdata/workflows%2F..%2FComfyUI-Manager%2Fstartup-scripts%2Finstall-scripts.txt",
        "/userdata/workflows%2F%2e%2e%2FComfyUI-Manager%2Fconfig.ini",
        "/userdata/workflows%252F.%252e%252Fcomfyui-manager%252Fconfig.ini",
    ] {
        let r = client().post(gw.at(path)).bearer_auth(&user).body("[default]\n").send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let (status, body) = gw.get_json("/api/userdata?dir=workflows/../ComfyUI-Manager", &Auth::Bearer(&user)).await;
    assert_eq!((status, code_of(&body)), (403, "forbidden"));
    let r = client().post(gw.at("/userdata/workflows%2F..%2F..%2Fx")).bearer_auth(&user).send().await.unwrap();
    assert_eq!(r.status(), 403, "a name leaving the user's folder: ComfyUI's own answer");
    assert!(common::client_requests(&sim).is_empty(), "none of these reached ComfyUI");
}

#[tokio::test]
async fn behind_a_proxy_that_rewrites_host_the_refusal_names_the_origin_and_server_public_url_which_fixes_it() {
    let (_sim, gw) = setup_with(Options::default()).await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let post = |gw: &Gateway| {
        client()
            .post(gw.at("/prompt"))
            .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
            .header("origin", "https://comfy.example.com")
            .json(&common::workflow("proxied", 1))
    };
    let r = post(&gw).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    let message = body.to_string();
    assert!(message.contains("https://comfy.example.com"), "{message}");
    assert!(message.contains("server.public_url = \\\"https://comfy.example.com\\\""), "{message}");
    let audit = std::fs::read_to_string(gw.dir.path().join("data").join("audit.jsonl")).unwrap();
    let line = audit.lines().find(|l| l.contains("cross_site_refused")).expect("audited");
    assert!(line.contains("https://comfy.example.com") && line.contains("server.public_url"), "{line}");

    // The setting it names lets the same request through.
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let config = config.replacen("[server]\n", "[server]\npublic_url = \"https://comfy.example.com\"\n", 1);
    std::fs::write(&gw.config, config).unwrap();
    let gw = gw.restart().await;
    let r = post(&gw).send().await.unwrap();
    assert_ne!(r.status(), 403, "{:?}", r.text().await);
}

#[tokio::test]
async fn the_console_is_403_for_a_user_in_every_spelling_and_never_reaches_comfyui() {
    let (sim, gw) = setup_with(Options::default()).await;
    gw.add_user("bob", "user").await;
    let user = gw.token("bob", "t").await;
    let admin = gw.token("admin", "t").await;
    sim.clear_requests();
    for path in [
        "/comfygate/admin/",
        "/comfygate/admin/users",
        "/comfygate/admin/../account",
        "/comfygate/admin/%2e%2e/account",
        "/comfygate/ADMIN/",
        "/comfygate/admin%2Fusers",
        "/comfygate//admin/",
        "/comfygate/admin/users/",
        "/comfygate/admin/a%00b",
        "/comfygate/admin/%0d%0aSet-Cookie:%20a=b",
    ] {
        for method in ["GET", "HEAD", "POST", "DELETE"] {
            let head = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {user}");
            let (status, resp, _) = common::raw_request(gw.addr, head.as_bytes(), b"").await;
            assert!(matches!(status, 400 | 403), "user {method} {path}: {status}\n{resp}");
            let head = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {admin}");
            let (status, resp, _) = common::raw_request(gw.addr, head.as_bytes(), b"").await;
            assert!(matches!(status, 200 | 400 | 404 | 405), "admin {method} {path}: {status}\n{resp}");
        }
    }
    assert!(common::client_requests(&sim).is_empty(), "{:?}", common::client_requests(&sim));
}
