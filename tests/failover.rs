#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Failover against backends that die as a real ComfyUI does (issue 16): killed under load
//! with answers cut and prompts already taken, restarted after a start-up pause with an empty
//! queue and history. Every job the gateway accepted ends exactly once: finished, or failed
//! with a reason; none vanishes or runs twice.
//!
//! They failed on the scheduler before issue 16's rewrite. `cargo test --test failover --
//! --nocapture` prints, for each job in trouble, its timeline across the simulators and the
//! gateway's log lines about it.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use comfygate::store::JobState;
use comfyui_sim::{SimConfig, Simulator};
use common::pool::{gateway, job};
use common::{Auth, Gateway, client, poll};
use serde_json::Value;

/// A ComfyUI under load: the worker has the prompt before `POST /prompt` answers, and a
/// restart takes a while to open the port again.
fn loaded(job_ms: u64, answer_ms: u64, startup_ms: u64) -> SimConfig {
    SimConfig {
        job_duration: Duration::from_millis(job_ms),
        prompt_answer_delay: Duration::from_millis(answer_ms),
        startup_delay: Duration::from_millis(startup_ms),
        cache_outputs: true,
        ..SimConfig::default()
    }
}

/// `POST /prompt`; the prompt id when accepted.
async fn submit(gw: &Gateway, token: &str, body: Value) -> Result<String, String> {
    let r = client().post(gw.at("/prompt")).bearer_auth(token).json(&body).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let answer: Value = r.json().await.unwrap_or(Value::Null);
    match (status, answer["prompt_id"].as_str()) {
        (200, Some(id)) => Ok(id.to_owned()),
        _ => Err(format!("{status} {answer}")),
    }
}

/// Every prompt id in the gateway's queue (as the admin sees it).
async fn queued_ids(gw: &Gateway, admin: &str) -> Option<Vec<String>> {
    let (status, q) = gw.get_json("/queue", &Auth::Bearer(admin)).await;
    if status != 200 {
        return None;
    }
    let items = q["queue_running"].as_array()?.iter().chain(q["queue_pending"].as_array()?);
    Some(items.filter_map(|item| item[1].as_str().map(str::to_owned)).collect())
}

