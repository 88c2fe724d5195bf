#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `comfygate env write` and `env check` through the real binary: only the keys written change,
//! the file is private whatever the umask, the token works and rotation revokes the one it
//! replaced (after writing); every verdict and drift is reported, and no secret is printed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::{Auth, CliOutput, Gateway, code_of, poll};
use serde_json::Value;

fn umask_022() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The value a dotenv reader gets for `key`.
fn value_of(path: &Path, key: &str) -> String {
    dotenvy::from_path_iter(path).unwrap().map(Result::unwrap).filter(|(k, _)| k == key).map(|(_, v)| v).last().unwrap()
}

fn assert_no_secret(out: &CliOutput, secrets: &[&str]) {
    for secret in secrets {
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret), "a secret leaked: {out:?}");
    }
}

async fn env_write(gw: &Gateway, file: &Path, extra: &[&str]) -> CliOutput {
    let mut args = vec!["env", "write", "--user", "alice", "--file", file.to_str().unwrap(), "--url", &gw.url];
    args.extend_from_slice(extra);
    gw.cli(&args, None).await
}

const BEFORE: &str = "# the notebook's settings\r\n\
export COMFYUI_TOKEN=\"not-a-token-yet\"  # from the wiki\r\n\
\r\n\
OTHER_KEY='keep me' # untouched\r\n\
COMFYUI_URL=http://old.example:8188\r\n\
LAST=no-newline";

#[tokio::test]
async fn env_write_changes_only_its_keys_privately_and_rotation_revokes_the_replaced_token() {
    umask_022();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("alice", "user").await;
    let file = gw.dir.path().join(".env");
    std::fs::write(&file, BEFORE).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = env_write(&gw, &file, &[]).await.ok();
    let first = value_of(&file, "COMFYUI_TOKEN");
    assert!(first.starts_with("cg_"), "{first}");
    assert_no_secret(&out, &[&first]);
    assert!(out.stdout.contains("COMFYUI_TOKEN (line 2, updated)"), "{out:?}");
    assert!(out.stdout.contains("not a token; nothing to revoke"), "{out:?}");
    let expected =
        BEFORE.replace("\"not-a-token-yet\"", &format!("\"{first}\"")).replace("http://old.example:8188", &gw.url);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected, "only the two values changed");
    assert_eq!(mode(&file), 0o600);
    let (status, me) = gw.whoami(&Auth::Bearer(&first)).await;
    assert_eq!((status, me["username"].as_str()), (200, Some("alice")), "{me}");

    let out = env_write(&gw, &file, &[]).await.ok();
    let second = value_of(&file, "COMFYUI_TOKEN");
    assert_ne!(second, first);
    assert_no_secret(&out, &[&first, &second]);
    assert!(out.stdout.contains("revoked the token it replaces"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected.replace(&first, &second));
    let (status, body) = gw.whoami(&Auth::Bearer(&first)).await;
    assert_eq!((status, code_of(&body)), (401, "token_revoked"), "{body}");
    assert_eq!(gw.whoami(&Auth::Bearer(&second)).await.0, 200);
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn env_write_leaves_another_users_token_alone_and_refuses_a_symlink() {
    umask_022();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let bobs = gw.token("bob", "bobs").await;
    let file = gw.dir.path().join("shared.env");
    std::fs::write(&file, format!("COMFYUI_TOKEN={bobs}\n")).unwrap();
    let out = env_write(&gw, &file, &["--name", "notebook"]).await.ok();
    assert_no_secret(&out, &[&bobs]);
    assert!(out.stdout.contains("of `bob`, not of `alice`: left alone"), "{out:?}");
    assert_eq!(gw.whoami(&Auth::Bearer(&bobs)).await.0, 200, "bob's token still works");
    assert!(out.stdout.contains("`notebook`"), "{out:?}");

    let target = gw.dir.path().join("elsewhere");
    std::fs::write(&target, "KEEP=1\n").unwrap();
    let link = gw.dir.path().join("link.env");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = env_write(&gw, &link, &[]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("symbolic link"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "KEEP=1\n");
    let listed = gw.cli(&["token", "list", "alice"], None).await.ok();
    assert_eq!(listed.stdout.lines().count(), 2, "one token (notebook), none minted for the refused write: {listed:?}");

    let created = gw.dir.path().join("new.env");
    let out = env_write(&gw, &created, &[]).await.ok();
    assert!(out.stdout.contains("COMFYUI_TOKEN (line 1, added)"), "{out:?}");
    let token = value_of(&created, "COMFYUI_TOKEN");
    assert_eq!(std::fs::read_to_string(&created).unwrap(), format!("COMFYUI_TOKEN={token}\nCOMFYUI_URL={}\n", gw.url));
    assert_eq!(mode(&created), 0o600, "a new file is private under umask 022");
    assert!(out.stdout.contains("`env:new.env`"), "the default name: {out:?}");
}

/// The JSON finding for `key` in `file` (a path ending).
fn finding<'a>(report: &'a Value, file: &str, key: &str) -> &'a Value {
    let all = report["findings"].as_array().unwrap();
    all.iter()
        .find(|f| f["key"] == key && f["file"].as_str().unwrap().ends_with(file))
        .unwrap_or_else(|| panic!("no {key} in {file}: {report:#}"))
}

