//! The store's contract, run against SQLite always and PostgreSQL when
//! `COMFYGATE_TEST_POSTGRES_URL` is set (each run gets a fresh database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use comfygate::scheduler::files::FileLocations;
use comfygate::store::{
    self, AuditQuery, AuditRecord, Job, JobState, NewSession, NewToken, NewUser, Role, Store, StoreError, StoredFile,
    TokenKind, UsageGroup, UsageQuery, UsageRecord, UsageTotals,
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
    users_are_unique_and_round_trip,
    dispatches_are_claimed_only_under_the_current_scheduling_term,
    tokens_are_found_by_hash_with_their_owner,
    revocations_bump_the_epoch,
    deleting_a_user_removes_tokens_and_sessions,
    sessions_record_use_and_are_purged,
    ending_a_session_revokes_the_unkept_tokens_it_minted,
    a_password_change_revokes_every_unkept_session_minted_token,
    heartbeats_tell_which_gateways_lag,
    last_admin_count_ignores_disabled_admins,
    jobs_keep_their_state_and_files_their_backend,
    file_locations_answer_from_memory_and_never_hide_a_new_owner,
    login_attempts_are_taken_before_the_check_and_a_full_round_blocks,
    concurrent_login_attempts_cannot_all_be_taken,
    login_addresses_and_bcrypt_costs_are_known,
    audit_events_are_listed_newest_first_filtered_and_purged,
    an_accounts_throttle_keys_are_listed_and_cleared_and_no_one_elses,
    a_users_open_sessions_and_last_login_are_listed,
    idempotency_keys_are_claimed_once_per_user_answered_once_released_and_expire,
    webhook_deliveries_are_claimed_once_retried_and_listed_per_user,
    ended_jobs_are_listed_by_submission_time_filtered_by_failure_and_counted,
    a_job_is_counted_once_and_survives_its_owners_deletion,
    totals_group_by_user_token_backend_and_day_within_the_window,
    a_jobs_models_are_counted_under_each_model,
    gpu_ms_since_lists_the_runs_of_one_user_or_everyone,
);

async fn ended_jobs_are_listed_by_submission_time_filtered_by_failure_and_counted(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("fay", Role::User)).await.unwrap();
    let other = s.create_user(new_user("gus", Role::User)).await.unwrap();
    // (id, owner, created_at, how it ended); "q" is still queued, "h" ended but was deleted.
    let ended =
        [("a", u.id, 300, JobState::Done), ("b", u.id, 100, JobState::Failed), ("c", u.id, 200, JobState::Cancelled)];
    for (i, (id, owner, created, state)) in ended.into_iter().enumerate() {
        s.insert_job(&Job { created_at: created, ..job(id, owner, i as i64 + 1) }).await.unwrap();
        s.end_job(id, state, Some("gpu1"), None, Some(r#"{"outputs":{}}"#)).await.unwrap();
    }
    s.insert_job(&Job { created_at: 50, ..job("g", other.id, 10) }).await.unwrap();
    s.end_job("g", JobState::Done, Some("gpu1"), None, Some("{}")).await.unwrap();
    s.insert_job(&Job { created_at: 400, ..job("q", u.id, 11) }).await.unwrap();
    s.insert_job(&Job { created_at: 500, ..job("h", u.id, 12) }).await.unwrap();
    s.end_job("h", JobState::Done, Some("gpu1"), None, Some("{}")).await.unwrap();
    s.hide_history(Some(u.id), Some(&["h".to_owned()])).await.unwrap();
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.prompt_id).collect::<Vec<_>>();
    assert_eq!(ids(s.ended_jobs(Some(u.id), None, true, 0, 10).await.unwrap()), ["a", "c", "b"]);
    assert_eq!(ids(s.ended_jobs(Some(u.id), None, false, 0, 10).await.unwrap()), ["b", "c", "a"]);
    assert_eq!(ids(s.ended_jobs(Some(u.id), None, true, 1, 1).await.unwrap()), ["c"]);
    assert_eq!(ids(s.ended_jobs(Some(u.id), Some(true), true, 0, 10).await.unwrap()), ["b"]);
    assert_eq!(ids(s.ended_jobs(Some(u.id), Some(false), true, 0, 10).await.unwrap()), ["a", "c"]);
    assert_eq!(ids(s.ended_jobs(None, None, false, 0, 10).await.unwrap()), ["g", "b", "c", "a"]);
    assert_eq!(s.ended_count(Some(u.id), None).await.unwrap(), 3);
    assert_eq!(s.ended_count(Some(u.id), Some(true)).await.unwrap(), 1);
    assert_eq!(s.ended_count(Some(u.id), Some(false)).await.unwrap(), 2);
    assert_eq!(s.ended_count(None, None).await.unwrap(), 4);
}

fn new_user(name: &str, role: Role) -> NewUser {
    NewUser { username: name.to_owned(), password_hash: "$argon2id$v=19$x".to_owned(), role }
}

fn new_token(user_id: i64, name: &str, hash: &str) -> NewToken {
    NewToken {
        user_id,
        name: name.to_owned(),
        token_hash: hash.to_owned(),
        prefix: "cg_abc".to_owned(),
        kind: TokenKind::Api,
        created_at: 1_000,
        expires_at: Some(9_000),
        minted_by_session: None,
        keep: false,
    }
}

