//! Three real gateway processes on one PostgreSQL database and three simulators: one queue,
//! every job run exactly once, events on whichever replica the owner's socket is connected
//! to, revocations pushed to every replica, and a `kill -9` of the scheduling replica losing
//! nothing. Runs when `COMFYGATE_TEST_POSTGRES_URL` names a database (CI starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use comfyui_sim::Simulator;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::pool::{FAST_HEALTH, sim};
use common::{Auth, Gateway, Options, client, poll};

/// One replica test at a time: three gateways hold ~40 PostgreSQL connections (a pool of 10,
/// a listener, a sender and the lock each), and the test server allows 100.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A database of its own for one test, dropped at the end.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Option<Database> {
        let admin_url = std::env::var("COMFYGATE_TEST_POSTGRES_URL").ok()?;
        use sqlx::Connection;
        let name = format!("cg_replicas_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.expect("connect to the test PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Some(Database { admin_url, name, url })
    }

    async fn drop_it(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ =
                sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut conn).await;
        }
    }
}

/// A replica on `db` in front of `sims` (named sim, b2, b3), revocations only pushed (the poll
/// is 10 s, so a refusal within 1 s can only come from the notification).
async fn replica(db: &Database, sims: &[&Simulator]) -> Replica {
    let mut opts = Options::default()
        .store(&format!("url = {}", serde_json::to_string(&db.url).unwrap()))
        .auth("revocation_poll_interval = \"10s\"")
        .backend("max_inflight = 2")
        .extra(FAST_HEALTH);
    for (i, s) in sims.iter().enumerate().skip(1) {
        opts = opts.another_backend(&format!("b{}", i + 1), &s.url(), &["max_inflight = 2"]);
    }
    let gw = Gateway::start_with(&sims[0].url(), opts).await;
    let token = gw.token("admin", &format!("ready-{}", gw.addr.port())).await;
    poll(Duration::from_secs(15), "every backend healthy and monitored", || async {
        let (status, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
        let backends = state["backends"].as_array()?;
        let ready = backends.iter().all(|b| b["healthy"] == true && b["monitored"] == true);
        (status == 200 && backends.len() == sims.len() && ready).then_some(())
    })
    .await;
    Replica { gw, admin: token }
}

struct Replica {
    gw: Gateway,
    admin: String,
}

/// Which replica schedules (as each says).
async fn scheduling(replicas: &[Option<Replica>]) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        let Some(r) = r else { continue };
        let (_, state) = r.gw.get_json("/comfygate/api/backends", &Auth::Bearer(&r.admin)).await;
        if state["scheduling"] == true {
            return Some(i);
        }
    }
    None
}

/// A client socket of `token`'s owner on `gw` with `client_id`, collecting its text frames.
async fn socket(gw: &Gateway, token: &str, client_id: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let mut req = format!("ws://{}/ws?clientId={client_id}", gw.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        let _ = tx.send(v);
                    }
                }
                Message::Ping(p) => {
                    let _ = sink.send(Message::Pong(p)).await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    rx
}

/// Jobs `range`, round-robin over the users; each to one of the `alive` replicas its owner's
/// socket is not on (`homes`), all at once. Returns (owner, prompt id).
async fn submit_round(
    replicas: &[Option<Replica>],
    tokens: &[String],
    range: std::ops::Range<u32>,
    alive: &[usize],
    homes: &[usize],
) -> Vec<(usize, String)> {
    let mut owners = Vec::new();
    let mut jobs = Vec::new();
    for i in range {
        let u = (i % 3) as usize;
        let targets: Vec<usize> = alive.iter().copied().filter(|&r| r != homes[u]).collect();
        let target = targets[(i as usize / 3) % targets.len()];
        let gw = &replicas[target].as_ref().unwrap().gw;
        owners.push(u);
        jobs.push(submit(gw, &tokens[u], format!("tab-{u}"), i));
    }
    let ids = futures_util::future::join_all(jobs).await;
    owners.into_iter().zip(ids.into_iter().map(|id| id.expect("submitted"))).collect()
}

async fn submit(gw: &Gateway, token: &str, client_id: String, i: u32) -> Option<String> {
    let body = json!({"prompt": common::workflow("rep", i), "client_id": client_id,
        "extra_data": {"sim_duration_ms": 100}});
    let r = client().post(format!("{}/prompt", gw.url)).bearer_auth(token).json(&body).send().await.ok()?;
    let status = r.status();
    let v: Value = r.json().await.ok()?;
    assert_eq!(status, 200, "submission refused: {v}");
    v["prompt_id"].as_str().map(str::to_owned)
}

