//! HTTP routes, answering like ComfyUI's aiohttp server.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::frontend;
use crate::json::{self, J, Obj};
use crate::objinfo;
use crate::state::{AppState, QueueItem, RecordedRequest};
use crate::validate::{self, Defs};

pub fn json_response(status: StatusCode, v: &J) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], v.dumps()).into_response()
}

pub fn empty(status: StatusCode) -> Response {
    (status, [(header::CONTENT_TYPE, "application/octet-stream")], Body::empty()).into_response()
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// aiohttp's answer when a handler raises.
pub fn server_error() -> Response {
    text(StatusCode::INTERNAL_SERVER_ERROR, "500 Internal Server Error\n\nServer got itself in trouble")
}

fn both(router: Router<Arc<AppState>>, path: &str, route: MethodRouter<Arc<AppState>>) -> Router<Arc<AppState>> {
    router.route(path, route.clone()).route(&format!("/api{path}"), route)
}

/// The whole application for one run.
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new();
    r = both(r, "/system_stats", get(system_stats));
    r = r.route("/sim/stats", get(sim_stats));
    r = both(r, "/object_info", get(object_info));
    r = both(r, "/object_info/{class}", get(object_info_one));
    r = both(r, "/models", get(models));
    r = both(r, "/models/{folder}", get(models_folder));
    r = both(r, "/embeddings", get(embeddings));
    r = both(r, "/features", get(features));
    r = both(r, "/prompt", get(get_prompt).post(post_prompt));
    r = both(r, "/queue", get(get_queue).post(post_queue));
    r = both(r, "/history", get(get_history).post(post_history));
    r = both(r, "/history/{id}", get(get_history_one));
    // ComfyUI registers the jobs routes with their `/api` prefix (also served as `/api/api/...`).
    r = both(r, "/api/jobs", get(crate::jobs::list));
    r = both(r, "/api/jobs/{id}", get(crate::jobs::one));
    r = both(r, "/interrupt", post(interrupt));
    r = both(r, "/free", post(free));
    r = both(r, "/view", get(crate::files::view));
    r = both(r, "/upload/image", post(crate::files::upload));
    r = both(r, "/upload/mask", post(crate::files::upload));
    r = both(r, "/ws", get(crate::ws::ws_handler));
    r = both(r, "/userdata", get(crate::userdata::list));
    r = both(r, "/v2/userdata", get(crate::userdata::list_v2));
    let file = get(crate::userdata::get_file).post(crate::userdata::post_file).delete(crate::userdata::delete_file);
    r = both(r, "/userdata/{file}", file);
    r = both(r, "/userdata/{file}/move/{dest}", post(crate::userdata::move_file));
    r = both(r, "/settings", get(crate::userdata::get_settings).post(crate::userdata::post_settings));
    r = both(r, "/settings/{id}", get(crate::userdata::get_setting).post(crate::userdata::post_setting));
    r = both(r, "/users", get(crate::userdata::get_users));
    r = both(r, "/extensions", get(frontend::extensions));
    r = both(r, "/i18n", get(frontend::empty_object));
    r = both(r, "/workflow_templates", get(frontend::empty_object));
    let r = if state.config().web_root.is_some() {
        r.route("/", get(frontend::index)).fallback(frontend::static_file)
    } else {
        r.fallback(not_found)
    };
    r.method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(origin_check))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404: Not Found")
}

async fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed")
}

async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let rec = RecordedRequest {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        at_ms: crate::state::now_ms(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    };
    state.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    next.run(req).await
}