/// Waits (bounded) until none of `ids` is in the gateway's queue; false when some still are.
async fn drained(gw: &Gateway, admin: &str, ids: &[String], deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if queued_ids(gw, admin).await.is_some_and(|q| !q.iter().any(|id| ids.contains(id))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits (bounded) until every running simulator has run everything it was given, so that a
/// job handed out twice shows as run twice.
async fn idle(sims: &[&Simulator]) {
    let end = Instant::now() + Duration::from_secs(30);
    for sim in sims.iter().filter(|s| s.is_running()) {
        while Instant::now() < end {
            let q: Value = match client().get(format!("{}/queue", sim.url())).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => break,
            };
            if q["queue_running"].as_array().is_some_and(Vec::is_empty)
                && q["queue_pending"].as_array().is_some_and(Vec::is_empty)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How one accepted job ended, as the gateway and the backends tell it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Ending {
    #[default]
    Finished,
    /// Failed with an error entry that gives a reason.
    Failed,
    /// Still in the gateway's queue after the deadline.
    Stuck,
    /// `/history/{id}` is `{}` and it is in no queue, though a backend ran it to the end
    /// (the history went with that backend).
    HistoryGone,
    /// `/history/{id}` is `{}`, in no queue, and no backend ran it to the end.
    Vanished,
}

/// The verdict on a set of accepted jobs.
#[derive(Debug, Default)]
struct Verdict {
    endings: HashMap<String, Ending>,
    /// Runs to the end, per prompt id, over every backend and every life of it.
    completions: HashMap<String, Vec<String>>,
    /// Runs started (ended or not), per prompt id: where.
    starts: HashMap<String, Vec<String>>,
    /// The gateway's record of each job (state, backend), read from its store.
    records: HashMap<String, (JobState, Option<String>)>,
    /// What the simulators saw of each job, in time order: runs, and the gateway asking for
    /// its history (its reconciliation).
    timelines: HashMap<String, Vec<(u64, String)>>,
}

impl Verdict {
    fn count(&self, e: Ending) -> usize {
        self.endings.values().filter(|x| **x == e).count()
    }

    fn duplicated(&self) -> Vec<(&String, &Vec<String>)> {
        let mut d: Vec<_> = self.completions.iter().filter(|(_, runs)| runs.len() > 1).collect();
        d.sort();
        d
    }

    /// Jobs that started on a backend (life) that did not run them to the end, and ran
    /// again: a job that was running when its backend died should have failed instead.
    fn started_elsewhere(&self) -> Vec<(&String, &Vec<String>)> {
        let mut d: Vec<_> = self.starts.iter().filter(|(_, runs)| runs.len() > 1).collect();
        d.sort();
        d
    }

    /// Jobs out of the gateway's queue whose stored record still says queued, dispatched or
    /// running (a gateway restarted now would resume them).
    fn unended_records(&self) -> Vec<(&String, &(JobState, Option<String>))> {
        let unended = [JobState::Queued, JobState::Dispatched, JobState::Running];
        let mut v: Vec<_> = self
            .records
            .iter()
            .filter(|(id, (state, _))| unended.contains(state) && self.endings.get(*id) != Some(&Ending::Stuck))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    fn with(&self, e: Ending) -> Vec<&String> {
        let mut v: Vec<&String> = self.endings.iter().filter(|(_, x)| **x == e).map(|(id, _)| id).collect();
        v.sort();
        v
    }

    fn summary(&self) -> String {
        format!(
            "{} jobs: {} finished, {} failed, {} stuck in the queue, {} with their history gone, {} vanished, {} run to the end more than once, {} started more than once, {} recorded as not ended after the queue drained",
            self.endings.len(),
            self.count(Ending::Finished),
            self.count(Ending::Failed),
            self.count(Ending::Stuck),
            self.count(Ending::HistoryGone),
            self.count(Ending::Vanished),
            self.duplicated().len(),
            self.started_elsewhere().len(),
            self.unended_records().len(),
        )
    }

    /// Panics, with what went wrong for which job and the gateway's log, unless every job
    /// ended exactly once with a history entry.
    fn assert_nothing_lost(&self, gw: &Gateway) {
        self.assert_with(gw, &[]);
    }

    /// As [`assert_nothing_lost`](Self::assert_nothing_lost), and no job started on a backend
    /// that died running it and then ran elsewhere.
    fn assert_nothing_lost_or_restarted(&self, gw: &Gateway) {
        let restarted: Vec<String> = self
            .started_elsewhere()
            .iter()
            .map(|(id, runs)| format!("{id}: started {} times: {runs:?}", runs.len()))
            .collect();
        self.assert_with(gw, &restarted);
    }

    fn assert_with(&self, gw: &Gateway, more: &[String]) {
        let summary = self.summary();
        println!("{summary}");
        let ending = |e: Ending| -> Vec<String> {
            self.with(e)
                .into_iter()
                .map(|id| {
                    let (runs, record) = (self.starts.get(id), self.records.get(id));
                    format!("{id}: {e:?} (runs: {runs:?}, gateway record: {record:?})")
                })
                .collect()
        };
        // The rarer failures first: history gone with a backend can be most of a chaos run.
        let mut bad: Vec<String> = ending(Ending::Vanished);
        bad.extend(ending(Ending::Stuck));
        for (id, runs) in self.duplicated() {
            bad.push(format!("{id}: ran to the end {} times: {runs:?}", runs.len()));
        }
        for (id, record) in self.unended_records() {
            bad.push(format!("{id}: recorded as {record:?} though out of the queue (runs: {:?})", self.starts.get(id)));
        }
        bad.extend(more.iter().cloned());
        bad.extend(ending(Ending::HistoryGone));
        if bad.is_empty() {
            return;
        }
        let log = without_colours(&gw.stderr());
        let path = std::env::temp_dir().join(format!("comfygate-failover-{}.log", gw.pid()));
        let _ = std::fs::write(&path, &log);
        let about: Vec<&str> = log
            .lines()
            .filter(|l| ["prompt_id", "taken out of service", "back in service", "lost"].iter().any(|k| l.contains(k)))
            .take(60)
            .collect();
        // The timelines of the first few, and the gateway's log lines about them.
        let mut told = Vec::new();
        let mut ids: Vec<&str> = bad.iter().map(|entry| entry.split(':').next().unwrap_or_default()).collect();
        ids.dedup();
        for id in ids.into_iter().take(6) {
            told.push(format!("{id}:"));
            for (at, what) in self.timelines.get(id).into_iter().flatten() {
                told.push(format!("  {} {what}", clock(*at)));
            }
            told.extend(log.lines().filter(|l| l.contains(id)).map(|l| format!("  {l}")));
        }
        let more = bad.len().saturating_sub(40);
        bad.truncate(40);
        if more > 0 {
            bad.push(format!("... and {more} more"));
        }
        panic!(
            "{summary}\n{}\ntimelines (UTC):\n{}\ngateway log about jobs and backends (all of it in {}):\n{}",
            bad.join("\n"),
            told.join("\n"),
            path.display(),
            about.join("\n")
        );
    }
}

/// `ms` since the epoch as `HH:MM:SS.mmm` (UTC), to line up with the gateway's log.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}

/// `text` without ANSI colour sequences.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Judges `ids` (owner token for each) from the gateway's history and queue and what each
/// simulator ran over all its lives.
async fn judge(gw: &Gateway, admin: &str, ids: &[(String, String)], sims: &[&Simulator]) -> Verdict {
    let mut verdict = Verdict::default();
    for (n, sim) in sims.iter().enumerate() {
        for r in sim.requests() {
            if let Some(id) = r.uri.strip_prefix("/history/") {
                let seen = format!("sim{} asked {} {}", n + 1, r.method, r.uri);
                verdict.timelines.entry(id.to_owned()).or_default().push((r.at_ms, seen));
            }
        }
        for run in sim.runs() {
            let seen = format!(
                "sim{} life {} started it ({})",
                n + 1,
                run.life,
                run.ended.as_deref().unwrap_or("never ended")
            );
            verdict.timelines.entry(run.prompt_id.clone()).or_default().push((run.started_ms, seen));
            let ended = run.ended.as_deref().unwrap_or("died running it");
            let what = format!("sim{} life {}: {ended}", n + 1, run.life);
            verdict.starts.entry(run.prompt_id.clone()).or_default().push(what.clone());
            if run.ended.is_some() {
                verdict.completions.entry(run.prompt_id).or_default().push(what);
            }
        }
    }
    for timeline in verdict.timelines.values_mut() {
        timeline.sort();
    }
    let queued = queued_ids(gw, admin).await.unwrap_or_default();
    let store = comfygate::store::open(&format!("sqlite://{}", gw.dir.path().join("data/comfygate.db").display()))
        .await
        .unwrap();
    for (id, token) in ids {
        let (_, h) = gw.get_json(&format!("/history/{id}"), &Auth::Bearer(token)).await;
        let entry = &h[id.as_str()];
        let status = entry["status"]["status_str"].as_str();
        let reason = entry["status"]["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m[0] == "execution_error" || m[0] == "execution_interrupted");
        let ending = match status {
            Some("success") => Ending::Finished,
            Some("error") if reason => Ending::Failed,
            _ if queued.contains(id) => Ending::Stuck,
            _ if verdict.completions.contains_key(id) => Ending::HistoryGone,
            _ => Ending::Vanished,
        };
        verdict.endings.insert(id.clone(), ending);
        if let Some(job) = store.job(id).await.unwrap() {
            verdict.records.insert(id.clone(), (job.state, job.backend));
        }
    }
    verdict
}

/// Two loaded backends, 16 jobs from two users, one backend killed while it has jobs and a
/// dispatch answer on the way; optionally restarted. Returns the verdict.
async fn kill_one_of_two_under_load(restart: bool) -> (Verdict, Gateway) {
    let mut doomed = Simulator::start(loaded(600, 250, 1_000)).await.unwrap();
    let survivor = Simulator::start(loaded(600, 250, 1_000)).await.unwrap();
    let gw = gateway(&[&doomed, &survivor], 2).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let admin = gw.token("admin", "t").await;
    let users = [gw.token("alice", "t").await, gw.token("bob", "t").await];
    let submissions = (0..16u32).map(|i| {
        let token = users[(i % 2) as usize].clone();
        let gw = &gw;
        async move { (submit(gw, &token, job(if i % 2 == 0 { "alice" } else { "bob" }, i, 600)).await, token) }
    });
    let mut ids = Vec::new();
    for (result, token) in futures_util::future::join_all(submissions).await {
        ids.push((result.expect("the gateway accepts every job"), token));
    }
    // Kill it in the middle of a dispatch: after it finished a job and was handed the next one,
    // before that POST is answered.
    let dispatched =
        |sim: &Simulator| sim.requests().iter().filter(|r| r.method == "POST" && r.uri == "/prompt").count();
    let first = dispatched(&doomed);
    poll(Duration::from_secs(20), "a further dispatch to the doomed backend", || async {
        let ran = doomed.runs().iter().any(|r| r.ended.is_some());
        (ran && dispatched(&doomed) > first).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    doomed.stop().await;
    if restart {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        doomed.restart().await.unwrap();
    }
    let only_ids: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    drained(&gw, &admin, &only_ids, Duration::from_secs(60)).await;
    idle(&[&doomed, &survivor]).await;
    let verdict = judge(&gw, &admin, &ids, &[&doomed, &survivor]).await;
    (verdict, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_loses_no_job_it_was_handed() {
    let (verdict, gw) = kill_one_of_two_under_load(false).await;
    verdict.assert_nothing_lost_or_restarted(&gw);
    assert!(verdict.count(Ending::Failed) <= 2, "only the job it was running fails: {}", verdict.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_that_restarts_is_reconciled_without_losing_or_rerunning_a_job() {
    let (verdict, gw) = kill_one_of_two_under_load(true).await;
    verdict.assert_nothing_lost_or_restarted(&gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_a_quiet_backend_is_still_validating_is_not_taken_for_lost() {
    // ComfyUI validates a prompt before queueing it; meanwhile it is in neither `/queue` nor
    // `/history`, and the backend says nothing on its socket.
    let slow = SimConfig { prompt_accept_delay: Duration::from_millis(3_500), ..loaded(200, 0, 0) };
    let sims = [Simulator::start(slow.clone()).await.unwrap(), Simulator::start(slow).await.unwrap()];
    let gw = gateway(&[&sims[0], &sims[1]], 2).await;
    let admin = gw.token("admin", "t").await;
    let id = submit(&gw, &admin, job("validated", 1, 200)).await.unwrap();
    let ids = [(id.clone(), admin.clone())];
    drained(&gw, &admin, &[id], Duration::from_secs(30)).await;
    idle(&[&sims[0], &sims[1]]).await;
    for (n, sim) in sims.iter().enumerate() {
        let asked: Vec<String> = sim
            .requests()
            .into_iter()
            .filter(|r| ["/prompt", "/queue", "/history"].iter().any(|p| r.uri.starts_with(p)))
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect();
        println!("sim{} was asked: {asked:?}", n + 1);
    }
    let verdict = judge(&gw, &admin, &ids, &[&sims[0], &sims[1]]).await;
    verdict.assert_nothing_lost_or_restarted(&gw);
}

/// A small xorshift generator: the chaos is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Three backends killed and restarted at random while three users submit 200 jobs; at the end
/// every accepted job finished or failed with a reason, once. `COMFYGATE_CHAOS_SECS` sets the
/// length of the chaos (60 s), `COMFYGATE_CHAOS_SEED` its seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_of_dying_and_restarting_backends_loses_and_duplicates_no_job() {
    const JOBS: u32 = 200;
    let secs = env_u64("COMFYGATE_CHAOS_SECS", 60).max(1);
    let seed = env_u64("COMFYGATE_CHAOS_SEED", 0x5eed_c0ff_ee15_0016).max(1);
    println!("chaos for {secs} s, seed {seed}");
    let mut rng = Rng(seed);
    let mut sims = Vec::new();
    // Differently loaded: the slower the answer, the more jobs end before it.
    for answer_ms in [30, 150, 400] {
        sims.push(Simulator::start(loaded(100, answer_ms, 500)).await.unwrap());
    }
    let gw = gateway(&sims.iter().collect::<Vec<_>>(), 2).await;
    let names = ["ann", "ben", "cat"];
    let mut tokens = Vec::new();
    for name in names {
        gw.add_user(name, "user").await;
        tokens.push(gw.token(name, "t").await);
    }
    let admin = gw.token("admin", "t").await;
    let chaos_for = Duration::from_secs(secs);

    // Submissions spread over the first two thirds of the chaos, with varied job lengths.
    let plan: Vec<(usize, u64)> = (0..JOBS).map(|_| (rng.between(0, 2) as usize, rng.between(20, 400))).collect();
    let gap = chaos_for * 2 / 3 / JOBS;
    let submitting = {
        let (url, tokens) = (gw.url.clone(), tokens.clone());
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = Vec::new();
            for (i, (user, ms)) in plan.into_iter().enumerate() {
                let body = job(names[user], i as u32, ms);
                let r = client().post(format!("{url}/prompt")).bearer_auth(&tokens[user]).json(&body).send().await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let answer: Value = r.json().await.unwrap_or(Value::Null);
                        match answer["prompt_id"].as_str() {
                            Some(id) => accepted.push((id.to_owned(), tokens[user].clone())),
                            None => refused.push(format!("200 without a prompt id: {answer}")),
                        }
                    }
                    Ok(r) => refused.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => refused.push(e.to_string()),
                }
                tokio::time::sleep(gap).await;
            }
            (accepted, refused)
        })
    };

    // Kill or restart a random backend every 1-4 s.
    let end = Instant::now() + chaos_for;
    let mut kills = 0;
    let mut restarts = 0;
    while Instant::now() < end {
        let pause = Duration::from_millis(rng.between(1_000, 4_000)).min(end.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        let sim = &mut sims[rng.between(0, 2) as usize];
        if sim.is_running() {
            sim.stop().await;
            kills += 1;
        } else {
            sim.restart().await.unwrap();
            restarts += 1;
        }
    }
    for sim in sims.iter_mut().filter(|s| !s.is_running()) {
        sim.restart().await.unwrap();
        restarts += 1;
    }
    let (accepted, refused) = submitting.await.unwrap();
    println!("{kills} kills, {restarts} restarts; {} jobs accepted, {} refused", accepted.len(), refused.len());

    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let emptied = drained(&gw, &admin, &ids, Duration::from_secs(120)).await;
    idle(&sims.iter().collect::<Vec<_>>()).await;
    let verdict = judge(&gw, &admin, &accepted, &sims.iter().collect::<Vec<_>>()).await;
    println!("queue drained: {emptied}");
    for (id, runs) in verdict.started_elsewhere() {
        println!("note: {id} started {} times: {runs:?}", runs.len());
    }
    verdict.assert_nothing_lost(&gw);
    assert!(refused.is_empty(), "every submission is accepted (the queue is the gateway's): {refused:?}");
}
