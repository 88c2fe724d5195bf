#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator's console under `/comfygate/admin/`, end to end against the real binary:
//! admins only in every spelling, CSRF and Post/Redirect/Get on every form, one-time
//! passwords, unlock, disable, cancel, and everything from users and backends escaped.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::pool::{self, job, submit_ok};
use common::{ADMIN_PW, Auth, Gateway, SESSION_COOKIE, USER_PW, client, form, hidden_input, poll, raw_request};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// A GET with the session `cookie` (or none): status, headers, body.
async fn get(gw: &Gateway, path: &str, cookie: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut rb = client().get(gw.at(path));
    if let Some(c) = cookie {
        rb = rb.header("cookie", format!("{SESSION_COOKIE}={c}"));
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

/// A console page that must answer 200.
async fn page(gw: &Gateway, path: &str, cookie: &str) -> String {
    let (status, headers, body) = get(gw, path, Some(cookie)).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(headers["cache-control"], "no-store", "{path}");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"), "{path}");
    body
}

/// The form token of `cookie`'s session, read off a console page.
async fn csrf(gw: &Gateway, cookie: &str) -> String {
    hidden_input(&page(gw, "/comfygate/admin/users", cookie).await, "csrf").expect("csrf input")
}

/// A form POST with the session `cookie`.
async fn post(gw: &Gateway, path: &str, cookie: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(gw.at(path))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .unwrap()
}

/// A form POST that must be done with `303 See Other` back to `to`.
async fn post_ok(gw: &Gateway, path: &str, cookie: &str, pairs: &[(&str, &str)], to: &str) {
    let r = post(gw, path, cookie, pairs).await;
    let status = r.status().as_u16();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!((status, location.as_deref()), (303, Some(to)), "{path}: {}", r.text().await.unwrap_or_default());
}

/// The one-time secret shown on a page, if any.
fn secret(html: &str) -> Option<String> {
    let start = html.find("id=\"one-time-secret\">")? + "id=\"one-time-secret\">".len();
    Some(html[start..start + html[start..].find('<')?].to_owned())
}

/// The HTML of the live queue section, from its JSON endpoint.
async fn live_queue(gw: &Gateway, cookie: &str) -> String {
    let (status, _, body) = get(gw, "/comfygate/admin/live/queue", Some(cookie)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["html"].as_str().unwrap().to_owned()
}

/// The queue row of job `id` in a queue section, if it is there.
fn row<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let start = html.find(&format!("data-job=\"{id}\""))?;
    let end = html[start..].find("</tr>").map_or(html.len(), |e| start + e);
    Some(&html[start..end])
}

async fn one_backend() -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    (sim, gw)
}

#[tokio::test]
async fn an_admin_sees_both_backends_and_a_job_with_its_owner_go_from_waiting_to_running_to_done() {
    let (a, b) = (pool::sim(50).await, pool::sim(50).await);
    let gw = pool::gateway(&[&a, &b], 1).await;
    gw.add_user("carol.x", "user").await;
    let token = gw.token("carol.x", "t").await;
    let admin = gw.login("admin", ADMIN_PW).await;

    let backends = page(&gw, "/comfygate/admin/", &admin).await;
    for name in ["sim", "b2"] {
        assert!(backends.contains(&format!("data-backend=\"{name}\"")), "{backends}");
    }
    assert!(backends.contains("healthy") && backends.contains("0.3.64"), "health and ComfyUI version: {backends}");
    assert!(backends.contains("<meter"), "VRAM bars: {backends}");
    assert_eq!(page(&gw, "/comfygate/admin/backends", &admin).await.matches("data-backend=").count(), 2);

    // Two long jobs fill both backends; the third waits in the gateway.
    let long = [submit_ok(&gw, &token, job("a", 1, 3000)).await, submit_ok(&gw, &token, job("b", 2, 3000)).await];
    let id = submit_ok(&gw, &token, job("c", 3, 200)).await;
    let waiting = poll(DEADLINE, "the third job waiting", || async {
        let html = live_queue(&gw, &admin).await;
        row(&html, &id).filter(|r| r.contains("waiting in the gateway")).map(str::to_owned)
    })
    .await;
    assert!(waiting.contains("carol.x"), "owner's name: {waiting}");
    assert!(waiting.contains("class=\"reason\""), "why it waits: {waiting}");
    let page_html = page(&gw, "/comfygate/admin/queue", &admin).await;
    assert!(row(&page_html, &id).is_some() && row(&page_html, &long[0]).is_some(), "{page_html}");

    // The backends page names the running jobs' owner.
    let running = poll(DEADLINE, "a running job on the backends page", || async {
        let (_, _, body) = get(&gw, "/comfygate/admin/live/backends", Some(&admin)).await;
        let v: Value = serde_json::from_str(&body).ok()?;
        let html = v["html"].as_str()?.to_owned();
        html.contains("class=\"owner\">carol.x</b>").then_some(html)
    })
    .await;
    assert!(running.contains("started"), "{running}");

    poll(DEADLINE, "the third job running", || async {
        let html = live_queue(&gw, &admin).await;
        row(&html, &id).filter(|r| r.contains(">running<")).map(|_| ())
    })
    .await;
    poll(DEADLINE, "every job done", || async { live_queue(&gw, &admin).await.contains("queue-empty").then_some(()) })
        .await;
}

/// Every console route, with a method it takes.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/comfygate/admin"),
    ("GET", "/comfygate/admin/"),
    ("GET", "/comfygate/admin/backends"),
    ("GET", "/comfygate/admin/live/backends"),
    ("GET", "/comfygate/admin/queue"),
    ("GET", "/comfygate/admin/live/queue"),
    ("POST", "/comfygate/admin/queue/00000000-0000-0000-0000-000000000000/cancel"),
    ("GET", "/comfygate/admin/users"),
    ("POST", "/comfygate/admin/users"),
    ("GET", "/comfygate/admin/users/admin"),
    ("POST", "/comfygate/admin/users/admin/disable"),
    ("POST", "/comfygate/admin/users/admin/enable"),
    ("POST", "/comfygate/admin/users/admin/role"),
    ("POST", "/comfygate/admin/users/admin/password"),
    ("POST", "/comfygate/admin/users/admin/unlock"),
    ("POST", "/comfygate/admin/users/admin/tokens/1/revoke"),
    ("POST", "/comfygate/admin/users/admin/sessions/1/revoke"),
    ("GET", "/comfygate/admin/audit"),
    ("GET", "/comfygate/admin/console.js"),
    ("GET", "/comfygate/admin/no-such-page"),
    ("DELETE", "/comfygate/admin/users"),
    ("PUT", "/comfygate/admin/queue"),
];