#[tokio::test]
async fn env_check_tells_every_verdict_and_drift_without_printing_a_secret() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("alice", "user").await;
    let valid = gw.token("alice", "valid").await;
    let other = gw.token("alice", "other").await;
    let revoked = gw.token("alice", "revoked").await;
    gw.cli(&["token", "revoke", "alice", "revoked"], None).await.ok();
    let expiring = gw.cli(&["token", "create", "alice", "--name", "expiring", "--expires", "1s"], None).await.ok();
    let expired = expiring.stdout.trim().to_owned();
    let unknown = "cg_a-stale-copy-that-was-never-issued";
    let hash = bcrypt::hash("comfyui-login-pw", 4).unwrap();
    let password_file = gw.dir.path().join("PASSWORD");
    std::fs::write(&password_file, format!("{hash}\ncarol\n")).unwrap();
    gw.cli(&["import", "comfyui-login", password_file.to_str().unwrap(), "--keep-legacy-token"], None).await.ok();
    let secrets = [valid.as_str(), other.as_str(), revoked.as_str(), expired.as_str(), unknown, hash.as_str()];
    poll(Duration::from_secs(10), "the token to expire", || async {
        let (status, body) = gw.whoami(&Auth::Bearer(&expired)).await;
        (status == 401 && code_of(&body) == "token_expired").then_some(())
    })
    .await;

    let project = gw.dir.path().join("project");
    for folder in ["app", "notebooks", "node_modules/pkg"] {
        std::fs::create_dir_all(project.join(folder)).unwrap();
    }
    let main = format!(
        "# every verdict\nVALID_TOKEN={valid}\nexport REVOKED_TOKEN=\"{revoked}\"\nEXPIRED_TOKEN='{expired}'\n\
         STALE_TOKEN={unknown} # copied from a chat\nLEGACY_TOKEN={hash}\nCOMFYUI_URL={}\n",
        gw.url
    );
    std::fs::write(project.join(".env"), main).unwrap();
    std::fs::write(project.join("app/.env.local"), format!("COMFYUI_TOKEN={valid}\n")).unwrap();
    std::fs::write(project.join("notebooks/prod.env"), format!("COMFYUI_TOKEN={other}\n")).unwrap();
    std::fs::write(project.join("node_modules/pkg/.env"), format!("COMFYUI_TOKEN={unknown}\n")).unwrap();

    let clean = gw.cli(&["env", "check", project.join("app").to_str().unwrap()], None).await;
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(clean.stdout.contains(".env.local:1 COMFYUI_TOKEN sha256:"), "{clean:?}");
    assert!(clean.stdout.contains("valid: accepted: token #") && clean.stdout.contains("`valid`"), "{clean:?}");
    assert_no_secret(&clean, &secrets);

    let out = gw.cli(&["env", "check", project.to_str().unwrap()], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_no_secret(&out, &secrets);
    for (key, verdict) in [
        ("VALID_TOKEN", "valid"),
        ("REVOKED_TOKEN", "revoked"),
        ("EXPIRED_TOKEN", "expired"),
        ("STALE_TOKEN", "unknown"),
        ("LEGACY_TOKEN", "valid"),
    ] {
        let line = out.stdout.lines().find(|l| l.contains(&format!(" {key} "))).unwrap_or_else(|| panic!("{out:?}"));
        assert!(line.contains(&format!(" {verdict}: ")), "{key}: {line}");
    }
    assert!(out.stdout.contains("was revoked"), "{out:?}");
    assert!(out.stdout.contains("legacy"), "{out:?}");
    assert!(!out.stdout.contains("node_modules"), "node_modules is not searched: {out:?}");
    let drift = out.stdout.lines().find(|l| l.starts_with("drift: COMFYUI_TOKEN")).unwrap_or_else(|| panic!("{out:?}"));
    assert!(drift.contains(".env.local:1") && drift.contains("prod.env:1"), "{drift}");

    let json = gw.cli(&["env", "check", "--json", project.to_str().unwrap()], None).await;
    assert_eq!(json.code, 1, "{json:?}");
    assert_no_secret(&json, &secrets);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(finding(&report, "project/.env", "VALID_TOKEN")["token"]["owner"], "alice");
    assert_eq!(finding(&report, "project/.env", "REVOKED_TOKEN")["verdict"], "revoked");
    assert_eq!(finding(&report, "project/.env", "REVOKED_TOKEN")["line"], 3);
    assert_eq!(finding(&report, "project/.env", "EXPIRED_TOKEN")["verdict"], "expired");
    assert_eq!(finding(&report, "project/.env", "STALE_TOKEN")["verdict"], "unknown");
    let legacy = finding(&report, "project/.env", "LEGACY_TOKEN");
    assert_eq!(
        (&legacy["verdict"], &legacy["shape"], &legacy["token"]["owner"]),
        (&"valid".into(), &"legacy".into(), &"carol".into())
    );
    let copies = report["drift"][0]["copies"].as_array().unwrap();
    assert_eq!(report["drift"][0]["key"], "COMFYUI_TOKEN");
    assert_eq!(copies.len(), 2, "{report:#}");
    assert!(copies.iter().all(|c| c["valid"] == true), "both copies are valid, yet they drift: {report:#}");
    assert_ne!(copies[0]["fingerprint"], copies[1]["fingerprint"]);

    let missing = gw.cli(&["env", "check", project.join("nowhere").to_str().unwrap()], None).await;
    assert_eq!(missing.code, 2, "{missing:?}");

    // A configuration naming a store that does not exist: not created, not "every token unknown".
    let elsewhere = tempfile::tempdir().unwrap();
    let config = common::write_config(elsewhere.path(), &sim.url(), &common::Options::default());
    let no_store = common::cli_at(&config, &["env", "check", project.to_str().unwrap()], None).await;
    assert_eq!(no_store.code, 69, "{no_store:?}");
    assert!(!elsewhere.path().join("data/comfygate.db").exists(), "the check created a store");
}
