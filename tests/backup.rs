#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `comfygate backup` and `restore` through the real binary: a copy taken while writes run holds
//! every write acknowledged before it began, is private and intact; restore refuses while a
//! gateway serves and refuses files that are not intact comfygate stores of a known schema, and
//! otherwise installs the copy keeping the store it replaces. The systemd units name real
//! commands.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use common::{
    ADMIN_PW, Auth, Gateway, Options, SESSION_COOKIE, USER_PW, cli_at, client, cookie_from, poll, workflow,
    write_config,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

fn umask_022() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn store_path(gw_dir: &Path) -> PathBuf {
    gw_dir.join("data").join("comfygate.db")
}

/// Files in the data folder that a restore would have left (`.replaced-`, temporary copies).
fn restore_leftovers(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".replaced-") || n.starts_with('.'))
        .collect()
}

async fn connect(options: SqliteConnectOptions) -> SqliteConnection {
    options.connect().await.unwrap()
}

/// A read-only connection to a database file.
async fn open_db(path: &Path) -> SqliteConnection {
    connect(SqliteConnectOptions::new().filename(path).read_only(true)).await
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

async fn count(conn: &mut SqliteConnection, sql: &str, value: &str) -> i64 {
    sqlx::query_scalar(sql).bind(value).fetch_one(conn).await.unwrap()
}

/// One write and what identifies its row.
#[derive(Debug, Clone)]
enum Write {
    User(String),
    Session(String),
    Token(i64),
    Job(String),
}

async fn login_cookie(gw: &Gateway, user: &str) -> Result<String, String> {
    let r = gw.login_response(user, USER_PW, "/").await;
    let status = r.status().as_u16();
    match (status, cookie_from(r.headers(), SESSION_COOKIE)) {
        (303, Some(cookie)) => Ok(cookie),
        _ => Err(format!("login: {status}")),
    }
}

/// Performs write number `i` (users, logins, tokens and jobs in turn).
async fn write(gw: &Gateway, i: usize, admin: &str, cookie: &str, token: &str) -> Result<Write, String> {
    match i % 4 {
        0 => {
            let name = format!("u{i}");
            let r = client()
                .post(gw.at("/comfygate/api/users"))
                .bearer_auth(admin)
                .json(&json!({"username": name, "password": USER_PW}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            (r.status() == 201).then_some(Write::User(name)).ok_or(format!("user: {}", r.status()))
        }
        1 => {
            let cookie = login_cookie(gw, "alice").await?;
            Ok(Write::Session(sha256_hex(&cookie)))
        }
        2 => {
            let r = client()
                .post(gw.at("/comfygate/api/tokens"))
                .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
                .json(&json!({"name": format!("t{i}")}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            body["id"].as_i64().filter(|_| status == 201).map(Write::Token).ok_or(format!("token: {status} {body}"))
        }
        _ => {
            let r = client()
                .post(gw.at("/prompt"))
                .bearer_auth(token)
                .json(&json!({"prompt": workflow(&format!("job{i}"), 0)}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            body["prompt_id"]
                .as_str()
                .filter(|_| status == 200)
                .map(|id| Write::Job(id.to_owned()))
                .ok_or(format!("job: {status} {body}"))
        }
    }
}

#[tokio::test]
async fn a_backup_taken_during_writes_holds_every_write_acknowledged_before_it_began_and_is_private() {
    umask_022();
    let sim =
        Simulator::start(SimConfig { job_duration: Duration::from_millis(20), ..SimConfig::default() }).await.unwrap();
    let gw = Arc::new(Gateway::start(&sim.url()).await);
    gw.add_user("alice", "user").await;
    let admin = gw.token("admin", "ops").await;
    let token = gw.token("alice", "jobs").await;
    let cookie = gw.login("alice", USER_PW).await;

    const WRITES: usize = 200;
    let acked: Arc<Mutex<Vec<(Instant, Write)>>> = Arc::default();
    let writer = {
        let (gw, acked) = (gw.clone(), acked.clone());
        tokio::spawn(async move {
            let results: Vec<Result<(), String>> = futures_util::stream::iter(0..WRITES)
                .map(|i| {
                    let (gw, acked, admin, cookie, token) =
                        (gw.clone(), acked.clone(), admin.clone(), cookie.clone(), token.clone());
                    async move {
                        let done = write(&gw, i, &admin, &cookie, &token).await?;
                        acked.lock().unwrap().push((Instant::now(), done));
                        Ok(())
                    }
                })
                .buffer_unordered(4)
                .collect()
                .await;
            results
        })
    };
    poll(Duration::from_secs(60), "a third of the writes", || async {
        (acked.lock().unwrap().len() >= WRITES / 3).then_some(())
    })
    .await;
    let file = gw.dir.path().join("backup.db");
    let began = Instant::now();
    let out = gw.cli(&["backup", file.to_str().unwrap()], None).await.ok();
    let failures: Vec<String> = writer.await.unwrap().into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "every write succeeds: {failures:?}");

    assert!(out.stdout.starts_with(&format!("backup: {} (", file.display())), "{out:?}");
    assert!(out.stdout.contains("integrity ok"), "{out:?}");
    assert_eq!(mode(&file), 0o600, "private whatever the umask");
    let mut db = open_db(&file).await;
    let report: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut db).await.unwrap();
    assert_eq!(report, "ok");
    let writes = acked.lock().unwrap().clone();
    let before: Vec<&Write> = writes.iter().filter(|(at, _)| *at < began).map(|(_, w)| w).collect();
    assert!(before.len() >= WRITES / 3, "{}", before.len());
    eprintln!("{} of {WRITES} writes acknowledged before the backup began", before.len());
    for w in &before {
        let found = match w {
            Write::User(name) => count(&mut db, "SELECT count(*) FROM users WHERE username = ?", name).await,
            Write::Session(hash) => count(&mut db, "SELECT count(*) FROM sessions WHERE token_hash = ?", hash).await,
            Write::Token(id) => count(&mut db, "SELECT count(*) FROM api_tokens WHERE id = ?", &id.to_string()).await,
            Write::Job(id) => sqlx::query_scalar("SELECT count(*) FROM jobs WHERE public_id = ?1 OR prompt_id = ?1")
                .bind(id)
                .fetch_one(&mut db)
                .await
                .unwrap(),
        };
        assert_eq!(found, 1, "{w:?} was acknowledged before the backup began but is not in it");
    }
    db.close().await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file stays: {leftovers:?}");
    let events = gw.cli(&["audit", "--event", "store_backed_up", "--json"], None).await.ok();
    assert!(events.stdout.contains("backup.db"), "{events:?}");
}

#[tokio::test]
async fn restore_is_refused_while_a_gateway_serves_and_names_its_pid() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    let file = gw.dir.path().join("backup.db");
    gw.cli(&["backup", file.to_str().unwrap()], None).await.ok();
    let store = store_path(gw.dir.path());
    let inode = std::fs::metadata(&store).unwrap().ino();

    let out = gw.cli(&["restore", file.to_str().unwrap()], None).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(out.stderr.contains(&format!("a gateway (pid {}) is serving from", gw.pid())), "{out:?}");
    assert!(out.stderr.contains("stop it first"), "{out:?}");
    assert_eq!(std::fs::metadata(&store).unwrap().ino(), inode, "the store is untouched");
    assert!(restore_leftovers(store.parent().unwrap()).is_empty());
    let admin = gw.token("admin", "still").await;
    let (status, _) = gw.whoami(&Auth::Bearer(&admin)).await;
    assert_eq!(status, 200, "the gateway serves on");
}

#[tokio::test]
async fn restore_installs_the_copy_keeps_the_replaced_store_and_the_gateway_serves_from_it() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let mut gw = Gateway::start(&sim.url()).await;
    gw.add_user("before", "user").await;
    let file = gw.dir.path().join("backup.db");
    gw.cli(&["backup", file.to_str().unwrap()], None).await.ok();
    gw.add_user("after", "user").await;
    // As a crash would: what the gateway wrote last may still be in the WAL only.
    gw.signal(rustix::process::Signal::KILL);
    gw.exited(Duration::from_secs(10)).await;

    let out = gw.cli(&["restore", file.to_str().unwrap()], None).await.ok();
    let store = store_path(gw.dir.path());
    let kept_line = out.stdout.lines().find(|l| l.contains("the replaced store is kept as")).expect("kept line");
    let kept = PathBuf::from(kept_line.rsplit(' ').next().unwrap());
    assert!(kept.starts_with(store.parent().unwrap()), "kept beside the store: {out:?}");
    assert!(kept.file_name().unwrap().to_string_lossy().starts_with("comfygate.db.replaced-"), "{out:?}");
    // The kept store opens with what it had, including what a killed gateway left in its WAL.
    let mut old =
        connect(SqliteConnectOptions::from_str(&format!("sqlite://{}", kept.display())).unwrap().read_only(true)).await;
    assert_eq!(count(&mut old, "SELECT count(*) FROM users WHERE username = ?", "after").await, 1);
    old.close().await.unwrap();
    assert_eq!(mode(&store), 0o600);

    let users = gw.cli(&["user", "list"], None).await.ok();
    assert!(users.stdout.lines().any(|l| l.starts_with("before ")), "{users:?}");
    assert!(
        !users.stdout.lines().any(|l| l.starts_with("after ")),
        "a user created after the backup is gone: {users:?}"
    );

    let events = gw.cli(&["audit", "--event", "store_restored", "--json"], None).await.ok();
    assert!(events.stdout.contains("backup.db") && events.stdout.contains(".replaced-"), "{events:?}");

    let mut gw = gw.start_again().await;
    gw.login("before", USER_PW).await;
    gw.login("admin", ADMIN_PW).await;

    // Undone by restoring the kept store, with what its killed gateway left in its WAL.
    gw.signal(rustix::process::Signal::KILL);
    gw.exited(Duration::from_secs(10)).await;
    gw.cli(&["restore", kept.to_str().unwrap()], None).await.ok();
    let users = gw.cli(&["user", "list"], None).await.ok();
    assert!(users.stdout.lines().any(|l| l.starts_with("after ")), "{users:?}");
    let out = gw.cli(&["restore", store.to_str().unwrap()], None).await;
    assert_eq!(out.code, 2, "the store itself: {out:?}");
    assert!(out.stderr.contains("is the store itself"), "{out:?}");
}

/// A stopped gateway's configuration with an initialised store, and a backup of it.
async fn offline_store() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", &Options::default());
    let pw = dir.path().join("admin-pw");
    std::fs::write(&pw, format!("{USER_PW}\n")).unwrap();
    cli_at(&config, &["init", "--admin-password-file", pw.to_str().unwrap()], None).await.ok();
    cli_at(&config, &["user", "add", "bob", "--password-stdin"], Some(USER_PW)).await.ok();
    let backup = dir.path().join("good.db");
    cli_at(&config, &["backup", backup.to_str().unwrap()], None).await.ok();
    (dir, config, backup)
}

#[tokio::test]
async fn restore_refuses_what_is_not_an_intact_comfygate_store_of_a_known_schema() {
    let (dir, config, good) = offline_store().await;
    let store = store_path(dir.path());
    let inode = std::fs::metadata(&store).unwrap().ino();

    let text = dir.path().join("notes.db");
    std::fs::write(&text, "just some text, long enough to hold a header\n").unwrap();
    let foreign = dir.path().join("foreign.db");
    let mut db = connect(SqliteConnectOptions::new().filename(&foreign).create_if_missing(true)).await;
    sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut db).await.unwrap();
    db.close().await.unwrap();
    let newer = dir.path().join("newer.db");
    std::fs::copy(&good, &newer).unwrap();
    let mut db = connect(SqliteConnectOptions::new().filename(&newer)).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999999, 'from the future', TRUE, X'00', 0)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();

    for (file, says) in [
        (&text, "is not a SQLite database"),
        (&foreign, "is a SQLite database but not a comfygate store"),
        (&newer, "was made by a newer comfygate (schema version(s) [99999999]"),
        (&dir.path().join("absent.db"), "absent.db"),
    ] {
        let out = cli_at(&config, &["restore", file.to_str().unwrap()], None).await;
        assert_ne!(out.code, 0, "{out:?}");
        assert!(out.stderr.contains(says), "{file:?}: {out:?}");
        assert_eq!(std::fs::metadata(&store).unwrap().ino(), inode, "the store is untouched");
        assert!(restore_leftovers(store.parent().unwrap()).is_empty(), "{file:?}");
    }
    let out = cli_at(&config, &["restore", text.to_str().unwrap()], None).await;
    assert_eq!(out.code, 65, "{out:?}");
    let users = cli_at(&config, &["user", "list"], None).await.ok();
    assert!(users.stdout.lines().any(|l| l.starts_with("bob ")), "{users:?}");
}

