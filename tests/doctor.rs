#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `comfygate doctor`, the real binary, against a real gateway and simulators: a healthy setup
//! passes (exit 0), each broken one fails on the line that names it (exit 1).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use common::pool::{FAST_HEALTH, gateway_with, model_job, sim};
use common::{CliOutput, Gateway, cli_at, poll};

/// The gateway's configuration with the port it really listens on (doctor finds the running
/// gateway from `[server] listen`, which the harness sets to port 0).
fn doctor_config(gw: &Gateway) -> PathBuf {
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{}\"", gw.addr));
    let path = gw.dir.path().join("doctor.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn doctor(config: &Path, args: &[&str]) -> CliOutput {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    cli_at(config, &all, None).await
}

/// The line for check `name` (after its mark), e.g. `✗ store: ...`.
#[track_caller]
fn line<'a>(out: &'a CliOutput, mark: &str, name: &str) -> &'a str {
    let prefix = format!("{mark} {name}");
    out.stdout.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out:?}"))
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check_with_an_admin_token() {
    let backend = sim(10).await;
    let gw = gateway_with(&[&backend], 2, FAST_HEALTH).await;
    let token = gw.token("admin", "doctor").await;
    let config = doctor_config(&gw);
    let out = doctor(&config, &["--token", &token]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for name in [
        "configuration",
        "data folder",
        "store",
        "admin account",
        "token sha256:",
        "backend sim",
        "backend sim nodes",
        "gateway",
        "gateway authentication",
        "gateway readiness",
        "token at the gateway",
        "gateway → backend sim",
    ] {
        line(&out, "✓", name);
    }
    assert!(line(&out, "✓", "backend sim").contains("ComfyUI 0."), "{out:?}");
    assert!(line(&out, "✓", "token sha256:").contains("of admin, role admin"), "{out:?}");
    assert!(!out.stdout.contains(&token) && !out.stderr.contains(&token), "the token was printed");

    // Machines get one JSON document with the same checks.
    let out = doctor(&config, &["--json", "--token", &token]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 12, "{report}");
    assert!(checks.iter().all(|c| c["status"] == "pass" && c["name"].is_string() && c["detail"].is_string()));
    assert!(!out.stdout.contains(&token));

    // The token can come from the environment or from a dotenv file.
    let env_file = gw.dir.path().join("client.env");
    std::fs::write(&env_file, format!("# a client's settings\nOTHER=x\nMY_TOKEN=\"{token}\"\n")).unwrap();
    let out = doctor(&config, &["--env-file", env_file.to_str().unwrap(), "--env-key", "MY_TOKEN"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    line(&out, "✓", "token at the gateway");

    // A job without models runs end to end through the gateway, with an ordinary user's token.
    gw.add_user("carol", "user").await;
    let user_token = gw.token("carol", "notebook").await;
    let out = doctor(&config, &["--run-test-job", "--token", &user_token]).await;
    assert!(line(&out, "✓", "test job").contains("ran end to end in"), "{out:?}");
    assert!(line(&out, "!", "gateway backend sockets").contains("not a valid admin's"), "{out:?}");
    assert_eq!(out.code, 2, "the skipped socket check is a warning: {out:?}");
}

#[tokio::test]
async fn without_a_token_the_gateway_sockets_are_skipped_with_a_warning() {
    let backend = sim(10).await;
    let gw = gateway_with(&[&backend], 2, FAST_HEALTH).await;
    let out = doctor(&doctor_config(&gw), &[]).await;
    assert_eq!(out.code, 2, "warnings only: {out:?}");
    assert!(line(&out, "!", "gateway backend sockets").contains("no token given"), "{out:?}");
    line(&out, "✓", "gateway readiness");
}

#[tokio::test]
async fn a_backend_that_is_down_fails_its_line_and_the_gateway_still_passes_with_another() {
    let mut down = sim(10).await;
    let up = sim(10).await;
    let gw = gateway_with(&[&up, &down], 2, FAST_HEALTH).await;
    let token = gw.token("admin", "doctor").await;
    down.stop().await;
    let config = doctor_config(&gw);
    let out = poll(Duration::from_secs(15), "the gateway to lose its socket to b2", || async {
        let out = doctor(&config, &["--token", &token]).await;
        out.stdout.contains("✗ gateway → backend b2").then_some(out)
    })
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(line(&out, "✗", "backend b2").contains("unreachable"), "{out:?}");
    line(&out, "✓", "backend sim");
    line(&out, "✓", "gateway readiness");
}

#[tokio::test]
async fn revoked_unknown_expired_and_disabled_owner_tokens_are_each_named() {
    let backend = sim(10).await;
    let gw = gateway_with(&[&backend], 2, FAST_HEALTH).await;
    let config = doctor_config(&gw);
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;

    let revoked = gw.token("alice", "old").await;
    gw.cli(&["token", "revoke", "alice", "old"], None).await.ok();
    let disabled = gw.token("bob", "laptop").await;
    gw.cli(&["user", "disable", "bob"], None).await.ok();
    let out = gw.cli(&["token", "create", "alice", "--name", "short", "--expires", "1s"], None).await.ok();
    let expired = out.stdout.trim().to_owned();
    let unknown = format!("cg_{}", "A".repeat(43));

    let cases = [
        (&revoked, "was revoked", "(revoked)"),
        (&unknown, "unknown token", "(unknown)"),
        (&disabled, "belongs to a disabled account", "(owner_disabled)"),
    ];
    for (secret, says, code) in cases {
        let out = doctor(&config, &["--token", secret]).await;
        assert_eq!(out.code, 1, "{out:?}");
        let token_line = line(&out, "✗", "token sha256:");
        assert!(token_line.contains(says) && token_line.contains(code), "{token_line}");
        assert!(line(&out, "✗", "token at the gateway").contains("HTTP 401"), "{out:?}");
        assert!(!out.stdout.contains(secret.as_str()), "the token was printed: {out:?}");
    }
    let out = poll(Duration::from_secs(15), "the short token to expire", || async {
        let out = doctor(&config, &["--token", &expired]).await;
        out.stdout.contains("(expired)").then_some(out)
    })
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(line(&out, "✗", "token sha256:").contains("expired"), "{out:?}");
    assert!(!out.stdout.contains(&expired));

    // The same secret with a line break from a careless copy is named as such.
    let out = doctor(&config, &["--token", &format!("{revoked}\n")]).await;
    assert!(line(&out, "✗", "token sha256:").contains("(malformed)"), "{out:?}");
}

#[tokio::test]
async fn a_wrong_store_url_fails_the_store_line() {
    let backend = sim(10).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg =
        format!("[store]\ndata_dir = {:?}\nurl = \"postgres://u:p@{closed}/db\"", dir.path().display().to_string());
    let cases = [
        (pg, "PostgreSQL store unreachable"),
        (
            format!("[store]\ndata_dir = {:?}", dir.path().join("missing").display().to_string()),
            "SQLite store unreachable",
        ),
    ];
    for (store, says) in cases {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n{store}\n[[backends]]\nname = \"sim\"\nurl = {:?}\n",
            closed.port(),
            backend.url()
        );
        let config = dir.path().join("comfygate.toml");
        std::fs::write(&config, text).unwrap();
        let out = doctor(&config, &[]).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(line(&out, "✗", "store").contains(says), "{out:?}");
        assert!(!out.stdout.contains("u:p@"), "the store URL's password was printed");
        line(&out, "✓", "backend sim");
    }
    assert!(!dir.path().join("missing").exists(), "doctor created the data folder");
}

#[tokio::test]
async fn a_store_without_an_enabled_admin_fails_and_a_bad_configuration_is_told_as_serve_tells_it() {
    let backend = sim(10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &backend.url(), &common::Options::default());
    // A store whose only admin was demoted behind the gateway's back (the CLI refuses to).
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", common::USER_PW)).unwrap();
    cli_at(&config, &["init", "--admin-password-file", pw.to_str().unwrap()], None).await.ok();
    let db = dir.path().join("data").join("comfygate.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("UPDATE users SET role = 'user'").execute(&mut conn).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    let out = doctor(&config, &[]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(line(&out, "✗", "admin account").contains("no enabled admin"), "{out:?}");
    line(&out, "✓", "store");

    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").unwrap();
    let serve = cli_at(&config, &["serve"], None).await;
    let out = doctor(&config, &[]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let detail = line(&out, "✗", "configuration").trim_start_matches("✗ configuration: ");
    assert!(serve.stderr.contains(detail), "serve said {:?}, doctor {detail:?}", serve.stderr);
}

#[tokio::test]
async fn a_workflow_names_the_model_file_missing_and_the_backend_missing_it() {
    let mut with = comfyui_sim::SimConfig::default();
    with.models.push(("checkpoints".to_owned(), "sd15.safetensors".to_owned()));
    let a = comfyui_sim::Simulator::start(with).await.unwrap();
    let b = sim(10).await;
    let gw = gateway_with(&[&a, &b], 2, FAST_HEALTH).await;
    let config = doctor_config(&gw);
    // The API-format workflow itself (what a client saves), not the request body around it.
    let workflow = |ckpt: &str| model_job(ckpt, "x")["prompt"].to_string();
    let file = gw.dir.path().join("wf.json");

    std::fs::write(&file, workflow("sd15.safetensors")).unwrap();
    let out = doctor(&config, &["--workflow", file.to_str().unwrap()]).await;
    assert!(line(&out, "!", "workflow model sd15.safetensors").contains("missing on b2"), "{out:?}");
    assert!(line(&out, "✓", "workflow:").contains("runnable on sim"), "{out:?}");

    std::fs::write(&file, workflow("flux.safetensors")).unwrap();
    let out = doctor(&config, &["--workflow", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(line(&out, "✗", "workflow model flux.safetensors").contains("on no backend"), "{out:?}");
    assert!(line(&out, "✗", "workflow:").contains("no backend has all of them"), "{out:?}");
}