#[tokio::test]
async fn a_user_gets_403_and_anonymous_401_or_the_login_page_on_every_console_route() {
    let (sim, gw) = one_backend().await;
    gw.add_user("bob", "user").await;
    let user = gw.login("bob", USER_PW).await;
    let user_token = gw.token("bob", "t").await;
    let user_csrf = hidden_input(&get(&gw, "/comfygate/account", Some(&user)).await.2, "csrf").unwrap();
    let admin = gw.login("admin", ADMIN_PW).await;
    sim.clear_requests();
    for (method, path) in ROUTES {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = form(&[("csrf", user_csrf.as_str()), ("username", "mallory"), ("role", "admin")]);
        let send = |rb: reqwest::RequestBuilder| {
            let body = body.clone();
            async move {
                rb.header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let with_cookie = client().request(m.clone(), gw.at(path)).header("cookie", format!("{SESSION_COOKIE}={user}"));
        assert_eq!(send(with_cookie).await, 403, "user session: {method} {path}");
        assert_eq!(send(client().request(m.clone(), gw.at(path)).bearer_auth(&user_token)).await, 403, "{path}");
        assert_eq!(send(client().request(m.clone(), gw.at(path))).await, 401, "anonymous: {method} {path}");
        if *method == "GET" {
            let r = client().get(gw.at(path)).header("accept", "text/html").send().await.unwrap();
            let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            assert_eq!(r.status(), 302, "{path}");
            assert!(location.starts_with("/login?next=%2Fcomfygate%2Fadmin"), "{path}: {location}");
        }
        if *method == "GET" {
            let r = client().get(gw.at(path)).header("cookie", format!("{SESSION_COOKIE}={admin}")).send().await;
            assert!(matches!(r.unwrap().status().as_u16(), 200 | 308 | 404), "the admin passes: {path}");
        }
    }
    let users = page(&gw, "/comfygate/admin/users", &admin).await;
    assert!(!users.contains("mallory"), "no user was created by a non-admin");
    assert!(common::client_requests(&sim).is_empty(), "nothing reached ComfyUI");

    // HEAD and unknown methods: the admin gets the page's headers and 405.
    let head = |cookie: &str| {
        client().head(gw.at("/comfygate/admin/queue")).header("cookie", format!("{SESSION_COOKIE}={cookie}")).send()
    };
    assert_eq!(head(&user).await.unwrap().status(), 403);
    assert_eq!(head(&admin).await.unwrap().status(), 200);
    let r = client().delete(gw.at("/comfygate/admin/users")).header("cookie", format!("{SESSION_COOKIE}={admin}"));
    assert_eq!(r.send().await.unwrap().status(), 405);
}

#[tokio::test]
async fn no_spelling_of_a_console_path_gets_past_the_admin_check() {
    let (sim, gw) = one_backend().await;
    gw.add_user("bob", "user").await;
    let user = gw.token("bob", "t").await;
    let admin = gw.token("admin", "t").await;
    sim.clear_requests();
    // (path as sent, what an admin gets)
    let spellings: &[(&str, &[u16])] = &[
        ("/comfygate/admin/", &[200]),
        ("/comfygate/admin/../account", &[404]),
        ("/comfygate/admin/%2e%2e/account", &[404]),
        ("/comfygate/admin/%2E%2E/%2e%2e/comfygate/account", &[404]),
        ("/comfygate/ADMIN/", &[404]),
        ("/comfygate/Admin/users", &[404]),
        ("/comfygate/admin%2Fusers", &[404]),
        ("/comfygate/admin%2fqueue", &[404]),
        ("/comfygate//admin/", &[404]),
        ("/comfygate/admin//users", &[404]),
        ("/comfygate/admin/users/", &[404]),
        ("/comfygate/admin/./queue", &[404]),
        ("/comfygate/admin/queue?x=/../account", &[200]),
        ("/comfygate/admin/users/admin%2F..%2F..%2Faccount", &[400, 404]),
        ("//comfygate/admin/", &[400, 404]),
        ("/comfygate/./admin/", &[404]),
        ("/comfygate/admin/..%2Faccount", &[404]),
    ];
    for (path, admin_gets) in spellings {
        for (method, allowed_for_user) in [("GET", &[403_u16, 400][..]), ("HEAD", &[403, 400]), ("POST", &[403, 400])] {
            let head = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {user}");
            let (status, resp, _) = raw_request(gw.addr, head.as_bytes(), b"").await;
            assert!(allowed_for_user.contains(&status), "user {method} {path}: {status}\n{resp}");
            let head = format!("{method} {path} HTTP/1.1\r\nHost: gw");
            let (status, _, _) = raw_request(gw.addr, head.as_bytes(), b"").await;
            assert!(matches!(status, 400 | 401), "anonymous {method} {path}: {status}");
        }
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {admin}");
        let (status, resp, _) = raw_request(gw.addr, head.as_bytes(), b"").await;
        assert!(admin_gets.contains(&status), "admin GET {path}: {status}\n{resp}");
    }
    assert!(common::client_requests(&sim).is_empty(), "none reached ComfyUI: {:?}", common::client_requests(&sim));
}

#[tokio::test]
async fn a_form_without_the_sessions_csrf_token_or_from_another_site_is_refused() {
    let (_sim, gw) = one_backend().await;
    let admin = gw.login("admin", ADMIN_PW).await;
    let other = gw.login("admin", ADMIN_PW).await;
    let token = csrf(&gw, &admin).await;
    let other_token = csrf(&gw, &other).await;
    assert_ne!(token, other_token);
    for bad in [&[("username", "eve"), ("role", "user")][..], &[("username", "eve"), ("role", "user"), ("csrf", "x")]] {
        assert_eq!(post(&gw, "/comfygate/admin/users", &admin, bad).await.status(), 403);
    }
    let others = [("username", "eve"), ("role", "user"), ("csrf", other_token.as_str())];
    assert_eq!(post(&gw, "/comfygate/admin/users", &admin, &others).await.status(), 403, "another session's token");
    let r = client()
        .post(gw.at("/comfygate/admin/users"))
        .header("cookie", format!("{SESSION_COOKIE}={admin}"))
        .header("origin", "https://evil.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("username", "eve"), ("role", "user"), ("csrf", &token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "from another site");
    assert!(!page(&gw, "/comfygate/admin/users", &admin).await.contains("eve"), "nobody was created");
    post_ok(
        &gw,
        "/comfygate/admin/users",
        &admin,
        &[("username", "eve"), ("role", "user"), ("csrf", &token)],
        "/comfygate/admin/users",
    )
    .await;
}

#[tokio::test]
async fn a_created_users_password_is_shown_once_to_its_session_and_a_refresh_creates_nobody() {
    let (_sim, gw) = one_backend().await;
    let admin = gw.login("admin", ADMIN_PW).await;
    let onlooker = gw.login("admin", ADMIN_PW).await;
    let token = csrf(&gw, &admin).await;
    let fields = [("username", "Frank.Lee"), ("role", "user"), ("csrf", token.as_str())];
    post_ok(&gw, "/comfygate/admin/users", &admin, &fields, "/comfygate/admin/users").await;
    assert!(secret(&page(&gw, "/comfygate/admin/users", &onlooker).await).is_none(), "another session sees nothing");
    let shown = page(&gw, "/comfygate/admin/users", &admin).await;
    let password = secret(&shown).expect("the password, once");
    assert!(password.len() >= 20, "{password}");
    assert!(shown.contains("data-user=\"frank.lee\""), "{shown}");
    // A refresh (the browser re-GETs where it was sent): no second user, no password again.
    let again = page(&gw, "/comfygate/admin/users", &admin).await;
    assert!(secret(&again).is_none(), "shown once");
    assert!(!again.contains(&password));
    assert_eq!(again.matches("data-user=\"frank.lee\"").count(), 1);
    let (_, users) = gw.get_json("/comfygate/api/users", &Auth::Bearer(&gw.token("admin", "t").await)).await;
    assert_eq!(users.as_array().unwrap().iter().filter(|u| u["username"] == "frank.lee").count(), 1);
    // It works, and it is in no log or audit line.
    gw.login("frank.lee", &password).await;
    let audit = gw.cli(&["audit", "--json", "--limit", "1000"], None).await.ok();
    assert!(audit.stdout.contains("user_created") && !audit.stdout.contains(&password));
    assert!(!gw.stderr().contains(&password));
    // The same name again is refused with a notice.
    post_ok(&gw, "/comfygate/admin/users", &admin, &fields, "/comfygate/admin/users").await;
    let refused = page(&gw, "/comfygate/admin/users", &admin).await;
    assert!(refused.contains("already exists") && secret(&refused).is_none(), "{refused}");

    // A reset password is shown once too, and the old one stops working.
    post_ok(
        &gw,
        "/comfygate/admin/users/frank.lee/password",
        &admin,
        &[("csrf", &token)],
        "/comfygate/admin/users/frank.lee",
    )
    .await;
    let reset = secret(&page(&gw, "/comfygate/admin/users/frank.lee", &admin).await).expect("new password");
    assert_ne!(reset, password);
    assert_eq!(gw.login_response("frank.lee", &password, "/").await.status(), 401);
    gw.login("frank.lee", &reset).await;
    // Not one's own: the session would end before the password is seen.
    post_ok(&gw, "/comfygate/admin/users/admin/password", &admin, &[("csrf", &token)], "/comfygate/admin/users/admin")
        .await;
    assert!(page(&gw, "/comfygate/admin/users/admin", &admin).await.contains("your account page"));
    gw.login("admin", ADMIN_PW).await;
}

/// Logs in with wrong passwords until the account is locked out (429).
async fn lock_out(gw: &Gateway, user: &str) {
    poll(DEADLINE, "a lockout", || async {
        let r = gw.login_response(user, "wrong-password-000", "/").await;
        (r.status() == 429).then_some(())
    })
    .await;
    assert_eq!(gw.login_response(user, USER_PW, "/").await.status(), 429, "even the right password waits");
}

#[tokio::test]
async fn a_locked_out_user_is_unlocked_by_the_console_and_by_the_cli() {
    let (_sim, gw) = one_backend().await;
    gw.add_user("dave", "user").await;
    let admin = gw.login("admin", ADMIN_PW).await;
    lock_out(&gw, "dave").await;
    let users = page(&gw, "/comfygate/admin/users", &admin).await;
    let start = users.find("data-user=\"dave\"").unwrap();
    assert!(users[start..].split("</tr>").next().unwrap().contains("locked"), "{users}");
    let token = csrf(&gw, &admin).await;
    post_ok(&gw, "/comfygate/admin/users/dave/unlock", &admin, &[("csrf", &token)], "/comfygate/admin/users/dave")
        .await;
    assert!(page(&gw, "/comfygate/admin/users/dave", &admin).await.contains("Unlocked"));
    gw.login("dave", USER_PW).await;

    lock_out(&gw, "dave").await;
    let out = gw.cli(&["user", "unlock", "dave"], None).await.ok();
    assert!(out.stdout.contains("unlocked"), "{out:?}");
    gw.login("dave", USER_PW).await;
    let audit = gw.cli(&["audit", "--json", "--event", "user_unlocked"], None).await.ok();
    assert_eq!(audit.stdout.lines().count(), 2, "{}", audit.stdout);
    assert_ne!(gw.cli(&["user", "unlock", "nobody"], None).await.code, 0);
}

#[tokio::test]
async fn disabling_a_user_in_the_console_ends_their_session_and_the_last_admin_stays() {
    let (_sim, gw) = one_backend().await;
    gw.add_user("erin", "user").await;
    let erin = gw.login("erin", USER_PW).await;
    assert_eq!(gw.whoami(&Auth::Cookie(&erin)).await.0, 200);
    let admin = gw.login("admin", ADMIN_PW).await;
    let token = csrf(&gw, &admin).await;
    post_ok(&gw, "/comfygate/admin/users/erin/disable", &admin, &[("csrf", &token)], "/comfygate/admin/users/erin")
        .await;
    assert_eq!(gw.whoami(&Auth::Cookie(&erin)).await.0, 401, "logged out on the next request");
    assert!(page(&gw, "/comfygate/admin/users/erin", &admin).await.contains("Disabled"));
    post_ok(&gw, "/comfygate/admin/users/erin/enable", &admin, &[("csrf", &token)], "/comfygate/admin/users/erin")
        .await;
    gw.login("erin", USER_PW).await;

    // The only admin can neither disable nor demote themselves.
    post_ok(&gw, "/comfygate/admin/users/admin/disable", &admin, &[("csrf", &token)], "/comfygate/admin/users/admin")
        .await;
    let refused = page(&gw, "/comfygate/admin/users/admin", &admin).await;
    assert!(refused.contains("no enabled admin"), "{refused}");
    let role = [("csrf", token.as_str()), ("role", "user")];
    post_ok(&gw, "/comfygate/admin/users/admin/role", &admin, &role, "/comfygate/admin/users/admin").await;
    assert!(page(&gw, "/comfygate/admin/users/admin", &admin).await.contains("no enabled admin"));
    assert_eq!(gw.whoami(&Auth::Cookie(&admin)).await.1["role"], "admin");
}

#[tokio::test]
async fn a_users_tokens_and_sessions_are_listed_and_revoked_from_their_page() {
    let (_sim, gw) = one_backend().await;
    gw.add_user("gil", "user").await;
    let session = gw.login("gil", USER_PW).await;
    let secret_token = gw.token("gil", "<b>laptop</b>").await;
    let admin = gw.login("admin", ADMIN_PW).await;
    let html = page(&gw, "/comfygate/admin/users/gil", &admin).await;
    assert!(html.contains("&#60;b&#62;laptop&#60;/b&#62;") && !html.contains("<b>laptop"), "escaped: {html}");
    assert!(!html.contains(&secret_token), "never the secret");
    let token_path = html.split("action=\"").find(|a| a.contains("/tokens/")).unwrap().split('"').next().unwrap();
    let session_path = html.split("action=\"").find(|a| a.contains("/sessions/")).unwrap().split('"').next().unwrap();
    let token = csrf(&gw, &admin).await;
    post_ok(&gw, token_path, &admin, &[("csrf", &token)], "/comfygate/admin/users/gil").await;
    assert_eq!(gw.whoami(&Auth::Bearer(&secret_token)).await.0, 401);
    post_ok(&gw, session_path, &admin, &[("csrf", &token)], "/comfygate/admin/users/gil").await;
    assert_eq!(gw.whoami(&Auth::Cookie(&session)).await.0, 401);
    let after = page(&gw, "/comfygate/admin/users/gil", &admin).await;
    assert!(after.contains("No open sessions") && after.contains("No tokens"), "{after}");
    let audit = gw.cli(&["audit", "--json", "--user", "gil", "--event", "session_revoked"], None).await.ok();
    assert!(audit.stdout.contains("\"by\":\"admin\""), "{}", audit.stdout);
}

#[tokio::test]
async fn a_waiting_job_is_cancelled_from_the_queue_page() {
    let sim = pool::sim(50).await;
    let gw = pool::gateway(&[&sim], 1).await;
    gw.add_user("hana", "user").await;
    let token = gw.token("hana", "t").await;
    let admin = gw.login("admin", ADMIN_PW).await;
    let first = submit_ok(&gw, &token, job("a", 1, 4000)).await;
    let second = submit_ok(&gw, &token, job("b", 2, 50)).await;
    poll(DEADLINE, "the second job waiting", || async {
        row(&live_queue(&gw, &admin).await, &second).filter(|r| r.contains("waiting in the gateway")).map(|_| ())
    })
    .await;
    let html = page(&gw, "/comfygate/admin/queue", &admin).await;
    let action = format!("/comfygate/admin/queue/{second}/cancel");
    assert!(html.contains(&format!("action=\"{action}\"")), "{html}");
    let form_token = hidden_input(&html, "csrf").unwrap();
    assert_eq!(post(&gw, &action, &admin, &[]).await.status(), 403, "no CSRF token");
    post_ok(&gw, &action, &admin, &[("csrf", &form_token)], "/comfygate/admin/queue").await;
    let after = page(&gw, "/comfygate/admin/queue", &admin).await;
    assert!(after.contains("cancelled"), "the notice: {after}");
    assert!(row(&after, &second).is_none() && row(&after, &first).is_some(), "{after}");
    // Cancelling it again is a notice, not an error.
    post_ok(&gw, &action, &admin, &[("csrf", &form_token)], "/comfygate/admin/queue").await;
    assert!(page(&gw, "/comfygate/admin/queue", &admin).await.contains("no longer in the queue"));
    let audit = gw.cli(&["audit", "--json", "--event", "admin_jobs_deleted"], None).await.ok();
    assert!(audit.stdout.contains(&second) && audit.stdout.contains("\"via\":\"console\""), "{}", audit.stdout);
    // The running one is interrupted.
    let action = format!("/comfygate/admin/queue/{first}/cancel");
    poll(DEADLINE, "the first job running", || async {
        row(&live_queue(&gw, &admin).await, &first).filter(|r| r.contains(">running<")).map(|_| ())
    })
    .await;
    post_ok(&gw, &action, &admin, &[("csrf", &form_token)], "/comfygate/admin/queue").await;
    poll(DEADLINE, "the queue empty", || async { live_queue(&gw, &admin).await.contains("queue-empty").then_some(()) })
        .await;
}

#[tokio::test]
async fn text_from_users_and_backends_comes_out_escaped() {
    let evil_device = "<script>alert('dev')</script>\"gpu";
    let evil_model = "<img src=x onerror=alert(1)>.safetensors";
    let sim = Simulator::start(SimConfig {
        device_name: evil_device.to_owned(),
        ..SimConfig::default().with_model("checkpoints", evil_model)
    })
    .await
    .unwrap();
    let gw = pool::gateway(&[&sim], 1).await;
    let token = gw.token("admin", "api").await;
    let id = submit_ok(&gw, &token, pool::model_job(evil_model, "m")).await;
    pool::finished(&gw, &token, &id).await;
    // A hostile browser name lands in the audit log.
    let r = client()
        .get(gw.at("/comfygate/api/whoami"))
        .header("user-agent", "<script>alert('ua')</script>")
        .bearer_auth("cg_not_a_real_token_at_all_0000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let admin = gw.login("admin", ADMIN_PW).await;
    let backends = page(&gw, "/comfygate/admin/backends", &admin).await;
    assert!(backends.contains("&#60;script&#62;alert(&#39;dev&#39;)&#60;/script&#62;&#34;gpu"), "{backends}");
    assert!(backends.contains("&#60;img src=x onerror=alert(1)&#62;.safetensors"), "last model: {backends}");
    for raw in ["<script>alert", "<img src=x"] {
        assert!(!backends.contains(raw), "{raw} unescaped");
    }
    let (_, _, live) = get(&gw, "/comfygate/admin/live/backends", Some(&admin)).await;
    assert!(!live.contains("<script>alert") && !live.contains("<img src=x"), "{live}");
    let audit = page(&gw, "/comfygate/admin/audit", &admin).await;
    assert!(!audit.contains("<script>alert"), "{audit}");
    let bad = page(&gw, "/comfygate/admin/audit?user=%3Cscript%3Exx&since=%3Cb%3Ezz", &admin).await;
    assert!(!bad.contains("<script>xx") && !bad.contains("<b>zz") && bad.contains("no duration"), "{bad}");
}

#[tokio::test]
async fn the_audit_log_filters_by_user_event_and_age_newest_first_100_to_a_page() {
    let (_sim, gw) = one_backend().await;
    let token = gw.token("admin", "api").await;
    for i in 0..105 {
        let r = client()
            .post(gw.at("/comfygate/api/tokens"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": format!("t{i:03}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let admin = gw.login("admin", ADMIN_PW).await;
    let first = page(&gw, "/comfygate/admin/audit?event=token_created&user=admin&since=1h", &admin).await;
    assert_eq!(first.matches("class=\"event\"").count(), 100);
    assert!(first.find("t104").unwrap() < first.find("t100").unwrap(), "newest first");
    let older = first.split("href=\"").find(|h| h.contains("page=2")).expect("a next page").split('"').next().unwrap();
    let older = older.replace("&#38;", "&");
    let second = page(&gw, &older, &admin).await;
    let rows = second.matches("class=\"event\"").count();
    assert_eq!(rows, 5 + 1, "the 5 oldest and the CLI's first token: {older}");
    let logins = page(&gw, "/comfygate/admin/audit?event=login", &admin).await;
    assert!(!logins.contains("token_created"), "{logins}");
}

#[tokio::test]
async fn the_account_page_links_admins_to_the_console() {
    let (_sim, gw) = one_backend().await;
    gw.add_user("ivy", "user").await;
    let admin = gw.login("admin", ADMIN_PW).await;
    let user = gw.login("ivy", USER_PW).await;
    assert!(get(&gw, "/comfygate/account", Some(&admin)).await.2.contains("href=\"/comfygate/admin/\""));
    assert!(!get(&gw, "/comfygate/account", Some(&user)).await.2.contains("/comfygate/admin/"));
}

#[tokio::test]
async fn a_backend_a_reload_removes_shows_as_retiring_while_its_job_runs() {
    let (kept, removed) = (pool::sim(50).await, pool::sim(50).await);
    let gw = pool::gateway(&[&kept, &removed], 1).await;
    let token = gw.token("admin", "api").await;
    let admin = gw.login("admin", ADMIN_PW).await;
    submit_ok(&gw, &token, job("a", 1, 4000)).await;
    submit_ok(&gw, &token, job("b", 2, 4000)).await;
    let b2_row = |html: &str| {
        let start = html.find("data-backend=\"b2\"").unwrap();
        html[start..].split("</tr>").next().unwrap().to_owned()
    };
    poll(DEADLINE, "a job running on b2", || async {
        let html = page(&gw, "/comfygate/admin/backends", &admin).await;
        b2_row(&html).contains("class=\"owner\">admin</b>").then_some(())
    })
    .await;
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let start = config.find("\n[[backends]]\nname = \"b2\"").unwrap();
    let end = config[start + 1..].find("\n[").map_or(config.len(), |i| start + 1 + i);
    std::fs::write(&gw.config, format!("{}{}", &config[..start], &config[end..])).unwrap();
    gw.cli(&["reload"], None).await.ok();
    let html = page(&gw, "/comfygate/admin/backends", &admin).await;
    assert!(b2_row(&html).contains("retiring"), "{html}");
}

#[tokio::test]
async fn inside_comfyui_the_frontend_loads_the_gateways_account_link_beside_the_backends_extensions() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("alice", "user").await;
    let cookie = gw.login("alice", USER_PW).await;
    for list in ["/extensions", "/api/extensions"] {
        let (status, _, body) = get(&gw, list, Some(&cookie)).await;
        assert_eq!(status, 200, "{list}: {body}");
        let scripts: Vec<String> = serde_json::from_str(&body).unwrap();
        assert_eq!(scripts, ["/extensions/comfygate/account.js"], "{list}: the simulator's (none) and the gateway's");
    }
    let (status, headers, script) = get(&gw, "/extensions/comfygate/account.js", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/javascript"), "{headers:?}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(script.contains("/comfygate/api/whoami") && script.contains("/logout"), "{script}");
    assert!(!script.contains("innerHTML"), "names are set as text");
    assert!(!common::client_requests(&sim).iter().any(|r| r.uri.contains("comfygate")), "never forwarded");
    let (status, _, _) = get(&gw, "/extensions", None).await;
    assert_eq!(status, 401, "behind authentication like every ComfyUI route");
}

#[tokio::test]
async fn the_users_page_shows_their_jobs_with_queue_places_and_signs_out_their_other_sessions() {
    let backend = pool::sim(3_000).await;
    let gw = pool::gateway(&[&backend], 1).await;
    gw.add_user("alice", "user").await;
    let token = gw.token("alice", "jobs").await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(submit_ok(&gw, &token, job("mine", i, 3_000)).await);
        }
        ids
    };
    let here = gw.login("alice", USER_PW).await;
    let elsewhere = gw.login("alice", USER_PW).await;
    let account = poll(DEADLINE, "the first job running", || async {
        let (_, _, body) = get(&gw, "/comfygate/account", Some(&here)).await;
        body.contains("running").then_some(body)
    })
    .await;
    for id in &ids {
        assert!(account.contains(id.as_str()), "every job listed: {account}");
    }
    assert!(
        account.contains("waiting, 1st in the queue") && account.contains("waiting, 2nd in the queue"),
        "{account}"
    );
    assert_eq!(account.matches("<b>this session</b>").count(), 1, "{account}");
    assert_eq!(account.matches(">Sign out</button>").count(), 1, "the other session: {account}");

    let action = account.split("action=\"/comfygate/account/sessions/").nth(1).unwrap();
    let other: i64 = action.split('/').next().unwrap().parse().unwrap();
    let csrf = hidden_input(&account, "csrf").unwrap();
    let r = client()
        .post(gw.at(&format!("/comfygate/account/sessions/{other}/revoke")))
        .header("cookie", format!("{SESSION_COOKIE}={here}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(gw.whoami(&Auth::Cookie(&elsewhere)).await.0, 401, "the other session ended");
    assert_eq!(gw.whoami(&Auth::Cookie(&here)).await.0, 200, "this one did not");
    // An ended session is not open any more; another user's is not hers to end; without the
    // form token nothing happens.
    let post = |id: i64, csrf: String| {
        client()
            .post(gw.at(&format!("/comfygate/account/sessions/{id}/revoke")))
            .header("cookie", format!("{SESSION_COOKIE}={here}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", &csrf)]))
            .send()
    };
    assert_eq!(post(other, csrf.clone()).await.unwrap().status(), 404);
    let admin = gw.login("admin", ADMIN_PW).await;
    let admin_other = gw.login("admin", ADMIN_PW).await;
    let (_, _, admin_page) = get(&gw, "/comfygate/account", Some(&admin)).await;
    let action = admin_page.split("action=\"/comfygate/account/sessions/").nth(1).unwrap();
    let admins: i64 = action.split('/').next().unwrap().parse().unwrap();
    assert_eq!(post(admins, csrf.clone()).await.unwrap().status(), 404, "not alice's session");
    assert_eq!(post(admins, "forged".to_owned()).await.unwrap().status(), 403, "no form token, no action");
    assert_eq!(gw.whoami(&Auth::Cookie(&admin_other)).await.0, 200, "the admin's sessions are untouched");
    assert_eq!(gw.whoami(&Auth::Cookie(&admin)).await.0, 200);
}

#[tokio::test]
async fn a_drained_backend_takes_no_new_job_until_resumed_and_both_are_audited() {
    let (first, second) = (pool::sim(2_000).await, pool::sim(200).await);
    let gw = pool::gateway(&[&first, &second], 1).await;
    let admin = gw.login("admin", ADMIN_PW).await;
    let token = gw.token("admin", "jobs").await;
    let csrf = csrf(&gw, &admin).await;
    let to = "/comfygate/admin/backends";
    post_ok(&gw, "/comfygate/admin/backends/b2/drain", &admin, &[("csrf", &csrf)], to).await;
    let shown = page(&gw, to, &admin).await;
    assert!(shown.contains("drained") && shown.contains("/comfygate/admin/backends/b2/resume"), "{shown}");

    let busy = submit_ok(&gw, &token, job("drain", 1, 2_000)).await;
    let next = submit_ok(&gw, &token, job("drain", 2, 200)).await;
    poll(DEADLINE, "the first job on the first backend", || async {
        let q: Value = client().get(format!("{}/queue", first.url())).send().await.ok()?.json().await.ok()?;
        (q["queue_running"][0][1].as_str()? == busy).then_some(())
    })
    .await;
    let q: Value = client().get(format!("{}/queue", second.url())).send().await.unwrap().json().await.unwrap();
    let h: Value = client().get(format!("{}/history", second.url())).send().await.unwrap().json().await.unwrap();
    assert!(q["queue_running"].as_array().unwrap().is_empty() && h.as_object().unwrap().is_empty(), "nothing on b2");
    let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
    assert_eq!(state["backends"][1]["drained"], true, "{state}");

    post_ok(&gw, "/comfygate/admin/backends/b2/resume", &admin, &[("csrf", &csrf)], to).await;
    let done = common::pool::finished(&gw, &token, &next).await;
    assert_eq!(done["status"]["status_str"], "success");
    let h: Value = client().get(format!("{}/history/{next}", second.url())).send().await.unwrap().json().await.unwrap();
    assert!(h.get(&next).is_some(), "after the resume the waiting job ran on b2: {h}");
    let audit = std::fs::read_to_string(gw.dir.path().join("data").join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"backend_drained\"") && audit.contains("\"backend_resumed\""), "{audit}");

    // Only admins, only with the session's form token.
    gw.add_user("bob", "user").await;
    let bob = gw.login("bob", USER_PW).await;
    assert_eq!(post(&gw, "/comfygate/admin/backends/b2/drain", &bob, &[("csrf", &csrf)]).await.status(), 403);
    assert_eq!(post(&gw, "/comfygate/admin/backends/b2/drain", &admin, &[("csrf", "forged")]).await.status(), 403);
    let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
    assert_eq!(state["backends"][1]["drained"], false, "{state}");
}

#[tokio::test]
async fn an_admin_sets_a_users_limits_and_removes_a_user_from_their_page() {
    let backend = pool::sim(3_000).await;
    let gw = pool::gateway(&[&backend], 1).await;
    let admin = gw.login("admin", ADMIN_PW).await;
    gw.add_user("carol", "user").await;
    let carol = gw.token("carol", "c").await;
    let csrf = csrf(&gw, &admin).await;
    let to = "/comfygate/admin/users/carol";
    let limits = "/comfygate/admin/users/carol/limits";
    post_ok(&gw, limits, &admin, &[("csrf", &csrf), ("max_waiting", "two"), ("max_upload", "")], to).await;
    assert!(page(&gw, to, &admin).await.contains("`two` is not a whole number"), "a bad value is refused, said once");
    post_ok(&gw, limits, &admin, &[("csrf", &csrf), ("max_waiting", "1"), ("max_upload", "20MiB")], to).await;
    let shown = page(&gw, to, &admin).await;
    assert!(shown.contains("Limits of `carol` saved"), "{shown}");
    assert!(shown.contains("value=\"1\"") && shown.contains("value=\"20.0 MiB\""), "{shown}");
    // What the form shows saves again unchanged.
    post_ok(&gw, limits, &admin, &[("csrf", &csrf), ("max_waiting", "1"), ("max_upload", "20.0 MiB")], to).await;
    assert!(page(&gw, to, &admin).await.contains("value=\"20.0 MiB\""));
    let out = gw.cli(&["user", "limits", "carol"], None).await.ok();
    assert!(out.stdout.contains("max-waiting          1"), "{out:?}");
    let running = submit_ok(&gw, &carol, job("c", 1, 3_000)).await;
    poll(DEADLINE, "carol's first job running", || async {
        let q: Value = client().get(format!("{}/queue", backend.url())).send().await.ok()?.json().await.ok()?;
        (q["queue_running"][0][1].as_str()? == running).then_some(())
    })
    .await;
    submit_ok(&gw, &carol, job("c", 2, 100)).await;
    let (status, _) = common::pool::submit(&gw, &carol, job("c", 3, 100)).await;
    assert_eq!(status, 429, "held to max_waiting = 1");

    post_ok(&gw, "/comfygate/admin/users/admin/remove", &admin, &[("csrf", &csrf)], "/comfygate/admin/users/admin")
        .await;
    assert!(page(&gw, "/comfygate/admin/users/admin", &admin).await.contains("cannot remove your own account"));
    post_ok(&gw, "/comfygate/admin/users/carol/remove", &admin, &[("csrf", &csrf)], "/comfygate/admin/users").await;
    assert!(page(&gw, "/comfygate/admin/users", &admin).await.contains("Removed `carol`"));
    assert_eq!(gw.whoami(&Auth::Bearer(&carol)).await.0, 401, "her token went with her");
    let audit = std::fs::read_to_string(gw.dir.path().join("data").join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"user_removed\"") && audit.contains("\"user_changed\""), "{audit}");
}

#[tokio::test]
async fn a_token_made_on_the_account_page_is_shown_once_after_a_redirect_so_a_refresh_makes_no_second_one() {
    let (_sim, gw) = one_backend().await;
    gw.add_user("alice", "user").await;
    let alice = gw.login("alice", USER_PW).await;
    let (_, _, account) = get(&gw, "/comfygate/account", Some(&alice)).await;
    let csrf = hidden_input(&account, "csrf").unwrap();
    let pairs = [("csrf", csrf.as_str()), ("name", "laptop"), ("expires", "30d"), ("password", USER_PW)];
    let r = post(&gw, "/comfygate/account/tokens", &alice, &pairs).await;
    assert_eq!(r.status(), 303, "Post/Redirect/Get");
    assert_eq!(r.headers()["location"], "/comfygate/account", "the secret is never in the address");
    let (_, _, shown) = get(&gw, "/comfygate/account", Some(&alice)).await;
    let token = secret(&shown).expect("shown once");
    assert!(token.starts_with("cg_"), "{token}");
    assert_eq!(gw.whoami(&Auth::Bearer(&token)).await.0, 200, "the token works");
    // The refresh: the page again, without the secret, and still one token.
    let (_, _, again) = get(&gw, "/comfygate/account", Some(&alice)).await;
    assert!(secret(&again).is_none() && !again.contains(&token), "shown only once");
    let out = gw.cli(&["token", "list", "alice"], None).await.ok();
    assert_eq!(out.stdout.lines().filter(|l| l.contains("laptop")).count(), 1, "{out:?}");
    // Another session of the same user never sees it.
    let other = gw.login("alice", USER_PW).await;
    let r =
        post(&gw, "/comfygate/account/tokens", &alice, &[("csrf", &csrf), ("name", "second"), ("password", USER_PW)])
            .await;
    assert_eq!(r.status(), 303);
    let (_, _, elsewhere) = get(&gw, "/comfygate/account", Some(&other)).await;
    assert!(secret(&elsewhere).is_none(), "bound to the session that made it");
}
