#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Files as an attacker tries them: another user's outputs and uploads by every spelling of
//! `/view` and by `HEAD`, uploads that would overwrite or take over someone else's file,
//! workflows and masks naming someone else's file, node lists of uploads, and user content
//! that would run script on the gateway's origin.

mod common;

use std::time::Duration;

use comfyui_sim::{SimConfig, Simulator};
use common::{Auth, Gateway, client, enc, poll, workflow};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const SVG: &[u8] = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>fetch('/comfygate/api/tokens')</script></svg>"#;

struct World {
    sim: Simulator,
    gw: Gateway,
    alice: String,
    bob: String,
    admin: String,
}

async fn world() -> World {
    let sim =
        Simulator::start(SimConfig { job_duration: Duration::from_millis(20), ..SimConfig::default() }).await.unwrap();
    let gw = Gateway::start(&sim.url()).await;
    gw.add_user("alice", "user").await;
    gw.add_user("bob", "user").await;
    let (alice, bob, admin) = (gw.token("alice", "t").await, gw.token("bob", "t").await, gw.token("admin", "t").await);
    // Node classes known, so workflows are checked before dispatch.
    poll(Duration::from_secs(10), "capabilities", || async {
        let (_, state) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&admin)).await;
        state["backends"][0]["node_classes"].as_u64().is_some_and(|n| n > 0).then_some(())
    })
    .await;
    World { sim, gw, alice, bob, admin }
}

async fn upload(gw: &Gateway, token: &str, name: &str, bytes: &[u8], fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = Form::new().part("image", Part::bytes(bytes.to_vec()).file_name(name.to_owned()));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    client().post(gw.at("/upload/image")).bearer_auth(token).multipart(form).send().await.unwrap()
}