/// `(hostname, port)` of a `host[:port]` string, like `urllib.parse.urlsplit("//" + s)`.
fn split_netloc(netloc: &str) -> (Option<String>, Option<String>) {
    let netloc = netloc.rsplit('@').next().unwrap_or("").to_lowercase();
    if netloc.is_empty() {
        return (None, None);
    }
    if let Some(rest) = netloc.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').filter(|p| !p.is_empty()).map(str::to_string);
        return (Some(host.to_string()), port);
    }
    match netloc.rsplit_once(':') {
        Some((h, p)) => (Some(h.to_string()), Some(p.to_string()).filter(|p| !p.is_empty())),
        None => (Some(netloc), None),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// ComfyUI's origin-only middleware (and the newer `Sec-Fetch-Site: cross-site` rejection).
async fn origin_check(req: Request, next: Next) -> Response {
    let h = req.headers();
    if h.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("cross-site")) {
        return empty(StatusCode::FORBIDDEN);
    }
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let (Some(host), Some(origin)) = (host, h.get(header::ORIGIN).and_then(|v| v.to_str().ok())) {
        let host_domain_full = host.to_lowercase();
        let (host_name, host_port) = split_netloc(&host_domain_full);
        let origin_netloc = match origin.split_once("//") {
            Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or("").to_lowercase(),
            None => String::new(),
        };
        let (origin_name, origin_port) = split_netloc(&origin_netloc);
        let loopback = host_name.as_deref().is_some_and(is_loopback);
        let host_domain = if origin_port.is_none() { host_name.clone() } else { Some(host_domain_full) };
        let origin_domain = if host_port.is_none() { origin_name } else { Some(origin_netloc) };
        if let (true, Some(hd), Some(od)) = (loopback, host_domain, origin_domain)
            && !hd.is_empty()
            && !od.is_empty()
            && hd != od
        {
            return empty(StatusCode::FORBIDDEN);
        }
    }
    next.run(req).await
}

async fn read_body(state: &AppState, body: Body) -> Result<Bytes, Response> {
    let max = state.config().max_upload_bytes;
    axum::body::to_bytes(body, usize::try_from(max).unwrap_or(usize::MAX))
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response())
}

/// The body as JSON, or aiohttp's 500 when it is not JSON.
async fn json_body(state: &AppState, body: Body) -> Result<J, Response> {
    let bytes = read_body(state, body).await?;
    json::parse(&bytes).map_err(|_| server_error())
}

async fn system_stats(State(state): State<Arc<AppState>>) -> Response {
    let used: u64 = state.shared.resident().iter().map(|(_, mb)| *mb).sum();
    let body = objinfo::system_stats_now(state.config(), &state.shared.system_stats, used);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

/// `GET /sim/stats`: the simulator's own counters (ComfyUI has no such route): model loads so far,
/// the resident models (least recently used first) and the VRAM they take.
async fn sim_stats(State(state): State<Arc<AppState>>) -> Response {
    let loads = state.shared.model_loads.load(std::sync::atomic::Ordering::Acquire);
    let resident = state.shared.resident().clone();
    let used: u64 = resident.iter().map(|(_, mb)| *mb).sum();
    let body = J::obj([
        ("model_loads", J::u(loads)),
        ("resident", J::Arr(resident.iter().map(|(f, _)| J::s(f.as_str())).collect())),
        ("vram_used_mb", J::u(used)),
        ("vram_mb", state.config().vram_mb.map(J::u).unwrap_or(J::Null)),
    ]);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.dumps()).into_response()
}

/// Image files directly in the input folder (what `LoadImage` offers), sorted.
pub async fn input_images(state: &AppState) -> Vec<J> {
    let dir = state.dirs().input.clone();
    let mut names = tokio::task::spawn_blocking(move || {
        let mut names = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let is_image = mime_guess::from_path(&n).first().is_some_and(|m| m.type_() == "image");
                    if is_image {
                        names.push(n);
                    }
                }
            }
        }
        names
    })
    .await
    .unwrap_or_default();
    names.sort();
    names.into_iter().map(J::Str).collect()
}