/// Every prompt id the owner's frames name, with the event types in the order they came.
fn events_by_prompt(frames: &[Value]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for f in frames {
        let kind = f["type"].as_str().unwrap_or_default();
        if let Some(id) = f["data"]["prompt_id"].as_str() {
            let kind = match (kind, f["data"]["node"].is_null()) {
                ("executing", true) => "done",
                _ => kind,
            };
            out.entry(id.to_owned()).or_default().push(kind.to_owned());
        }
    }
    out
}

/// Waits until every submitted job is in its owner's history (read from the replicas left).
async fn all_in_history(replicas: &[Option<Replica>], alive: &[usize], tokens: &[String], submitted: &[Vec<String>]) {
    poll(Duration::from_secs(120), "every job in its owner's history", || async {
        for (u, token) in tokens.iter().enumerate() {
            let gw = &replicas[alive[u % alive.len()]].as_ref()?.gw;
            let r = client().get(format!("{}/history?max_items=1000", gw.url)).bearer_auth(token).send().await.ok()?;
            let history: Value = r.json().await.ok()?;
            let done = submitted[u].iter().filter(|id| history.get(id.as_str()).is_some()).count();
            if done < submitted[u].len() {
                return None;
            }
        }
        Some(())
    })
    .await;
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>, into: &mut Vec<Value>) {
    while let Ok(v) = rx.try_recv() {
        into.push(v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_run_every_job_once_deliver_events_anywhere_and_survive_kill_9() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(db) = Database::create().await else {
        eprintln!("COMFYGATE_TEST_POSTGRES_URL not set: the replica test needs PostgreSQL; skipped");
        return;
    };
    let (s1, s2, s3) = (sim(30).await, sim(30).await, sim(30).await);
    let sims = [&s1, &s2, &s3];
    let mut replicas: Vec<Option<Replica>> = Vec::new();
    for _ in 0..3 {
        replicas.push(Some(replica(&db, &sims).await));
    }
    let leader = poll(Duration::from_secs(10), "one replica scheduling", || scheduling(&replicas)).await;
    let users = ["ann", "ben", "cy"];
    let first = &replicas[0].as_ref().unwrap().gw;
    let mut tokens = Vec::new();
    for user in users {
        first.add_user(user, "user").await;
        tokens.push(first.token(user, "jobs").await);
    }

    // Each owner's socket is on a replica that is not the scheduling one, and its jobs go to the
    // other two replicas in turn: the socket is never on the replica that took the submission.
    let others: Vec<usize> = (0..3).filter(|&r| r != leader).collect();
    let mut sockets = Vec::new();
    let mut homes = Vec::new();
    for (u, token) in tokens.iter().enumerate() {
        let home = others[u % 2];
        homes.push(home);
        sockets.push(socket(&replicas[home].as_ref().unwrap().gw, token, &format!("tab-{u}")).await);
    }
    let mut frames: Vec<Vec<Value>> = vec![Vec::new(); 3];
    let mut submitted: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut owner_of: HashMap<String, usize> = HashMap::new();

    // Phase 1: 150 jobs, round-robin over users; each to one of the replicas its owner's
    // socket is not on.
    for (u, id) in submit_round(&replicas, &tokens, 0..150, &[0, 1, 2], &homes).await {
        submitted[u].push(id.clone());
        owner_of.insert(id, u);
    }

    // Kill -9 the scheduling replica while jobs run.
    poll(Duration::from_secs(30), "some jobs of phase 1 run", || async {
        (s1.runs().len() + s2.runs().len() + s3.runs().len() >= 30).then_some(())
    })
    .await;
    let mut dead = replicas[leader].take().unwrap().gw;
    let killed_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    dead.signal(rustix::process::Signal::KILL);
    let _ = dead.exited(Duration::from_secs(5)).await;
    drop(dead);
    let taken = Instant::now();
    let new_leader = poll(Duration::from_secs(15), "another replica scheduling", || scheduling(&replicas)).await;
    eprintln!("replica {new_leader} took over {:?} after the kill", taken.elapsed());

    // Every job of phase 1 ends, in its owner's history on any replica.
    let alive: Vec<usize> = (0..3).filter(|&r| replicas[r].is_some()).collect();
    all_in_history(&replicas, &alive, &tokens, &submitted).await;

    // Ann's browser reconnects to the other replica (same clientId): her events follow her.
    let moved = alive.iter().copied().find(|&r| r != homes[0]).unwrap();
    homes[0] = moved;
    drain(&mut sockets[0], &mut frames[0]);
    sockets[0] = socket(&replicas[moved].as_ref().unwrap().gw, &tokens[0], "tab-0").await;

    // Phase 2: 150 more, to the two replicas left, never to the one holding the owner's socket.
    for (u, id) in submit_round(&replicas, &tokens, 150..300, &alive, &homes).await {
        submitted[u].push(id.clone());
        owner_of.insert(id, u);
    }

    // All 300 end: each in its owner's history, read from any replica.
    let all: HashSet<String> = owner_of.keys().cloned().collect();
    assert_eq!(all.len(), 300, "300 distinct prompt ids");
    all_in_history(&replicas, &alive, &tokens, &submitted).await;

    // Exactly once: every job ran on one simulator, once; nothing else ran.
    let mut runs: HashMap<String, usize> = HashMap::new();
    for s in sims {
        for run in s.runs() {
            *runs.entry(run.prompt_id.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs that ran more than once: {twice:?}");
    let ran: HashSet<String> = runs.keys().cloned().collect();
    assert_eq!(ran, all, "the jobs that ran are exactly the jobs submitted");

    // Events: each owner's socket (on a replica that took none of its submissions) got the end
    // of every one of its jobs, in order, and nothing of anyone else's.
    // (A job the killed replica recorded as ended without relaying its final event gets that
    // event from the replica the owner is connected to, after its grace of 1.5 s.) First every
    // end arrives; then the grace is waited out once more, so that a second end sent by
    // mistake would be here too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for (u, rx) in sockets.iter_mut().enumerate() {
            drain(rx, &mut frames[u]);
        }
        let all_ended = (0..3).all(|u| {
            let by_prompt = events_by_prompt(&frames[u]);
            submitted[u].iter().all(|id| by_prompt.get(id).is_some_and(|e| e.iter().any(|k| k == "done")))
        });
        if all_ended || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for (u, rx) in sockets.iter_mut().enumerate() {
        drain(rx, &mut frames[u]);
        let by_prompt = events_by_prompt(&frames[u]);
        let strangers: Vec<_> = by_prompt.keys().filter(|id| owner_of.get(*id) != Some(&u)).collect();
        assert!(strangers.is_empty(), "{} saw other users' jobs: {strangers:?}", users[u]);
        for id in &submitted[u] {
            let events = by_prompt.get(id).unwrap_or_else(|| {
                let started = sims.iter().flat_map(|s| s.runs()).find(|r| &r.prompt_id == id).map(|r| r.started_ms);
                let n = submitted[u].iter().position(|s| s == id);
                let at = started.map(|t| t as i64 - killed_ms);
                panic!("{}: no events for job {n:?} {id} (it started {at:?} ms after the kill)", users[u])
            });
            assert_eq!(events.iter().filter(|e| *e == "done").count(), 1, "{}: {id} ended once: {events:?}", users[u]);
            assert_eq!(events.last().map(String::as_str), Some("done"), "{}: {id} ends last: {events:?}", users[u]);
            if let (Some(start), Some(success)) = (
                events.iter().position(|e| e == "execution_start"),
                events.iter().position(|e| e == "execution_success"),
            ) {
                assert!(start < success, "{}: {id} in order: {events:?}", users[u]);
            }
        }
        // Jobs submitted after the takeover were relayed whole by the new scheduler.
        for id in &submitted[u][50..] {
            let events = &by_prompt[id];
            for kind in ["execution_start", "executed", "execution_success", "done"] {
                assert!(events.iter().any(|e| e == kind), "{}: {id} lacks {kind}: {events:?}", users[u]);
            }
        }
    }

    // A revocation on one replica is refused on the other within 1 s (pushed: the poll is 10 s).
    let (here, there) = (&replicas[alive[0]].as_ref().unwrap().gw, &replicas[alive[1]].as_ref().unwrap().gw);
    let ben = &tokens[1];
    let (status, _) = there.get_json("/prompt", &Auth::Bearer(ben)).await;
    assert_eq!(status, 200);
    let (_, listed) = here.get_json("/comfygate/api/tokens", &Auth::Bearer(ben)).await;
    let id = listed.as_array().and_then(|l| l.iter().find(|t| t["name"] == "jobs")).map(|t| t["id"].clone()).unwrap();
    let revoked = client().delete(format!("{}/comfygate/api/tokens/{id}", here.url)).bearer_auth(ben).send().await;
    assert!(revoked.unwrap().status().is_success());
    let at = Instant::now();
    poll(Duration::from_secs(1), "the revoked token refused on the other replica", || async {
        (there.get_json("/prompt", &Auth::Bearer(ben)).await.0 == 401).then_some(())
    })
    .await;
    eprintln!("revocation refused on the other replica after {:?}", at.elapsed());

    // So is a user an admin disabled on one replica.
    let admin = &replicas[alive[0]].as_ref().unwrap().admin;
    let cy = &tokens[2];
    assert_eq!(there.get_json("/prompt", &Auth::Bearer(cy)).await.0, 200);
    let disabled = client()
        .patch(format!("{}/comfygate/api/users/cy", here.url))
        .bearer_auth(admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert!(disabled.status().is_success(), "disable: {}", disabled.status());
    poll(Duration::from_secs(1), "the disabled user refused on the other replica", || async {
        (there.get_json("/prompt", &Auth::Bearer(cy)).await.0 == 401).then_some(())
    })
    .await;

    drop(replicas);
    db.drop_it().await;
}

/// Fair share is the scheduling replica's, whichever replica took the submissions: a user who
/// queued 40 jobs on one replica does not hold back two others submitting on the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fair_share_holds_across_replicas() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(db) = Database::create().await else {
        eprintln!("COMFYGATE_TEST_POSTGRES_URL not set: the replica test needs PostgreSQL; skipped");
        return;
    };
    let s1 = sim(30).await;
    let mut replicas: Vec<Option<Replica>> = Vec::new();
    for _ in 0..3 {
        replicas.push(Some(replica(&db, &[&s1]).await));
    }
    let leader = poll(Duration::from_secs(10), "one replica scheduling", || scheduling(&replicas)).await;
    let gw = |r: usize| &replicas[r].as_ref().unwrap().gw;
    let mut tokens = Vec::new();
    for user in ["ann", "ben", "cy"] {
        gw(0).add_user(user, "user").await;
        tokens.push(gw(0).token(user, "jobs").await);
    }
    // Ann fills the queue through replica 0.
    let ann: Vec<_> = (0..40).map(|i| submit(gw(0), &tokens[0], "tab-0".into(), i)).collect();
    let ann: HashSet<String> = futures_util::future::join_all(ann).await.into_iter().flatten().collect();
    poll(Duration::from_secs(30), "ann's jobs run", || async { (s1.runs().len() >= 4).then_some(()) }).await;
    // What an autoscaler reads comes from the scheduling replica alone: summed or maxed over
    // replicas, the waiting jobs count once.
    for (r, replica) in replicas.iter().enumerate() {
        let replica = replica.as_ref().unwrap();
        let text = client().get(replica.gw.at("/metrics")).bearer_auth(&replica.admin).send().await.unwrap();
        let text = text.text().await.unwrap();
        let series =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(-1.0);
        let (waiting, desired) =
            (series("comfygate_queue_waiting_jobs{models=\"\"}"), series("comfygate_desired_backends"));
        if r == leader {
            assert!(waiting >= 30.0 && desired >= 1.0, "the scheduler's demand: {waiting} waiting, {desired} desired");
        } else {
            assert_eq!((waiting, desired), (0.0, 0.0), "replica {r} reports no demand of its own");
        }
    }
    // Ben and Cy arrive through replicas 1 and 2.
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let ben: Vec<_> = (100..110).map(|i| submit(gw(1), &tokens[1], "tab-1".into(), i)).collect();
    let cy: Vec<_> = (200..210).map(|i| submit(gw(2), &tokens[2], "tab-2".into(), i)).collect();
    let (ben, cy) =
        futures_util::future::join(futures_util::future::join_all(ben), futures_util::future::join_all(cy)).await;
    let ben: HashSet<String> = ben.into_iter().flatten().collect();
    let cy: HashSet<String> = cy.into_iter().flatten().collect();
    assert_eq!((ann.len(), ben.len(), cy.len()), (40, 10, 10));
    poll(Duration::from_secs(60), "all 60 jobs ran", || async { (s1.runs().len() >= 60).then_some(()) }).await;

    let mut runs = s1.runs();
    runs.sort_by_key(|r| r.started_ms);
    let after: Vec<&str> = runs.iter().filter(|r| r.started_ms >= later).map(|r| r.prompt_id.as_str()).collect();
    let last_of = |who: &HashSet<String>| after.iter().rposition(|id| who.contains(*id));
    let (ann_last, ben_last, cy_last) = (last_of(&ann), last_of(&ben), last_of(&cy));
    eprintln!(
        "after ben and cy arrived: {} runs; last of ann {ann_last:?}, ben {ben_last:?}, cy {cy_last:?}",
        after.len()
    );
    // Three users sharing the GPU in turn: ben's and cy's tenth jobs start within the first
    // ~30 runs after they arrived (first come, first served would put them after ann's ~35).
    for (who, last) in [("ben", ben_last), ("cy", cy_last)] {
        let last = last.unwrap_or_else(|| panic!("{who}'s jobs ran before they were submitted?"));
        assert!(last <= 33, "{who}'s last job was run {last}th after they arrived: {after:?}");
    }
    assert!(ann_last > ben_last.max(cy_last), "ann, with the most queued, finishes last");
    drop(replicas);
    db.drop_it().await;
}