async fn view(gw: &Gateway, token: &str, query: &str) -> (u16, Vec<u8>) {
    let r = client().get(gw.at(&format!("/view?{query}"))).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// Runs alice's job and returns the output file's name.
async fn alice_output(w: &World) -> String {
    let r = client()
        .post(w.gw.at("/prompt"))
        .bearer_auth(&w.alice)
        .json(&json!({"prompt": workflow("secret", 7)}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["prompt_id"].as_str().unwrap().to_owned();
    let entry = poll(Duration::from_secs(20), "alice's job", || async {
        let (_, h) = w.gw.get_json(&format!("/history/{id}"), &Auth::Bearer(&w.alice)).await;
        h.get(&id).filter(|e| e["outputs"]["2"].is_object()).cloned()
    })
    .await;
    entry["outputs"]["2"]["images"][0]["filename"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn another_users_output_is_unreachable_by_every_spelling_and_by_head() {
    let w = world().await;
    let name = alice_output(&w).await;
    let (status, bytes) = view(&w.gw, &w.alice, &format!("filename={name}&type=output")).await;
    assert_eq!(status, 200);
    assert!(bytes.starts_with(b"\x89PNG"));
    let n = enc(&name);
    let spellings = [
        format!("filename={n}&type=output"),
        format!("filename={n}"),
        format!("filename=x%2F{n}&type=output"),
        format!("filename=x/y/{n}&type=output"),
        format!("filename={n}&type=output&subfolder=."),
        format!("filename={n}&type=output&subfolder=./"),
        format!("filename={n}&type=output&subfolder=a/.."),
        format!("filename={n}&type=output&subfolder=a%2F.."),
        format!("filename={n}%20%5Boutput%5D&type=input"),
        format!("filename={n}+[output]&type=temp"),
        format!("type=output&filename={n}&preview=webp"),
        format!("filename={n}&type=output&channel=rgb"),
    ];
    for q in &spellings {
        let (status, _) = view(&w.gw, &w.bob, q).await;
        assert_eq!(status, 404, "bob read alice's file with {q}");
        let r = client().head(w.gw.at(&format!("/view?{q}"))).bearer_auth(&w.bob).send().await.unwrap();
        assert_eq!(r.status(), 404, "HEAD {q}");
        let r = client().get(w.gw.at(&format!("/api/view?{q}"))).bearer_auth(&w.bob).send().await.unwrap();
        assert_eq!(r.status(), 404, "/api/view?{q}");
        // The same spellings work for the owner (and name the same file).
        let (status, _) = view(&w.gw, &w.alice, q).await;
        assert_eq!(status, 200, "alice with {q}");
    }
    // A second parameter is refused rather than guessed (ComfyUI reads the first, others the last).
    for q in [format!("filename=nothing.png&filename={n}&type=output"), format!("filename={n}&type=input&type=output")]
    {
        assert_eq!(view(&w.gw, &w.bob, &q).await.0, 400, "{q}");
    }
    // Names ComfyUI refuses get its answers, before any lookup.
    assert_eq!(view(&w.gw, &w.bob, "filename=..%2F..%2Fetc%2Fpasswd").await.0, 400);
    assert_eq!(view(&w.gw, &w.bob, &format!("filename={n}&subfolder=..")).await.0, 403);
    assert_eq!(view(&w.gw, &w.bob, &format!("filename={n}&type=secrets")).await.0, 400);
    // Admins see everyone's files.
    assert_eq!(view(&w.gw, &w.admin, &format!("filename={n}&type=output")).await.0, 200);
}

#[tokio::test]
async fn files_the_gateway_never_recorded_are_hidden_from_users() {
    let w = world().await;
    std::fs::write(w.sim.data_dir().join("output").join("made_elsewhere.png"), comfyui_sim::sample_png()).unwrap();
    assert_eq!(view(&w.gw, &w.alice, "filename=made_elsewhere.png&type=output").await.0, 404);
    assert_eq!(view(&w.gw, &w.admin, "filename=made_elsewhere.png&type=output").await.0, 200);
    // The stock example.png in ComfyUI's input folder is nobody's upload.
    assert_eq!(view(&w.gw, &w.alice, "filename=example.png&type=input").await.0, 404);
}

#[tokio::test]
async fn uploads_live_in_each_users_folder_and_never_replace_anothers() {
    let w = world().await;
    let png = comfyui_sim::sample_png();
    let r = upload(&w.gw, &w.alice, "cat.png", &png, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"name": "cat.png", "subfolder": "", "type": "input"}));
    // bob uploads the same name with overwrite: his own file, alice's is untouched.
    let r = upload(&w.gw, &w.bob, "cat.png", SVG, &[("overwrite", "true")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(view(&w.gw, &w.alice, "filename=cat.png&type=input").await, (200, png.clone()));
    assert_eq!(view(&w.gw, &w.bob, "filename=cat.png&type=input").await.1, SVG.to_vec());
    // Subfolders are inside one's own folder, whatever they say.
    let r = upload(&w.gw, &w.bob, "x.png", &png, &[("subfolder", "../2")]).await;
    assert_eq!(r.status(), 403, "a subfolder climbing out of bob's folder");
    let r = upload(&w.gw, &w.bob, "x.png", &png, &[("subfolder", "comfygate-users/2")]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["subfolder"], "comfygate-users/2");
    assert_eq!(view(&w.gw, &w.alice, "filename=cat.png&type=input").await.1, png, "still alice's");
    // Only input uploads, only plain names, only once.
    assert_eq!(upload(&w.gw, &w.bob, "o.png", &png, &[("type", "output")]).await.status(), 400);
    assert_eq!(upload(&w.gw, &w.bob, "o.png", &png, &[("type", "temp")]).await.status(), 400);
    assert_eq!(upload(&w.gw, &w.bob, "../o.png", &png, &[]).await.status(), 400);
    assert_eq!(upload(&w.gw, &w.bob, "o.png", &png, &[("type", "input"), ("type", "output")]).await.status(), 400);
    assert_eq!(upload(&w.gw, &w.admin, "o.png", &png, &[("type", "output")]).await.status(), 200, "admins may");
    let r = client()
        .post(w.gw.at("/upload/image"))
        .bearer_auth(&w.bob)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "not multipart");
    let on_disk = std::fs::read(common::user_input_dir(&w.sim, "2").join("cat.png")).unwrap();
    assert_eq!(on_disk, png);
}

#[tokio::test]
async fn user_content_is_never_active_on_the_gateways_origin() {
    let w = world().await;
    assert_eq!(upload(&w.gw, &w.bob, "evil.svg", SVG, &[]).await.status(), 200);
    for token in [&w.bob, &w.admin] {
        let r = client().get(w.gw.at("/view?filename=evil.svg&type=input")).bearer_auth(token).send().await.unwrap();
        if token == &w.admin {
            assert_eq!(r.status(), 404, "the admin's own folder has no evil.svg");
            continue;
        }
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["content-type"], "application/octet-stream");
        assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment"));
        assert!(h["content-security-policy"].to_str().unwrap().starts_with("sandbox"));
    }
    let png = comfyui_sim::sample_png();
    upload(&w.gw, &w.bob, "ok.png", &png, &[]).await;
    let r = client().get(w.gw.at("/view?filename=ok.png&type=input")).bearer_auth(&w.bob).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/png", "images stay viewable");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().starts_with("sandbox"));
}

#[tokio::test]
async fn node_lists_show_only_the_callers_own_uploads() {
    let w = world().await;
    let png = comfyui_sim::sample_png();
    upload(&w.gw, &w.alice, "alice.png", &png, &[]).await;
    upload(&w.gw, &w.alice, "deep.png", &png, &[("subfolder", "pets")]).await;
    upload(&w.gw, &w.bob, "bob.png", &png, &[]).await;
    let choices = |info: &Value| info["LoadImage"]["input"]["required"]["image"][0].clone();
    let (_, info) = w.gw.get_json("/object_info", &Auth::Bearer(&w.alice)).await;
    assert_eq!(choices(&info), json!(["alice.png", "pets/deep.png"]));
    let (_, info) = w.gw.get_json("/api/object_info/LoadImage", &Auth::Bearer(&w.bob)).await;
    assert_eq!(choices(&info), json!(["bob.png"]));
    let (_, info) = w.gw.get_json("/object_info/LoadImageMask", &Auth::Bearer(&w.admin)).await;
    assert_eq!(info["LoadImageMask"]["input"]["required"]["image"][0], json!([]), "not even example.png");
}

#[tokio::test]
async fn workflows_use_the_callers_own_files_and_are_refused_anothers() {
    let w = world().await;
    let png = comfyui_sim::sample_png();
    upload(&w.gw, &w.alice, "cat.png", &png, &[]).await;
    let load = |image: &str| {
        json!({"prompt": {
            "1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ref"}}
        }})
    };
    let r = client().post(w.gw.at("/prompt")).bearer_auth(&w.alice).json(&load("cat.png")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // bob names alice's upload by name, by her folder, by climbing: never hers.
    for image in ["cat.png", "comfygate-users/2/cat.png", "../2/cat.png", "../../input/comfygate-users/2/cat.png"] {
        let r = client().post(w.gw.at("/prompt")).bearer_auth(&w.bob).json(&load(image)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{image}");
    }
    // Another user's output, named with ComfyUI's annotation.
    let name = alice_output(&w).await;
    let r = client()
        .post(w.gw.at("/prompt"))
        .bearer_auth(&w.bob)
        .json(&load(&format!("{name} [output]")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    let error = &body["node_errors"]["1"]["errors"][0];
    assert_eq!(error["type"], "custom_validation_failed");
    assert_eq!(error["details"], format!("image - Invalid image file: {name} [output]"));
    assert_eq!(body["node_errors"]["1"]["dependent_outputs"], json!(["2"]));
    let r = client()
        .post(w.gw.at("/prompt"))
        .bearer_auth(&w.alice)
        .json(&load(&format!("{name} [output]")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "her own output is hers to use");
    // What ComfyUI was asked to run names the real file.
    let dispatched: Vec<String> = common::client_requests(&w.sim)
        .into_iter()
        .filter(|r| r.method == "POST" && r.uri == "/prompt")
        .map(|r| r.uri)
        .collect();
    assert!(!dispatched.is_empty());
    let (_, history) = w.gw.get_json("/history", &Auth::Bearer(&w.alice)).await;
    let images: Vec<String> = history
        .as_object()
        .unwrap()
        .values()
        .filter_map(|e| e["prompt"][2]["1"]["inputs"]["image"].as_str().map(str::to_owned))
        .collect();
    assert!(images.contains(&"comfygate-users/2/cat.png".to_owned()), "{images:?}");
}

#[tokio::test]
async fn a_mask_may_only_be_drawn_on_the_callers_own_file() {
    let w = world().await;
    let png = comfyui_sim::sample_png();
    upload(&w.gw, &w.alice, "face.png", &png, &[]).await;
    let mask = |token: &str, original: Value| {
        let form = Form::new()
            .part("image", Part::bytes(png.clone()).file_name("mask.png"))
            .text("original_ref", original.to_string());
        client().post(w.gw.at("/upload/mask")).bearer_auth(token.to_owned()).multipart(form).send()
    };
    let r = mask(&w.bob, json!({"filename": "face.png", "type": "input", "subfolder": ""})).await.unwrap();
    assert_eq!(r.status(), 404, "bob's folder has no face.png");
    let r = mask(&w.bob, json!({"filename": "face.png", "type": "input", "subfolder": "../2"})).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = mask(&w.alice, json!({"filename": "face.png", "type": "input", "subfolder": ""})).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn history_lists_carry_the_owners_client_id_not_the_gateways() {
    let w = world().await;
    let r = client()
        .post(w.gw.at("/prompt"))
        .bearer_auth(&w.alice)
        .json(&json!({"prompt": workflow("cid", 3), "client_id": "alice-tab"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["prompt_id"].as_str().unwrap().to_owned();
    let entry = poll(Duration::from_secs(20), "alice's history", || async {
        let (_, h) = w.gw.get_json("/history", &Auth::Bearer(&w.alice)).await;
        h.get(&id).cloned()
    })
    .await;
    assert_eq!(entry["prompt"][3]["client_id"], "alice-tab");
    let (_, all) = w.gw.get_json("/history", &Auth::Bearer(&w.admin)).await;
    assert!(all[&id]["prompt"][3].get("client_id").is_none(), "others see no client id");
    let r = client().head(w.gw.at("/history")).bearer_auth(&w.bob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let size: usize = r.headers().get("content-length").map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    assert!(size <= 2, "HEAD /history reveals nothing of others' history ({size} bytes)");
}