/// Image files anywhere below the input folder (`sub/x.png`, also as `sub/x.png [input]`) and
/// the output and temp folders (`x.png [output]`), sorted: what `LoadImage` accepts (it checks
/// that the annotated file exists).
pub async fn input_images_below(state: &AppState) -> Vec<J> {
    let dirs = state.dirs();
    let folders = [
        (dirs.input.clone(), None),
        (dirs.input.clone(), Some("input")),
        (dirs.output.clone(), Some("output")),
        (dirs.temp.clone(), Some("temp")),
    ];
    let mut names = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for (dir, annotation) in folders {
            let suffix = annotation.map(|a| format!(" [{a}]")).unwrap_or_default();
            all.extend(images_below(dir).into_iter().map(|n| format!("{n}{suffix}")));
        }
        all
    })
    .await
    .unwrap_or_default();
    names.sort();
    names.into_iter().map(J::Str).collect()
}

fn images_below(dir: std::path::PathBuf) -> Vec<String> {
    {
        let mut names = Vec::new();
        let mut stack = vec![(dir, String::new())];
        while let Some((folder, prefix)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else { continue };
            for e in entries.flatten() {
                let n = format!("{prefix}{}", e.file_name().to_string_lossy());
                match e.file_type() {
                    Ok(t) if t.is_dir() && names.len() < 100_000 => stack.push((e.path(), format!("{n}/"))),
                    Ok(t) if t.is_file() && mime_guess::from_path(&n).first().is_some_and(|m| m.type_() == "image") => {
                        names.push(n)
                    }
                    _ => {}
                }
            }
        }
        names
    }
}

async fn object_info(State(state): State<Arc<AppState>>) -> Response {
    tokio::time::sleep(state.config().object_info_delay).await;
    let defs = Defs { info: &state.shared.object_info, input_images: input_images(&state).await };
    let mut out = Obj::new();
    if let Some(all) = state.shared.object_info.as_obj() {
        for name in all.keys() {
            if let Some(def) = defs.class(name) {
                out.insert(name.clone(), def);
            }
        }
    }
    json_response(StatusCode::OK, &J::Obj(out))
}

async fn object_info_one(State(state): State<Arc<AppState>>, Path(class): Path<String>) -> Response {
    tokio::time::sleep(state.config().object_info_delay).await;
    let defs = Defs { info: &state.shared.object_info, input_images: input_images(&state).await };
    let mut out = Obj::new();
    if let Some(def) = defs.class(&class) {
        out.insert(class, def);
    }
    json_response(StatusCode::OK, &J::Obj(out))
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let mut folders: Vec<String> = objinfo::MODEL_FOLDERS.iter().map(|s| s.to_string()).collect();
    for f in objinfo::models_by_folder(state.config()).keys() {
        if !folders.contains(f) {
            folders.push(f.clone());
        }
    }
    json_response(StatusCode::OK, &J::Arr(folders.into_iter().map(J::Str).collect()))
}

async fn models_folder(State(state): State<Arc<AppState>>, Path(folder): Path<String>) -> Response {
    let models = objinfo::models_by_folder(state.config());
    let known = objinfo::MODEL_FOLDERS.contains(&folder.as_str()) || models.contains_key(&folder);
    if !known {
        return empty(StatusCode::NOT_FOUND);
    }
    let files = models.get(&folder).cloned().unwrap_or_default();
    json_response(StatusCode::OK, &J::Arr(files.into_iter().map(J::Str).collect()))
}

async fn embeddings(State(state): State<Arc<AppState>>) -> Response {
    let models = objinfo::models_by_folder(state.config());
    let names: Vec<J> = models
        .get("embeddings")
        .map(|files| files.iter().map(|f| J::s(f.rsplit_once('.').map(|(s, _)| s).unwrap_or(f.as_str()))).collect())
        .unwrap_or_default();
    json_response(StatusCode::OK, &J::Arr(names))
}

async fn features(State(state): State<Arc<AppState>>) -> Response {
    json_response(
        StatusCode::OK,
        &J::obj([
            ("supports_preview_metadata", J::Bool(true)),
            ("max_upload_size", J::u(state.config().max_upload_bytes)),
        ]),
    )
}