fn minted_token(user_id: i64, name: &str, hash: &str, session: i64, keep: bool) -> NewToken {
    NewToken { minted_by_session: Some(session), keep, ..new_token(user_id, name, hash) }
}

async fn users_are_unique_and_round_trip(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user(new_user("alice", Role::Admin)).await.unwrap();
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.role, Role::Admin);
    assert!(!alice.disabled);
    assert!(matches!(s.create_user(new_user("alice", Role::User)).await, Err(StoreError::Conflict(_))));
    s.create_user(new_user("bob", Role::User)).await.unwrap();
    let names: Vec<_> = s.list_users().await.unwrap().into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(s.count_users().await.unwrap(), 2);
    s.set_role(alice.id, Role::User).await.unwrap();
    s.rehash_password(alice.id, "new-hash").await.unwrap();
    let again = s.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!((again.role, again.password_hash.as_str()), (Role::User, "new-hash"));
    assert!(s.user_by_name("nobody").await.unwrap().is_none());
}

async fn tokens_are_found_by_hash_with_their_owner(db: &TestDb) {
    let s = &db.store;
    let bob = s.create_user(new_user("bob", Role::User)).await.unwrap();
    let t = s.create_token(new_token(bob.id, "laptop", "aa11")).await.unwrap();
    assert_eq!((t.username.as_str(), t.name.as_str(), t.expires_at), ("bob", "laptop", Some(9_000)));
    assert!(matches!(s.create_token(new_token(bob.id, "laptop", "bb22")).await, Err(StoreError::Conflict(_))));
    let (found, owner) = s.token_by_hash("aa11").await.unwrap().unwrap();
    assert_eq!((found.id, owner.username.as_str()), (t.id, "bob"));
    assert!(s.token_by_hash("ffff").await.unwrap().is_none());

    assert!(s.revoke_token(t.id, 5_000).await.unwrap());
    assert!(!s.revoke_token(t.id, 6_000).await.unwrap(), "revoking twice reports nothing done");
    let (revoked, _) = s.token_by_hash("aa11").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(5_000));
    // The name is free again once the old token is revoked.
    s.create_token(new_token(bob.id, "laptop", "cc33")).await.unwrap();
    s.record_token_use(&[(t.id, 7_000)]).await.unwrap();
    let listed = s.list_tokens(Some(bob.id)).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().find(|x| x.id == t.id).unwrap().last_used_at, Some(7_000));
    assert_eq!(s.list_tokens(None).await.unwrap().len(), 2);
}

async fn revocations_bump_the_epoch(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("carol", Role::User)).await.unwrap();
    let start = s.revocation_epoch().await.unwrap();
    let t = s.create_token(new_token(u.id, "x", "dd44")).await.unwrap();
    assert_eq!(s.revocation_epoch().await.unwrap(), start, "creating revokes nothing");
    s.revoke_token(t.id, 1).await.unwrap();
    s.set_disabled(u.id, true).await.unwrap();
    s.set_password(u.id, "h2").await.unwrap();
    assert_eq!(s.revocation_epoch().await.unwrap(), start + 3);
}

async fn deleting_a_user_removes_tokens_and_sessions(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("dave", Role::User)).await.unwrap();
    s.create_token(new_token(u.id, "x", "ee55")).await.unwrap();
    s.create_session(session(u.id, "sess1")).await.unwrap();
    s.delete_user(u.id).await.unwrap();
    assert!(s.token_by_hash("ee55").await.unwrap().is_none());
    assert!(s.session_by_hash("sess1").await.unwrap().is_none());
    assert!(s.user_by_name("dave").await.unwrap().is_none());
}

fn session(user_id: i64, hash: &str) -> NewSession {
    NewSession {
        token_hash: hash.to_owned(),
        user_id,
        created_at: 1_000,
        expires_at: 100_000,
        ip: "127.0.0.1".to_owned(),
        user_agent: "test".to_owned(),
    }
}

async fn sessions_record_use_and_are_purged(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("erin", Role::User)).await.unwrap();
    let a = s.create_session(session(u.id, "sa")).await.unwrap();
    let b = s.create_session(session(u.id, "sb")).await.unwrap();
    s.record_session_use(&[(a.id, 50_000)]).await.unwrap();
    let (found, owner) = s.session_by_hash("sa").await.unwrap().unwrap();
    assert_eq!((found.last_seen_at, owner.username.as_str()), (50_000, "erin"));
    assert_eq!(s.count_sessions(60_000, 40_000).await.unwrap(), 1, "b was last seen before the idle cut-off");
    assert_eq!(s.count_sessions(60_000, 0).await.unwrap(), 2);
    s.revoke_session(b.id, 2_000).await.unwrap();
    assert_eq!(s.count_sessions(60_000, 0).await.unwrap(), 1, "a revoked session is not active");
    assert_eq!(s.count_sessions(200_000, 0).await.unwrap(), 0, "nor one past its end");
    // b is revoked; a was seen at 50 000, so an idle cut-off of 40 000 keeps it.
    assert_eq!(s.purge_sessions(60_000, 40_000).await.unwrap(), 1);
    assert!(s.session_by_hash("sa").await.unwrap().is_some());
    // Past its absolute end it goes too.
    assert_eq!(s.purge_sessions(200_000, 0).await.unwrap(), 1);
    assert!(s.session_by_hash("sa").await.unwrap().is_none());
}

