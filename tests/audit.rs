#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The audit log: one JSON line per security event in `<data_dir>/audit.jsonl` and in the
//! store, produced through the real gateway (HTTP) and the CLI; never a credential; intact
//! under concurrency; rotated by size; and an unwritable log refuses what it would record.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::{ADMIN_PW, Auth, Gateway, Options, SESSION_COOKIE, USER_PW, client, form, hidden_input};
use serde_json::{Value, json};

/// A user agent with control characters (JSON escapes them) and a request id to follow.
const AGENT: &str = "audit-test/1.0\n\u{1b}[31mred";
const REQUEST_ID: &str = "audit-request-0001";

async fn setup(opts: Options) -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start_with(&sim.url(), opts).await;
    gw.add_user("bob", "user").await;
    (sim, gw)
}

fn data_dir(gw: &Gateway) -> PathBuf {
    gw.dir.path().join("data")
}

/// Every line of the audit file, parsed (panics on a line that is not one JSON object).
fn file_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// The store's audit rows, through `comfygate audit --json`.
async fn store_lines(gw: &Gateway, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "--json"];
    if !filters.contains(&"--limit") {
        args.extend(["--limit", "100000"]);
    }
    args.extend_from_slice(filters);
    let out = gw.cli(&args, None).await.ok();
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The lines of `event` concerning `user`.
fn of<'a>(lines: &'a [Value], event: &str, user: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == event && l["user"] == user).collect()
}

#[track_caller]
fn one<'a>(lines: &'a [Value], event: &str, user: &str) -> &'a Value {
    let found = of(lines, event, user);
    assert_eq!(found.len(), 1, "exactly one {event} of {user} in:\n{}", dump(lines));
    found[0]
}