async fn get_prompt(State(state): State<Arc<AppState>>) -> Response {
    let n = state.lock().queue_remaining();
    json_response(StatusCode::OK, &J::obj([("exec_info", J::obj([("queue_remaining", J::u(n as u64))]))]))
}

fn prompt_error(error: J, node_errors: J) -> Response {
    json_response(StatusCode::BAD_REQUEST, &J::obj([("error", error), ("node_errors", node_errors)]))
}

async fn post_prompt(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let data = match json_body(&state, body).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let J::Obj(data) = data else {
        return match data {
            J::Arr(_) | J::Str(_) => prompt_error(
                J::obj([
                    ("type", J::s("no_prompt")),
                    ("message", J::s("No prompt provided")),
                    ("details", J::s("No prompt provided")),
                    ("extra_info", J::empty_obj()),
                ]),
                J::empty_obj(),
            ),
            _ => server_error(),
        };
    };
    // The number is taken (and the counter advanced) before validation, like ComfyUI.
    let (number, sort_key) = match data.get("number") {
        Some(n) => match n.as_pynum() {
            Some(p) => {
                let f = match p {
                    json::PyNum::Int(i) => i as f64,
                    json::PyNum::Float(f) => f,
                };
                (J::float(f), f)
            }
            None => match n.as_str().and_then(|s| s.trim().parse::<f64>().ok()) {
                Some(f) => (J::float(f), f),
                None => return server_error(),
            },
        },
        None => {
            let mut inner = state.lock();
            let mut n = inner.number;
            if data.get("front").is_some_and(J::truthy) {
                n = -n;
            }
            inner.number += 1;
            (J::int(n), n as f64)
        }
    };
    let Some(prompt) = data.get("prompt") else {
        return prompt_error(
            J::obj([
                ("type", J::s("no_prompt")),
                ("message", J::s("No prompt provided")),
                ("details", J::s("No prompt provided")),
                ("extra_info", J::empty_obj()),
            ]),
            J::empty_obj(),
        );
    };
    let J::Obj(mut prompt) = prompt.clone() else {
        return server_error();
    };
    let prompt_id = match data.get("prompt_id") {
        Some(J::Str(s)) => s.clone(),
        Some(other) => other.py_str(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    // LoadImage validates by existence (its VALIDATE_INPUTS), so files in subfolders count too.
    let defs = Defs { info: &state.shared.object_info, input_images: input_images_below(&state).await };
    let result = validate::validate_prompt(&defs, &mut prompt);
    let mut extra_data = match data.get("extra_data") {
        Some(J::Obj(e)) => e.clone(),
        Some(_) => return server_error(),
        None => Obj::new(),
    };
    if let Some(c) = data.get("client_id") {
        extra_data.insert("client_id".into(), c.clone());
    }
    // A test knob, not ComfyUI's: a backend (or the proxy in front of it) failing this one
    // submission with a server error.
    if let Some(status) = extra_data.get("sim_prompt_status").and_then(J::as_i64) {
        let status = u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok());
        return (
            status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
            .into_response();
    }
    match result {
        Ok(valid) => {
            let validating = state.config().prompt_accept_delay;
            if !validating.is_zero() {
                tokio::time::sleep(validating).await;
            }
            {
                let mut inner = state.lock();
                inner.seq += 1;
                let item = QueueItem {
                    number: number.clone(),
                    sort_key,
                    seq: inner.seq,
                    prompt_id: prompt_id.clone(),
                    prompt: J::Obj(prompt),
                    extra_data: J::Obj(extra_data),
                    outputs: valid.outputs,
                };
                inner.pending.push(item);
                inner.broadcast_status();
            }
            state.work.notify_one();
            // The worker may already be running it; a server killed now never answers.
            let delay = state.config().prompt_answer_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            json_response(
                StatusCode::OK,
                &J::obj([("prompt_id", J::s(prompt_id)), ("number", number), ("node_errors", valid.node_errors)]),
            )
        }
        Err(invalid) => prompt_error(invalid.error, invalid.node_errors),
    }
}

async fn get_queue(State(state): State<Arc<AppState>>) -> Response {
    let inner = state.lock();
    let running: Vec<J> = inner.running.iter().map(|r| r.item.to_j()).collect();
    let pending: Vec<J> = inner.sorted_pending().into_iter().map(QueueItem::to_j).collect();
    drop(inner);
    json_response(StatusCode::OK, &J::obj([("queue_running", J::Arr(running)), ("queue_pending", J::Arr(pending))]))
}

/// The ids of a `delete` list (Python iterates whatever it is given); `None` when not iterable.
fn ids(v: Option<&J>) -> Option<Vec<J>> {
    match v {
        None => Some(vec![]),
        Some(J::Arr(a)) => Some(a.clone()),
        Some(J::Obj(o)) => Some(o.keys().map(|k| J::s(k.as_str())).collect()),
        Some(J::Str(s)) => Some(s.chars().map(|c| J::s(c.to_string())).collect()),
        Some(_) => None,
    }
}

async fn post_queue(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let data = match json_body(&state, body).await {
        Ok(J::Obj(d)) => d,
        Ok(_) | Err(_) => return server_error(),
    };
    let Some(to_delete) = ids(data.get("delete")) else {
        return server_error();
    };
    let mut inner = state.lock();
    if data.get("clear").is_some_and(J::truthy) {
        inner.pending.clear();
        inner.broadcast_status();
    }
    for id in to_delete {
        if let Some(pos) = inner.pending.iter().position(|i| J::s(i.prompt_id.as_str()) == id) {
            inner.pending.remove(pos);
            inner.broadcast_status();
        }
    }
    drop(inner);
    empty(StatusCode::OK)
}

async fn get_history(State(state): State<Arc<AppState>>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().parse::<i64>());
    let max_items = match param("max_items") {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return server_error(),
    };
    let mut offset = match param("offset") {
        None => -1,
        Some(Ok(v)) => v,
        Some(Err(_)) => return server_error(),
    };
    let inner = state.lock();
    if offset < 0
        && let Some(m) = max_items
    {
        offset = inner.history.len() as i64 - m;
    }
    let mut out = Obj::new();
    for (i, (k, v)) in inner.history.iter().enumerate() {
        if i as i64 >= offset {
            out.insert(k.clone(), v.clone());
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    drop(inner);
    json_response(StatusCode::OK, &J::Obj(out))
}

async fn get_history_one(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    let mut out = Obj::new();
    if let Some(v) = inner.history.get(&id) {
        out.insert(id, v.clone());
    }
    drop(inner);
    json_response(StatusCode::OK, &J::Obj(out))
}

async fn post_history(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let data = match json_body(&state, body).await {
        Ok(J::Obj(d)) => d,
        Ok(_) | Err(_) => return server_error(),
    };
    let Some(to_delete) = ids(data.get("delete")) else {
        return server_error();
    };
    let mut inner = state.lock();
    if data.get("clear").is_some_and(J::truthy) {
        inner.history.clear();
    }
    for id in to_delete {
        if let J::Str(id) = id {
            inner.history.shift_remove(&id);
        }
    }
    drop(inner);
    empty(StatusCode::OK)
}

async fn interrupt(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let data = json::parse(&bytes).unwrap_or(J::empty_obj());
    let J::Obj(data) = data else {
        return server_error();
    };
    let inner = state.lock();
    if let Some(running) = &inner.running {
        let wanted = data.get("prompt_id").filter(|p| p.truthy());
        let matches = match wanted {
            Some(p) => p == &J::s(running.item.prompt_id.as_str()),
            None => true,
        };
        if matches {
            running.interrupt.notify_one();
        }
    }
    drop(inner);
    empty(StatusCode::OK)
}

async fn free(State(state): State<Arc<AppState>>, _headers: HeaderMap, body: Body) -> Response {
    match json_body(&state, body).await {
        Ok(J::Obj(_)) => empty(StatusCode::OK),
        Ok(_) | Err(_) => server_error(),
    }
}