async fn heartbeats_tell_which_gateways_lag(db: &TestDb) {
    let s = &db.store;
    s.heartbeat("gw-a", 3, 10_000).await.unwrap();
    s.heartbeat("gw-b", 2, 10_000).await.unwrap();
    s.heartbeat("gw-old", 0, 1_000).await.unwrap();
    assert_eq!(s.lagging_instances(3, 5_000).await.unwrap(), 1, "gw-b lags, gw-old is gone");
    s.heartbeat("gw-b", 3, 11_000).await.unwrap();
    assert_eq!(s.lagging_instances(3, 5_000).await.unwrap(), 0);
    s.remove_instance("gw-a").await.unwrap();
    assert_eq!(s.lagging_instances(4, 5_000).await.unwrap(), 1);
}

async fn last_admin_count_ignores_disabled_admins(db: &TestDb) {
    let s = &db.store;
    let a = s.create_user(new_user("root1", Role::Admin)).await.unwrap();
    s.create_user(new_user("root2", Role::Admin)).await.unwrap();
    s.create_user(new_user("plain", Role::User)).await.unwrap();
    assert_eq!(s.count_active_admins().await.unwrap(), 2);
    s.set_disabled(a.id, true).await.unwrap();
    assert_eq!(s.count_active_admins().await.unwrap(), 1);
}

fn job(prompt_id: &str, user_id: i64, number: i64) -> Job {
    Job {
        prompt_id: prompt_id.to_owned(),
        public_id: prompt_id.to_owned(),
        user_id,
        token_id: None,
        username: "fay".to_owned(),
        client_id: "c1".to_owned(),
        number,
        request: r#"{"prompt":{}}"#.to_owned(),
        state: JobState::Queued,
        backend: None,
        error: None,
        created_at: 1_000,
        outcome: None,
        in_history: true,
    }
}

