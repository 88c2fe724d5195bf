#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Tokens minted from a session: re-authentication, lifetime limits, and revocation with the
//! session that made them; security headers of the gateway's pages and API.

mod common;

use comfyui_sim::{SimConfig, Simulator};
use common::{Auth, Gateway, Options, SESSION_COOKIE, USER_PW, client, code_of};
use serde_json::{Value, json};

/// A gateway on which every session is already "old" (no re-authentication window).
async fn setup_without_window() -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), Options::default().auth("token_reauth_window = \"0s\"")).await;
    gw.add_user("bob", "user").await;
    (sim, gw)
}

async fn setup() -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("bob", "user").await;
    (sim, gw)
}

/// `POST /comfygate/api/tokens` with the session cookie; returns (status, body).
async fn mint(gw: &Gateway, cookie: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(gw.at("/comfygate/api/tokens"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn logout(gw: &Gateway, cookie: &str) {
    let header = format!("{SESSION_COOKIE}={cookie}");
    let page = client().get(gw.at("/logout")).header("cookie", &header).send().await.unwrap();
    let csrf = common::hidden_input(&page.text().await.unwrap(), "csrf").unwrap();
    let r = client()
        .post(gw.at("/logout"))
        .header("cookie", &header)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(common::form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
}

fn secret(body: &Value) -> String {
    body["token"].as_str().expect("a token in the answer").to_owned()
}

#[tokio::test]
async fn old_session_minting_a_token_without_password_gets_403_and_with_password_201() {
    let (_sim, gw) = setup_without_window().await;
    let cookie = gw.login("bob", USER_PW).await;
    let (status, body) = mint(&gw, &cookie, json!({"name": "script"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("password"), "{body}");
    let (status, body) = mint(&gw, &cookie, json!({"name": "script", "password": "wrong-password"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("password is wrong"), "{body}");
    let (status, body) = mint(&gw, &cookie, json!({"name": "script", "password": USER_PW})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(gw.whoami(&Auth::Bearer(&secret(&body))).await.0, 200);
}

#[tokio::test]
async fn wrong_token_passwords_count_towards_the_login_lockout() {
    let (_sim, gw) = setup_without_window().await;
    let cookie = gw.login("bob", USER_PW).await;
    let mut last = 0;
    for _ in 0..6 {
        last = mint(&gw, &cookie, json!({"name": "x", "password": "wrong-password"})).await.0;
    }
    assert_eq!(last, 429, "failures lock the account out");
}

#[tokio::test]
async fn young_session_mints_a_token_without_password() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("bob", USER_PW).await;
    let (status, body) = mint(&gw, &cookie, json!({"name": "script"})).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["expires_at"].is_string(), "a default expiry applies: {body}");
}

#[tokio::test]
async fn token_caller_mints_a_token_without_password() {
    let (_sim, gw) = setup_without_window().await;
    let token = gw.token("bob", "cli").await;
    let r = client()
        .post(gw.at("/comfygate/api/tokens"))
        .bearer_auth(&token)
        .json(&json!({"name": "child"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn non_admin_asking_for_a_never_or_too_long_expiry_gets_400_naming_the_limit() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("bob", USER_PW).await;
    for expires in ["never", "91d"] {
        let (status, body) = mint(&gw, &cookie, json!({"name": "forever", "expires": expires})).await;
        assert_eq!(status, 400, "{expires}: {body}");
        assert!(body["error"].as_str().unwrap().contains("90 days"), "{body}");
    }
    let (status, _) = mint(&gw, &cookie, json!({"name": "ok", "expires": "90d"})).await;
    assert_eq!(status, 201);
    let admin = gw.login("admin", common::ADMIN_PW).await;
    let (status, body) = mint(&gw, &admin, json!({"name": "forever", "expires": "never"})).await;
    assert_eq!(status, 201, "admins may: {body}");
}

#[tokio::test]
async fn logout_revokes_unkept_session_minted_tokens_but_keeps_kept_and_cli_ones() {
    let (_sim, gw) = setup().await;
    let cli = gw.token("bob", "cli").await;
    let cookie = gw.login("bob", USER_PW).await;
    let (_, unkept) = mint(&gw, &cookie, json!({"name": "unkept"})).await;
    let (_, kept) = mint(&gw, &cookie, json!({"name": "kept", "keep": true})).await;
    let other_session = gw.login("bob", USER_PW).await;
    let (_, other) = mint(&gw, &other_session, json!({"name": "other"})).await;
    logout(&gw, &cookie).await;

    let (status, body) = gw.whoami(&Auth::Bearer(&secret(&unkept))).await;
    assert_eq!((status, code_of(&body)), (401, "token_revoked"), "{body}");
    assert_eq!(gw.whoami(&Auth::Bearer(&secret(&kept))).await.0, 200);
    assert_eq!(gw.whoami(&Auth::Bearer(&cli)).await.0, 200);
    assert_eq!(gw.whoami(&Auth::Bearer(&secret(&other))).await.0, 200, "another session's token stays");
}

#[tokio::test]
async fn password_change_revokes_every_unkept_session_minted_token() {
    let (_sim, gw) = setup().await;
    let cli = gw.token("bob", "cli").await;
    let first = gw.login("bob", USER_PW).await;
    let second = gw.login("bob", USER_PW).await;
    let (_, a) = mint(&gw, &first, json!({"name": "a"})).await;
    let (_, b) = mint(&gw, &second, json!({"name": "b"})).await;
    let (_, kept) = mint(&gw, &second, json!({"name": "kept", "keep": true})).await;
    let r = client()
        .post(gw.at("/comfygate/api/password"))
        .header("cookie", format!("{SESSION_COOKIE}={first}"))
        .json(&json!({"current_password": USER_PW, "new_password": "another-long-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for t in [&a, &b] {
        let (status, body) = gw.whoami(&Auth::Bearer(&secret(t))).await;
        assert_eq!((status, code_of(&body)), (401, "token_revoked"), "{body}");
    }
    assert_eq!(gw.whoami(&Auth::Bearer(&secret(&kept))).await.0, 200);
    assert_eq!(gw.whoami(&Auth::Bearer(&cli)).await.0, 200);
}

#[tokio::test]
async fn cli_password_change_revokes_session_minted_tokens() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("bob", USER_PW).await;
    let (_, minted) = mint(&gw, &cookie, json!({"name": "a"})).await;
    gw.cli(&["user", "passwd", "bob", "--password-stdin"], Some("another-long-password")).await.ok();
    let (status, body) = gw.whoami(&Auth::Bearer(&secret(&minted))).await;
    assert_eq!((status, code_of(&body)), (401, "token_revoked"), "{body}");
}

#[tokio::test]
async fn account_page_offers_only_allowed_expiries_and_a_password_field() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("bob", USER_PW).await;
    let r = client()
        .get(gw.at("/comfygate/account"))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"name="password" type="password""#), "{html}");
    assert!(html.contains(r#"name="keep""#), "{html}");
    assert!(!html.contains(r#"value="never""#) && !html.contains(r#"value="365d""#), "{html}");
}

#[tokio::test]
async fn gateway_pages_and_api_answers_carry_security_headers() {
    let (_sim, gw) = setup().await;
    let cookie = gw.login("bob", USER_PW).await;
    let header = format!("{SESSION_COOKIE}={cookie}");
    let pages = [
        client().get(gw.at("/login")).send().await.unwrap(),
        client().get(gw.at("/comfygate/account")).header("cookie", &header).send().await.unwrap(),
        client().get(gw.at("/logout")).header("cookie", &header).send().await.unwrap(),
        // An error page rendered for a browser navigation.
        client()
            .get(gw.at("/manager/queue/status"))
            .header("cookie", &header)
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap(),
    ];
    for r in &pages {
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in ["default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"] {
            assert!(csp.contains(directive), "{}: {csp}", r.url());
        }
        assert_eq!(h["x-frame-options"], "DENY", "{}", r.url());
        assert_eq!(h["cache-control"], "no-store", "{}", r.url());
        assert_eq!(h["referrer-policy"], "same-origin", "{}", r.url());
    }
    assert_eq!(pages[3].status(), 403, "the error page is an error");
    let r = client().get(gw.at("/comfygate/api/whoami")).header("cookie", &header).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}
