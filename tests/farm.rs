#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A scheduler for GPU farms: priority classes with ceilings, jobs that need no model swap going
//! first within a bound, backends pinned (and exclusive) to models.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::pool::{FAST_HEALTH, finished, gateway_lines, model_job, submit, submit_ok};
use common::{Gateway, client, poll};
use serde_json::{Value, json};

async fn sim(job_ms: u64, models: &[&str]) -> Simulator {
    let mut config = SimConfig { job_duration: Duration::from_millis(job_ms), ..SimConfig::default() };
    for m in models {
        config.models.push(("checkpoints".to_owned(), (*m).to_owned()));
    }
    Simulator::start(config).await.unwrap()
}

/// When the backend started running the job (its own `execution_start` timestamp, ms).
async fn started(gw: &Gateway, token: &str, id: &str) -> i64 {
    let entry = finished(gw, token, id).await;
    let messages = entry["status"]["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .find(|m| m[0] == "execution_start")
        .and_then(|m| m[1]["timestamp"].as_i64())
        .unwrap_or_else(|| panic!("no execution_start in {entry}"))
}

/// The ids in the order their runs started.
async fn run_order(gw: &Gateway, jobs: &[(&str, &str, &str)]) -> Vec<String> {
    let mut times = Vec::new();
    for (name, token, id) in jobs {
        times.push((started(gw, token, id).await, (*name).to_owned()));
    }
    times.sort();
    times.into_iter().map(|(_, name)| name).collect()
}

/// A gateway in front of one simulator (one slot), users alice and bob; `scheduler` lines go
/// in `[scheduler]`.
async fn one_slot(sim: &Simulator, scheduler: &str) -> (Gateway, String, String) {
    let extra = format!("{FAST_HEALTH}\n{scheduler}");
    let gw = gateway_lines(&[sim], &[&["max_inflight = 1"]], &extra).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let (alice, bob) = (gw.token("alice", "a").await, gw.token("bob", "b").await);
    (gw, alice, bob)
}

#[tokio::test]
async fn a_job_needing_no_model_swap_goes_before_one_that_does_within_the_bound() {
    let models = ["a.safetensors", "b.safetensors"];
    for (bound, expected) in [("120s", ["A1", "A2", "B1"]), ("0s", ["A1", "B1", "A2"])] {
        let sim = sim(400, &models).await;
        let (gw, alice, bob) = one_slot(&sim, &format!("max_extra_wait = \"{bound}\"")).await;
        let a1 = submit_ok(&gw, &alice, model_job("a.safetensors", "a1")).await;
        // While A1 runs: bob's B1 is first in fair order (alice has used the GPU), alice's A2
        // needs no swap after A1.
        let b1 = submit_ok(&gw, &bob, model_job("b.safetensors", "b1")).await;
        let a2 = submit_ok(&gw, &alice, model_job("a.safetensors", "a2")).await;
        let order = run_order(&gw, &[("A1", &alice, &a1), ("B1", &bob, &b1), ("A2", &alice, &a2)]).await;
        assert_eq!(order, expected, "max_extra_wait = {bound}");
    }
}

#[tokio::test]
async fn a_job_held_to_the_bound_overtakes_nobody_who_came_ahead_of_it_in_fair_order() {
    // One slot that keeps alice's model loaded: bob's B is passed over while it is first in fair
    // order (alice has used the GPU); carol's high-class C comes ahead of it while it waits and is
    // passed over too. When B's extra wait reaches the bound, fair order goes as it is up to B:
    // C first, then B, then alice's remaining jobs. (B going first would put a normal job before
    // a waiting high one.)
    let sim = sim(500, &["a.safetensors", "b.safetensors", "c.safetensors"]).await;
    let (gw, alice, bob) = one_slot(&sim, "max_extra_wait = \"1250ms\"").await;
    gw.add_user("carol", "user").await;
    gw.cli(&["user", "limits", "carol", "--max-priority", "high"], None).await.ok();
    let carol = gw.token("carol", "c").await;
    let mut a = Vec::new();
    for i in 0..6 {
        a.push(submit_ok(&gw, &alice, model_job("a.safetensors", &format!("a{i}"))).await);
    }
    let b = submit_ok(&gw, &bob, model_job("b.safetensors", "b")).await;
    // A2 running: B was passed over when A1 ended.
    running_on(&sim, &a[1]).await;
    let mut high = model_job("c.safetensors", "c");
    high["extra_data"] = json!({"priority": "high"});
    let c = submit_ok(&gw, &carol, high).await;
    let mut jobs: Vec<(String, &str, &str)> =
        a.iter().enumerate().map(|(i, id)| (format!("A{}", i + 1), alice.as_str(), id.as_str())).collect();
    jobs.push(("B".to_owned(), &bob, &b));
    jobs.push(("C".to_owned(), &carol, &c));
    let named: Vec<(&str, &str, &str)> = jobs.iter().map(|(n, t, id)| (n.as_str(), *t, *id)).collect();
    let order = run_order(&gw, &named).await;
    assert_eq!(order, ["A1", "A2", "A3", "A4", "C", "B", "A5", "A6"]);
}

/// Waits until `sim` is running the job (its own `/queue`).
async fn running_on(sim: &Simulator, id: &str) {
    poll(Duration::from_secs(5), &format!("{id} running on the simulator"), || async {
        let q: Value = client().get(format!("{}/queue", sim.url())).send().await.ok()?.json().await.ok()?;
        q["queue_running"].as_array()?.iter().any(|e| e[1] == id).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_backend_loads_a_model_only_when_more_waits_on_it_than_the_load_costs() {
    // (assumed load time, jobs on one model, backends that should run them, loads in all):
    // 3 jobs of 100 ms against a 5 s load: the backend that has the model does them all; 10 jobs
    // against a 300 ms load: the second backend loads it too.
    for (load, jobs, backends, loads) in [("5s", 3, 1, 1), ("300ms", 10, 2, 2)] {
        let mut config = SimConfig { job_duration: Duration::from_millis(100), ..SimConfig::default() };
        config.models.push(("checkpoints".to_owned(), "a.safetensors".to_owned()));
        config.model_load.push(("a.safetensors".to_owned(), Duration::from_millis(300)));
        let sims = [Simulator::start(config.clone()).await.unwrap(), Simulator::start(config).await.unwrap()];
        let scheduler = format!("{FAST_HEALTH}\nmodel_load_time = \"{load}\"\ndefault_run_time = \"100ms\"");
        let gw =
            gateway_lines(&[&sims[0], &sims[1]], &[&["max_inflight = 1"], &["max_inflight = 1"]], &scheduler).await;
        let token = gw.token("admin", "t").await;
        let mut ids = Vec::new();
        for i in 0..jobs {
            ids.push(submit_ok(&gw, &token, model_job("a.safetensors", &format!("a{i}"))).await);
        }
        for id in &ids {
            finished(&gw, &token, id).await;
        }
        let mut used = 0;
        for sim in &sims {
            let mut ran = false;
            for id in &ids {
                ran |= ran_on(sim, id).await;
            }
            used += usize::from(ran);
        }
        let total: u64 = sims.iter().map(Simulator::model_loads).sum();
        assert_eq!((used, total), (backends, loads), "load {load}, {jobs} jobs: backends used, model loads");
    }
}

#[tokio::test]
async fn high_priority_goes_first_only_for_those_allowed_and_front_asks_for_the_ceiling() {
    let sim = sim(300, &["a.safetensors"]).await;
    let (gw, alice, bob) = one_slot(&sim, "").await;
    gw.cli(&["user", "limits", "bob", "--max-priority", "high"], None).await.ok();
    let normal = |prefix: &str| model_job("a.safetensors", prefix);
    let high = |prefix: &str| {
        let mut body = model_job("a.safetensors", prefix);
        body["extra_data"] = json!({"priority": "high"});
        body
    };
    // Alice may not ask for high; `front: true` gives her her ceiling (normal), not a refusal.
    let (status, answer) = submit(&gw, &alice, high("x")).await;
    assert_eq!((status, answer["error"]["type"].as_str()), (403, Some("priority_not_allowed")), "{answer}");
    for bad in [json!("HIGH"), json!("urgent"), json!(2)] {
        let mut body = normal("y");
        body["extra_data"] = json!({"priority": bad});
        let (status, answer) = submit(&gw, &alice, body).await;
        assert_eq!((status, answer["error"]["type"].as_str()), (400, Some("invalid_priority")), "{answer}");
    }
    let n0 = submit_ok(&gw, &alice, normal("n0")).await;
    let n1 = submit_ok(&gw, &alice, normal("n1")).await;
    let mut front = normal("n2");
    front["front"] = json!(true);
    let n2 = submit_ok(&gw, &alice, front).await;
    let h = submit_ok(&gw, &bob, high("h")).await;
    let mut bob_front = normal("h2");
    bob_front["front"] = json!(true);
    let h2 = submit_ok(&gw, &bob, bob_front).await;
    let order = run_order(
        &gw,
        &[("N0", &alice, &n0), ("N1", &alice, &n1), ("N2", &alice, &n2), ("H", &bob, &h), ("H2", &bob, &h2)],
    )
    .await;
    assert_eq!(order, ["N0", "H", "H2", "N1", "N2"], "high (and bob's front: true) before every waiting normal job");
    // The class is the gateway's: the backend's own history shows no `priority`.
    let history: Value = client().get(format!("{}/history/{h}", sim.url())).send().await.unwrap().json().await.unwrap();
    let extra = &history[&h]["prompt"][3];
    assert!(extra.is_object() && extra.get("priority").is_none(), "{history}");
}

#[tokio::test]
async fn an_exclusive_backend_takes_only_its_models_and_a_pinned_one_is_preferred_for_them() {
    let models = ["flux1-dev.safetensors", "sd15.safetensors"];
    let (open, pinned) = (sim(150, &models).await, sim(150, &models).await);
    let lines: [&[&str]; 2] =
        [&["max_inflight = 1"], &["max_inflight = 1", "models = [\"sd15*\"]", "exclusive = true"]];
    let gw = gateway_lines(&[&open, &pinned], &lines, FAST_HEALTH).await;
    let token = gw.token("admin", "t").await;
    let mut flux = Vec::new();
    for i in 0..4 {
        flux.push(submit_ok(&gw, &token, model_job("flux1-dev.safetensors", &format!("f{i}"))).await);
    }
    let sd = submit_ok(&gw, &token, model_job("sd15.safetensors", "s")).await;
    for id in flux.iter().chain([&sd]) {
        finished(&gw, &token, id).await;
    }
    for id in &flux {
        assert!(ran_on(&open, id).await && !ran_on(&pinned, id).await, "flux job {id} only on the open backend");
    }
    assert!(ran_on(&pinned, &sd).await, "the sd15 job went to the backend meant for it");
}

#[tokio::test]
async fn model_pins_that_do_not_compile_are_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nmodels = [\"flux[\"]\n")
        .unwrap();
    let out = common::cli_at(&config, &["serve"], None).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("backends[0].models") && out.stderr.contains("flux["), "{}", out.stderr);
}

/// Whether `sim` itself has the job in its history (it ran it).
async fn ran_on(sim: &Simulator, id: &str) -> bool {
    let h: Value = client().get(format!("{}/history/{id}", sim.url())).send().await.unwrap().json().await.unwrap();
    h.get(id).is_some()
}

#[tokio::test]
async fn fair_share_remembers_gpu_time_across_a_restart_of_the_gateway() {
    let sim = sim(250, &["a.safetensors"]).await;
    let (gw, alice, bob) = one_slot(&sim, "").await;
    gw.add_user("carol", "user").await;
    let carol = gw.token("carol", "c").await;
    for i in 0..3 {
        let id = submit_ok(&gw, &alice, model_job("a.safetensors", &format!("warm{i}"))).await;
        finished(&gw, &alice, &id).await;
    }
    let gw = gw.restart().await;
    // Carol's job holds the slot; alice (lower id, submitted first) and bob wait. Alice used the
    // GPU before the restart: bob goes first.
    let c = submit_ok(&gw, &carol, model_job("a.safetensors", "c")).await;
    common::poll(Duration::from_secs(10), "carol's job running", || async {
        let (_, queue) = gw.get_json("/queue", &common::Auth::Bearer(&carol)).await;
        (queue["queue_running"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let a = submit_ok(&gw, &alice, model_job("a.safetensors", "a")).await;
    let b = submit_ok(&gw, &bob, model_job("a.safetensors", "b")).await;
    let order = run_order(&gw, &[("C", &carol, &c), ("A", &alice, &a), ("B", &bob, &b)]).await;
    assert_eq!(order, ["C", "B", "A"]);
}