async fn dispatches_are_claimed_only_under_the_current_scheduling_term(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("tia", Role::User)).await.unwrap();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        s.insert_job(&Job { created_at: 1_000 + i as i64, ..job(id, u.id, i as i64 + 1) }).await.unwrap();
    }
    let first = s.take_scheduler_term("one", 1).await.unwrap();
    assert!(s.claim_job("a", "gpu1", first).await.unwrap());
    let a = s.job("a").await.unwrap().unwrap();
    assert_eq!((a.state, a.backend.as_deref()), (JobState::Dispatched, Some("gpu1")));
    // Another gateway takes the term: the first one's claims fail from now on, its own hold.
    let second = s.take_scheduler_term("two", 2).await.unwrap();
    assert!(second > first);
    assert!(!s.claim_job("b", "gpu1", first).await.unwrap());
    assert_eq!(s.job("b").await.unwrap().unwrap().state, JobState::Queued);
    assert!(s.claim_job("b", "gpu2", second).await.unwrap());
    // An ended job is never claimed again; an unknown one is not claimed.
    s.end_job("c", JobState::Cancelled, None, Some("deleted"), None).await.unwrap();
    assert!(!s.claim_job("c", "gpu1", second).await.unwrap());
    assert!(!s.claim_job("nope", "gpu1", second).await.unwrap());
    // The held jobs without their requests, by number; queued ones by submission time.
    let held = s.held_jobs_brief().await.unwrap();
    assert_eq!(held.iter().map(|j| j.prompt_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(held.iter().all(|j| j.request.is_empty()));
    s.insert_job(&Job { created_at: 5_000, ..job("d", u.id, 4) }).await.unwrap();
    s.insert_job(&Job { created_at: 9_000, ..job("e", u.id, 5) }).await.unwrap();
    assert_eq!(s.queued_job_ids(9_000).await.unwrap(), ["d"]);
    assert_eq!(s.queued_job_ids(9_001).await.unwrap(), ["d", "e"]);
    // Numbers: the store's sequence with replicas (past every number in use), else the gateway's.
    match s.next_job_number().await.unwrap() {
        Some(n) => {
            assert!(s.shared());
            assert!(s.next_job_number().await.unwrap().unwrap() > n);
        }
        None => assert!(!s.shared()),
    }
}

async fn jobs_keep_their_state_and_files_their_backend(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("fay", Role::User)).await.unwrap();
    assert_eq!(s.max_job_number().await.unwrap(), 0);
    s.insert_job(&job("p2", u.id, 2)).await.unwrap();
    s.insert_job(&job("p1", u.id, 1)).await.unwrap();
    assert!(matches!(s.insert_job(&job("p1", u.id, 3)).await, Err(StoreError::Conflict(_))));
    assert_eq!(s.max_job_number().await.unwrap(), 2);
    s.update_job("p1", JobState::Dispatched, Some("gpu1"), None).await.unwrap();
    s.update_job("p1", JobState::Failed, None, Some("backend lost")).await.unwrap();
    // History: entries of ended jobs, in the order they ended; deleting hides them.
    s.insert_job(&job("p3", u.id, 3)).await.unwrap();
    s.end_job("p3", JobState::Done, Some("gpu1"), None, Some(r#"{"outputs":{}}"#)).await.unwrap();
    assert_eq!(s.history_count(Some(u.id)).await.unwrap(), 1);
    let page = s.history_page(Some(u.id), 0, 10).await.unwrap();
    assert_eq!((page[0].prompt_id.as_str(), page[0].outcome.as_deref()), ("p3", Some(r#"{"outputs":{}}"#)));
    assert_eq!(s.history_count(None).await.unwrap(), 1);
    assert_eq!(s.hide_history(Some(u.id + 1), None).await.unwrap(), 0, "another user's clear hides nothing");
    assert_eq!(s.hide_history(Some(u.id), Some(&["p3".to_owned()])).await.unwrap(), 1);
    assert_eq!(s.history_count(Some(u.id)).await.unwrap(), 0);
    assert!(!s.job("p3").await.unwrap().unwrap().in_history);
    // A late write (another task's stale view) never revives a job that has ended.
    s.update_job("p1", JobState::Queued, None, None).await.unwrap();
    s.update_job("p1", JobState::Done, Some("gpu2"), None).await.unwrap();
    let p1 = s.job("p1").await.unwrap().unwrap();
    assert_eq!(
        (p1.state, p1.backend.as_deref(), p1.error.as_deref()),
        (JobState::Failed, Some("gpu1"), Some("backend lost"))
    );
    let queued: Vec<_> =
        s.jobs_in_states(&[JobState::Queued]).await.unwrap().into_iter().map(|j| j.prompt_id).collect();
    assert_eq!(queued, ["p2"]);
    let all: Vec<_> = s
        .jobs_in_states(&[JobState::Queued, JobState::Failed])
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.prompt_id)
        .collect();
    assert_eq!(all, ["p1", "p2"]);

    // Public ids are per owner: another user's same id neither collides nor is found.
    let other = s.create_user(new_user("gus", Role::User)).await.unwrap();
    let mine = Job { public_id: "job-0001".to_owned(), ..job("internal-a", u.id, 4) };
    let theirs = Job { public_id: "job-0001".to_owned(), ..job("internal-b", other.id, 5) };
    s.insert_job(&mine).await.unwrap();
    s.insert_job(&theirs).await.unwrap();
    let again = Job { public_id: "job-0001".to_owned(), ..job("internal-c", u.id, 6) };
    assert!(matches!(s.insert_job(&again).await, Err(StoreError::Conflict(_))), "unique within the owner");
    assert_eq!(s.job_of(u.id, "job-0001").await.unwrap().unwrap().prompt_id, "internal-a");
    assert_eq!(s.job_of(other.id, "job-0001").await.unwrap().unwrap().prompt_id, "internal-b");
    assert!(s.job_of(other.id, "internal-a").await.unwrap().is_none());

    // Owners: enabled users run; disabled, removed users and revoked or expired tokens do not.
    assert!(s.owner_active(u.id, None, 2_000).await.unwrap());
    assert!(!s.owner_active(999_999, None, 2_000).await.unwrap());
    s.set_disabled(other.id, true).await.unwrap();
    assert!(!s.owner_active(other.id, None, 2_000).await.unwrap());
    let token =
        s.create_token(NewToken { expires_at: Some(5_000), ..new_token(u.id, "script", "ee55") }).await.unwrap();
    assert!(s.owner_active(u.id, Some(token.id), 2_000).await.unwrap());
    assert!(!s.owner_active(u.id, Some(token.id), 6_000).await.unwrap(), "expired");
    assert!(!s.owner_active(other.id, Some(token.id), 2_000).await.unwrap(), "someone else's token");
    s.revoke_token(token.id, 3_000).await.unwrap();
    assert!(!s.owner_active(u.id, Some(token.id), 2_000).await.unwrap(), "revoked");

    let file = |backend: &str| StoredFile {
        backend: backend.to_owned(),
        kind: "output".to_owned(),
        subfolder: String::new(),
        filename: "x_00001_.png".to_owned(),
        prompt_id: Some("p2".to_owned()),
        user_id: Some(u.id),
    };
    s.record_file(&file("gpu1")).await.unwrap();
    s.record_file(&file("gpu1")).await.unwrap();
    assert_eq!(s.file("output", "", "x_00001_.png", u.id).await.unwrap().unwrap().backend, "gpu1");
    assert!(s.file("input", "", "x_00001_.png", u.id).await.unwrap().is_none());
    // The same name on another backend, made by someone else: each user finds their own.
    let other = s.user_by_name("gus").await.unwrap().unwrap();
    s.record_file(&StoredFile { backend: "gpu2".to_owned(), user_id: Some(other.id), ..file("gpu2") }).await.unwrap();
    assert_eq!(s.file("output", "", "x_00001_.png", u.id).await.unwrap().unwrap().backend, "gpu1");
    assert_eq!(s.file("output", "", "x_00001_.png", other.id).await.unwrap().unwrap().backend, "gpu2");
    // Each user's own files of a kind, and nobody else's.
    let mine = s.files_of(u.id, "output", 10).await.unwrap();
    assert_eq!(mine.iter().map(|f| f.backend.as_str()).collect::<Vec<_>>(), ["gpu1"]);
    assert!(s.files_of(u.id, "input", 10).await.unwrap().is_empty());
    assert_eq!(s.files_of(other.id, "output", 10).await.unwrap()[0].backend, "gpu2");
}

async fn file_locations_answer_from_memory_and_never_hide_a_new_owner(db: &TestDb) {
    let s = &db.store;
    let owner = s.create_user(new_user("olga", Role::User)).await.unwrap();
    let other = s.create_user(new_user("pete", Role::User)).await.unwrap();
    let ttl = std::time::Duration::from_secs(1);
    let files = FileLocations::with_ttl(s.clone(), ttl);
    let file = |name: &str| StoredFile {
        backend: "gpu1".to_owned(),
        kind: "output".to_owned(),
        subfolder: "sub".to_owned(),
        filename: name.to_owned(),
        prompt_id: None,
        user_id: Some(owner.id),
    };
    let holder = |found: Option<Arc<StoredFile>>| found.map(|f| (f.backend.clone(), f.user_id));

    // Looked up before it exists, then recorded through the locations: the owner is known at
    // once, to everyone, whatever was cached before.
    assert!(files.file("output", "sub", "a.png", other.id).await.unwrap().is_none());
    files.record(&file("a.png")).await.unwrap();
    let known = Some(("gpu1".to_owned(), Some(owner.id)));
    assert_eq!(holder(files.file("output", "sub", "a.png", other.id).await.unwrap()), known);
    assert_eq!(holder(files.file("output", "sub", "a.png", owner.id).await.unwrap()), known);

    // A record answers from memory: another process moving the file is seen after the TTL.
    // (Records of one file made in the same millisecond are unordered: the move comes later.)
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.record_file(&StoredFile { backend: "gpu2".to_owned(), ..file("a.png") }).await.unwrap();
    assert_eq!(holder(files.file("output", "sub", "a.png", owner.id).await.unwrap()), known);
    let moved = Some(("gpu2".to_owned(), Some(owner.id)));
    common::poll(ttl * 10, "the moved record once the cached one expires", || async {
        (holder(files.file("output", "sub", "a.png", owner.id).await.unwrap()) == moved).then_some(())
    })
    .await;

    // A name no record can have (PostgreSQL text cannot even hold NUL) is simply not recorded.
    assert!(files.file("output", "sub", "a\0b.png", other.id).await.unwrap().is_none());
    assert!(files.file("out\0put", "s\0ub", "a.png", other.id).await.unwrap().is_none());

    // "Not recorded" is remembered only when no other process writes to the store: with
    // replicas (PostgreSQL) a file another gateway records is never hidden behind it.
    assert!(files.file("output", "sub", "b.png", other.id).await.unwrap().is_none());
    s.record_file(&file("b.png")).await.unwrap();
    let seen = holder(files.file("output", "sub", "b.png", other.id).await.unwrap());
    if s.shared() {
        assert_eq!(seen, known);
    } else {
        assert_eq!(seen, None);
        common::poll(ttl * 10, "the record once the cached miss expires", || async {
            (holder(files.file("output", "sub", "b.png", other.id).await.unwrap()) == known).then_some(())
        })
        .await;
    }
}

async fn ending_a_session_revokes_the_unkept_tokens_it_minted(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("frank", Role::User)).await.unwrap();
    let a = s.create_session(session(u.id, "fa")).await.unwrap();
    let b = s.create_session(session(u.id, "fb")).await.unwrap();
    let unkept = s.create_token(minted_token(u.id, "unkept", "f1", a.id, false)).await.unwrap();
    let kept = s.create_token(minted_token(u.id, "kept", "f2", a.id, true)).await.unwrap();
    let other = s.create_token(minted_token(u.id, "other", "f3", b.id, false)).await.unwrap();
    let cli = s.create_token(new_token(u.id, "cli", "f4")).await.unwrap();
    assert_eq!((kept.minted_by_session, kept.keep), (Some(a.id), true), "the origin round-trips");
    let start = s.revocation_epoch().await.unwrap();
    assert_eq!(s.revoke_session(a.id, 2_000).await.unwrap(), vec![unkept.id]);
    assert!(s.revocation_epoch().await.unwrap() > start);
    let revoked = |hash: &'static str| async move { s.token_by_hash(hash).await.unwrap().unwrap().0.revoked_at };
    assert_eq!(revoked("f1").await, Some(2_000));
    for (hash, t) in [("f2", &kept), ("f3", &other), ("f4", &cli)] {
        assert_eq!(revoked(hash).await, None, "{}", t.name);
    }
    assert!(s.revoke_session(a.id, 3_000).await.unwrap().is_empty(), "nothing left to revoke");
}

async fn a_password_change_revokes_every_unkept_session_minted_token(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("gina", Role::User)).await.unwrap();
    let neighbour = s.create_user(new_user("hank", Role::User)).await.unwrap();
    let a = s.create_session(session(u.id, "ga")).await.unwrap();
    let b = s.create_session(session(u.id, "gb")).await.unwrap();
    let n = s.create_session(session(neighbour.id, "gn")).await.unwrap();
    let t1 = s.create_token(minted_token(u.id, "a", "g1", a.id, false)).await.unwrap();
    let t2 = s.create_token(minted_token(u.id, "b", "g2", b.id, false)).await.unwrap();
    s.create_token(minted_token(u.id, "kept", "g3", b.id, true)).await.unwrap();
    s.create_token(new_token(u.id, "cli", "g4")).await.unwrap();
    s.create_token(minted_token(neighbour.id, "n", "g5", n.id, false)).await.unwrap();
    let mut revoked = s.set_password(u.id, "h2").await.unwrap();
    revoked.sort_unstable();
    assert_eq!(revoked, vec![t1.id, t2.id]);
    for hash in ["g3", "g4", "g5"] {
        assert!(s.token_by_hash(hash).await.unwrap().unwrap().0.revoked_at.is_none(), "{hash}");
    }
    assert!(s.session_by_hash("gb").await.unwrap().unwrap().0.revoked_at.is_some(), "sessions end too");
}

async fn login_attempts_are_taken_before_the_check_and_a_full_round_blocks(db: &TestDb) {
    let s = &db.store;
    let (base, max) = (30_000, 100_000);
    for _ in 0..5 {
        assert_eq!(s.take_login_attempt("k", 5, 1_000, 0).await.unwrap(), None);
    }
    assert_eq!(s.take_login_attempt("k", 5, 1_000, 0).await.unwrap(), Some(0), "five in flight: no sixth, no block");
    for _ in 0..5 {
        s.login_attempt_failed("k", 5, 2_000, base, max).await.unwrap();
    }
    assert_eq!(s.take_login_attempt("k", 5, 2_001, 0).await.unwrap(), Some(32_000), "blocked once");
    // One more try after the block; its failure doubles the block, up to the maximum.
    assert_eq!(s.take_login_attempt("k", 5, 32_000, 0).await.unwrap(), None);
    assert_eq!(s.take_login_attempt("k", 5, 32_000, 0).await.unwrap(), Some(32_000), "in flight, block past");
    s.login_attempt_failed("k", 5, 33_000, base, max).await.unwrap();
    assert_eq!(s.take_login_attempt("k", 5, 33_001, 0).await.unwrap(), Some(93_000));
    assert_eq!(s.take_login_attempt("k", 5, 93_000, 0).await.unwrap(), None);
    s.login_attempt_failed("k", 5, 93_000, base, max).await.unwrap();
    assert_eq!(s.take_login_attempt("k", 5, 93_001, 0).await.unwrap(), Some(193_000));
    // Quiet past the forget window (and no longer blocked): a fresh round with the first block.
    assert_eq!(s.purge_login_throttle(100_000).await.unwrap(), 0, "a blocked key is kept");
    for _ in 0..5 {
        assert_eq!(s.take_login_attempt("k", 5, 200_000, 193_001).await.unwrap(), None);
    }
    s.login_attempt_failed("k", 5, 200_000, base, max).await.unwrap();
    assert_eq!(s.take_login_attempt("k", 5, 200_001, 0).await.unwrap(), Some(230_000));
    // Given back, an attempt counts no more; forgotten, the key starts afresh.
    s.take_login_attempt("other", 2, 1_000, 0).await.unwrap();
    s.take_login_attempt("other", 2, 1_000, 0).await.unwrap();
    s.return_login_attempt("other", false).await.unwrap();
    assert_eq!(s.take_login_attempt("other", 2, 1_000, 0).await.unwrap(), None);
    s.return_login_attempt("k", true).await.unwrap();
    assert_eq!(s.take_login_attempt("k", 5, 200_002, 0).await.unwrap(), None);
    assert_eq!(s.purge_login_throttle(1_000_000).await.unwrap(), 2);
}

async fn concurrent_login_attempts_cannot_all_be_taken(db: &TestDb) {
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let s = db.store.clone();
            tokio::spawn(async move { s.take_login_attempt("crowd", 5, 1_000, 0).await.unwrap() })
        })
        .collect();
    let mut granted = 0;
    for attempt in attempts {
        granted += usize::from(attempt.await.unwrap().is_none());
    }
    assert_eq!(granted, 5);
}

