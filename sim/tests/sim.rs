#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The simulator against the captured ComfyUI fixtures.

use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/{name}")).unwrap()
}

/// The first JSON body in a fixture text block after a `### title` line.
fn misc_body(title: &str) -> String {
    let text = fixture("error_and_misc_responses.txt");
    let start = text.find(&format!("### {title}")).unwrap();
    text[start..].lines().nth(1).unwrap().to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn workflow(prefix: &str, color: u32, blur: bool) -> Value {
    if blur {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
            "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}}
        })
    } else {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
        })
    }
}

async fn wait_history(sim: &Simulator, pid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h: Value = client().get(format!("{}/history/{pid}", sim.url())).send().await.unwrap().json().await.unwrap();
        if h.get(pid).is_some() {
            return h[pid].clone();
        }
        assert!(Instant::now() < deadline, "no history for {pid}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn post_prompt(sim: &Simulator, body: &Value) -> (u16, String) {
    post_prompt_raw(sim, body.to_string()).await
}

async fn post_prompt_raw(sim: &Simulator, body: String) -> (u16, String) {
    let r = client().post(format!("{}/prompt", sim.url())).body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn idle_queue_and_prompt_match_fixtures() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    for path in ["/queue", "/api/queue"] {
        let r = client().get(format!("{}{path}", sim.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
        assert_eq!(r.text().await.unwrap(), fixture("queue_idle.json").trim());
    }
    let p = client().get(format!("{}/prompt", sim.url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(p, r#"{"exec_info": {"queue_remaining": 0}}"#);
    let nf = client().get(format!("{}/nope", sim.url())).send().await.unwrap();
    assert_eq!(nf.status(), 404);
    assert_eq!(nf.text().await.unwrap(), "404: Not Found");
}

#[tokio::test]
async fn object_info_reflects_models_and_system_stats_device() {
    let config = SimConfig { device_name: "cuda:0 Sim GPU".into(), ..SimConfig::default() }
        .with_model("checkpoints", "b.safetensors")
        .with_model("checkpoints", "a.safetensors")
        .with_model("loras", "l.safetensors")
        .with_model("vae", "v.safetensors")
        .with_model("diffusion_models", "u.safetensors")
        .with_model("text_encoders", "t.safetensors");
    let sim = Simulator::start(config).await.unwrap();
    let oi: Value = client().get(format!("{}/object_info", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(oi.as_object().unwrap().len(), 478);
    assert_eq!(
        oi["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0],
        json!(["a.safetensors", "b.safetensors"])
    );
    assert_eq!(oi["LoraLoader"]["input"]["required"]["lora_name"][0], json!(["l.safetensors"]));
    assert_eq!(oi["VAELoader"]["input"]["required"]["vae_name"][0], json!(["v.safetensors", "pixel_space"]));
    assert_eq!(oi["UNETLoader"]["input"]["required"]["unet_name"][0], json!(["u.safetensors"]));
    assert_eq!(oi["CLIPLoader"]["input"]["required"]["clip_name"][0], json!(["t.safetensors"]));
    let one: Value =
        client().get(format!("{}/api/object_info/EmptyImage", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(one.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["EmptyImage"]);
    let none = client().get(format!("{}/object_info/Nope", sim.url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(none, "{}");
    let stats: Value = client().get(format!("{}/system_stats", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["devices"][0]["name"], "cuda:0 Sim GPU");
    let models: Value =
        client().get(format!("{}/models/checkpoints", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models, json!(["a.safetensors", "b.safetensors"]));
    let r = client().get(format!("{}/models/nope", sim.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A configured model passes validation.
    let wf = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
              "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}}
    });
    let (status, body) = post_prompt(&sim, &json!({"prompt": wf})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn prompt_errors_match_fixtures_byte_for_byte() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let missing = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "Qwen-Image-Edit-2509-FP8.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
              "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}}
    });
    let (status, body) = post_prompt(&sim, &json!({"prompt": missing})).await;
    let expected = fixture("prompt_missing_model_response.txt");
    assert_eq!(status, 400);
    assert_eq!(body, expected.lines().next().unwrap());

    let (status, body) = post_prompt(&sim, &json!({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})).await;
    assert_eq!((status, body.as_str()), (400, misc_body("POST /prompt {\"prompt\"").as_str()));
    let (status, body) = post_prompt(
        &sim,
        &json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}}),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, misc_body("POST /prompt with a workflow that has no output node").as_str())
    );
    let (status, body) = post_prompt(&sim, &json!({})).await;
    assert_eq!((status, body.as_str()), (400, misc_body("POST /prompt {} (no prompt key)").as_str()));
    let r = client().post(format!("{}/prompt", sim.url())).body("garbage").send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "500 Internal Server Error\n\nServer got itself in trouble");

    // Range checks, required inputs, bad links, long lists.
    let wf = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 99999, "batch_size": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
        "4": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "nope"}},
        "5": {"class_type": "SamplerCustom", "inputs": {"sampler": ["4", 0]}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "x"}}
    });
    let (status, body) = post_prompt(&sim, &json!({"prompt": wf})).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let types = |id: &str| -> Vec<String> {
        v["node_errors"][id]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(types("1"), ["value_smaller_than_min", "value_bigger_than_max", "required_input_missing"]);
    assert_eq!(v["node_errors"]["1"]["errors"][0]["message"], "Value 0 smaller than min of 1");
    assert_eq!(types("3"), ["bad_linked_input"]);
    assert_eq!(types("4"), ["value_not_in_list"]);
    let nl = &v["node_errors"]["4"]["errors"][0];
    assert!(nl["details"].as_str().unwrap().starts_with("sampler_name: 'nope' not in (list of length "));
    assert_eq!(nl["extra_info"]["input_config"], Value::Null);
}

#[tokio::test]
async fn job_ws_order_history_and_view_match_fixtures() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let ws_url = format!("ws://{}/ws?clientId=capture-client-1", sim.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(
        first.into_text().unwrap().as_str(),
        r#"{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "capture-client-1"}}"#
    );

    // Raw text: node order "1", "3", "2" as in the capture (serde_json would sort the keys).
    let body = r#"{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 16711680}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "capture"}}},
        "client_id": "capture-client-1", "extra_data": {"sim_duration_ms": 30}}"#;
    let (status, resp) = post_prompt_raw(&sim, body.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    let resp: Value = serde_json::from_str(&resp).unwrap();
    let pid = resp["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(resp["number"], 0);
    assert_eq!(resp["node_errors"], json!({}));

    let mut got: Vec<Value> = vec![serde_json::from_str(&fixture("ws_transcript_job.json")).unwrap()];
    got.clear();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await.unwrap().unwrap().unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        let done = v["type"] == "executing" && v["data"]["node"].is_null();
        got.push(v);
        if done {
            break;
        }
    }
    let transcript: Value = serde_json::from_str(&fixture("ws_transcript_job.json")).unwrap();
    let want: Vec<Value> = transcript.as_array().unwrap().iter().skip(1).map(|m| m["data"].clone()).collect();
    let types = |v: &[Value]| v.iter().map(|m| m["type"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(types(&got), types(&want));
    // Same keys in every message (ids and timestamps differ).
    let strip = |v: &Value| -> Value {
        let s = v.to_string().replace(&pid, "PID").replace("c89f03b2-4f51-4355-9d9d-df05bc718291", "PID");
        let mut v: Value = serde_json::from_str(&s).unwrap();
        if let Some(d) = v.get_mut("data").and_then(Value::as_object_mut)
            && d.contains_key("timestamp")
        {
            d.insert("timestamp".into(), json!(0));
        }
        v
    };
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(strip(g), strip(w));
    }

    let entry = wait_history(&sim, &pid).await;
    let fixture_one: Value = serde_json::from_str(&fixture("history_one.json")).unwrap();
    let fixture_entry = fixture_one.as_object().unwrap().values().next().unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&entry), keys(fixture_entry));
    assert_eq!(entry["outputs"], fixture_entry["outputs"]);
    assert_eq!(entry["meta"], fixture_entry["meta"]);
    assert_eq!(entry["prompt"][4], json!(["2"]));
    assert_eq!(entry["prompt"][3], json!({"sim_duration_ms": 30, "client_id": "capture-client-1"}));
    assert_eq!(entry["status"]["status_str"], "success");
    let msg_types: Vec<&str> =
        entry["status"]["messages"].as_array().unwrap().iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(msg_types, ["execution_start", "execution_cached", "execution_success"]);
    // Raw text keeps the client's node order.
    let raw = client().get(format!("{}/history/{pid}", sim.url())).send().await.unwrap().text().await.unwrap();
    assert!(raw.contains(r#"{"1": {"class_type": "EmptyImage""#), "{raw}");
    assert!(raw.find(r#""3": {"class_type""#).unwrap() < raw.find(r#""2": {"class_type""#).unwrap());

    let r = client()
        .get(format!("{}/view?filename=capture_00001_.png&type=output&subfolder=", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["content-disposition"], "filename=\"capture_00001_.png\"");
    let len: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), len);
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (32, 16));
    assert_eq!(&buf[..3], &[0xff, 0, 0]);

    // The next one gets the next counter.
    let (_, resp) = post_prompt(&sim, &json!({"prompt": workflow("capture", 1, false)})).await;
    let pid2 = serde_json::from_str::<Value>(&resp).unwrap()["prompt_id"].as_str().unwrap().to_string();
    let entry2 = wait_history(&sim, &pid2).await;
    assert_eq!(entry2["outputs"]["2"]["images"][0]["filename"], "capture_00002_.png");
    let all: Value =
        client().get(format!("{}/history?max_items=1", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys(&all), vec![pid2.clone()]);

    for (q, code) in [
        ("filename=../../etc/passwd&type=output", 400),
        ("filename=capture_00001_.png&type=output&subfolder=../..", 403),
        ("filename=absent.png&type=output", 404),
        ("filename=capture_00001_.png&type=bogus", 400),
    ] {
        let r = client().get(format!("{}/view?{q}", sim.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), code, "{q}");
    }
    ws.close(None).await.ok();
}

#[tokio::test]
async fn queue_busy_shape_interrupt_and_client_prompt_id() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let long = json!({"sim_duration_ms": 60_000});
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"prompt": workflow("busy", i, true), "client_id": "c2", "extra_data": long,
                          "prompt_id": format!("id-{i}")});
        let (status, resp) = post_prompt(&sim, &body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp, format!(r#"{{"prompt_id": "id-{i}", "number": {i}, "node_errors": {{}}}}"#));
        ids.push(format!("id-{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let q: Value = loop {
        let q: Value = client().get(format!("{}/queue", sim.url())).send().await.unwrap().json().await.unwrap();
        if q["queue_running"].as_array().unwrap().len() == 1 {
            break q;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let busy: Value = serde_json::from_str(&fixture("queue_busy.json")).unwrap();
    assert_eq!(q["queue_pending"].as_array().unwrap().len(), 2);
    assert_eq!(
        q["queue_running"][0][2].as_object().unwrap().len(),
        busy["queue_running"][0][2].as_object().unwrap().len()
    );
    assert_eq!(q["queue_running"][0][1], "id-0");
    let p = client().get(format!("{}/prompt", sim.url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(p, fixture("prompt_get_busy.json").trim());

    // Delete one pending, interrupt the running one with a wrong id (no effect) and then the right id.
    let r =
        client().post(format!("{}/queue", sim.url())).json(&json!({"delete": ["id-2", "nope"]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    client().post(format!("{}/interrupt", sim.url())).json(&json!({"prompt_id": "id-1"})).send().await.unwrap();
    client().post(format!("{}/interrupt", sim.url())).json(&json!({"prompt_id": "id-0"})).send().await.unwrap();
    let entry = wait_history(&sim, "id-0").await;
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["completed"], false);
    assert_eq!(entry["status"]["messages"][2][0], "execution_interrupted");
    // id-1 runs next; clear nothing else pending, interrupt without id.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q: Value = client().get(format!("{}/queue", sim.url())).send().await.unwrap().json().await.unwrap();
        if q["queue_running"][0][1] == "id-1" {
            assert_eq!(q["queue_pending"], json!([]));
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client().post(format!("{}/interrupt", sim.url())).send().await.unwrap();
    let entry = wait_history(&sim, "id-1").await;
    assert_eq!(entry["status"]["status_str"], "error");
    let h: Value = client().get(format!("{}/history", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(h.as_object().unwrap().len(), 2);
    client().post(format!("{}/history", sim.url())).json(&json!({"delete": ["id-0"]})).send().await.unwrap();
    let h: Value = client().get(format!("{}/history", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(h.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["id-1"]);
}

#[tokio::test]
async fn upload_streams_200_mb_and_view_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let sim =
        Simulator::start(SimConfig { data_dir: Some(dir.path().to_path_buf()), ..SimConfig::default() }).await.unwrap();
    const CHUNK: usize = 1024 * 1024;
    const N: usize = 200;
    let stream = futures_util::stream::iter((0..N).map(|i| Ok::<_, std::io::Error>(vec![(i % 251) as u8; CHUNK])));
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), (CHUNK * N) as u64)
        .file_name("big.bin");
    let form = reqwest::multipart::Form::new().part("image", part).text("subfolder", "sub");
    let r = client().post(format!("{}/upload/image", sim.url())).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"name": "big.bin", "subfolder": "sub", "type": "input"}"#);
    let on_disk = dir.path().join("input/sub/big.bin");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), (CHUNK * N) as u64);
    let r = client().get(format!("{}/view?filename=big.bin&type=input&subfolder=sub", sim.url())).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], (CHUNK * N).to_string().as_str());
    let mut total = 0usize;
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        total += chunk.unwrap().len();
    }
    assert_eq!(total, CHUNK * N);

    // Same name, same bytes: no copy; different bytes: "name (1).ext".
    let png = comfyui_sim::sample_png();
    let up = |bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(bytes).file_name("red.png").mime_str("image/png").unwrap());
        client().post(format!("{}/upload/image", sim.url())).multipart(form).send()
    };
    let first = up(png.clone()).await.unwrap().text().await.unwrap();
    assert_eq!(first, fixture("upload_image_response.json").trim());
    assert_eq!(up(png.clone()).await.unwrap().text().await.unwrap(), first);
    let mut other = png.clone();
    other.push(0);
    let renamed: Value = up(other).await.unwrap().json().await.unwrap();
    assert_eq!(renamed["name"], "red (1).png");
    let got = client().get(format!("{}/view?filename=red.png&type=input", sim.url())).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().to_vec(), png);
    // An uploaded image is a valid LoadImage choice.
    let wf = json!({"1": {"class_type": "LoadImage", "inputs": {"image": "red.png"}},
                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}});
    let (status, body) = post_prompt(&sim, &json!({"prompt": wf})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn upload_over_limit_is_413() {
    let sim = Simulator::start(SimConfig { max_upload_bytes: 1000, ..SimConfig::default() }).await.unwrap();
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(vec![0u8; 5000]).file_name("x.png"));
    let r = client().post(format!("{}/upload/image", sim.url())).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn origin_check_like_comfyui() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let get = |origin: Option<&str>, site: Option<&str>| {
        let mut rq = client().get(format!("{}/queue", sim.url()));
        if let Some(o) = origin {
            rq = rq.header("Origin", o);
        }
        if let Some(s) = site {
            rq = rq.header("Sec-Fetch-Site", s);
        }
        rq.send()
    };
    assert_eq!(get(Some("http://evil.example"), None).await.unwrap().status(), 403);
    assert_eq!(get(Some(&sim.url()), None).await.unwrap().status(), 200);
    assert_eq!(get(None, Some("cross-site")).await.unwrap().status(), 403);
    assert_eq!(get(None, Some("same-origin")).await.unwrap().status(), 200);
    // WebSocket upgrade too.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws?clientId=a",
        sim.addr()
    ))
    .unwrap();
    req.headers_mut().insert("Origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test]
async fn ws_feature_flags_broadcast_and_reconnect() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", sim.addr())).await.unwrap();
    let first: Value = serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert_eq!(first["data"]["sid"].as_str().unwrap().len(), 32);
    ws.send(Message::text(r#"{"type": "feature_flags", "data": {"supports_preview_metadata": true}}"#)).await.unwrap();
    let ff: Value = serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert_eq!(ff["type"], "feature_flags");
    assert_eq!(ff["data"]["max_upload_size"], 1024 * 1024 * 1024);
    ws.send(Message::Ping(vec![1, 2].into())).await.unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert!(matches!(pong, Message::Pong(_)));

    // A prompt without client_id: progress is broadcast (executing/executed), but not execution_start.
    let (_, resp) = post_prompt(&sim, &json!({"prompt": workflow("bc", 5, false)})).await;
    let pid = serde_json::from_str::<Value>(&resp).unwrap()["prompt_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut types = Vec::new();
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await.unwrap().unwrap().unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        types.push(v["type"].as_str().unwrap().to_string());
        if v["type"] == "status" && v["data"]["status"]["exec_info"]["queue_remaining"] == 0 {
            break;
        }
    }
    assert!(types.contains(&"executed".to_string()), "{types:?}");
    assert!(!types.contains(&"execution_start".to_string()), "{types:?}");
    wait_history(&sim, &pid).await;
}

#[tokio::test]
async fn stop_and_restart_on_the_same_port() {
    let mut sim = Simulator::start(SimConfig::default()).await.unwrap();
    let url = sim.url();
    let (_, resp) = post_prompt(&sim, &json!({"prompt": workflow("rs", 5, false)})).await;
    let pid = serde_json::from_str::<Value>(&resp).unwrap()["prompt_id"].as_str().unwrap().to_string();
    wait_history(&sim, &pid).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?clientId=z", sim.addr())).await.unwrap();
    ws.next().await.unwrap().unwrap();

    sim.stop().await;
    assert!(client().get(format!("{url}/queue")).send().await.is_err());
    // The open WebSocket is dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await.unwrap() {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }

    sim.restart().await.unwrap();
    assert_eq!(sim.url(), url);
    let h = client().get(format!("{url}/history")).send().await.unwrap().text().await.unwrap();
    assert_eq!(h, "{}");
    // Files stay.
    let r = client().get(format!("{url}/view?filename=rs_00001_.png")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let reqs = sim.requests();
    assert!(reqs.iter().any(|r| r.method == "POST" && r.uri == "/prompt"));
    assert!(reqs.iter().any(|r| r.uri == "/ws?clientId=z" && r.headers.iter().any(|(k, _)| k == "upgrade")));
    assert_eq!(reqs.last().unwrap().uri, "/view?filename=rs_00001_.png");
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

async fn text_of(r: reqwest::RequestBuilder) -> (u16, String) {
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn user_data_of_the_default_user_is_saved_listed_moved_and_deleted_like_comfyui() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let at = |p: &str| format!("{}{p}", sim.url());
    let c = client();
    let saved = text_of(c.post(at("/api/userdata/workflows%2Fa.json")).body("{}")).await;
    assert_eq!(saved, (200, r#""workflows/a.json""#.to_string()));
    assert!(sim.data_dir().join("user/default/workflows/a.json").is_file());
    let clash = text_of(c.post(at("/userdata/workflows%2Fa.json?overwrite=false")).body("x")).await;
    assert_eq!(clash, (409, "File already exists".to_string()));
    assert_eq!(text_of(c.get(at("/userdata?dir=workflows"))).await, (200, r#"["a.json"]"#.to_string()));
    let split = text_of(c.get(at("/userdata?dir=workflows&split=true"))).await.1;
    assert_eq!(split, r#"[["a.json", "a.json"]]"#);
    assert_eq!(text_of(c.get(at("/userdata"))).await, (400, "Directory not provided".to_string()));
    assert_eq!(text_of(c.get(at("/userdata?dir=none"))).await, (404, "Directory not found".to_string()));
    assert_eq!(text_of(c.get(at("/userdata?dir=..%2F..%2F.."))).await.0, 403);
    let v2: Value = serde_json::from_str(&text_of(c.get(at("/v2/userdata"))).await.1).unwrap();
    assert_eq!(v2[0], json!({"name": "workflows", "path": "workflows", "type": "directory"}));
    assert_eq!(v2[1]["path"], "workflows/a.json");
    assert!(v2[1]["modified"].is_f64());
    assert_eq!(text_of(c.get(at("/v2/userdata?path=none"))).await, (404, "Requested path not found".to_string()));
    assert_eq!(text_of(c.get(at("/userdata/..%2F..%2Fx"))).await.0, 403);
    let moved = text_of(c.post(at("/userdata/workflows%2Fa.json/move/workflows%2Fb.json"))).await;
    assert_eq!(moved, (200, r#""workflows/b.json""#.to_string()));
    assert_eq!(text_of(c.get(at("/userdata/workflows%2Fb.json"))).await, (200, "{}".to_string()));
    assert_eq!(text_of(c.delete(at("/userdata/workflows%2Fb.json"))).await.0, 204);
    assert_eq!(text_of(c.delete(at("/userdata/workflows%2Fb.json"))).await.0, 404);
}

#[tokio::test]
async fn settings_and_users_answer_like_single_user_comfyui() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let at = |p: &str| format!("{}{p}", sim.url());
    let c = client();
    assert_eq!(text_of(c.get(at("/settings"))).await, (200, "{}".to_string()));
    assert_eq!(text_of(c.get(at("/api/settings/Comfy.Zoom"))).await, (200, "null".to_string()));
    assert_eq!(text_of(c.post(at("/settings")).body(r#"{"a": "é"}"#)).await, (200, String::new()));
    assert_eq!(text_of(c.post(at("/settings/Comfy.Zoom")).body("2")).await.0, 200);
    assert_eq!(text_of(c.get(at("/settings"))).await.1, r#"{"a": "\u00e9", "Comfy.Zoom": 2}"#);
    assert!(sim.data_dir().join("user/default/comfy.settings.json").is_file());
    assert_eq!(text_of(c.get(at("/users"))).await.1, r#"{"storage": "server", "migrated": true}"#);
}

/// The next text message's `(type, prompt_id)`, within a deadline.
async fn next_event<S>(ws: &mut S) -> (String, Option<String>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            let id = v["data"]["prompt_id"].as_str().map(str::to_owned);
            return (v["type"].as_str().unwrap().to_owned(), id);
        }
    }
}

#[tokio::test]
async fn a_loaded_server_runs_a_prompt_before_answering_and_a_kill_cuts_the_answer() {
    let config = SimConfig {
        job_duration: Duration::from_millis(20),
        prompt_answer_delay: Duration::from_millis(400),
        ..SimConfig::default()
    };
    let mut sim = Simulator::start(config).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?clientId=m", sim.addr())).await.unwrap();
    let body = json!({"prompt": workflow("early", 1, false), "client_id": "m", "prompt_id": "early-1"});
    let url = sim.url();
    let answer = tokio::spawn(async move { client().post(format!("{url}/prompt")).json(&body).send().await });
    // The whole job reaches the socket while the answer is still to come.
    loop {
        let (kind, id) = next_event(&mut ws).await;
        if kind == "executing" && id.as_deref() == Some("early-1") {
            assert!(!answer.is_finished(), "the job ended before POST /prompt answered");
            break;
        }
    }
    assert_eq!(answer.await.unwrap().unwrap().status(), 200);

    // Killed between queueing and answering: no answer, though the prompt was taken.
    let url = sim.url();
    let body = json!({"prompt": workflow("cut", 2, false), "client_id": "m", "prompt_id": "cut-1"});
    let cut = tokio::spawn(async move { client().post(format!("{url}/prompt")).json(&body).send().await });
    loop {
        let (kind, id) = next_event(&mut ws).await;
        if kind == "execution_start" && id.as_deref() == Some("cut-1") {
            break;
        }
    }
    sim.stop().await;
    assert!(cut.await.unwrap().is_err(), "the answer is cut by the kill");
    let runs: Vec<(String, Option<String>)> = sim.runs().into_iter().map(|r| (r.prompt_id, r.ended)).collect();
    assert_eq!(runs[0], ("early-1".to_owned(), Some("success".to_owned())));
    assert_eq!(runs[1].0, "cut-1");
}

#[tokio::test]
async fn a_restarting_server_keeps_its_port_closed_while_starting_and_runs_survive_in_the_log() {
    let config = SimConfig { startup_delay: Duration::from_millis(500), ..SimConfig::default() };
    let mut sim = Simulator::start(config).await.unwrap();
    let url = sim.url();
    let (_, resp) = post_prompt(&sim, &json!({"prompt": workflow("life", 3, false), "prompt_id": "same"})).await;
    assert!(resp.contains("\"same\""), "{resp}");
    wait_history(&sim, "same").await;
    let probe = url.clone();
    let (restarted, closed) = tokio::join!(sim.restart(), async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client().get(format!("{probe}/system_stats")).send().await.is_err()
    });
    restarted.unwrap();
    assert!(closed, "the port is closed while the server starts");
    assert_eq!(client().get(format!("{url}/history")).send().await.unwrap().text().await.unwrap(), "{}");
    // The same prompt id is accepted and run again, as ComfyUI does.
    let (status, _) = post_prompt(&sim, &json!({"prompt": workflow("life", 3, false), "prompt_id": "same"})).await;
    assert_eq!(status, 200);
    wait_history(&sim, "same").await;
    let lives: Vec<(String, u64, Option<String>)> =
        sim.runs().into_iter().map(|r| (r.prompt_id, r.life, r.ended)).collect();
    let ok = Some("success".to_owned());
    assert_eq!(lives, [("same".to_owned(), 0, ok.clone()), ("same".to_owned(), 1, ok)]);
}

#[tokio::test]
async fn a_prompt_being_validated_is_in_neither_queue_nor_history() {
    let config = SimConfig { prompt_accept_delay: Duration::from_millis(400), ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    let url = sim.url();
    let body = json!({"prompt": workflow("slow", 4, false), "prompt_id": "validating"});
    let answer = tokio::spawn(async move { client().post(format!("{url}/prompt")).json(&body).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let queue: Value = client().get(format!("{}/queue", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(queue, json!({"queue_running": [], "queue_pending": []}));
    let history = client().get(format!("{}/history/validating", sim.url())).send().await.unwrap();
    assert_eq!(history.text().await.unwrap(), "{}");
    assert_eq!(answer.await.unwrap().unwrap().status(), 200);
    wait_history(&sim, "validating").await;
}

#[tokio::test]
async fn an_identical_prompt_reuses_every_cached_output_like_comfyui() {
    let config = SimConfig { job_duration: Duration::from_millis(600), cache_outputs: true, ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?clientId=c", sim.addr())).await.unwrap();
    let body = |id: &str| json!({"prompt": workflow("cached", 7, true), "client_id": "c", "prompt_id": id});
    post_prompt(&sim, &body("first")).await;
    let first = wait_history(&sim, "first").await;
    let started = Instant::now();
    post_prompt(&sim, &body("again")).await;
    let again = wait_history(&sim, "again").await;
    assert!(started.elapsed() < Duration::from_millis(400), "nothing ran again: {:?}", started.elapsed());
    assert_eq!(again["outputs"], first["outputs"], "the same file, not a new one");
    let cached = &again["status"]["messages"][1];
    assert_eq!(cached[0], "execution_cached");
    let mut nodes: Vec<&str> = cached[1]["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    nodes.sort();
    assert_eq!(nodes, ["1", "2", "3"]);
    // The second job's events: no node executes, the output is announced again.
    let mut kinds = Vec::new();
    loop {
        let (kind, id) = next_event(&mut ws).await;
        if id.as_deref() == Some("again") {
            kinds.push(kind.clone());
            if kind == "executing" {
                break;
            }
        }
    }
    assert_eq!(kinds, ["execution_start", "execution_cached", "executed", "execution_success", "executing"]);
    // A changed input runs that node and everything below it.
    let mut changed = body("changed");
    changed["prompt"]["3"]["inputs"]["blur_radius"] = json!(2);
    post_prompt(&sim, &changed).await;
    let entry = wait_history(&sim, "changed").await;
    assert_eq!(entry["status"]["messages"][1][1]["nodes"], json!(["1"]));
    assert_ne!(entry["outputs"], first["outputs"]);
}

fn ckpt_job(ckpt: &str, ms: u64) -> Value {
    json!({"prompt": {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
            "latent_image": ["3", 0], "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "load"}}
    }, "extra_data": {"sim_duration_ms": ms}})
}

/// Runs one job to its end: (ms from execution_start to execution_success, ms from
/// execution_start to the sampler's `executing`, seen live on the WebSocket).
async fn run_timed(sim: &Simulator, ckpt: &str) -> (u64, u64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?clientId=timer", sim.addr())).await.unwrap();
    assert_eq!(next_event(&mut ws).await.0, "status", "subscribed before submitting");
    let mut body = ckpt_job(ckpt, 30);
    body["client_id"] = json!("timer");
    let (status, answer) = post_prompt(sim, &body).await;
    assert_eq!(status, 200, "{answer}");
    let pid = serde_json::from_str::<Value>(&answer).unwrap()["prompt_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut start, mut sampler) = (None, None);
    while sampler.is_none() {
        assert!(Instant::now() < deadline, "no sampler for {pid}");
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
        let Some(Ok(Message::Text(t))) = m else { continue };
        let m: Value = serde_json::from_str(&t).unwrap();
        if m["data"]["prompt_id"] != json!(pid) {
            continue;
        }
        match (m["type"].as_str(), m["data"]["node"].as_str()) {
            (Some("execution_start"), _) => start = Some(Instant::now()),
            (Some("executing"), Some("4")) => sampler = Some(Instant::now()),
            _ => {}
        }
    }
    let h = wait_history(sim, &pid).await;
    let ts = |t: &str| {
        h["status"]["messages"].as_array().unwrap().iter().find(|m| m[0] == t).unwrap()[1]["timestamp"]
            .as_u64()
            .unwrap()
    };
    let start = start.expect("execution_start before the sampler");
    (ts("execution_success") - ts("execution_start"), sampler.unwrap().duration_since(start).as_millis() as u64)
}

async fn sim_stats(sim: &Simulator) -> Value {
    client().get(format!("{}/sim/stats", sim.url())).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_model_load_is_paid_on_first_use_and_after_another_model_but_not_on_repeat() {
    let config = SimConfig::default()
        .with_model("checkpoints", "flux.safetensors")
        .with_model("checkpoints", "sd.safetensors")
        .with_load_time("flux.safetensors", Duration::from_millis(400))
        .with_load_time("sd.safetensors", Duration::from_millis(250));
    let sim = Simulator::start(config).await.unwrap();
    assert_eq!(sim.model_loads(), 0);

    let (run, before_sampler) = run_timed(&sim, "flux.safetensors").await;
    assert!(run >= 400 && before_sampler >= 380, "first use loads: run {run} ms, sampler after {before_sampler} ms");
    assert_eq!(sim.model_loads(), 1);
    let (run, _) = run_timed(&sim, "flux.safetensors").await;
    assert!(run < 300, "a resident model is not loaded again: {run} ms");
    assert_eq!(sim.model_loads(), 1);
    let (run, _) = run_timed(&sim, "sd.safetensors").await;
    assert!(run >= 250, "another model loads: {run} ms");
    // Without vram_mb only the last job's models stay: flux was evicted by sd.
    assert_eq!(sim.resident_models(), vec!["sd.safetensors".to_string()]);
    let (run, _) = run_timed(&sim, "flux.safetensors").await;
    assert!(run >= 400, "flux after sd loads again: {run} ms");
    assert_eq!(sim.model_loads(), 3);
    assert_eq!(sim_stats(&sim).await["model_loads"], 3);
}

#[tokio::test]
async fn models_stay_resident_while_they_fit_and_the_least_recently_used_goes_first() {
    let mut config = SimConfig::default().with_vram_mb(1000);
    for (file, mb) in [("flux.safetensors", 600), ("sd.safetensors", 300), ("qwen.safetensors", 300)] {
        config = config
            .with_model("checkpoints", file)
            .with_model_vram(file, mb)
            .with_load_time(file, Duration::from_millis(300));
    }
    let sim = Simulator::start(config).await.unwrap();
    let free = |s: &Value| s["devices"][0]["vram_free"].as_u64().unwrap();
    let stats: Value = client().get(format!("{}/system_stats", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["devices"][0]["vram_total"], 1000u64 * 1024 * 1024);
    assert_eq!(free(&stats), 1000 * 1024 * 1024);

    run_timed(&sim, "flux.safetensors").await;
    run_timed(&sim, "sd.safetensors").await;
    let (run, _) = run_timed(&sim, "flux.safetensors").await;
    assert!(run < 250, "both fit in 1000 MB: flux stayed: {run} ms");
    assert_eq!(sim.model_loads(), 2);
    let stats: Value = client().get(format!("{}/system_stats", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(free(&stats), 100 * 1024 * 1024);

    // qwen does not fit beside both: sd (least recently used) goes, flux stays.
    run_timed(&sim, "qwen.safetensors").await;
    assert_eq!(sim.resident_models(), vec!["flux.safetensors".to_string(), "qwen.safetensors".to_string()]);
    let (run, _) = run_timed(&sim, "flux.safetensors").await;
    assert!(run < 250, "flux was not evicted: {run} ms");
    let (run, _) = run_timed(&sim, "sd.safetensors").await;
    assert!(run >= 300, "sd was evicted and loads again: {run} ms");
    let s = sim_stats(&sim).await;
    assert_eq!(s["model_loads"], 4);
    assert_eq!(s["vram_used_mb"], 900);
    assert_eq!(s["resident"], json!(["flux.safetensors", "sd.safetensors"]));
}
