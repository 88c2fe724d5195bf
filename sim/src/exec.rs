//! The prompt worker: runs one job at a time and emits ComfyUI's WebSocket messages.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::files::resolve_within;
use crate::images;
use crate::json::{J, Obj};
use crate::state::{AppState, MAX_HISTORY, QueueItem, Running, message, now_ms};

/// Runs queued prompts until the state is cancelled.
pub async fn worker(state: Arc<AppState>) {
    loop {
        let item = loop {
            let notified = state.work.notified();
            {
                let mut inner = state.lock();
                if let Some(item) = inner.take_next() {
                    let interrupt = Arc::new(Notify::new());
                    inner.running = Some(Running { item: item.clone(), interrupt: interrupt.clone(), last_node: None });
                    inner.broadcast_status();
                    break (item, interrupt);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = state.cancel.cancelled() => return,
            }
        };
        tokio::select! {
            _ = run_job(&state, item.0, item.1) => {}
            _ = state.cancel.cancelled() => return,
        }
    }
}

/// Nodes reachable from the outputs, dependencies first.
fn execution_order(prompt: &Obj, outputs: &[String]) -> Vec<String> {
    fn visit(prompt: &Obj, id: &str, seen: &mut HashSet<String>, order: &mut Vec<String>, depth: usize) {
        if depth > 1000 || !seen.insert(id.to_string()) {
            return;
        }
        if let Some(inputs) = prompt.get(id).and_then(|n| n.get("inputs")).and_then(J::as_obj) {
            for v in inputs.values() {
                if let Some([J::Str(dep), _]) = v.as_arr().map(Vec::as_slice)
                    && prompt.contains_key(dep)
                {
                    visit(prompt, dep, seen, order, depth + 1);
                }
            }
        }
        order.push(id.to_string());
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for o in outputs {
        visit(prompt, o, &mut seen, &mut order, 0);
    }
    order
}

/// (width, height, color, batch) of the image reaching `id`'s `images` input.
fn image_params(prompt: &Obj, id: &str) -> (u32, u32, u32, usize) {
    let mut cur = id.to_string();
    for _ in 0..100 {
        let Some(node) = prompt.get(&cur) else { break };
        let inputs = node.get("inputs").and_then(J::as_obj);
        if node.get("class_type").and_then(J::as_str) == Some("EmptyImage") {
            let get = |k: &str, d: i64| inputs.and_then(|i| i.get(k)).and_then(J::as_i64).unwrap_or(d);
            let w = get("width", 64).clamp(1, 16384) as u32;
            let h = get("height", 64).clamp(1, 16384) as u32;
            let c = get("color", 0).clamp(0, 0xFF_FFFF) as u32;
            let b = get("batch_size", 1).clamp(1, 64) as usize;
            return (w, h, c, b);
        }
        let next = inputs.and_then(|i| {
            ["images", "image"].iter().chain(i.keys().map(String::as_str).collect::<Vec<_>>().iter()).find_map(|k| {
                match i.get(*k).and_then(J::as_arr).map(Vec::as_slice) {
                    Some([J::Str(dep), _]) => Some(dep.clone()),
                    _ => None,
                }
            })
        });
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    (8, 8, 0x80_80_80, 1)
}

enum End {
    Success,
    Interrupted { node: String, class: String },
    Error { node: String, class: String, msg: String },
}

const PREVIEW_CHARS: &[u8] = b"abcdefghijklmnopqrstupvxyz";

/// Saves the images of an output node; returns the `images` list.
async fn save_images(state: &AppState, prompt: &Obj, id: &str, class: &str) -> Result<Vec<J>, String> {
    let (w, h, color, batch) = image_params(prompt, id);
    let (base, kind, prefix) = if class == "SaveImage" {
        let prefix = prompt
            .get(id)
            .and_then(|n| n.get("inputs"))
            .and_then(|i| i.get("filename_prefix"))
            .map(J::py_str)
            .unwrap_or_else(|| "ComfyUI".into());
        (state.dirs().output.clone(), "output", prefix)
    } else {
        let r = uuid::Uuid::new_v4();
        let suffix: String =
            r.as_bytes().iter().take(5).map(|b| PREVIEW_CHARS[*b as usize % PREVIEW_CHARS.len()] as char).collect();
        (state.dirs().temp.clone(), "temp", format!("ComfyUI_temp_{suffix}"))
    };
    let (subfolder, filename) = match prefix.rsplit_once('/') {
        Some((s, f)) => (s.to_string(), f.to_string()),
        None => (String::new(), prefix.clone()),
    };
    let folder: PathBuf = resolve_within(&base, &subfolder)
        .ok_or_else(|| "Saving image outside the output folder is not allowed.".to_string())?;
    let mut images = Vec::new();
    let filename2 = filename.clone();
    let folder2 = folder.clone();
    let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(&folder2)?;
        let first = images::next_counter(&folder2, &filename2);
        let mut names = Vec::new();
        for (counter, b) in (first..).zip(0..batch) {
            let stem = filename2.replace("%batch_num%", &b.to_string());
            let name = format!("{stem}_{counter:05}_.png");
            images::write_solid_png(&folder2.join(&name), w, h, color)?;
            names.push(name);
        }
        Ok(names)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    for name in names {
        images.push(J::obj([("filename", J::s(name)), ("subfolder", J::s(subfolder.as_str())), ("type", J::s(kind))]));
    }
    Ok(images)
}

fn node_meta(id: &str) -> J {
    J::obj([("node_id", J::s(id)), ("display_node", J::s(id)), ("parent_node", J::Null), ("real_node_id", J::s(id))])
}

/// Each node's cache key: its class and inputs, links replaced by the linked node's key (so a
/// change upstream changes every key below it).
fn signatures(prompt: &Obj, order: &[String]) -> std::collections::HashMap<String, String> {
    let mut sigs: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for id in order {
        let Some(node) = prompt.get(id) else { continue };
        let mut inputs = Obj::new();
        for (name, value) in node.get("inputs").and_then(J::as_obj).into_iter().flatten() {
            let key = match value.as_arr().map(Vec::as_slice) {
                Some([J::Str(dep), slot]) if sigs.contains_key(dep) => {
                    J::Arr(vec![J::s(sigs[dep].as_str()), slot.clone()])
                }
                _ => value.clone(),
            };
            inputs.insert(name.clone(), key);
        }
        let class = node.get("class_type").map(J::dumps).unwrap_or_default();
        sigs.insert(id.clone(), format!("{class}{}", J::Obj(inputs).dumps()));
    }
    sigs
}

fn node_state(prompt_id: &str, id: &str, done: bool) -> J {
    J::obj([
        ("value", J::float(if done { 1.0 } else { 0.0 })),
        ("max", J::float(1.0)),
        ("state", J::s(if done { "finished" } else { "running" })),
        ("node_id", J::s(id)),
        ("prompt_id", J::s(prompt_id)),
        ("display_node_id", J::s(id)),
        ("parent_node_id", J::Null),
        ("real_node_id", J::s(id)),
    ])
}

/// Marks `file` most recently used; false when it is not resident.
fn touch_resident(state: &AppState, file: &str) -> bool {
    let mut resident = state.shared.resident();
    let Some(pos) = resident.iter().position(|(f, _)| f == file) else { return false };
    let entry = resident.remove(pos);
    resident.push(entry);
    true
}

/// Records a finished load of `file`: counts it and makes room. With `vram_mb`, the least recently
/// used models not used by this job go until it fits (if this job's own models exceed the budget
/// they all stay: ComfyUI would offload part of one rather than fail); without it, every model
/// this job does not use goes (a GPU that fits one job's models).
fn load_resident(state: &AppState, file: &str, job_models: &[String]) {
    state.shared.model_loads.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let mb = state.config().vram_of(file);
    let mut resident = state.shared.resident();
    match state.config().vram_mb {
        Some(budget) => {
            let mut used: u64 = resident.iter().map(|(_, m)| *m).sum();
            while used.saturating_add(mb) > budget {
                let Some(pos) = resident.iter().position(|(f, _)| !job_models.contains(f)) else { break };
                used = used.saturating_sub(resident.remove(pos).1);
            }
        }
        None => resident.retain(|(f, _)| job_models.contains(f)),
    }
    resident.push((file.to_string(), mb));
}

async fn run_job(state: &Arc<AppState>, item: QueueItem, interrupt: Arc<Notify>) {
    let pid = item.prompt_id.clone();
    let client = item.client_id();
    let to = client.as_deref();
    let prompt = item.prompt.as_obj().cloned().unwrap_or_default();
    let mut messages: Vec<J> = Vec::new();

    // ComfyUI's add_message: recorded in history; sent only when the prompt has a client_id (or broadcast).
    let add_message = |messages: &mut Vec<J>, t: &str, mut data: Obj, broadcast: bool| {
        data.insert("timestamp".into(), J::u(now_ms()));
        let data = J::Obj(data);
        messages.push(J::Arr(vec![J::s(t), data.clone()]));
        if to.is_some() || broadcast {
            state.lock().send(&message(t, data), to);
        }
    };
    let pid_obj = || -> Obj { [("prompt_id".to_string(), J::s(pid.as_str()))].into_iter().collect() };
    let send = |t: &str, data: J| state.lock().send(&message(t, data), to);

    let run = state.run_started(&pid);
    // One line per run on standard output: tests check that no prompt ran twice anywhere.
    println!("sim: execution_start {pid}");
    add_message(&mut messages, "execution_start", pid_obj(), false);
    let order = execution_order(&prompt, &item.outputs);
    let signatures = signatures(&prompt, &order);
    // ComfyUI keeps the outputs of the last prompt's nodes: unchanged nodes are not run again.
    let reused: Obj = if state.config().cache_outputs {
        let inner = state.lock();
        order
            .iter()
            .filter_map(|id| {
                let (sig, output) = inner.cache.get(id)?;
                (Some(sig) == signatures.get(id)).then(|| (id.clone(), output.clone()))
            })
            .collect()
    } else {
        Obj::new()
    };
    let mut cached = Obj::new();
    cached.insert("nodes".into(), J::Arr(reused.keys().map(|k| J::s(k.as_str())).collect()));
    cached.insert("prompt_id".into(), J::s(pid.as_str()));
    add_message(&mut messages, "execution_cached", cached, false);

    let duration = item
        .extra_data
        .get("sim_duration_ms")
        .and_then(J::as_i64)
        .map(|ms| Duration::from_millis(ms.max(0) as u64))
        .unwrap_or(state.config().job_duration);
    let per_node = duration / (order.len().saturating_sub(reused.len()).max(1) as u32);

    let job_models: Vec<String> = order
        .iter()
        .flat_map(|id| {
            let node = prompt.get(id);
            let class = node.and_then(|n| n.get("class_type")).and_then(J::as_str).unwrap_or_default();
            crate::objinfo::loaded_files(class, node.and_then(|n| n.get("inputs")).and_then(J::as_obj))
        })
        .collect();

    let mut progress = Obj::new();
    let mut outputs = Obj::new();
    let mut meta = Obj::new();
    let mut executed: Vec<String> = Vec::new();
    let mut end = End::Success;
    for id in &order {
        if let Some(output) = reused.get(id) {
            if !matches!(output, J::Null) {
                outputs.insert(id.clone(), output.clone());
                meta.insert(id.clone(), node_meta(id));
                send(
                    "executed",
                    J::obj([
                        ("node", J::s(id.as_str())),
                        ("display_node", J::s(id.as_str())),
                        ("output", output.clone()),
                        ("prompt_id", J::s(pid.as_str())),
                    ]),
                );
            }
            continue;
        }
        let class =
            prompt.get(id).and_then(|n| n.get("class_type")).and_then(J::as_str).unwrap_or_default().to_string();
        progress.insert(id.clone(), node_state(&pid, id, false));
        send("progress_state", J::obj([("prompt_id", J::s(pid.as_str())), ("nodes", J::Obj(progress.clone()))]));
        if let Some(r) = state.lock().running.as_mut() {
            r.last_node = Some(id.clone());
        }
        send(
            "executing",
            J::obj([
                ("node", J::s(id.as_str())),
                ("display_node", J::s(id.as_str())),
                ("prompt_id", J::s(pid.as_str())),
            ]),
        );
        // A loader naming a model that is not resident loads it first (ComfyUI loads on first use).
        let mut interrupted = false;
        let files =
            crate::objinfo::loaded_files(&class, prompt.get(id).and_then(|n| n.get("inputs")).and_then(J::as_obj));
        for file in files {
            if touch_resident(state, &file) {
                continue;
            }
            interrupted = tokio::select! {
                _ = tokio::time::sleep(state.config().load_time(&file)) => false,
                _ = interrupt.notified() => true,
            };
            if interrupted {
                break;
            }
            load_resident(state, &file, &job_models);
        }
        let interrupted = interrupted
            || tokio::select! {
                _ = tokio::time::sleep(per_node) => false,
                _ = interrupt.notified() => true,
            };
        if interrupted {
            end = End::Interrupted { node: id.clone(), class };
            break;
        }
        if class == "SaveImage" || class == "PreviewImage" {
            match save_images(state, &prompt, id, &class).await {
                Ok(images) => {
                    let output = J::obj([("images", J::Arr(images))]);
                    outputs.insert(id.clone(), output.clone());
                    meta.insert(id.clone(), node_meta(id));
                    send(
                        "executed",
                        J::obj([
                            ("node", J::s(id.as_str())),
                            ("display_node", J::s(id.as_str())),
                            ("output", output),
                            ("prompt_id", J::s(pid.as_str())),
                        ]),
                    );
                }
                Err(msg) => {
                    end = End::Error { node: id.clone(), class, msg };
                    break;
                }
            }
        }
        progress.insert(id.clone(), node_state(&pid, id, true));
        send("progress_state", J::obj([("prompt_id", J::s(pid.as_str())), ("nodes", J::Obj(progress.clone()))]));
        executed.push(id.clone());
    }

    let executed_j = J::Arr(executed.iter().map(|e| J::s(e.as_str())).collect());
    let (status_str, completed) = match &end {
        End::Success => {
            add_message(&mut messages, "execution_success", pid_obj(), false);
            ("success", true)
        }
        End::Interrupted { node, class } => {
            let mut d = pid_obj();
            d.insert("node_id".into(), J::s(node.as_str()));
            d.insert("node_type".into(), J::s(class.as_str()));
            d.insert("executed".into(), executed_j.clone());
            add_message(&mut messages, "execution_interrupted", d, true);
            ("error", false)
        }
        End::Error { node, class, msg } => {
            let mut d = pid_obj();
            d.insert("node_id".into(), J::s(node.as_str()));
            d.insert("node_type".into(), J::s(class.as_str()));
            d.insert("executed".into(), executed_j.clone());
            d.insert("exception_message".into(), J::s(msg.as_str()));
            d.insert("exception_type".into(), J::s("Exception"));
            d.insert("traceback".into(), J::Arr(vec![]));
            let inputs = prompt.get(node).and_then(|n| n.get("inputs")).cloned().unwrap_or(J::empty_obj());
            d.insert("current_inputs".into(), inputs);
            d.insert("current_outputs".into(), J::Arr(vec![]));
            add_message(&mut messages, "execution_error", d, false);
            ("error", false)
        }
    };

    // What ran (or was reused) is kept for the next prompt; the rest is dropped.
    let kept = order
        .iter()
        .filter(|id| executed.contains(id) || reused.contains_key(*id))
        .filter_map(|id| Some((id.clone(), (signatures.get(id)?.clone(), outputs.get(id).cloned().unwrap_or(J::Null)))))
        .collect();
    let entry = J::obj([
        ("prompt", item.to_j()),
        ("outputs", J::Obj(outputs)),
        (
            "status",
            J::obj([
                ("status_str", J::s(status_str)),
                ("completed", J::Bool(completed)),
                ("messages", J::Arr(messages)),
            ]),
        ),
        ("meta", J::Obj(meta)),
    ]);
    let mut inner = state.lock();
    if state.config().cache_outputs {
        inner.cache = kept;
    }
    inner.running = None;
    inner.history.insert(pid.clone(), entry);
    state.run_ended(run, status_str);
    while inner.history.len() > MAX_HISTORY {
        inner.history.shift_remove_index(0);
    }
    inner.broadcast_status();
    if let Some(c) = to {
        inner.send(&message("executing", J::obj([("node", J::Null), ("prompt_id", J::s(pid.as_str()))])), Some(c));
    }
}