fn dump(lines: &[Value]) -> String {
    lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

/// A login through the form with our user agent; (status, session cookie, body).
async fn login(gw: &Gateway, user: &str, password: &str) -> (u16, Option<String>, String) {
    let (csrf_cookie, csrf) = gw.login_form("/").await;
    let r = client()
        .post(gw.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("comfygate_login_csrf={csrf_cookie}"))
        .header("user-agent", AGENT.replace('\n', " ").replace('\u{1b}', ""))
        .header("x-request-id", REQUEST_ID)
        .body(form(&[("username", user), ("password", password), ("csrf", &csrf), ("next", "/")]))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = common::cookie_from(r.headers(), SESSION_COOKIE).filter(|c| !c.is_empty());
    (status, cookie, r.text().await.unwrap_or_default())
}

async fn logout(gw: &Gateway, cookie: &str) {
    let header = format!("{SESSION_COOKIE}={cookie}");
    let page = client().get(gw.at("/logout")).header("cookie", &header).send().await.unwrap();
    let csrf = hidden_input(&page.text().await.unwrap(), "csrf").unwrap();
    let r = client()
        .post(gw.at("/logout"))
        .header("cookie", &header)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
}

/// A JSON request to the gateway's API with a credential; (status, body).
async fn api(gw: &Gateway, method: reqwest::Method, path: &str, auth: &Auth<'_>, body: Option<Value>) -> (u16, Value) {
    let mut rb = auth.apply(client().request(method, gw.at(path)));
    if let Some(body) = body {
        rb = rb.json(&body);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Every file under `dir`, as bytes (the store's database and journal included).
fn every_file(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(every_file(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn every_event_is_one_line_in_the_file_and_the_store_and_no_credential_is_written_anywhere() {
    let (_sim, gw) = setup(Options::default().auth("login_max_failures = 3")).await;
    let mut secrets: Vec<String> = vec![ADMIN_PW.to_owned(), USER_PW.to_owned()];

    // Logins: unknown user and wrong password look alike to the client, not in the audit.
    let (unknown, _, unknown_page) = login(&gw, "nobody", "whatever-password-1").await;
    let (wrong, _, wrong_page) = login(&gw, "bob", "wrong-password-2").await;
    secrets.extend(["whatever-password-1".to_owned(), "wrong-password-2".to_owned()]);
    assert_eq!((unknown, wrong), (401, 401));
    let message = "invalid user name or password";
    assert!(unknown_page.contains(message) && wrong_page.contains(message));
    let (ok, bob_cookie, _) = login(&gw, "bob", USER_PW).await;
    assert_eq!(ok, 303);
    let bob_cookie = bob_cookie.unwrap();
    secrets.push(bob_cookie.clone());
    let bob = Auth::Cookie(&bob_cookie);

    // Tokens: made in the session, first used from an address (once however often), revoked.
    let (status, token) =
        api(&gw, reqwest::Method::POST, "/comfygate/api/tokens", &bob, Some(json!({"name": "nb"}))).await;
    assert_eq!(status, 201, "{token}");
    let secret = token["token"].as_str().unwrap().to_owned();
    secrets.push(secret.clone());
    for _ in 0..3 {
        assert_eq!(gw.whoami(&Auth::Bearer(&secret)).await.0, 200);
    }
    // Policy denials: an admin route, and a cross-site use of the session cookie.
    let r = client().get(gw.at("/internal/logs")).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(gw.at("/api/prompt"))
        .header("cookie", format!("{SESSION_COOKIE}={bob_cookie}"))
        .header("origin", "https://evil.test")
        .header("sec-fetch-site", "cross-site")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let id = token["id"].as_i64().unwrap();
    let (status, _) = api(&gw, reqwest::Method::DELETE, &format!("/comfygate/api/tokens/{id}"), &bob, None).await;
    assert_eq!(status, 204);

    // A quota refusal (the limit set with the CLI is itself an account change).
    gw.cli(&["user", "limits", "bob", "--max-workflow", "64B"], None).await.ok();
    let cli_token = gw.token("bob", "cli-made").await;
    secrets.push(cli_token.clone());
    let r = client()
        .post(gw.at("/api/prompt"))
        .bearer_auth(&cli_token)
        .json(&json!({"prompt": common::workflow("quota", 1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());

    // The user's own password change, then logout (of a fresh session).
    let new_pw = "bob-new-password-789";
    secrets.push(new_pw.to_owned());
    let body = json!({"current_password": USER_PW, "new_password": new_pw});
    let (status, _) = api(&gw, reqwest::Method::POST, "/comfygate/api/password", &bob, Some(body)).await;
    assert_eq!(status, 204);
    let (_, second, _) = login(&gw, "bob", new_pw).await;
    let second = second.unwrap();
    secrets.push(second.clone());
    logout(&gw, &second).await;

    // An admin's account changes through the API.
    let (_, admin_cookie, _) = login(&gw, "admin", ADMIN_PW).await;
    let admin_cookie = admin_cookie.unwrap();
    secrets.push(admin_cookie.clone());
    let admin = Auth::Cookie(&admin_cookie);
    let carol_pw = "carol-password-0001";
    let reset_pw = "carol-password-reset";
    secrets.extend([carol_pw.to_owned(), reset_pw.to_owned()]);
    let users = "/comfygate/api/users";
    let (s, _) =
        api(&gw, reqwest::Method::POST, users, &admin, Some(json!({"username": "carol", "password": carol_pw}))).await;
    assert_eq!(s, 201);
    let carol = "/comfygate/api/users/carol";
    for change in
        [json!({"role": "admin"}), json!({"disabled": true}), json!({"disabled": false}), json!({"password": reset_pw})]
    {
        let (s, body) = api(&gw, reqwest::Method::PATCH, carol, &admin, Some(change)).await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(api(&gw, reqwest::Method::DELETE, carol, &admin, None).await.0, 204);

    // The CLI's account commands.
    let dave_pw = "dave-password-0001";
    secrets.push(dave_pw.to_owned());
    gw.cli(&["user", "add", "dave", "--password-stdin"], Some(dave_pw)).await.ok();
    gw.cli(&["user", "role", "dave", "admin"], None).await.ok();
    gw.cli(&["user", "disable", "dave"], None).await.ok();
    gw.cli(&["user", "enable", "dave"], None).await.ok();
    let passwd = gw.cli(&["user", "passwd", "dave"], None).await.ok();
    secrets.extend(passwd.stdout.lines().filter_map(|l| l.strip_prefix("password: ")).map(str::to_owned));
    gw.cli(&["token", "revoke", "bob", "cli-made"], None).await.ok();
    gw.cli(&["user", "remove", "dave"], None).await.ok();

    // Lockout: wrong passwords until the throttle refuses.
    let mut throttled = false;
    for i in 0..6 {
        let pw = format!("lockout-guess-{i}");
        secrets.push(pw.clone());
        if login(&gw, "bob", &pw).await.0 == 429 {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the throttle refused a guess");

    let file = data_dir(&gw).join("audit.jsonl");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let lines = file_lines(&file);
    for line in &lines {
        for key in ["time", "event", "outcome"] {
            assert!(line[key].is_string(), "{key} in {line}");
        }
        assert!(["success", "failure", "refused"].contains(&line["outcome"].as_str().unwrap()), "{line}");
    }

    let first = one(&lines, "user_created", "admin");
    assert_eq!(first["by"], "first_start");
    let created = one(&lines, "user_created", "bob");
    assert_eq!((&created["by"], &created["role"]), (&json!("cli"), &json!("user")));
    assert!(created.get("address").is_none(), "the CLI has no address: {created}");
    let unknown = one(&lines, "login_failed", "nobody");
    assert_eq!((&unknown["reason"], &unknown["outcome"]), (&json!("unknown_user"), &json!("failure")));
    let failed = &of(&lines, "login_failed", "bob")[0];
    assert_eq!(failed["reason"], "bad_password");
    let logins = of(&lines, "login", "bob");
    assert_eq!(logins.len(), 2, "{}", dump(&lines));
    let login_line = logins[0];
    assert_eq!(login_line["address"], "127.0.0.1");
    assert_eq!(login_line["request_id"], REQUEST_ID);
    assert_eq!(login_line["user_agent"], "audit-test/1.0 [31mred");
    assert_eq!(login_line["outcome"], "success");
    let minted = of(&lines, "token_created", "bob");
    assert_eq!(minted.len(), 2, "in the session and with the CLI: {}", dump(&lines));
    assert_eq!(minted[0]["token_id"], id);
    assert_eq!(minted[1]["by"], "cli");
    let new_address: Vec<_> =
        of(&lines, "token_new_address", "bob").into_iter().filter(|l| l["token_id"] == id).collect();
    assert_eq!(new_address.len(), 1, "first use from 127.0.0.1 once: {}", dump(&lines));
    assert_eq!(new_address[0]["address"], "127.0.0.1");
    let refused = one(&lines, "admin_route_refused", "bob");
    assert_eq!((&refused["outcome"], &refused["path_class"]), (&json!("refused"), &json!("admin")));
    assert!(!refused.to_string().contains("/internal/logs"), "a class, not the path: {refused}");
    assert_eq!(one(&lines, "cross_site_refused", "bob")["outcome"], "refused");
    let revoked = of(&lines, "token_revoked", "bob");
    assert!(revoked.iter().any(|l| l["token_id"] == id && l.get("by").is_none()), "{}", dump(&lines));
    assert!(revoked.iter().any(|l| l["by"] == "cli"), "{}", dump(&lines));
    assert_eq!(one(&lines, "user_changed", "bob")["limits"]["max_workflow_bytes"], 64);
    let quota = one(&lines, "quota_refused", "bob");
    assert_eq!((&quota["limit"], &quota["status"]), (&json!("workflow_too_large"), &json!(413)));
    assert!(of(&lines, "password_changed", "bob").iter().any(|l| l.get("by").is_none()));
    assert_eq!(one(&lines, "logout", "bob")["outcome"], "success");
    assert_eq!(one(&lines, "user_created", "carol")["by"], "admin");
    let role = one(&lines, "role_changed", "carol");
    assert_eq!((&role["role"], &role["from"], &role["by"]), (&json!("admin"), &json!("user"), &json!("admin")));
    assert_eq!(one(&lines, "user_disabled", "carol")["by"], "admin");
    assert_eq!(one(&lines, "user_enabled", "carol")["by"], "admin");
    assert_eq!(one(&lines, "password_changed", "carol")["by"], "admin");
    assert_eq!(one(&lines, "user_removed", "carol")["by"], "admin");
    for event in ["user_created", "role_changed", "user_disabled", "user_enabled", "password_changed", "user_removed"] {
        let line = one(&lines, event, "dave");
        assert_eq!(line["by"], "cli", "{line}");
        assert!(line.get("address").is_none(), "{line}");
    }
    assert_eq!(one(&lines, "login_throttled", "bob")["outcome"], "refused");

    // The store holds exactly the file's lines.
    let mut stored: Vec<String> = store_lines(&gw, &[]).await.iter().map(Value::to_string).collect();
    let mut written: Vec<String> = lines.iter().map(Value::to_string).collect();
    stored.sort();
    written.sort();
    assert_eq!(stored, written);

    // No credential in the audit file, the store's files, or the gateway's log.
    let log = gw.stderr();
    assert!(log.contains("comfygate::audit"), "the operators' tracing line is there too");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} in the gateway's log");
        for (path, bytes) in every_file(&data_dir(&gw)) {
            assert!(!contains(&bytes, secret), "{secret} in {}", path.display());
        }
    }
}

#[tokio::test]
async fn two_hundred_concurrent_events_give_two_hundred_intact_lines() {
    let (_sim, gw) = setup(Options::default()).await;
    // One line each (no coalescing of repeats), to see that none is torn or lost.
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, format!("{config}\n[audit]\nrepeat_window = \"0s\"\n")).unwrap();
    let gw = gw.restart().await;
    let token = gw.token("bob", "many").await;
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let (url, token) = (gw.at("/internal/logs"), token.clone());
            tokio::spawn(async move {
                let r = client()
                    .get(url)
                    .bearer_auth(token)
                    .header("x-request-id", format!("many-{i}"))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 403);
    }
    let lines = file_lines(&data_dir(&gw).join("audit.jsonl"));
    let refused = of(&lines, "admin_route_refused", "bob");
    assert_eq!(refused.len(), 200);
    let mut ids: Vec<&str> = refused.iter().map(|l| l["request_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "each request's own line");
    assert_eq!(of(&lines, "token_new_address", "bob").len(), 1, "200 first uses at once: one line");
    assert_eq!(store_lines(&gw, &["--event", "admin_route_refused"]).await.len(), 200);
}

/// A flood of the same refusal is one line, then one line with the count when the window
/// closes: every refusal is accounted for, and the disk does not fill.
#[tokio::test]
async fn a_flood_of_the_same_refusal_is_one_line_and_a_count() {
    let (_sim, gw) = setup(Options::default()).await;
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, format!("{config}\n[audit]\nrepeat_window = \"1s\"\n")).unwrap();
    let gw = gw.restart().await;
    let token = gw.token("bob", "flood").await;
    let requests: Vec<_> = (0..120)
        .map(|i| {
            let (url, token) = (gw.at("/internal/logs"), token.clone());
            tokio::spawn(async move {
                let r = client().get(url).bearer_auth(token).header("x-request-id", format!("flood-{i}")).send();
                r.await.unwrap().status().as_u16()
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 403, "coalescing changes the record, never the answer");
    }
    let path = data_dir(&gw).join("audit.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = file_lines(&path);
        if of(&lines, "admin_route_refused", "bob").iter().any(|l| l.get("repeated").is_some()) {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "no summary line: {}", dump(&lines));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused = of(&lines, "admin_route_refused", "bob");
    let counted: u64 = refused.iter().map(|l| 1 + l.get("repeated").and_then(Value::as_u64).unwrap_or(0)).sum();
    // The summary line is the last of the window's events; it stands for itself and `repeated` more.
    let summaries = refused.iter().filter(|l| l.get("repeated").is_some()).count() as u64;
    assert_eq!(counted - summaries, 120, "every refusal is in a line or a count: {}", dump(&lines));
    assert!(refused.len() <= 4, "a few lines, not 120: {}", dump(&lines));
    assert_eq!(store_lines(&gw, &["--event", "admin_route_refused"]).await.len(), refused.len());
    // A different kind (another user) is its own line at once.
    gw.add_user("carol", "user").await;
    let other = gw.token("carol", "other").await;
    let r = client().get(gw.at("/internal/logs")).bearer_auth(other).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(of(&file_lines(&path), "admin_route_refused", "carol").len(), 1);
}

#[tokio::test]
async fn the_file_is_rotated_by_size_keeping_the_configured_count() {
    let opts = Options::default().extra("[audit]\nmax_file_size = \"4KiB\"\nkeep = 2\nrepeat_window = \"0s\"\n");
    let (_sim, gw) = setup(opts).await;
    let token = gw.token("bob", "rotate").await;
    for _ in 0..80 {
        let r = client().get(gw.at("/internal/logs")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    let dir = data_dir(&gw);
    let mut total = 0;
    for name in ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"] {
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|_| panic!("{name} exists"));
        assert!(meta.len() <= 4096, "{name}: {} bytes", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        total += of(&file_lines(&path), "admin_route_refused", "bob").len();
    }
    assert!(!dir.join("audit.jsonl.3").exists());
    assert!(total > 0 && total < 80, "the oldest lines went with the oldest file ({total})");
    assert_eq!(store_lines(&gw, &["--event", "admin_route_refused"]).await.len(), 80, "the store keeps every one");
}

#[tokio::test]
async fn an_unwritable_audit_log_refuses_logins_and_token_creation() {
    let (_sim, gw) = setup(Options::default()).await;
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, format!("{config}\n[audit]\nfile = \"/dev/full\"\n")).unwrap();
    let gw = gw.restart().await;

    let (status, cookie, _) = login(&gw, "bob", USER_PW).await;
    assert_eq!(status, 503, "no line, no login");
    assert_eq!(cookie, None, "no session cookie");
    // A wrong password stays a 401.
    assert_eq!(login(&gw, "bob", "wrong-password-3").await.0, 401);
    // And the gateway says it is not ready, without naming the file.
    let ready = reqwest::get(format!("http://{}/readyz", gw.addr)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    let audit = body["checks"].as_array().unwrap().iter().find(|c| c["name"] == "audit").unwrap().clone();
    assert_eq!(audit["ok"], false, "{body}");
    assert!(!body.to_string().contains("/dev/full"), "{body}");

    let out = gw.cli(&["token", "create", "bob", "--name", "unaudited"], None).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(!out.stdout.contains("cg_"), "no secret is shown: {out:?}");
    assert!(out.stderr.contains("audit"), "{out:?}");
    let list = gw.cli(&["token", "list", "bob"], None).await.ok();
    let row = list.stdout.lines().find(|l| l.contains("unaudited")).unwrap_or_else(|| panic!("{list:?}"));
    assert!(row.contains("revoked"), "the token row exists only revoked: {row}");
    let out = gw.cli(&["user", "disable", "bob"], None).await;
    assert_eq!(out.code, 69, "{out:?}");
    let users = gw.cli(&["user", "list"], None).await.ok();
    assert!(users.stdout.lines().any(|l| l.starts_with("bob") && l.contains("active")), "{users:?}");
}

#[tokio::test]
async fn failure_names_the_broken_sink_until_a_write_succeeds_again() {
    use comfygate::audit::{Audit, Context, Event};
    let dir = tempfile::tempdir().unwrap();
    let store = comfygate::store::open(&format!("sqlite://{}/s.db", dir.path().display())).await.unwrap();
    let mut config = comfygate::Config::default();
    config.store.data_dir = dir.path().to_owned();
    let healthy = Audit::open(&config, store.clone()).unwrap();
    healthy.record(&Context::cli(), Event::success("user_created").user("x")).await.unwrap();
    assert_eq!(healthy.failure(), None);

    config.audit.file = Some(PathBuf::from("/dev/full"));
    let full = Audit::open(&config, store.clone()).unwrap();
    assert!(full.record(&Context::cli(), Event::success("user_created").user("y")).await.is_err());
    let failure = full.failure().expect("unhealthy");
    assert!(failure.contains("/dev/full"), "{failure}");

    // The store refusing the row: the file's line is followed by one saying so.
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}/s.db", dir.path().display())).await.unwrap();
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_gone").execute(&raw).await.unwrap();
    assert!(healthy.record(&Context::cli(), Event::success("user_removed").user("z")).await.is_err());
    assert!(healthy.failure().unwrap().contains("store"), "{:?}", healthy.failure());
    let lines = file_lines(healthy.path());
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["user_created", "user_removed", "audit_write_failed"]);
    assert_eq!(lines[2]["failed_event"], "user_removed");

    // Healthy again after the next write that succeeds.
    sqlx::query("ALTER TABLE audit_events_gone RENAME TO audit_events").execute(&raw).await.unwrap();
    healthy.record(&Context::cli(), Event::success("user_created").user("w")).await.unwrap();
    assert_eq!(healthy.failure(), None);
}

#[tokio::test]
async fn the_cli_lists_newest_first_and_filters_by_user_event_and_time() {
    let (_sim, gw) = setup(Options::default()).await;
    gw.add_user("eve", "user").await;
    for (user, pw) in [("bob", "nope-1"), ("eve", "nope-2"), ("bob", USER_PW)] {
        let _ = login(&gw, user, pw).await;
    }
    let bob = store_lines(&gw, &["--user", "bob"]).await;
    assert!(bob.iter().all(|l| l["user"] == "bob"), "{}", dump(&bob));
    let events: Vec<&str> = bob.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["login", "login_failed", "user_created"], "newest first");
    let failed = store_lines(&gw, &["--event", "login_failed"]).await;
    let users: Vec<&str> = failed.iter().map(|l| l["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["eve", "bob"]);
    assert_eq!(store_lines(&gw, &["--since", "1h", "--user", "eve"]).await.len(), 2);
    let newest = store_lines(&gw, &["--limit", "1"]).await;
    assert_eq!((newest.len(), &newest[0]["event"]), (1, &json!("login")));

    let plain = gw.cli(&["audit", "--user", "bob"], None).await.ok();
    let rows: Vec<&str> = plain.stdout.lines().collect();
    assert!(rows[0].starts_with("TIME") && rows[0].contains("OUTCOME"), "{plain:?}");
    assert_eq!(rows.len(), 4, "{plain:?}");
    let columns: BTreeMap<usize, ()> = rows.iter().filter_map(|r| r.find("  bob").map(|i| (i, ()))).collect();
    assert_eq!(columns.len(), 1, "aligned: {plain:?}");
    let bad = gw.cli(&["audit", "--since", "yesterday"], None).await;
    assert_eq!(bad.code, 2, "a usage error: {bad:?}");
    assert!(bad.stderr.contains("--since"), "{bad:?}");
}

#[tokio::test]
async fn an_admins_queue_actions_are_audited_and_a_users_own_are_not() {
    let (_sim, gw) = setup(Options::default()).await;
    let admin = gw.token("admin", "ops").await;
    let bob = gw.token("bob", "own").await;
    let post = |token: String, path: &'static str, body: Value| {
        let url = gw.at(path);
        async move { client().post(url).bearer_auth(token).json(&body).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(bob.clone(), "/api/queue", json!({"clear": true})).await, 200);
    assert_eq!(post(bob.clone(), "/api/interrupt", json!({})).await, 200);
    assert_eq!(post(admin.clone(), "/api/queue", json!({"clear": true, "delete": ["a", "b"]})).await, 200);
    assert_eq!(post(admin.clone(), "/api/interrupt", json!({"prompt_id": "x"})).await, 200);
    let lines = file_lines(&data_dir(&gw).join("audit.jsonl"));
    let admin_lines: Vec<&Value> =
        lines.iter().filter(|l| l["event"].as_str().unwrap().starts_with("admin_")).collect();
    let events: Vec<&str> = admin_lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["admin_queue_cleared", "admin_jobs_deleted", "admin_interrupt"], "{}", dump(&lines));
    assert!(admin_lines.iter().all(|l| l["by"] == "admin" && l["address"] == "127.0.0.1"), "{}", dump(&lines));
    assert_eq!(admin_lines[1]["prompt_ids"], json!(["a", "b"]));
    assert_eq!(admin_lines[2]["prompt_id"], "x");
}
