#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Password guessing is bounded by design: attempts are counted before their hash is checked,
//! counted per account at an address and per address (so strangers cannot lock the owner out),
//! take the same time whatever the account, and come from the address a trusted proxy saw.
//!
//! The test client is the trusted proxy (`127.0.0.1/32`): `X-Forwarded-For` picks the address.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use common::{Gateway, Options, SESSION_COOKIE, USER_PW, client, cookie_from, form, hidden_input, poll};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACKER: &str = "198.51.100.66";
const OWNER: &str = "203.0.113.10";

async fn setup(auth: &[&str]) -> (Simulator, Gateway) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    // One audit line per refused attempt (no coalescing of repeats): the tests count them.
    let mut opts =
        Options::default().server(r#"trusted_proxies = ["127.0.0.1/32"]"#).extra("[audit]\nrepeat_window = \"0s\"\n");
    for line in auth {
        opts = opts.auth(line);
    }
    let gw = Gateway::start_with(&sim.url(), opts).await;
    gw.add_user("alice", "user").await;
    (sim, gw)
}

/// A login form post from `address` (through the trusted proxy), as raw bytes.
fn login_request(gw: &Gateway, csrf: &(String, String), user: &str, password: &str, forwarded: &[&str]) -> Vec<u8> {
    let body = form(&[("username", user), ("password", password), ("csrf", &csrf.1), ("next", "/")]);
    let mut head = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Cookie: comfygate_login_csrf={}\r\nContent-Length: {}\r\nConnection: close\r\n",
        gw.addr,
        csrf.0,
        body.len()
    );
    for line in forwarded {
        head.push_str(&format!("X-Forwarded-For: {line}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

/// Sends a whole raw request and reads the whole response.
async fn send(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    response
}

/// The status and `Retry-After` of a raw response.
fn status_and_retry(response: &[u8]) -> (u16, Option<u64>) {
    let text = String::from_utf8_lossy(response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let retry = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok());
    (status, retry)
}

/// Logs in through the form from `address`; returns the response.
async fn login_from(gw: &Gateway, user: &str, password: &str, address: &str) -> reqwest::Response {
    let (cookie, csrf) = gw.login_form("/").await;
    client()
        .post(gw.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("comfygate_login_csrf={cookie}"))
        .header("x-forwarded-for", address)
        .body(form(&[("username", user), ("password", password), ("csrf", &csrf), ("next", "/")]))
        .send()
        .await
        .unwrap()
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers().get("retry-after").expect("Retry-After").to_str().unwrap().parse().unwrap()
}

/// The gateway's log so far, without colours.
fn log(gw: &Gateway) -> String {
    let mut plain = String::new();
    let mut chars = gw.stderr().chars().collect::<Vec<_>>().into_iter();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Audit lines of `event` about `user` so far.
fn audit_count(gw: &Gateway, event: &str, user: &str) -> usize {
    let (event, user) = (format!("event=\"{event}\""), format!("username={user} "));
    log(gw).lines().filter(|l| l.contains(&event) && l.contains(&user)).count()
}

#[tokio::test]
async fn held_back_wrong_passwords_check_at_most_the_limit_and_the_owner_still_gets_in() {
    const ATTEMPTS: usize = 200;
    let (_sim, gw) = setup(&[]).await;
    let csrf = gw.login_form("/").await;
    let release = Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
    let attempts: Vec<_> = (0..ATTEMPTS)
        .map(|i| {
            let request = login_request(&gw, &csrf, "alice", &format!("wrong-password-{i}"), &[ATTACKER]);
            let (addr, release) = (gw.addr, release.clone());
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (last, held) = request.split_last().unwrap();
                stream.write_all(held).await.unwrap();
                release.wait().await;
                stream.write_all(&[*last]).await.unwrap();
                let mut response = Vec::new();
                tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut response))
                    .await
                    .unwrap()
                    .unwrap();
                status_and_retry(&response)
            })
        })
        .collect();
    let mut refused = 0;
    let mut checked = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            (401, _) => checked += 1,
            (429, Some(retry)) if retry >= 1 => refused += 1,
            other => panic!("every attempt is a wrong password or a 429 with Retry-After: {other:?}"),
        }
    }
    assert!((1..=5).contains(&checked), "{checked} attempts were checked, {refused} refused");
    // Timing-independent evidence: one audit line per attempt, `login_failed` only for those
    // whose hash was checked.
    poll(Duration::from_secs(10), "an audit line per attempt", || async {
        (audit_count(&gw, "login_failed", "alice") + audit_count(&gw, "login_throttled", "alice") >= ATTEMPTS)
            .then_some(())
    })
    .await;
    assert_eq!(audit_count(&gw, "login_failed", "alice"), checked, "hashes checked: {}", log(&gw));

    // The attacker stays refused, even with the right password; the owner, elsewhere, gets in.
    let r = login_from(&gw, "alice", USER_PW, ATTACKER).await;
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let r = login_from(&gw, "alice", USER_PW, OWNER).await;
    assert_eq!(r.status(), 303, "the owner logs in from another address");
    let session = cookie_from(r.headers(), SESSION_COOKIE).unwrap();
    // ...and can change the password.
    let r = client()
        .post(gw.at("/comfygate/api/password"))
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .header("x-forwarded-for", OWNER)
        .json(&json!({"current_password": USER_PW, "new_password": "a-brand-new-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn guessing_from_many_addresses_stops_but_spares_the_owners_known_address() {
    let (_sim, gw) = setup(&[]).await;
    const KNOWN: &str = "192.0.2.10";
    assert_eq!(login_from(&gw, "alice", USER_PW, KNOWN).await.status(), 303, "alice's usual address");
    // Five failures per address, four times as many per account from addresses it does not know.
    let mut statuses = Vec::new();
    for i in 1..=25 {
        statuses.push(login_from(&gw, "alice", "wrong-password", &format!("198.51.100.{i}")).await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20, "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");

    let r = login_from(&gw, "alice", USER_PW, "192.0.2.99").await;
    assert_eq!(r.status(), 429, "a new address waits while the account is under attack");
    assert!(retry_after(&r) >= 1);
    let r = login_from(&gw, "alice", USER_PW, KNOWN).await;
    assert_eq!(r.status(), 303, "an address alice logged in from before still gets in");
    // Other accounts are not affected by the attack on alice.
    gw.add_user("bob", "user").await;
    assert_eq!(login_from(&gw, "bob", USER_PW, "192.0.2.99").await.status(), 303);
}

#[tokio::test]
async fn throttled_password_confirmations_are_429_with_retry_after_in_the_api_and_the_form() {
    let (_sim, gw) = setup(&[]).await;
    let r = login_from(&gw, "alice", USER_PW, OWNER).await;
    let session = cookie_from(r.headers(), SESSION_COOKIE).unwrap();
    let cookie = format!("{SESSION_COOKIE}={session}");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = client()
            .post(gw.at("/comfygate/api/password"))
            .header("cookie", &cookie)
            .header("x-forwarded-for", "192.0.2.1")
            .json(&json!({"current_password": "wrong-password", "new_password": "a-brand-new-password"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(retry_after(&r) >= 1);
        }
    }
    assert_eq!(statuses, [403, 403, 403, 403, 403, 429]);

    let page = client().get(gw.at("/comfygate/account")).header("cookie", &cookie).send().await.unwrap();
    let csrf = hidden_input(&page.text().await.unwrap(), "csrf").unwrap();
    let mut last = None;
    for _ in 0..6 {
        let body = form(&[
            ("csrf", &csrf),
            ("current", "wrong-password"),
            ("new", "a-brand-new-pw"),
            ("confirm", "a-brand-new-pw"),
        ]);
        last = Some(
            client()
                .post(gw.at("/comfygate/account/password"))
                .header("cookie", &cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-forwarded-for", "192.0.2.2")
                .body(body)
                .send()
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(last.status(), 429);
    assert!(retry_after(&last) >= 1, "the form's refusal says when to retry too");
}

#[tokio::test]
async fn wrong_passwords_take_as_long_for_unknown_argon2_and_imported_bcrypt_accounts() {
    let (_sim, gw) = setup(&["login_max_failures = 100"]).await;
    // ComfyUI-Login hashes with bcrypt's default cost.
    let hash = bcrypt::hash("comfyui-login-password", bcrypt::DEFAULT_COST).unwrap();
    let file = gw.dir.path().join("PASSWORD");
    std::fs::write(&file, format!("{hash}\nlegacy\n")).unwrap();
    gw.cli(&["import", "comfyui-login", file.to_str().unwrap()], None).await.ok();

    let csrf = gw.login_form("/").await;
    let time = |user: &'static str| {
        let request = login_request(&gw, &csrf, user, "wrong-password", &["192.0.2.7"]);
        let addr = gw.addr;
        async move {
            let started = Instant::now();
            let (status, _) = status_and_retry(&send(addr, &request).await);
            assert_eq!(status, 401, "{user}");
            started.elapsed()
        }
    };
    let users = ["nobody", "alice", "legacy"];
    for user in users {
        time(user).await; // decoys are made on first use
    }
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for _ in 0..5 {
        for (i, user) in users.iter().enumerate() {
            samples[i].push(time(user).await);
        }
    }
    let medians: Vec<Duration> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect();
    let (min, max) = (medians.iter().min().unwrap(), medians.iter().max().unwrap());
    assert!(max.as_secs_f64() / min.as_secs_f64() < 1.6, "unknown, argon2 and bcrypt accounts answer in {medians:?}");
}

#[tokio::test]
async fn a_forged_first_forwarded_line_is_ignored_for_the_right_most_untrusted_address() {
    let (_sim, gw) = setup(&[]).await;
    let csrf = gw.login_form("/").await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        // The client's own line first, then the line the proxy appended.
        let forged = format!("10.9.9.{i}");
        let request = login_request(&gw, &csrf, "alice", "wrong-password", &[&forged, "203.0.113.77"]);
        statuses.push(status_and_retry(&send(gw.addr, &request).await).0);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "a new forged line is no new address");
    let log = log(&gw);
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("login_failed")).collect();
    assert_eq!(failed.len(), 5, "{log}");
    assert!(failed.iter().all(|l| l.contains(r#"address="203.0.113.77""#) && !l.contains("10.9.9.")), "{log}");
    // The right password from that address waits too: it is the address the proxy saw.
    let r = login_from(&gw, "alice", USER_PW, "10.9.9.0, 203.0.113.77").await;
    assert_eq!(r.status(), 429);
}
