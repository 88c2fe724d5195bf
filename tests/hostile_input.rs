#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile and malformed input: clean 4xx answers, never a 500, never a crash, nothing forwarded.

mod common;

use comfyui_sim::{SimConfig, Simulator};
use common::{ADMIN_PW, Auth, Gateway, SESSION_COOKIE, client, code_of, raw_request};
use serde_json::{Value, json};

async fn setup() -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    (sim, gw)
}

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn malformed_authorization_headers_get_401_never_500() {
    let (sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    let long = "a".repeat(10 * 1024);
    let mut cases: Vec<Vec<u8>> = vec![
        b"Authorization: Basic x".to_vec(),
        b"Authorization: Basic YWRtaW46YWRtaW4tcGFzc3dvcmQtMTIz".to_vec(),
        b"Authorization: Bearer".to_vec(),
        b"Authorization: Bearer ".to_vec(),
        b"Authorization: bearer cg_".to_vec(),
        b"Authorization: Bearer cg_a b".to_vec(),
        b"Authorization: Bearer \xff\xfe\xfd".to_vec(),
        b"Authorization: Bearer \xc3\xa9t\xc3\xa9".to_vec(),
        format!("Authorization: Bearer {long}").into_bytes(),
        format!("Authorization: Bearer cg_{long}").into_bytes(),
        format!("Authorization: Bearer {token}\r\nAuthorization: Bearer {token}").into_bytes(),
        format!("Authorization: Bearer {token}\r\nAuthorization: Basic x").into_bytes(),
        format!("Cookie: {SESSION_COOKIE}={long}").into_bytes(),
        format!("Cookie: {SESSION_COOKIE}=\u{1}x").into_bytes(),
    ];
    cases.push(b"Authorization: Bearer %00%00".to_vec());
    for header in &cases {
        let mut head = b"GET /queue HTTP/1.1\r\nHost: gw\r\nAccept: application/json\r\n".to_vec();
        head.extend_from_slice(header);
        let (status, resp_head, body) = raw_request(gw.addr, &head, b"").await;
        let shown = String::from_utf8_lossy(&header[..header.len().min(80)]).into_owned();
        assert!(matches!(status, 400 | 401), "{shown}: {status}\n{resp_head}");
        if status == 401 {
            let body = json_body(&body);
            assert!(!code_of(&body).is_empty(), "{shown}: {body}");
            assert!(resp_head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{shown}: {resp_head}");
        }
    }
    for query in
        [format!("token={long}"), "token=".to_owned(), format!("token={token}&token=cg_other"), "token=%ff".into()]
    {
        let head = format!("GET /queue?{query} HTTP/1.1\r\nHost: gw");
        let (status, _, _) = raw_request(gw.addr, head.as_bytes(), b"").await;
        assert!(matches!(status, 400 | 401), "{}: {status}", &query[..query.len().min(60)]);
    }
    let (status, body) = gw.get_json("/queue", &Auth::Bearer(&format!("cg_{}", "b".repeat(43)))).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "unknown_token");
    assert!(
        common::client_requests(&sim).is_empty(),
        "nothing malformed reached ComfyUI: {:?}",
        common::client_requests(&sim)
    );
}

#[tokio::test]
async fn malformed_credentials_are_named_as_such() {
    let (_sim, gw) = setup().await;
    for value in ["Basic x", "Bearer", "Token abc"] {
        let r = client().get(gw.at("/queue")).header("authorization", value).send().await.unwrap();
        assert_eq!(r.status(), 401, "{value}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(code_of(&body), "malformed_credentials", "{value}: {body}");
    }
}

#[tokio::test]
async fn broken_json_to_the_token_api_gets_400_json() {
    let (_sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    for body in ["{not json", "", "[]", "{\"name\": 5}", "null", "{\"name\": \"a\"", "\u{0}"] {
        let r = client()
            .post(gw.at("/comfygate/api/tokens"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code_of(&v), "bad_request", "{body:?}: {v}");
    }
    let r = client().post(gw.at("/comfygate/api/tokens")).bearer_auth(&token).body("{\"name\": \"x\"}").send().await;
    let status = r.unwrap().status().as_u16();
    assert!(matches!(status, 400 | 415), "JSON without a JSON content type: {status}");
}

#[tokio::test]
async fn unknown_json_fields_get_400() {
    let (_sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    let cases: &[(&str, &str, Value)] = &[
        ("POST", "/comfygate/api/tokens", json!({"name": "x", "scope": "all"})),
        ("POST", "/comfygate/api/users", json!({"username": "x1", "password": "long-enough-pw", "admin": true})),
        ("PATCH", "/comfygate/api/users/admin", json!({"is_admin": false})),
        ("POST", "/comfygate/api/password", json!({"current_password": ADMIN_PW, "new_password": "x", "force": true})),
    ];
    for (method, path, body) in cases {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = client().request(m, gw.at(path)).bearer_auth(&token).json(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{method} {path} {body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code_of(&v), "bad_request");
    }
    let (status, _) = gw.get_json("/comfygate/api/tokens?evil=1", &Auth::Bearer(&token)).await;
    assert_eq!(status, 400, "unknown query parameters too");
    let (status, list) = gw.get_json("/comfygate/api/tokens", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing was created: {list}");
}

#[tokio::test]
async fn a_huge_body_to_the_gateway_api_gets_413() {
    let (_sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    for path in ["/comfygate/api/tokens", "/comfygate/api/users", "/comfygate/api/password"] {
        let body = json!({ "name": "n".repeat(1024 * 1024) });
        let r = client().post(gw.at(path)).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 413, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code_of(&v), "payload_too_large", "{path}: {v}");
    }
}

#[tokio::test]
async fn path_traversal_and_nul_bytes_get_400() {
    let (sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    for path in [
        "/%2e%2e/etc/passwd",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/../etc/passwd",
        "/view/../../etc/passwd",
        "/a%00b",
        "/view%00.png",
        "/a%5c..%5cb",
        "/%ff%fe",
        "/x/%0d%0aSet-Cookie:%20a=b",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}");
        let (status, resp_head, body) = raw_request(gw.addr, head.as_bytes(), b"").await;
        assert_eq!(status, 400, "{path}\n{resp_head}");
        if !body.is_empty() {
            let v = json_body(&body);
            assert_eq!(code_of(&v), "bad_request", "{path}: {v}");
        }
    }
    let long = format!("/{}", "a".repeat(9000));
    let head = format!("GET {long} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}");
    let (status, _, _) = raw_request(gw.addr, head.as_bytes(), b"").await;
    assert!(matches!(status, 400 | 414 | 431), "{status}");
    assert!(common::client_requests(&sim).is_empty(), "nothing reached ComfyUI: {:?}", common::client_requests(&sim));
    // Without credentials, no path trick gets past authentication.
    let (status, _, _) = raw_request(gw.addr, b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: gw", b"").await;
    assert!(matches!(status, 400 | 401), "{status}");
}

#[tokio::test]
async fn nul_bytes_in_prompt_and_view_parameters_get_a_clean_answer() {
    let (sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    // A client id is kept with the job: control characters are refused, on every store.
    let mut body = json!({"prompt": common::workflow("nul", 1)});
    body["client_id"] = json!("ab\u{0}cd");
    let r = client().post(gw.at("/prompt")).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_client_id", "{v}");
    assert!(common::client_requests(&sim).is_empty(), "nothing reached ComfyUI");
    // A file name holding NUL is refused by the gateway, as ComfyUI refuses it.
    let r = client()
        .get(gw.at("/view?filename=a%00b.png&type=output&subfolder=s%00"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(common::client_requests(&sim).is_empty(), "nothing reached ComfyUI");
}

#[tokio::test]
async fn unicode_token_names_are_accepted_and_unicode_user_names_are_rejected() {
    let (_sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    for name in ["ラップトップ", "laptop 🎨", "Ωμέγα"] {
        let r = client()
            .post(gw.at("/comfygate/api/tokens"))
            .bearer_auth(&token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{name}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["name"], name);
        let (_, me) = gw.whoami(&Auth::Bearer(v["token"].as_str().unwrap())).await;
        assert_eq!(me["auth"]["token_name"], name);
    }
    for bad in ["a\nb", "", "   ", "x\u{7}"] {
        let r = client()
            .post(gw.at("/comfygate/api/tokens"))
            .bearer_auth(&token)
            .json(&json!({ "name": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    for user in ["jürgen", "ユーザー", "admin\u{0}", "al ice", "ａｄｍｉｎ", "İ"] {
        let r = client()
            .post(gw.at("/comfygate/api/users"))
            .bearer_auth(&token)
            .json(&json!({ "username": user, "password": "long-enough-pw" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{user:?}");
        if !user.contains('\0') {
            let out = gw.cli(&["user", "add", user, "--password-stdin"], Some("long-enough-pw")).await;
            assert_eq!(out.code, 65, "{user:?}: {out:?}");
        }
    }
    let r = client().get(gw.at("/comfygate/api/tokens?user=j%C3%BCrgen")).bearer_auth(&token).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 400 | 404), "{}", r.status());
}

#[tokio::test]
async fn login_with_a_100kb_password_gets_a_clean_4xx() {
    let (_sim, gw) = setup().await;
    let huge = "p".repeat(100 * 1024);
    let r = gw.login_response("admin", &huge, "/").await;
    let status = r.status().as_u16();
    assert!((400..500).contains(&status), "{status}");
    assert!(common::cookie_from(r.headers(), SESSION_COOKIE).is_none());
    // A password just under the form limit but over the password limit is a plain wrong password.
    let big = "p".repeat(40 * 1024);
    let r = gw.login_response("admin", &big, "/").await;
    assert_eq!(r.status(), 401);
    gw.login("admin", ADMIN_PW).await;
}

#[tokio::test]
async fn lockout_after_five_wrong_passwords_returns_429_with_retry_after() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    for i in 0..5 {
        let r = gw.login_response("admin", &format!("wrong-password-{i}"), "/").await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = gw.login_response("admin", "wrong-password-6", "/").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Even the right password waits from this address (the account at this address is locked).
    let r = gw.login_response("admin", ADMIN_PW, "/").await;
    assert_eq!(r.status(), 429);
    assert!(common::cookie_from(r.headers(), SESSION_COOKIE).is_none());
    let r = gw.login_response("ADMIN", ADMIN_PW, "/").await;
    assert_eq!(r.status(), 429, "the user name is normalised before the lockout check");
    gw.login("bob", common::USER_PW).await;
}

#[tokio::test]
async fn login_form_input_is_escaped_and_next_cannot_redirect_off_site() {
    let (_sim, gw) = setup().await;
    let r = gw.login_response("<script>alert(1)</script>", "whatever-password", "/").await;
    assert_eq!(r.status(), 401);
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");

    for next in
        ["//evil.test/x", "https://evil.test/", "/\\evil.test", "/a\r\nLocation: https://evil.test", "javascript:1"]
    {
        let r = gw.login_response("admin", ADMIN_PW, next).await;
        assert_eq!(r.status(), 303, "{next:?}");
        assert_eq!(r.headers()["location"], "/", "{next:?}");
    }
    let r = gw.login_response("admin", ADMIN_PW, "/view?filename=a.png&type=output").await;
    assert_eq!(r.headers()["location"], "/view?filename=a.png&type=output");
}

#[tokio::test]
async fn garbage_requests_never_crash_the_gateway() {
    let (_sim, gw) = setup().await;
    let token = gw.token("admin", "t").await;
    let cases: Vec<Vec<u8>> = vec![
        b"GARBAGE".to_vec(),
        b"GET / HTTP/9.9\r\nHost: gw".to_vec(),
        b"GET\x00/ HTTP/1.1\r\nHost: gw".to_vec(),
        format!("POST /prompt HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Length: -1")
            .into_bytes(),
        format!(
            "GET /queue HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nX-Big: {}",
            "h".repeat(512 * 1024)
        )
        .into_bytes(),
        b"DELETE /comfygate/api/tokens/notanumber HTTP/1.1\r\nHost: gw".to_vec(),
    ];
    for head in &cases {
        let (status, _, _) = raw_request(gw.addr, head, b"").await;
        assert!(
            status == 0 || (400..500).contains(&status),
            "{}: {status}",
            String::from_utf8_lossy(&head[..head.len().min(20)])
        );
    }
    let r = client().delete(gw.at("/comfygate/api/tokens/notanumber")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .delete(gw.at("/comfygate/api/tokens/99999999999999999999999"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = gw.whoami(&Auth::Bearer(&token)).await;
    assert_eq!(status, 200, "the gateway is still up");
}