#[tokio::test]
async fn backup_refuses_to_overwrite_a_file_unless_forced_and_a_missing_store_is_not_created() {
    let (dir, config, _) = offline_store().await;
    let file = dir.path().join("taken.db");
    std::fs::write(&file, "keep me").unwrap();
    let out = cli_at(&config, &["backup", file.to_str().unwrap()], None).await;
    assert_eq!(out.code, 73, "{out:?}");
    assert!(out.stderr.contains("exists; pass --force"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let out = cli_at(&config, &["backup", "--force", file.to_str().unwrap()], None).await.ok();
    assert!(out.stdout.contains("integrity ok"), "{out:?}");
    assert!(std::fs::read(&file).unwrap().starts_with(b"SQLite format 3\0"));

    let store = store_path(dir.path());
    let out = cli_at(&config, &["backup", "--force", &format!("{}-wal", store.display())], None).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is the store itself"), "{out:?}");

    let empty = tempfile::tempdir().unwrap();
    let config = write_config(empty.path(), "http://127.0.0.1:9", &Options::default());
    let out = cli_at(&config, &["backup", empty.path().join("b.db").to_str().unwrap()], None).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(out.stderr.contains("there is no store at"), "{out:?}");
    assert!(!empty.path().join("data").exists(), "nothing is created");
}

#[tokio::test]
async fn the_systemd_units_run_commands_the_cli_has() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_comfygate")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let commands: Vec<&str> =
        help.lines().filter_map(|l| l.strip_prefix("  ")).filter_map(|l| l.split_whitespace().next()).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let mut checked = Vec::new();
    for unit in ["comfygate.service", "comfygate-backup.service"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        for line in text.lines().filter(|l| l.starts_with("Exec")) {
            let words: Vec<&str> = line.split_whitespace().map(|w| w.trim_matches(['\'', '"'])).collect();
            if line.starts_with("ExecReload=") {
                assert_eq!(line, "ExecReload=/bin/kill -HUP $MAINPID", "{unit}");
                continue;
            }
            let Some(at) = words.iter().position(|w| w.ends_with("/usr/local/bin/comfygate")) else { continue };
            assert_eq!(words.get(at + 1), Some(&"--config"), "{unit}: {line}");
            let command = words.get(at + 3).copied().unwrap_or_default();
            assert!(commands.contains(&command), "{unit}: `{command}` is not a command of `comfygate --help`");
            checked.push(command.to_owned());
        }
    }
    assert_eq!(checked, ["serve", "backup"]);
}
