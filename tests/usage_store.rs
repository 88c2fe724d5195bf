//! The usage ledger in the store (job_usage): one row per job, totals grouped by user, token,
//! model, backend and UTC day, and `gpu_ms_since` — on SQLite always and on PostgreSQL when
//! `COMFYGATE_TEST_POSTGRES_URL` is set (each run gets a fresh database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use comfygate::store::{
    self, NewToken, NewUser, Role, Store, TokenKind, UsageGroup, UsageQuery, UsageRecord, UsageTotals,
};

struct TestDb {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    drop_pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.drop_pg.take() {
            // Best effort: a separate runtime, since Drop is synchronous.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    use sqlx::Executor;
                    if let Ok(pool) = sqlx::PgPool::connect(&admin_url).await {
                        let _ = pool.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                    }
                });
            })
            .join();
        }
    }
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("nested/folder/comfygate.db").display());
    TestDb { store: store::open(&url).await.unwrap(), _dir: Some(dir), drop_pg: None }
}

async fn postgres() -> Option<TestDb> {
    let admin_url = std::env::var("COMFYGATE_TEST_POSTGRES_URL").ok()?;
    use sqlx::Executor;
    let name = format!("comfygate_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url).await.expect("COMFYGATE_TEST_POSTGRES_URL must be reachable");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database name");
    let url = format!("{base}/{name}");
    Some(TestDb { store: store::open(&url).await.unwrap(), _dir: None, drop_pg: Some((admin_url, name)) })
}

/// Runs one contract check against every configured database.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[tokio::test] async fn $name() { super::$name(&super::sqlite().await).await; })*
        }
        mod postgres_store {
            $(#[tokio::test] async fn $name() {
                match super::postgres().await {
                    Some(db) => super::$name(&db).await,
                    None => eprintln!("COMFYGATE_TEST_POSTGRES_URL not set: PostgreSQL store test skipped"),
                }
            })*
        }
    };
}

on_every_store!(
    a_job_is_counted_once_and_survives_its_owners_deletion,
    totals_group_by_user_token_backend_and_day_within_the_window,
    a_jobs_models_are_counted_under_each_model,
    gpu_ms_since_lists_the_runs_of_one_user_or_everyone,
);

const DAY: i64 = 86_400_000;
/// 2026-11-01T00:00:00Z.
const NOV1: i64 = 1_793_491_200_000;

#[allow(clippy::too_many_arguments)]
fn record(
    id: &str,
    user: (i64, &str),
    token: Option<i64>,
    backend: &str,
    models: &[&str],
    ended_at: i64,
    run_ms: Option<i64>,
    outcome: &str,
) -> UsageRecord {
    UsageRecord {
        prompt_id: id.to_owned(),
        user_id: user.0,
        username: user.1.to_owned(),
        token_id: token,
        backend: Some(backend.to_owned()),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        priority: "normal".to_owned(),
        created_at: ended_at - 10_000,
        started_at: run_ms.map(|r| ended_at - r),
        ended_at,
        run_ms,
        outcome: outcome.to_owned(),
        outputs: if outcome == "done" { 2 } else { 0 },
    }
}

async fn user(db: &TestDb, name: &str) -> (i64, String) {
    let u = db
        .store
        .create_user(NewUser { username: name.to_owned(), password_hash: "x".to_owned(), role: Role::User })
        .await
        .unwrap();
    (u.id, u.username)
}

async fn totals(db: &TestDb, by: UsageGroup, since: i64, until: i64, user_id: Option<i64>) -> Vec<UsageTotals> {
    db.store.usage_totals(&UsageQuery { since, until, user_id, by }).await.unwrap()
}

fn keys(rows: &[UsageTotals]) -> Vec<(&str, i64)> {
    rows.iter().map(|r| (r.key.as_str(), r.jobs)).collect()
}

async fn a_job_is_counted_once_and_survives_its_owners_deletion(db: &TestDb) {
    let (id, name) = user(db, "ada").await;
    let r = record("p1", (id, &name), None, "gpu-a", &["m.safetensors"], NOV1 + 1_000, Some(4_000), "done");
    assert!(db.store.record_usage(&r).await.unwrap());
    let mut again = r.clone();
    again.run_ms = Some(99_000);
    assert!(!db.store.record_usage(&again).await.unwrap(), "a second end of the same job is not counted");
    db.store.delete_user(id).await.unwrap();
    let rows = totals(db, UsageGroup::User, NOV1, NOV1 + DAY, None).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.key.as_str(), row.jobs, row.done, row.outputs), ("ada", 1, 1, 2));
    assert!((row.gpu_seconds - 4.0).abs() < 1e-9, "{row:?}");
    assert!((row.mean_wait_seconds - 6.0).abs() < 1e-9, "{row:?}");
}