async fn login_addresses_and_bcrypt_costs_are_known(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user(new_user("alice", Role::User)).await.unwrap();
    assert_eq!(s.max_bcrypt_cost().await.unwrap(), None);
    let legacy = NewUser {
        password_hash: "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5k".to_owned(),
        ..new_user("legacy", Role::Admin)
    };
    let legacy = s.create_user(legacy).await.unwrap();
    assert_eq!(s.max_bcrypt_cost().await.unwrap(), Some(12));
    s.rehash_password(legacy.id, "$argon2id$v=19$y").await.unwrap();
    assert_eq!(s.max_bcrypt_cost().await.unwrap(), None, "upgraded accounts no longer count");

    assert!(!s.known_login_address(alice.id, "203.0.113.5", 0).await.unwrap());
    s.record_login_address(alice.id, "203.0.113.5", 5_000).await.unwrap();
    s.record_login_address(alice.id, "203.0.113.5", 6_000).await.unwrap();
    assert!(s.known_login_address(alice.id, "203.0.113.5", 6_000).await.unwrap());
    assert!(!s.known_login_address(alice.id, "203.0.113.5", 6_001).await.unwrap(), "too long ago");
    assert!(!s.known_login_address(alice.id, "198.51.100.1", 0).await.unwrap());
    assert!(!s.known_login_address(legacy.id, "203.0.113.5", 0).await.unwrap(), "per account");
    s.delete_user(alice.id).await.unwrap();
    assert!(!s.known_login_address(alice.id, "203.0.113.5", 0).await.unwrap());
}

