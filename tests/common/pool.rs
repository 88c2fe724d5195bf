//! A gateway in front of several simulators, and the job helpers the scheduling tests share.

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

use super::{Auth, Gateway, Options, client, poll, workflow};

/// Fast health checks so failover happens within a test's patience.
pub const FAST_HEALTH: &str = "[scheduler]\nhealth_interval = \"100ms\"\nhealth_timeout = \"1s\"\nunhealthy_after = 2";

/// A simulator whose jobs take `job_ms`.
pub async fn sim(job_ms: u64) -> Simulator {
    Simulator::start(SimConfig { job_duration: Duration::from_millis(job_ms), ..SimConfig::default() }).await.unwrap()
}

/// A gateway with fast health checks in front of `sims` (named sim, b2, b3, ...), each taking
/// `max_inflight` jobs, once every backend is healthy with known nodes.
pub async fn gateway(sims: &[&Simulator], max_inflight: usize) -> Gateway {
    gateway_with(sims, max_inflight, FAST_HEALTH).await
}

/// [`gateway`] with `extra` configuration instead of the fast health checks.
pub async fn gateway_with(sims: &[&Simulator], max_inflight: usize, extra: &str) -> Gateway {
    let inflight = format!("max_inflight = {max_inflight}");
    let lines: Vec<Vec<&str>> = sims.iter().map(|_| vec![inflight.as_str()]).collect();
    let lines: Vec<&[&str]> = lines.iter().map(Vec::as_slice).collect();
    gateway_lines(sims, &lines, extra).await
}

/// A gateway in front of `sims` (named sim, b2, b3, ...) with `lines[i]` in backend `i`'s
/// table and `extra` configuration, once every backend is healthy with known nodes.
pub async fn gateway_lines(sims: &[&Simulator], lines: &[&[&str]], extra: &str) -> Gateway {
    let mut opts = Options::default().extra(extra);
    for line in lines.first().copied().unwrap_or_default() {
        opts = opts.backend(line);
    }
    for (i, s) in sims.iter().enumerate().skip(1) {
        opts = opts.another_backend(&format!("b{}", i + 1), &s.url(), lines.get(i).copied().unwrap_or_default());
    }
    let gw = Gateway::start_with(&sims[0].url(), opts).await;
    let token = gw.token("admin", "readiness").await;
    poll(Duration::from_secs(10), "every backend healthy with known capabilities", || async {
        let (status, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&token)).await;
        let backends = state["backends"].as_array()?;
        let ready = backends.iter().all(|b| {
            b["healthy"] == true && b["monitored"] == true && b["node_classes"].as_u64().is_some_and(|n| n > 0)
        });
        (status == 200 && backends.len() == sims.len() && ready).then_some(())
    })
    .await;
    gw
}

/// An EmptyImage → SaveImage job that runs `ms` on the simulator.
pub fn job(prefix: &str, color: u32, ms: u64) -> Value {
    json!({"prompt": workflow(prefix, color), "extra_data": {"sim_duration_ms": ms}})
}

/// A checkpoint workflow (loader → sampler → decode → save) using `ckpt`.
pub fn model_job(ckpt: &str, prefix: &str) -> Value {
    json!({"prompt": {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
            "latent_image": ["3", 0], "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}}
    }})
}

/// `POST /prompt`: status and answer.
pub async fn submit(gw: &Gateway, token: &str, body: Value) -> (u16, Value) {
    let r = client().post(gw.at("/prompt")).bearer_auth(token).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /prompt` that must be accepted: the prompt id.
pub async fn submit_ok(gw: &Gateway, token: &str, body: Value) -> String {
    let (status, answer) = submit(gw, token, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["prompt_id"].as_str().unwrap().to_owned()
}

/// The gateway's history entry of `id` as `token`'s owner sees it, once there is one.
pub async fn finished(gw: &Gateway, token: &str, id: &str) -> Value {
    poll(Duration::from_secs(30), &format!("history of {id}"), || async {
        let (status, h) = gw.get_json(&format!("/history/{id}"), &Auth::Bearer(token)).await;
        (status == 200 && h.get(id).is_some()).then(|| h[id].clone())
    })
    .await
}
