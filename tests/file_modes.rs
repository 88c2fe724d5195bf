#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The data folder is the gateway's alone, whatever the umask: folders 0700, the database, its
//! WAL/SHM files and every user file 0600; a shared data folder is reported with the fix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::{Gateway, client, poll};

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// The usual umask, which leaves files world-readable unless the gateway sets their modes.
fn umask_022() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
}

#[tokio::test]
async fn data_folder_database_and_user_files_are_private_under_umask_022() {
    umask_022();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("alice", "user").await;
    let token = gw.token("alice", "t").await;
    let r =
        client().post(gw.at("/userdata/workflows%2Fsub%2Fa.json")).bearer_auth(&token).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);

    let data = gw.dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "data folder");
    for file in ["comfygate.db", "comfygate.db-wal", "comfygate.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let userdata = data.join("userdata");
    let alice = std::fs::read_dir(&userdata).unwrap().next().unwrap().unwrap().path();
    for folder in [userdata.clone(), alice.clone(), alice.join("workflows"), alice.join("workflows/sub")] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    assert_eq!(mode(&alice.join("workflows/sub/a.json")), 0o600, "a user's file");
}

#[tokio::test]
async fn a_data_folder_open_to_other_users_is_reported_with_the_fix() {
    umask_022();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    assert!(!gw.stderr().contains("chmod 700"), "{}", gw.stderr());
    let data = gw.dir.path().join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gw = gw.restart().await;
    let fix = format!("chmod 700 {}", data.display());
    poll(Duration::from_secs(5), "the warning", || async { gw.stderr().contains(&fix).then_some(()) }).await;
    assert_eq!(mode(&data), 0o755, "an existing folder is the operator's: reported, not changed");
}