async fn totals_group_by_user_token_backend_and_day_within_the_window(db: &TestDb) {
    let (a, an) = user(db, "ada").await;
    let (b, bn) = user(db, "bob").await;
    let token = db
        .store
        .create_token(NewToken {
            user_id: a,
            name: "render-farm".to_owned(),
            token_hash: "h".repeat(64),
            prefix: "cg_x".to_owned(),
            kind: TokenKind::Api,
            created_at: NOV1,
            expires_at: None,
            minted_by_session: None,
            keep: false,
        })
        .await
        .unwrap();
    let rows = [
        record("a1", (a, &an), Some(token.id), "gpu-a", &[], NOV1 + 1_000, Some(2_000), "done"),
        record("a2", (a, &an), None, "gpu-b", &[], NOV1 + DAY + 5, Some(1_500), "failed"),
        record("b1", (b, &bn), None, "gpu-a", &[], NOV1 + 2 * DAY - 1, None, "cancelled"),
        // Outside the window on both sides.
        record("old", (b, &bn), None, "gpu-a", &[], NOV1 - 1, Some(9_000), "done"),
        record("new", (b, &bn), None, "gpu-a", &[], NOV1 + 2 * DAY, Some(9_000), "done"),
    ];
    for r in &rows {
        assert!(db.store.record_usage(r).await.unwrap());
    }
    let (since, until) = (NOV1, NOV1 + 2 * DAY);
    let by_user = totals(db, UsageGroup::User, since, until, None).await;
    assert_eq!(keys(&by_user), [("ada", 2), ("bob", 1)]);
    assert_eq!((by_user[0].done, by_user[0].failed, by_user[0].cancelled), (1, 1, 0));
    assert!((by_user[0].gpu_seconds - 3.5).abs() < 1e-9);
    assert_eq!((by_user[1].cancelled, by_user[1].gpu_seconds, by_user[1].mean_wait_seconds), (1, 0.0, 0.0));
    assert_eq!(
        keys(&totals(db, UsageGroup::Token, since, until, None).await),
        [("ada/(session)", 1), ("ada/render-farm", 1), ("bob/(session)", 1)]
    );
    assert_eq!(keys(&totals(db, UsageGroup::Backend, since, until, None).await), [("gpu-a", 2), ("gpu-b", 1)]);
    assert_eq!(keys(&totals(db, UsageGroup::Day, since, until, None).await), [("2026-11-01", 1), ("2026-11-02", 2)]);
    assert_eq!(keys(&totals(db, UsageGroup::Backend, since, until, Some(a)).await), [("gpu-a", 1), ("gpu-b", 1)]);
    assert!(totals(db, UsageGroup::User, since, until, Some(b + 1000)).await.is_empty());
}

async fn a_jobs_models_are_counted_under_each_model(db: &TestDb) {
    let (a, an) = user(db, "ada").await;
    let jobs = [
        record("m1", (a, &an), None, "gpu-a", &["sdxl.safetensors", "lora.safetensors"], NOV1 + 1, Some(1_000), "done"),
        record("m2", (a, &an), None, "gpu-a", &["sdxl.safetensors"], NOV1 + 2, Some(3_000), "done"),
        record("m3", (a, &an), None, "gpu-a", &[], NOV1 + 3, Some(500), "done"),
    ];
    for r in &jobs {
        db.store.record_usage(r).await.unwrap();
    }
    let rows = totals(db, UsageGroup::Model, NOV1, NOV1 + DAY, None).await;
    assert_eq!(keys(&rows), [("(none)", 1), ("lora.safetensors", 1), ("sdxl.safetensors", 2)]);
    assert!((rows[2].gpu_seconds - 4.0).abs() < 1e-9);
    // Grouped otherwise, a job with two models is one job.
    assert_eq!(keys(&totals(db, UsageGroup::User, NOV1, NOV1 + DAY, None).await), [("ada", 3)]);
}

async fn gpu_ms_since_lists_the_runs_of_one_user_or_everyone(db: &TestDb) {
    let (a, an) = user(db, "ada").await;
    let (b, bn) = user(db, "bob").await;
    for r in [
        record("x1", (a, &an), None, "gpu-a", &[], NOV1 + 30, Some(1_000), "done"),
        record("x2", (b, &bn), None, "gpu-a", &[], NOV1 + 20, Some(2_000), "failed"),
        record("x3", (a, &an), None, "gpu-a", &[], NOV1 + 10, None, "cancelled"),
        record("x4", (a, &an), None, "gpu-a", &[], NOV1 - 1, Some(7_000), "done"),
    ] {
        db.store.record_usage(&r).await.unwrap();
    }
    assert_eq!(db.store.gpu_ms_since(None, NOV1).await.unwrap(), [(b, NOV1 + 20, 2_000), (a, NOV1 + 30, 1_000)]);
    assert_eq!(db.store.gpu_ms_since(Some(a), NOV1).await.unwrap(), [(a, NOV1 + 30, 1_000)]);
    assert_eq!(db.store.gpu_ms_since(Some(a), 0).await.unwrap(), [(a, NOV1 - 1, 7_000), (a, NOV1 + 30, 1_000)]);
}
