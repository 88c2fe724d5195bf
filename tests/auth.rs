#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Authentication end to end: logins, sessions, tokens, and revocations in force on the next request.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::{ADMIN_PW, Auth, Gateway, SESSION_COOKIE, USER_PW, client, code_of, cookie_from, poll, set_cookie_line};
use serde_json::{Value, json};

async fn setup() -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    (sim, gw)
}

/// GET /queue through the gateway with a credential.
async fn queue(gw: &Gateway, auth: &Auth<'_>) -> (u16, Value) {
    gw.get_json("/queue", auth).await
}

#[tokio::test]
async fn unauthenticated_api_request_gets_401_json_with_code_and_bearer_challenge() {
    let (_sim, gw) = setup().await;
    for path in ["/queue", "/api/prompt", "/comfygate/api/whoami", "/comfygate/api/tokens"] {
        let r = client().get(gw.at(path)).header("accept", "application/json").send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(code_of(&body), "missing_credentials", "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = client().get(gw.at("/comfygate/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "health is public");
}

#[tokio::test]
async fn unauthenticated_browser_navigation_is_redirected_to_login_with_a_safe_next() {
    let (sim, gw) = setup().await;
    let nav = |path: &str| {
        client()
            .get(gw.at(path))
            .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
            .header("sec-fetch-mode", "navigate")
            .send()
    };
    let r = nav("/view?filename=a b.png&type=output").await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/login?next=%2Fview%3Ffilename%3Da%2520b.png%26type%3Doutput");
    let r = nav("/").await.unwrap();
    assert_eq!(r.headers()["location"], "/login?next=%2F");
    // A protocol-relative target never becomes an open redirect.
    let r = nav("//evil.test/x").await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/login?next=%2F");
    // The login page echoes the next only when it is local.
    let r = client().get(gw.at("/login?next=https%3A%2F%2Fevil.test%2F")).send().await.unwrap();
    let html = r.text().await.unwrap();
    assert_eq!(common::hidden_input(&html, "next").as_deref(), Some("/"));
    assert!(common::client_requests(&sim).is_empty(), "nothing reached ComfyUI: {:?}", common::client_requests(&sim));
}

#[tokio::test]
async fn login_sets_a_session_cookie_that_proxies_and_whoami_says_session() {
    let (sim, gw) = setup().await;
    let r = gw.login_response("admin", ADMIN_PW, "/queue").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/queue");
    let line = set_cookie_line(r.headers(), SESSION_COOKIE).unwrap();
    assert!(line.contains("HttpOnly"), "{line}");
    assert!(line.contains("SameSite=Lax"), "{line}");
    assert!(line.contains("Path=/"), "{line}");
    let cookie = cookie_from(r.headers(), SESSION_COOKIE).unwrap();
    assert!(!cookie.is_empty());

    let (status, body) = queue(&gw, &Auth::Cookie(&cookie)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("queue_running").is_some(), "{body}");
    // The queue is the gateway's; other ComfyUI routes are proxied under the session too.
    let (status, _) = gw.get_json("/api/embeddings", &Auth::Cookie(&cookie)).await;
    assert_eq!(status, 200);
    assert!(common::client_requests(&sim).iter().any(|r| r.uri == "/api/embeddings"));

    let (status, me) = gw.whoami(&Auth::Cookie(&cookie)).await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["auth"]["method"], "session");

    // Already logged in: the login page sends you on.
    let r = client()
        .get(gw.at("/login?next=/queue"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/queue");
}

#[tokio::test]
async fn login_with_a_wrong_password_gets_401_and_no_session_cookie() {
    let (_sim, gw) = setup().await;
    for (user, pw) in [("admin", "not-the-password"), ("nobody", ADMIN_PW), ("", "")] {
        let r = gw.login_response(user, pw, "/").await;
        assert_eq!(r.status(), 401, "{user}");
        assert!(cookie_from(r.headers(), SESSION_COOKIE).is_none_or(|v| v.is_empty()), "{user}");
        let html = r.text().await.unwrap();
        assert!(html.contains("invalid user name or password"), "{html}");
    }
}

#[tokio::test]
async fn login_without_the_csrf_cookie_is_refused() {
    let (_sim, gw) = setup().await;
    let (_cookie, csrf) = gw.login_form("/").await;
    let body = common::form(&[("username", "admin"), ("password", ADMIN_PW), ("csrf", &csrf), ("next", "/")]);
    let r = client()
        .post(gw.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(cookie_from(r.headers(), SESSION_COOKIE).is_none());
}

#[tokio::test]
async fn logout_revokes_the_session_and_the_old_cookie_gets_401() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let cookie_header = format!("{SESSION_COOKIE}={cookie}");

    // Without the form token: refused, session intact.
    let r = client()
        .post(gw.at("/logout"))
        .header("cookie", &cookie_header)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(queue(&gw, &Auth::Cookie(&cookie)).await.0, 200);

    let page = client().get(gw.at("/logout")).header("cookie", &cookie_header).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csrf = common::hidden_input(&page.text().await.unwrap(), "csrf").unwrap();
    let r = client()
        .post(gw.at("/logout"))
        .header("cookie", &cookie_header)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let cleared = set_cookie_line(r.headers(), SESSION_COOKIE).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    let (status, body) = queue(&gw, &Auth::Cookie(&cookie)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "session_ended");
    assert_eq!(gw.whoami(&Auth::Cookie(&cookie)).await.0, 401);
}

#[tokio::test]
async fn disabled_user_via_cli_is_rejected_with_401_on_the_next_request() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let token = gw.token("bob", "laptop").await;
    let cookie = gw.login("bob", USER_PW).await;
    assert_eq!(queue(&gw, &Auth::Bearer(&token)).await.0, 200);
    assert_eq!(queue(&gw, &Auth::Cookie(&cookie)).await.0, 200);

    gw.cli(&["user", "disable", "bob"], None).await.ok();
    let (status, body) = queue(&gw, &Auth::Bearer(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "user_disabled");
    let (status, _) = queue(&gw, &Auth::Cookie(&cookie)).await;
    assert_eq!(status, 401);
    // Logging in again is refused too.
    let r = gw.login_response("bob", USER_PW, "/").await;
    assert_eq!(r.status(), 401);
    assert!(cookie_from(r.headers(), SESSION_COOKIE).is_none());

    gw.cli(&["user", "enable", "bob"], None).await.ok();
    assert_eq!(queue(&gw, &Auth::Bearer(&token)).await.0, 200, "tokens survive a disable/enable");
}

#[tokio::test]
async fn disabled_user_via_api_patch_is_rejected_with_401_on_the_next_request() {
    let (_sim, gw) = setup().await;
    gw.add_user("carol", "user").await;
    let admin = gw.token("admin", "ops").await;
    let token = gw.token("carol", "nb").await;
    assert_eq!(queue(&gw, &Auth::Bearer(&token)).await.0, 200);

    let r = client()
        .patch(gw.at("/comfygate/api/users/carol"))
        .bearer_auth(&admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["username"], "carol");

    let (status, body) = queue(&gw, &Auth::Bearer(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "user_disabled");
}

#[tokio::test]
async fn disabled_user_session_is_rejected_with_user_disabled() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let cookie = gw.login("bob", USER_PW).await;
    gw.cli(&["user", "disable", "bob"], None).await.ok();
    let (status, body) = queue(&gw, &Auth::Cookie(&cookie)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "user_disabled", "{body}");
}

#[tokio::test]
async fn revoked_token_via_cli_is_rejected_with_401_on_the_next_request() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let token = gw.token("bob", "laptop").await;
    let other = gw.token("bob", "desktop").await;
    assert_eq!(queue(&gw, &Auth::Bearer(&token)).await.0, 200);

    let out = gw.cli(&["token", "revoke", "bob", "laptop"], None).await.ok();
    assert!(out.stdout.contains("laptop"), "{out:?}");
    let (status, body) = queue(&gw, &Auth::Bearer(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "token_revoked");
    let r = client().get(gw.at(&format!("/queue?token={token}"))).send().await.unwrap();
    assert_eq!(r.status(), 401, "revoked as a query token too");
    assert_eq!(queue(&gw, &Auth::Bearer(&other)).await.0, 200, "other tokens are untouched");
}

#[tokio::test]
async fn revoked_token_via_api_delete_is_rejected_with_401_on_the_next_request() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let cookie = gw.login("bob", USER_PW).await;
    let r = client()
        .post(gw.at("/comfygate/api/tokens"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .json(&json!({"name": "script", "expires": "30d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cg_"));
    let id = created["id"].as_i64().unwrap();
    assert_eq!(queue(&gw, &Auth::Bearer(&token)).await.0, 200);

    let (status, list) = gw.get_json("/comfygate/api/tokens", &Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    let listed = list.as_array().unwrap();
    assert!(listed.iter().any(|t| t["id"] == id && t["name"] == "script"), "{list}");
    assert!(!list.to_string().contains(&token), "secrets are never listed");

    let r = client().delete(gw.at(&format!("/comfygate/api/tokens/{id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (status, body) = queue(&gw, &Auth::Bearer(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "token_revoked");
}

#[tokio::test]
async fn users_cannot_revoke_other_users_tokens() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    gw.add_user("eve", "user").await;
    let bob = gw.token("bob", "laptop").await;
    let eve = gw.token("eve", "laptop").await;
    let (_, list) = gw.get_json("/comfygate/api/tokens", &Auth::Bearer(&bob)).await;
    let id = list[0]["id"].as_i64().unwrap();
    let r = client().delete(gw.at(&format!("/comfygate/api/tokens/{id}"))).bearer_auth(&eve).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());
    assert_eq!(queue(&gw, &Auth::Bearer(&bob)).await.0, 200);
    let (status, _) = gw.get_json("/comfygate/api/tokens?user=bob", &Auth::Bearer(&eve)).await;
    assert_eq!(status, 403);
    let (status, _) = gw.get_json("/comfygate/api/users", &Auth::Bearer(&eve)).await;
    assert_eq!(status, 403, "user management is for admins");
}

#[tokio::test]
async fn expired_token_is_rejected_with_token_expired() {
    let (_sim, gw) = setup().await;
    let out = gw.cli(&["token", "create", "admin", "--name", "short", "--expires", "1s"], None).await.ok();
    let token = out.stdout.trim().to_owned();
    let (status, body) = poll(Duration::from_secs(15), "the token to expire", || async {
        let (status, body) = queue(&gw, &Auth::Bearer(&token)).await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "token_expired");
    let out = gw.cli(&["token", "list", "admin"], None).await.ok();
    assert!(out.stdout.contains("expired"), "{out:?}");
}

#[tokio::test]
async fn password_change_via_api_ends_sessions() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let s1 = gw.login("bob", USER_PW).await;
    let s2 = gw.login("bob", USER_PW).await;
    let token = gw.token("bob", "nb").await;

    let change = |current: &str, new: &str| {
        client()
            .post(gw.at("/comfygate/api/password"))
            .header("cookie", format!("{SESSION_COOKIE}={s1}"))
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    let r = change("wrong-current-pw", "brand-new-password-1").await.unwrap();
    assert_eq!(r.status(), 403, "a wrong current password is refused, not an expired session");
    assert_eq!(queue(&gw, &Auth::Cookie(&s1)).await.0, 200);

    let r = change(USER_PW, "brand-new-password-1").await.unwrap();
    assert_eq!(r.status(), 204);
    for s in [&s1, &s2] {
        let (status, body) = queue(&gw, &Auth::Cookie(s)).await;
        assert_eq!(status, 401);
        assert_eq!(code_of(&body), "session_ended");
    }
    assert_eq!(queue(&gw, &Auth::Bearer(&token)).await.0, 200, "API tokens are not sessions");
    assert_eq!(gw.login_response("bob", USER_PW, "/").await.status(), 401);
    let s3 = gw.login("bob", "brand-new-password-1").await;
    assert_eq!(queue(&gw, &Auth::Cookie(&s3)).await.0, 200);
}

#[tokio::test]
async fn password_change_via_cli_and_admin_api_ends_sessions() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let s1 = gw.login("bob", USER_PW).await;
    gw.cli(&["user", "passwd", "bob", "--password-stdin"], Some("second-password-22")).await.ok();
    let (status, body) = queue(&gw, &Auth::Cookie(&s1)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "session_ended");

    let s2 = gw.login("bob", "second-password-22").await;
    let admin = gw.token("admin", "ops").await;
    let r = client()
        .patch(gw.at("/comfygate/api/users/bob"))
        .bearer_auth(&admin)
        .json(&json!({"password": "third-password-333"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(queue(&gw, &Auth::Cookie(&s2)).await.0, 401);
    gw.login("bob", "third-password-333").await;
}

#[tokio::test]
async fn bearer_and_query_tokens_work_for_http_and_whoami_names_the_token() {
    let (_sim, gw) = setup().await;
    gw.add_user("bob", "user").await;
    let token = gw.token("bob", "laptop").await;
    let (status, me) = gw.whoami(&Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "bob");
    assert_eq!(me["role"], "user");
    assert_eq!(me["auth"]["method"], "token");
    assert_eq!(me["auth"]["token_name"], "laptop");

    let r = client().get(gw.at(&format!("/queue?token={token}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(gw.at(&format!("/comfygate/api/whoami?token={token}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let (status, body) = queue(&gw, &Auth::Bearer("cg_thisisnotarealtokenatall0000000000000000")).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "unknown_token");
}

#[tokio::test]
async fn a_session_cookie_is_not_accepted_as_a_bearer_token() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let (status, _) = queue(&gw, &Auth::Bearer(&cookie)).await;
    assert_eq!(status, 401);
    let token = gw.token("admin", "t").await;
    let (status, _) = queue(&gw, &Auth::Cookie(&token)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn admin_api_creates_users_who_can_log_in() {
    let (_sim, gw) = setup().await;
    let admin = gw.token("admin", "ops").await;
    let r = client()
        .post(gw.at("/comfygate/api/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "Dave", "password": "dave-password-1", "role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["username"], "dave", "names are lower-cased");
    assert!(!user.to_string().contains("argon2"), "no hashes in the API: {user}");
    let r = client()
        .post(gw.at("/comfygate/api/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "dave", "password": "dave-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let cookie = gw.login("dave", "dave-password-1").await;
    let (_, me) = gw.whoami(&Auth::Cookie(&cookie)).await;
    assert_eq!(me["username"], "dave");

    let r = client().delete(gw.at("/comfygate/api/users/dave")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(gw.whoami(&Auth::Cookie(&cookie)).await.0, 401, "a deleted user's session ends at once");
}

#[tokio::test]
async fn cross_site_cookie_request_to_the_gateway_api_is_refused() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let r = client()
        .post(gw.at("/comfygate/api/tokens"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("origin", "https://evil.test")
        .json(&json!({"name": "stolen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, list) = gw.get_json("/comfygate/api/tokens", &Auth::Cookie(&cookie)).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "no token was created: {list}");
    // Same-origin is fine.
    let r = client()
        .post(gw.at("/comfygate/api/tokens"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("origin", gw.url.clone())
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn session_past_its_absolute_timeout_is_rejected_with_session_expired() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw =
        Gateway::start_with(&sim.url(), common::Options::default().auth("session_absolute_timeout = \"1s\"")).await;
    let cookie = gw.login("admin", ADMIN_PW).await;
    let (status, body) = poll(Duration::from_secs(15), "the session to expire", || async {
        let (status, body) = gw.whoami(&Auth::Cookie(&cookie)).await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "session_expired");
}

#[tokio::test]
async fn login_form_posted_from_another_site_is_refused() {
    let (_sim, gw) = setup().await;
    let (cookie, csrf) = gw.login_form("/").await;
    let body = common::form(&[("username", "admin"), ("password", ADMIN_PW), ("csrf", &csrf), ("next", "/")]);
    let r = client()
        .post(gw.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("comfygate_login_csrf={cookie}"))
        .header("origin", "https://evil.test")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(cookie_from(r.headers(), SESSION_COOKIE).is_none());
}

/// A browser's navigation to `path` with a session cookie, following up to 10 redirects.
async fn browse(gw: &Gateway, path: &str, session: &str) -> reqwest::Response {
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(10)).build().unwrap();
    browser
        .get(gw.at(path))
        .header("accept", "text/html,application/xhtml+xml")
        .header("sec-fetch-mode", "navigate")
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .send()
        .await
        .expect("no redirect loop")
}

#[tokio::test]
async fn a_bad_token_in_the_address_beside_a_valid_session_is_a_401_page_not_a_redirect_loop() {
    let (_sim, gw) = setup().await;
    let session = gw.login("admin", ADMIN_PW).await;
    let revoked = gw.token("admin", "old").await;
    gw.cli(&["token", "revoke", "admin", "old"], None).await.ok();
    let cases = [
        ("/?token=cg_stale", "unknown API token", "href=\"/\""),
        ("/comfygate/api/whoami?token=cg_stale", "unknown API token", "href=\"/comfygate/api/whoami\""),
        (
            &format!("/view?filename=a.png&token={revoked}&type=output"),
            "revoked",
            "href=\"/view?filename=a.png&amp;type=output\"",
        ),
        ("/login?next=%2F%3Ftoken%3Dcg_stale", "unknown API token", "href=\"/\""),
    ];
    for (path, why, link) in cases {
        let r = browse(&gw, path, &session).await;
        assert_eq!(r.status(), 401, "{path}");
        let page = r.text().await.unwrap();
        assert!(page.contains(why), "{path}: the page says why: {page}");
        assert!(page.contains(link), "{path}: a link to the page without the token: {page}");
        assert!(!page.contains("cg_stale") && !page.contains(&revoked), "{path}: the token is not echoed");
    }
    // Without the token, the session works.
    assert_eq!(browse(&gw, "/comfygate/api/whoami", &session).await.status(), 200);
}

#[tokio::test]
async fn a_browser_whose_session_ended_is_told_why_on_the_login_page() {
    let (_sim, gw) = setup().await;
    gw.add_user("alice", "user").await;
    let session = gw.login("alice", USER_PW).await;
    gw.cli(&["user", "disable", "alice"], None).await.ok();
    let r = browse(&gw, "/", &session).await;
    assert_eq!(r.url().path(), "/login");
    assert!(r.url().query().unwrap_or_default().contains("reason=user_disabled"), "{}", r.url());
    assert!(r.text().await.unwrap().contains("This account is disabled"));

    gw.cli(&["user", "enable", "alice"], None).await.ok();
    let session = gw.login("alice", USER_PW).await;
    gw.cli(&["user", "passwd", "alice", "--password-stdin"], Some("another-password-42")).await.ok();
    let r = browse(&gw, "/", &session).await;
    assert!(r.url().query().unwrap_or_default().contains("reason=session_ended"), "{}", r.url());
    assert!(r.text().await.unwrap().contains("Your session has ended"));
    // A made-up reason shows nothing.
    let r = client().get(gw.at("/login?reason=%3Cscript%3E")).send().await.unwrap();
    let page = r.text().await.unwrap();
    assert!(!page.contains("script") && !page.contains("class=\"notice\""), "{page}");
}