fn audit_record(at: i64, event: &str, user: Option<&str>, token: Option<(i64, &str)>) -> AuditRecord {
    AuditRecord {
        at,
        event: event.to_owned(),
        username: user.map(str::to_owned),
        token_id: token.map(|(id, _)| id),
        address: token.map(|(_, address)| address.to_owned()),
        line: format!("{{\"at\":{at},\"event\":\"{event}\"}}"),
    }
}

async fn audit_events_are_listed_newest_first_filtered_and_purged(db: &TestDb) {
    let s = &db.store;
    for record in [
        audit_record(1_000, "login", Some("alice"), None),
        audit_record(2_000, "login_failed", Some("bob"), None),
        audit_record(3_000, "token_new_address", Some("alice"), Some((7, "10.0.0.1"))),
        audit_record(4_000, "token_new_address", Some("alice"), Some((7, "10.0.0.2"))),
        audit_record(5_000, "token_new_address", Some("bob"), Some((8, "10.0.0.9"))),
    ] {
        s.insert_audit_event(&record).await.unwrap();
    }
    let all = s.audit_events(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all[0].contains("5000") && all[4].contains("1000"), "newest first: {all:?}");
    let alice = AuditQuery { username: Some("alice".to_owned()), limit: 100, ..AuditQuery::default() };
    assert_eq!(s.audit_events(&alice).await.unwrap().len(), 3);
    let recent_logins =
        AuditQuery { event: Some("login_failed".to_owned()), since: Some(1_500), limit: 100, ..AuditQuery::default() };
    assert_eq!(s.audit_events(&recent_logins).await.unwrap(), [r#"{"at":2000,"event":"login_failed"}"#]);
    assert_eq!(s.audit_events(&AuditQuery { limit: 2, ..AuditQuery::default() }).await.unwrap().len(), 2);
    let second_page = s.audit_events(&AuditQuery { limit: 2, offset: 2, ..AuditQuery::default() }).await.unwrap();
    assert!(second_page.len() == 2 && second_page[0].contains("3000"), "pages: {second_page:?}");
    let mut seen = s.audit_token_addresses(7, "token_new_address", 32).await.unwrap();
    seen.sort();
    assert_eq!(seen, ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(s.audit_token_addresses(7, "token_new_address", 1).await.unwrap().len(), 1);
    assert_eq!(s.purge_audit_events(3_000).await.unwrap(), 2);
    assert_eq!(s.audit_events(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap().len(), 3);
}

async fn an_accounts_throttle_keys_are_listed_and_cleared_and_no_one_elses(db: &TestDb) {
    let s = &db.store;
    // `a_b` holds `_`, a LIKE wildcard: clearing it must not touch `axb`.
    for key in ["pair:a_b|10.0.0.1", "pair:a_b|10.0.0.2", "account:a_b", "pair:axb|10.0.0.1", "address:10.0.0.1"] {
        s.take_login_attempt(key, 1, 1_000, 0).await.unwrap();
        s.login_attempt_failed(key, 1, 1_000, 30_000, 100_000).await.unwrap();
    }
    let mut blocked = s.blocked_login_keys(2_000).await.unwrap();
    blocked.sort();
    assert_eq!(blocked.len(), 5, "{blocked:?}");
    assert!(blocked.iter().all(|(_, until)| *until == 31_000), "{blocked:?}");
    assert!(s.blocked_login_keys(31_000).await.unwrap().is_empty(), "no longer blocked at its end");
    assert_eq!(s.clear_login_keys("account:a_b", "pair:a_b|").await.unwrap(), 3);
    let mut left: Vec<String> = s.blocked_login_keys(2_000).await.unwrap().into_iter().map(|(k, _)| k).collect();
    left.sort();
    assert_eq!(left, ["address:10.0.0.1", "pair:axb|10.0.0.1"]);
}

async fn a_users_open_sessions_and_last_login_are_listed(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user(new_user("kim", Role::User)).await.unwrap();
    let other = s.create_user(new_user("lee", Role::User)).await.unwrap();
    let a = s.create_session(session(u.id, "ka")).await.unwrap();
    let b = s.create_session(session(u.id, "kb")).await.unwrap();
    s.create_session(session(other.id, "la")).await.unwrap();
    s.revoke_session(a.id, 2_000).await.unwrap();
    let open: Vec<i64> = s.sessions_of(u.id, 2_000).await.unwrap().iter().map(|x| x.id).collect();
    assert_eq!(open, [b.id], "neither revoked nor another user's");
    assert!(s.sessions_of(u.id, 1_000_000_000).await.unwrap().is_empty(), "nor past their end");
    s.record_login_address(u.id, "10.0.0.1", 5_000).await.unwrap();
    s.record_login_address(u.id, "10.0.0.2", 7_000).await.unwrap();
    assert_eq!(s.last_logins().await.unwrap(), [(u.id, 7_000)]);
}

async fn idempotency_keys_are_claimed_once_per_user_answered_once_released_and_expire(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user(new_user("alice", Role::User)).await.unwrap();
    let bob = s.create_user(new_user("bob", Role::User)).await.unwrap();
    let (now, old, stale) = (1_000_000, 0, 0);
    assert!(s.claim_idempotency_key(alice.id, "k", "aaa", now, old, stale).await.unwrap());
    assert!(!s.claim_idempotency_key(alice.id, "k", "bbb", now, old, stale).await.unwrap(), "claimed once");
    assert!(s.claim_idempotency_key(bob.id, "k", "bbb", now, old, stale).await.unwrap(), "keys are per user");
    let pending = s.idempotency_key(alice.id, "k").await.unwrap().unwrap();
    assert_eq!((pending.body_sha256.as_str(), pending.status, pending.answer), ("aaa", None, None));
    s.answer_idempotency_key(alice.id, "k", 200, "{\"prompt_id\":\"p\"}", Some(3)).await.unwrap();
    s.answer_idempotency_key(alice.id, "k", 500, "late", None).await.unwrap();
    let done = s.idempotency_key(alice.id, "k").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.answer.as_deref(), done.retry_after),
        (Some(200), Some("{\"prompt_id\":\"p\"}"), Some(3))
    );
    s.release_idempotency_key(alice.id, "k").await.unwrap();
    assert!(s.idempotency_key(alice.id, "k").await.unwrap().is_some(), "an answered key is not released");
    s.release_idempotency_key(bob.id, "k").await.unwrap();
    assert!(s.idempotency_key(bob.id, "k").await.unwrap().is_none(), "an unanswered claim is released");
    // An unanswered claim older than the abandonment cut-off is taken over; an answered one is not.
    assert!(s.claim_idempotency_key(bob.id, "k", "ccc", now, old, stale).await.unwrap());
    assert!(s.claim_idempotency_key(bob.id, "k", "ddd", now + 10, old, now + 1).await.unwrap(), "abandoned");
    assert!(!s.claim_idempotency_key(alice.id, "k", "eee", now + 10, old, now + 1).await.unwrap());
    // Expired keys are forgotten on claim and by the purge.
    assert!(s.claim_idempotency_key(alice.id, "k", "fff", now + 10, now + 1, stale).await.unwrap(), "expired");
    assert_eq!(s.purge_idempotency_keys(now + 11).await.unwrap(), 2);
    assert!(s.idempotency_key(alice.id, "k").await.unwrap().is_none());
}

async fn webhook_deliveries_are_claimed_once_retried_and_listed_per_user(db: &TestDb) {
    use comfygate::store::{Attempted, NewDelivery};
    let s = &db.store;
    let new = |id: &str, user: i64| NewDelivery {
        message_id: id.to_owned(),
        user_id: user,
        job_id: format!("job-{id}"),
        event: "job.completed".to_owned(),
        url: "https://hooks.example.com/h".to_owned(),
        body: "{}".to_owned(),
        created_at: 1_000,
    };
    s.insert_delivery(&new("a", 1)).await.unwrap();
    s.insert_delivery(&new("b", 2)).await.unwrap();
    s.insert_delivery(&new("a", 1)).await.unwrap(); // the same message twice is one row
    assert_eq!(s.deliveries(None, 10).await.unwrap().len(), 2);
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(1_000));
    // Claims racing each other take every row once.
    let claims: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.claim_deliveries(2_000, 10_000, 10).await.unwrap() })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claims {
        claimed.extend(c.await.unwrap().into_iter().map(|d| d.message_id));
    }
    claimed.sort();
    assert_eq!(claimed, ["a", "b"]);
    assert!(s.claim_deliveries(3_000, 10_000, 10).await.unwrap().is_empty(), "still claimed");
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(10_000));
    let a = s.deliveries(Some(1), 10).await.unwrap().remove(0);
    s.delivery_attempted(a.id, &Attempted::Retry(5_000, "HTTP 500".to_owned())).await.unwrap();
    let b = s.deliveries(Some(2), 10).await.unwrap().remove(0);
    s.delivery_attempted(b.id, &Attempted::Delivered(4_000)).await.unwrap();
    assert!(s.claim_deliveries(4_999, 20_000, 10).await.unwrap().is_empty(), "not due yet");
    let again = s.claim_deliveries(5_000, 20_000, 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts, again[0].last_error.as_deref()), (1, 1, Some("HTTP 500")));
    s.delivery_attempted(a.id, &Attempted::Failed("gave up".to_owned())).await.unwrap();
    let mine = s.deliveries(Some(1), 10).await.unwrap();
    assert_eq!((mine.len(), mine[0].state.as_str(), mine[0].attempts), (1, "failed", 2));
    assert_eq!(s.deliveries(Some(2), 10).await.unwrap()[0].delivered_at, Some(4_000));
    assert_eq!(s.next_delivery_due().await.unwrap(), None);
    assert_eq!(s.purge_deliveries(2_000).await.unwrap(), 2);
}

// --- the usage ledger (job_usage): one row per job, totals by user, token, model, backend and
// UTC day, and gpu_ms_since ---

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
