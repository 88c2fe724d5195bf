#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The command line end to end: exit codes, output, and changes that a running gateway applies
//! before the command returns.

mod common;

use comfyui_sim::{SimConfig, Simulator};
use common::{Auth, Gateway, Options, SESSION_COOKIE, USER_PW, cli_at, client, code_of, enc, poll, write_config};

/// A configuration with no gateway running (the backend is never contacted).
fn offline_config() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", &Options::default());
    (dir, config)
}

/// [`offline_config`] with a store made by `init`, whose first admin is `admin`.
async fn offline_store(admin: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, config) = offline_config();
    let pw = dir.path().join("admin-pw");
    std::fs::write(&pw, format!("{USER_PW}\n")).unwrap();
    cli_at(&config, &["init", "--admin-user", admin, "--admin-password-file", pw.to_str().unwrap()], None).await.ok();
    (dir, config)
}

#[tokio::test]
async fn user_add_list_duplicate_and_invalid_names() {
    let (_dir, config) = offline_store("root").await;
    let out = cli_at(&config, &["user", "add", "Bob", "--password-stdin"], Some(USER_PW)).await.ok();
    assert!(out.stdout.contains("created user `bob`"), "{out:?}");
    assert!(!out.stdout.contains(USER_PW), "a given password is never echoed");

    let out = cli_at(&config, &["user", "list"], None).await.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("USER"), "{out:?}");
    assert!(lines.iter().any(|l| l.starts_with("bob ") && l.contains("user") && l.contains("active")), "{out:?}");
    assert!(lines.iter().any(|l| l.starts_with("root ") && l.contains("admin")), "{out:?}");

    let dup = cli_at(&config, &["user", "add", "bob", "--password-stdin"], Some(USER_PW)).await;
    assert_eq!(dup.code, 65, "{dup:?}");
    assert!(dup.stderr.contains("already exists"), "{dup:?}");
    for bad in ["bad name", "_under", "x/y", "jürgen", ""] {
        let out = cli_at(&config, &["user", "add", bad, "--password-stdin"], Some(USER_PW)).await;
        assert_eq!(out.code, 65, "{bad:?}: {out:?}");
        assert!(out.stderr.contains("invalid user name"), "{out:?}");
    }
    let short = cli_at(&config, &["user", "add", "carol", "--password-stdin"], Some("short")).await;
    assert_eq!(short.code, 65, "{short:?}");
    let missing = cli_at(&config, &["user", "disable", "nobody"], None).await;
    assert_eq!(missing.code, 65, "{missing:?}");

    // A generated password is printed once and works.
    let out = cli_at(&config, &["user", "add", "dave"], None).await.ok();
    assert!(out.stdout.contains("password: "), "{out:?}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let (_dir, config) = offline_config();
    for args in [
        &["user", "add"][..],
        &["user", "add", "x", "--role", "root"],
        &["token", "create", "admin"],
        &["frobnicate"],
        &["user", "add", "x", "--password-stdin", "--password-file", "/nonexistent"],
    ] {
        let out = cli_at(&config, args, None).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn last_admin_cannot_be_disabled_or_removed() {
    let (_dir, config) = offline_store("root").await;
    for args in [&["user", "disable", "root"][..], &["user", "remove", "root"], &["user", "role", "root", "user"]] {
        let out = cli_at(&config, args, None).await;
        assert_eq!(out.code, 65, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn token_create_list_and_revoke() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("bob", "user").await;

    let out = gw.cli(&["token", "create", "bob", "--name", "laptop 🎨", "--expires", "30d"], None).await.ok();
    let token = out.stdout.trim().to_owned();
    assert_eq!(out.stdout.lines().count(), 1, "only the token on stdout: {out:?}");
    assert!(token.starts_with("cg_") && token.len() >= 40, "{token}");
    assert!(out.stderr.contains("laptop 🎨"), "{out:?}");
    let (status, me) = gw.whoami(&Auth::Bearer(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(me["auth"]["token_name"], "laptop 🎨");

    let dup = gw.cli(&["token", "create", "bob", "--name", "laptop 🎨"], None).await;
    assert_eq!(dup.code, 65, "{dup:?}");
    let bad = gw.cli(&["token", "create", "bob", "--name", "x", "--expires", "tomorrow"], None).await;
    assert_eq!(bad.code, 65, "{bad:?}");
    let nobody = gw.cli(&["token", "create", "nobody", "--name", "x"], None).await;
    assert_eq!(nobody.code, 65, "{nobody:?}");

    let list = gw.cli(&["token", "list", "bob"], None).await.ok();
    let line = list.stdout.lines().find(|l| l.contains("laptop 🎨")).expect("listed");
    assert!(line.contains("active"), "{line}");
    assert!(!list.stdout.contains(&token), "the secret is never listed");
    let id = line.split_whitespace().next().unwrap().to_owned();
    let all = gw.cli(&["token", "list"], None).await.ok();
    assert!(all.stdout.contains("laptop 🎨"));

    let out = gw.cli(&["token", "revoke", "bob", &id], None).await.ok();
    assert!(out.stdout.contains("revoked"), "{out:?}");
    let (status, body) = gw.whoami(&Auth::Bearer(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "token_revoked");
    let list = gw.cli(&["token", "list", "bob"], None).await.ok();
    assert!(list.stdout.lines().any(|l| l.contains("laptop 🎨") && l.contains("revoked")), "{list:?}");
    let again = gw.cli(&["token", "revoke", "bob", &id], None).await;
    assert_eq!(again.code, 65, "{again:?}");
    // The name is free again once the old token is revoked.
    gw.cli(&["token", "create", "bob", "--name", "laptop 🎨"], None).await.ok();
}

#[tokio::test]
async fn user_remove_ends_tokens_and_sessions_on_the_next_request() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("bob", "user").await;
    let token = gw.token("bob", "t").await;
    let cookie = gw.login("bob", USER_PW).await;
    gw.cli(&["user", "remove", "bob"], None).await.ok();
    assert_eq!(gw.whoami(&Auth::Bearer(&token)).await.0, 401);
    assert_eq!(gw.whoami(&Auth::Cookie(&cookie)).await.0, 401);
    let out = gw.cli(&["user", "list"], None).await.ok();
    assert!(!out.stdout.contains("bob"), "{out:?}");
}

#[tokio::test]
async fn unknown_config_key_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", &Options::default().server("listen_port = 8080"));
    for args in [&["user", "list"][..], &["serve"]] {
        let out = cli_at(&config, args, None).await;
        assert_eq!(out.code, 78, "{args:?}: {out:?}");
        assert!(out.stderr.contains("listen_port"), "{out:?}");
    }
    let config = write_config(dir.path(), "http://127.0.0.1:9", &Options::default().auth("session_timeout = \"1h\""));
    let out = cli_at(&config, &["user", "list"], None).await;
    assert_eq!(out.code, 78);
    assert!(out.stderr.contains("session_timeout"), "{out:?}");

    // An unknown COMFYGATE_ variable is a configuration error too.
    let config = write_config(dir.path(), "http://127.0.0.1:9", &Options::default());
    let out =
        common::command(&config).env("COMFYGATE_SERVER__LISTEN_PROT", "1").args(["user", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_prot"), "{out:?}");

    // An invalid value names its key.
    let config = write_config(dir.path(), "ftp://127.0.0.1:9", &Options::default());
    let out = cli_at(&config, &["user", "list"], None).await;
    assert_eq!(out.code, 78);
    assert!(out.stderr.contains("backends[0].url"), "{out:?}");
}

#[tokio::test]
async fn init_creates_the_first_admin_once() {
    let (dir, config) = offline_config();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "init-password-123\n").unwrap();
    let pw = pw_file.to_str().unwrap();
    let out = cli_at(&config, &["init", "--admin-user", "boss", "--admin-password-file", pw], None).await.ok();
    assert!(out.stdout.contains("created admin `boss`"), "{out:?}");
    let out = cli_at(&config, &["init", "--admin-user", "other", "--admin-password-file", pw], None).await.ok();
    assert!(out.stdout.contains("already initialised"), "{out:?}");
    let list = cli_at(&config, &["user", "list"], None).await.ok();
    assert!(list.stdout.contains("boss") && !list.stdout.contains("other"), "{list:?}");
}

#[tokio::test]
async fn comfyui_login_import_keeps_the_password_and_a_revocable_legacy_token() {
    const OLD_PW: &str = "comfyui-login-pw";
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    let hash = bcrypt::hash(OLD_PW, 4).unwrap();
    assert!(hash.starts_with("$2b$"), "{hash}");
    let file = gw.dir.path().join("PASSWORD");
    std::fs::write(&file, format!("{hash}\nalice\n")).unwrap();

    let bogus = gw.dir.path().join("NOTPASSWORD");
    std::fs::write(&bogus, "hunter2\nalice\n").unwrap();
    let out = gw.cli(&["import", "comfyui-login", bogus.to_str().unwrap()], None).await;
    assert_eq!(out.code, 65, "not a ComfyUI-Login file is bad input: {out:?}");

    let out = gw.cli(&["import", "comfyui-login", file.to_str().unwrap(), "--keep-legacy-token"], None).await.ok();
    assert!(out.stdout.contains("alice"), "{out:?}");
    let again = gw.cli(&["import", "comfyui-login", file.to_str().unwrap()], None).await;
    assert_eq!(again.code, 65, "importing twice: {again:?}");

    // The old password logs in (and is upgraded to argon2id); a second login still works.
    let cookie = gw.login("alice", OLD_PW).await;
    let (status, me) = gw.whoami(&Auth::Cookie(&cookie)).await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["role"], "admin");
    let second = gw.login("alice", OLD_PW).await;
    assert_ne!(second, cookie);
    assert_eq!(gw.login_response("alice", "wrong-password!", "/").await.status(), 401);

    // The old ComfyUI-Login token (the hash string) works as a bearer and as ?token=.
    let (status, me) = gw.get_json("/comfygate/api/whoami", &Auth::Bearer(&hash)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["auth"]["token_kind"], "legacy");
    assert_eq!(gw.get_json("/queue", &Auth::Bearer(&hash)).await.0, 200);
    let r = client().get(gw.at(&format!("/queue?token={}", enc(&hash)))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    sim.clear_requests();
    let r = client().get(gw.at(&format!("/embeddings?a=1&token={}", enc(&hash)))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(common::client_requests(&sim)[0].uri, "/embeddings?a=1", "the legacy token is stripped too");

    gw.cli(&["token", "revoke", "alice", "comfyui-login"], None).await.ok();
    let (status, body) = gw.get_json("/queue", &Auth::Bearer(&hash)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "token_revoked");
    let r = client().get(gw.at(&format!("/queue?token={}", enc(&hash)))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The password (now argon2id) keeps working after the token is gone.
    let cookie = gw.login("alice", OLD_PW).await;
    let r = client().get(gw.at("/queue")).header("cookie", format!("{SESSION_COOKIE}={cookie}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn comfyui_login_import_without_keep_refuses_the_old_token() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    let hash = bcrypt::hash("another-old-pw", 4).unwrap();
    let file = gw.dir.path().join("PASSWORD");
    std::fs::write(&file, format!("{hash}\n")).unwrap();
    let out = gw.cli(&["import", "comfyui-login", file.to_str().unwrap(), "--username", "legacy"], None).await.ok();
    assert!(out.stdout.contains("NOT accepted"), "{out:?}");
    let (status, body) = gw.get_json("/queue", &Auth::Bearer(&hash)).await;
    assert_eq!(status, 401);
    assert_eq!(code_of(&body), "unknown_token");
    gw.login("legacy", "another-old-pw").await;
}

#[tokio::test]
async fn relative_paths_in_the_config_file_mean_its_folder_and_account_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = etc.join("comfygate.toml");
    std::fs::write(
        &config,
        "[store]\ndata_dir = \"state\"\n[[backends]]\nname = \"sim\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    // The commands run in the crate's folder, not beside the file.
    let expected = etc.join("state").join("comfygate.db");
    let out = cli_at(&config, &["user", "list"], None).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(out.stderr.contains("no store at") && out.stderr.contains(&expected.display().to_string()), "{out:?}");
    assert!(!expected.exists() && !etc.join("state").exists(), "nothing was created");
    for args in [&["user", "add", "dave"][..], &["token", "list"], &["audit"], &["user", "passwd", "dave"]] {
        let out = cli_at(&config, args, None).await;
        assert_eq!(out.code, 69, "{args:?}: {out:?}");
        assert!(!expected.exists(), "{args:?} created a store");
    }

    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{USER_PW}\n")).unwrap();
    cli_at(&config, &["init", "--admin-password-file", pw.to_str().unwrap()], None).await.ok();
    assert!(expected.exists(), "init made the store beside the file");
    cli_at(&config, &["user", "add", "dave", "--password-stdin"], Some(USER_PW)).await.ok();
    let out = cli_at(&config, &["--verbose", "user", "list"], None).await.ok();
    assert!(out.stdout.contains("dave"), "{out:?}");
    assert!(out.stderr.contains(&format!("store: SQLite {}", expected.display())), "{out:?}");
    assert!(out.stderr.contains(&format!("configuration: {}", config.display())), "{out:?}");
}

#[tokio::test]
async fn a_port_in_use_fails_before_the_first_admin_is_made_so_the_next_start_shows_its_password() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().server(&format!("listen = \"127.0.0.1:{port}\""));
    let config = write_config(dir.path(), "http://127.0.0.1:9", &opts);
    let config = {
        // write_config sets its own listen line first; the one for this port replaces it.
        let text = std::fs::read_to_string(&config).unwrap().replacen("listen = \"127.0.0.1:0\"\n", "", 1);
        std::fs::write(&config, text).unwrap();
        config
    };
    let out = cli_at(&config, &["serve"], None).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("cannot listen"), "{out:?}");
    assert!(!out.stdout.contains("password"), "no password shown by a start that failed: {out:?}");
    let listed = cli_at(&config, &["user", "list"], None).await.ok();
    assert!(!listed.stdout.contains("admin"), "no admin made: {listed:?}");

    drop(taken);
    let mut child = common::command(&config)
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("comfygate listening on") {
                break;
            }
        }
        seen
    });
    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), seen).await;
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.expect("the second start did not report listening").unwrap();
    assert!(seen.contains("its password is: "), "the next start shows the password: {seen}");
}

/// Whoever sees a fresh gateway answer finds its first admin: it is made before anything is
/// served (a script that waits for `/comfygate/health`, then creates the admin's token, works).
#[tokio::test]
async fn a_fresh_gateway_answers_only_once_its_first_admin_exists() {
    for _ in 0..3 {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "http://127.0.0.1:9", &Options::default());
        let text = std::fs::read_to_string(&config).unwrap().replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
        std::fs::write(&config, text).unwrap();
        let mut child = common::command(&config)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let health = format!("http://127.0.0.1:{port}/comfygate/health");
        let answered = poll(std::time::Duration::from_secs(20), "the gateway answers", || async {
            client().get(&health).send().await.ok().map(|_| ())
        });
        answered.await;
        let token = cli_at(&config, &["token", "create", "admin", "--name", "at-once"], None).await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(token.code, 0, "the admin exists as soon as the gateway answers: {token:?}");
    }
}
