#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `comfygate models pull|verify`, the real binary, against a local HTTP server whose behaviour
//! each test picks (honour or ignore Range, drop the connection, wrong bytes, 404, require an
//! Authorization, redirect) and which records every request it sees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// What the server does for one path.
#[derive(Clone, Debug)]
enum Behaviour {
    /// Serves the file, honouring `Range: bytes=N-` (206, or 416 past the end).
    Honour,
    /// Always 200 with the whole file.
    IgnoreRange,
    /// Bytes of the right length that are not the file.
    Wrong,
    /// 404.
    NotFound,
    /// 401 unless `Authorization` is exactly this; then as `Honour`.
    RequireAuth(String),
    /// 302 to this URL.
    RedirectTo(String),
    /// Holds the response until this many requests arrived (10 s at most), then as `Honour`.
    WaitFor(usize),
    /// Announces the whole file, sends this many bytes, then nothing (the connection stays open).
    Stall(usize),
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, (Bytes, Behaviour)>>,
    seen: Mutex<Vec<Seen>>,
    arrivals: AtomicUsize,
    arrived: tokio::sync::Notify,
    /// A `WaitFor` gave up waiting: the requests were not in flight together.
    waited_out: AtomicBool,
}

struct Server {
    url: String,
    shared: Arc<Shared>,
}

impl Server {
    async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, shared }
    }

    /// Serves `body` at `/name` and returns its URL.
    fn add(&self, name: &str, body: &[u8], behaviour: Behaviour) -> String {
        self.shared.routes.lock().unwrap().insert(format!("/{name}"), (Bytes::copy_from_slice(body), behaviour));
        format!("{}/{name}", self.url)
    }

    fn set(&self, name: &str, behaviour: Behaviour) {
        self.shared.routes.lock().unwrap().get_mut(&format!("/{name}")).unwrap().1 = behaviour;
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn forget(&self) {
        self.shared.seen.lock().unwrap().clear();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let path = request.uri().path().to_owned();
    shared.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: text(header::RANGE),
        authorization: text(header::AUTHORIZATION),
    });
    shared.arrivals.fetch_add(1, Ordering::SeqCst);
    shared.arrived.notify_waiters();
    let Some((body, behaviour)) = shared.routes.lock().unwrap().get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match behaviour {
        Behaviour::Honour => ranged(&body, request.headers()),
        Behaviour::IgnoreRange => body.into_response(),
        Behaviour::Stall(n) => {
            let first: Result<Bytes, std::io::Error> = Ok(body.slice(..n));
            let stream =
                futures_util::StreamExt::chain(futures_util::stream::iter([first]), futures_util::stream::pending());
            let mut response = Response::new(axum::body::Body::from_stream(stream));
            response.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
            response
        }
        Behaviour::Wrong => body.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>().into_response(),
        Behaviour::NotFound => StatusCode::NOT_FOUND.into_response(),
        Behaviour::RequireAuth(expected) => {
            if text(header::AUTHORIZATION).as_deref() == Some(expected.as_str()) {
                ranged(&body, request.headers())
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        }
        Behaviour::RedirectTo(url) => (StatusCode::FOUND, [(header::LOCATION, url)]).into_response(),
        Behaviour::WaitFor(n) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let notified = shared.arrived.notified();
                if shared.arrivals.load(Ordering::SeqCst) >= n {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    shared.waited_out.store(true, Ordering::SeqCst);
                    break;
                }
            }
            ranged(&body, request.headers())
        }
    }
}

/// A bare HTTP/1.1 server for one file at `/file`: the first request is answered with the whole
/// (remaining) length announced but only `drop_after` bytes sent before the connection closes;
/// later ones in full, honouring `Range: bytes=N-`. (Written on TCP because a framework would not
/// promise to flush the bytes before closing.)
struct DropServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl DropServer {
    async fn start(body: Vec<u8>, drop_after: usize) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for request in 0.. {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let field = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let range = field("range");
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push(Seen { path, range: range.clone(), authorization: field("authorization") });
                let from: usize = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap_or(0);
                let rest = &body[from.min(body.len())..];
                let status = if from > 0 {
                    format!("206 Partial Content\r\nContent-Range: bytes {from}-{}/{}", body.len() - 1, body.len())
                } else {
                    "200 OK".to_owned()
                };
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len());
                let sent = if request == 0 { &rest[..drop_after.min(rest.len())] } else { rest };
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.write_all(sent).await;
                let _ = socket.shutdown().await;
            }
        });
        Self { url, seen }
    }
}

fn range_start(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    value.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

fn ranged(body: &Bytes, headers: &HeaderMap) -> Response {
    let Some(from) = range_start(headers) else { return body.clone().into_response() };
    if from >= body.len() {
        let range = format!("bytes */{}", body.len());
        return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, range)]).into_response();
    }
    let range = format!("bytes {from}-{}/{}", body.len() - 1, body.len());
    (StatusCode::PARTIAL_CONTENT, [(header::CONTENT_RANGE, range)], body.slice(from..)).into_response()
}

/// `len` deterministic pseudo-random bytes (xorshift), different per `seed`.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// One `[[file]]`.
struct Entry {
    name: String,
    folder: String,
    url: String,
    sha256: String,
    size: u64,
    extra: String,
}

fn entry(name: &str, folder: &str, url: &str, bytes: &[u8]) -> Entry {
    Entry {
        name: name.to_owned(),
        folder: folder.to_owned(),
        url: url.to_owned(),
        sha256: sha256(bytes),
        size: bytes.len() as u64,
        extra: String::new(),
    }
}

fn write_manifest(dir: &Path, top: &str, entries: &[Entry]) -> PathBuf {
    let mut text = format!("{top}\n");
    for e in entries {
        text.push_str(&format!(
            "\n[[file]]\nname = {:?}\nfolder = {:?}\nurl = {:?}\nsha256 = {:?}\nsize = {}\n{}\n",
            e.name, e.folder, e.url, e.sha256, e.size, e.extra
        ));
    }
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

async fn comfygate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_comfygate"));
    command.args(args).current_dir(dir).kill_on_drop(true);
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "COMFYGATE_CONFIG"]
    {
        command.env_remove(var);
    }
    command.env("NO_PROXY", "127.0.0.1");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("comfygate hung").unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `models pull MANIFEST --models-dir DIR/models` plus `args`.
async fn pull(dir: &Path, manifest: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let models = dir.join("models");
    let mut all = vec!["models", "pull", manifest.to_str().unwrap(), "--models-dir", models.to_str().unwrap()];
    all.extend_from_slice(args);
    comfygate(dir, &all, env).await
}

async fn verify(dir: &Path, manifest: &Path) -> Run {
    let models = dir.join("models");
    comfygate(dir, &["models", "verify", manifest.to_str().unwrap(), "--models-dir", models.to_str().unwrap()], &[])
        .await
}

fn read(dir: &Path, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join("models").join(rel)).ok()
}

#[tokio::test]
async fn two_files_download_in_parallel_and_both_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let (a, b) = (content(1, 300_000), content(2, 200_000));
    let entries = [
        entry("a.safetensors", "diffusion_models", &server.add("a", &a, Behaviour::WaitFor(2)), &a),
        entry("b.safetensors", "vae", &server.add("b", &b, Behaviour::WaitFor(2)), &b),
    ];
    let manifest = write_manifest(dir.path(), "", &entries);
    let run = pull(dir.path(), &manifest, &["--jobs", "2"], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(read(dir.path(), "diffusion_models/a.safetensors").unwrap(), a);
    assert_eq!(read(dir.path(), "vae/b.safetensors").unwrap(), b);
    let mut paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/b"]);
    assert!(!server.shared.waited_out.load(Ordering::SeqCst), "the two downloads were not in flight at once");
    assert!(run.stdout.contains("diffusion_models/a.safetensors: ok (downloaded"), "{run:?}");
    assert!(!dir.path().join("models/vae/.b.safetensors.part").exists());
}

#[tokio::test]
async fn an_interrupted_download_keeps_its_partial_and_the_next_run_resumes_with_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let body = content(3, 400_000);
    let server = DropServer::start(body.clone(), 200_000).await;
    let url = server.url.clone();
    let manifest = write_manifest(dir.path(), "", &[entry("big.safetensors", "checkpoints", &url, &body)]);

    let first = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(first.code, 1, "{first:?}");
    assert!(first.stderr.contains("big.safetensors: interrupted at"), "{first:?}");
    assert!(first.stderr.contains("of 400000 bytes; run again to resume"), "{first:?}");
    assert!(read(dir.path(), "checkpoints/big.safetensors").is_none());
    let partial = read(dir.path(), "checkpoints/.big.safetensors.part").expect("the partial is kept");
    assert!(!partial.is_empty() && partial.len() < body.len(), "{}", partial.len());
    assert_eq!(partial, body[..partial.len()]);

    assert_eq!(partial.len(), 200_000, "all bytes sent before the drop are kept");

    let second = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(second.code, 0, "{second:?}");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=200000-"));
    assert!(second.stdout.contains(&format!("resumed at {} of 400000 bytes", partial.len())), "{second:?}");
    assert_eq!(read(dir.path(), "checkpoints/big.safetensors").unwrap(), body);
    assert!(read(dir.path(), "checkpoints/.big.safetensors.part").is_none());
}

#[tokio::test]
async fn a_server_that_ignores_range_makes_the_download_start_over_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(4, 250_000);
    let url = server.add("x", &body, Behaviour::IgnoreRange);
    let manifest = write_manifest(dir.path(), "", &[entry("x.safetensors", "loras", &url, &body)]);
    // A partial that is not even a prefix of the file: starting over must not keep any of it.
    std::fs::create_dir_all(dir.path().join("models/loras")).unwrap();
    std::fs::write(dir.path().join("models/loras/.x.safetensors.part"), vec![7u8; 1000]).unwrap();
    let run = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(server.seen()[0].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(read(dir.path(), "loras/x.safetensors").unwrap(), body);
    assert!(read(dir.path(), "loras/.x.safetensors.part").is_none());
}

#[tokio::test]
async fn a_complete_partial_answered_with_416_is_verified_and_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(5, 100_000);
    let url = server.add("done", &body, Behaviour::Honour);
    let manifest = write_manifest(dir.path(), "", &[entry("done.safetensors", "vae", &url, &body)]);
    std::fs::create_dir_all(dir.path().join("models/vae")).unwrap();
    std::fs::write(dir.path().join("models/vae/.done.safetensors.part"), &body).unwrap();
    let run = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(read(dir.path(), "vae/done.safetensors").unwrap(), body);
}

#[tokio::test]
async fn a_corrupted_download_fails_with_a_checksum_mismatch_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(6, 300_000);
    let good = content(7, 50_000);
    let entries = [
        entry("bad.safetensors", "unet", &server.add("bad", &body, Behaviour::Wrong), &body),
        entry("good.safetensors", "unet", &server.add("good", &good, Behaviour::Honour), &good),
    ];
    let manifest = write_manifest(dir.path(), "", &entries);
    let run = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let expected = format!("checksum mismatch for bad.safetensors: expected {}, got ", sha256(&body));
    assert!(run.stderr.contains(&expected), "{run:?}");
    assert!(read(dir.path(), "unet/bad.safetensors").is_none());
    assert!(read(dir.path(), "unet/.bad.safetensors.part").is_none(), "the wrong bytes are deleted");
    assert_eq!(read(dir.path(), "unet/good.safetensors").unwrap(), good, "the other file still completes");
}

#[tokio::test]
async fn a_404_names_the_status_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(8, 1000);
    let url = server.add("gone", &body, Behaviour::NotFound);
    let manifest = write_manifest(dir.path(), "", &[entry("gone.safetensors", "vae", &url, &body)]);
    let run = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let expected =
        format!("gone.safetensors: the server answered 404 Not Found for {url} (check the url in the manifest)");
    assert!(run.stderr.contains(&expected), "{run:?}");
    assert!(read(dir.path(), "vae/gone.safetensors").is_none());
}

#[tokio::test]
async fn a_rerun_with_everything_present_requests_nothing_and_verify_catches_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let (a, b) = (content(9, 150_000), content(10, 120_000));
    let entries = [
        entry("a.safetensors", "text_encoders", &server.add("a", &a, Behaviour::Honour), &a),
        entry("b.safetensors", "clip_vision", &server.add("b", &b, Behaviour::Honour), &b),
    ];
    let manifest = write_manifest(dir.path(), "", &entries);
    assert_eq!(pull(dir.path(), &manifest, &[], &[]).await.code, 0);
    server.forget();

    let again = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    assert!(again.stdout.contains("text_encoders/a.safetensors: ok (already present)"), "{again:?}");
    assert!(again.stdout.contains("clip_vision/b.safetensors: ok (already present)"), "{again:?}");

    let ok = verify(dir.path(), &manifest).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains("text_encoders/a.safetensors: ok") && ok.stdout.contains("clip_vision/b.safetensors: ok")
    );

    let path = dir.path().join("models/clip_vision/b.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[60_000] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let bad = verify(dir.path(), &manifest).await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("clip_vision/b.safetensors: checksum mismatch (expected"), "{bad:?}");
    assert!(bad.stdout.contains("text_encoders/a.safetensors: ok"), "{bad:?}");

    // `pull` hashes present files too: the changed one is fetched again and replaced.
    let repaired = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(repaired.code, 0, "{repaired:?}");
    assert!(repaired.stdout.contains("clip_vision/b.safetensors: ok (downloaded 120000 bytes"), "{repaired:?}");
    assert!(repaired.stderr.contains("clip_vision/b.safetensors: the present file does not match"), "{repaired:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b);
    assert_eq!(server.seen().len(), 1, "{:?}", server.seen());
    server.forget();

    std::fs::remove_file(dir.path().join("models/text_encoders/a.safetensors")).unwrap();
    std::fs::write(dir.path().join("models/text_encoders/.a.safetensors.part"), &a[..1000]).unwrap();
    std::fs::write(&path, &bytes[..10]).unwrap();
    let worse = verify(dir.path(), &manifest).await;
    assert_eq!(worse.code, 1, "{worse:?}");
    assert!(worse.stdout.contains("text_encoders/a.safetensors: partial (1000 of 150000 bytes)"), "{worse:?}");
    assert!(worse.stdout.contains("clip_vision/b.safetensors: wrong size (10 bytes, expected 120000)"), "{worse:?}");
    std::fs::remove_file(dir.path().join("models/text_encoders/.a.safetensors.part")).unwrap();
    let missing = verify(dir.path(), &manifest).await;
    assert!(missing.stdout.contains("text_encoders/a.safetensors: missing"), "{missing:?}");
    assert!(server.seen().is_empty(), "verify makes no request");
}

#[tokio::test]
async fn headers_env_sends_exactly_its_value_and_an_unset_variable_fails_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(11, 80_000);
    let secret = "Bearer hf_s3cret-value-for-the-test";
    let url = server.add("gated", &body, Behaviour::RequireAuth(secret.to_owned()));
    let mut gated = entry("gated.safetensors", "diffusion_models", &url, &body);
    gated.extra = "headers_env = \"TEST_GATED_AUTH\"".to_owned();
    let manifest = write_manifest(dir.path(), "", &[gated]);

    let unset = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(unset.code, 1, "{unset:?}");
    assert!(
        unset.stderr.contains("the environment variable TEST_GATED_AUTH named by headers_env is not set"),
        "{unset:?}"
    );
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    let wrong = pull(dir.path(), &manifest, &[], &[("TEST_GATED_AUTH", "Bearer hf_wrong-one")]).await;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("401") && wrong.stderr.contains("$TEST_GATED_AUTH"), "{wrong:?}");
    assert!(!wrong.output().contains("hf_wrong-one"), "{wrong:?}");
    server.forget();

    let set = pull(dir.path(), &manifest, &[], &[("TEST_GATED_AUTH", secret)]).await;
    assert_eq!(set.code, 0, "{set:?}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].authorization.as_deref(), Some(secret));
    assert!(!set.output().contains("s3cret"), "{set:?}");
    assert_eq!(read(dir.path(), "diffusion_models/gated.safetensors").unwrap(), body);
}

#[tokio::test]
async fn a_redirect_to_another_host_does_not_carry_the_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, cdn) = (Server::start().await, Server::start().await);
    let body = content(12, 60_000);
    let target = cdn.add("blob", &body, Behaviour::Honour);
    let url = origin.add("file", &body, Behaviour::RedirectTo(target));
    let mut gated = entry("r.safetensors", "vae", &url, &body);
    gated.extra = "headers_env = \"TEST_REDIRECT_AUTH\"".to_owned();
    let manifest = write_manifest(dir.path(), "", &[gated]);
    let run = pull(dir.path(), &manifest, &[], &[("TEST_REDIRECT_AUTH", "Bearer hf_origin-only")]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(origin.seen()[0].authorization.as_deref(), Some("Bearer hf_origin-only"));
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1, "{at_cdn:?}");
    assert_eq!(at_cdn[0].authorization, None, "the other host (port) must not see the token");
    assert_eq!(read(dir.path(), "vae/r.safetensors").unwrap(), body);
}

#[tokio::test]
async fn a_pull_that_does_not_fit_on_the_disk_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let url = server.add("huge", b"x", Behaviour::Honour);
    let mut huge = entry("huge.safetensors", "checkpoints", &url, b"x");
    huge.size = 1_000_000_000_000_000;
    let manifest = write_manifest(dir.path(), "", &[huge]);
    for args in [&[][..], &["--dry-run"][..]] {
        let run = pull(dir.path(), &manifest, args, &[]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains("not enough disk space"), "{run:?}");
        assert!(run.stderr.contains("1000000000000000 bytes (") && run.stderr.contains(") available"), "{run:?}");
    }
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    assert!(!dir.path().join("models").exists());
}

#[tokio::test]
async fn manifest_errors_exit_65_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let body = content(13, 10);
    let ok = || entry("a.safetensors", "vae", "http://127.0.0.1:9/a", &body);
    let cases: Vec<(Vec<Entry>, &str, Vec<&str>)> = vec![
        (vec![Entry { extra: "colour = \"red\"".to_owned(), ..ok() }], "", vec!["colour", "[[file]] #1"]),
        (vec![Entry { sha256: "abc123".to_owned(), ..ok() }], "", vec!["key `sha256`", "64 hex"]),
        (vec![Entry { name: "../x".to_owned(), ..ok() }], "", vec!["key `name`", "../x"]),
        (vec![Entry { folder: "/etc".to_owned(), ..ok() }], "", vec!["key `folder`"]),
        (vec![ok(), ok()], "", vec!["[[file]] #2", "key `name`", "vae/a.safetensors", "#1"]),
        (vec![ok()], "modelsdir = \"x\"", vec!["modelsdir"]),
        (vec![Entry { sha256: String::new(), ..ok() }], "", vec!["sha256 for a.safetensors is not filled in"]),
    ];
    for (entries, top, needles) in cases {
        let manifest = write_manifest(dir.path(), top, &entries);
        for command in ["pull", "verify"] {
            let run = comfygate(dir.path(), &["models", command, manifest.to_str().unwrap()], &[]).await;
            assert_eq!(run.code, 65, "{run:?}");
            for needle in &needles {
                assert!(run.stderr.contains(needle), "{needle}: {run:?}");
            }
        }
    }
    let run = comfygate(dir.path(), &["models", "pull", "manifest.toml", "--jobs", "0"], &[]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn a_dry_run_makes_no_request_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let (a, b) = (content(14, 5000), content(15, 7000));
    let sub = dir.path().join("deploy");
    std::fs::create_dir_all(&sub).unwrap();
    let entries = [
        entry("a.safetensors", "vae", &server.add("a", &a, Behaviour::Honour), &a),
        entry("b.safetensors", "loras/qwen", &server.add("b", &b, Behaviour::Honour), &b),
    ];
    // `models_dir` is relative to the manifest, not to the current folder.
    let manifest = write_manifest(&sub, "models_dir = \"../comfy/models\"", &entries);
    let run = comfygate(dir.path(), &["models", "pull", manifest.to_str().unwrap(), "--dry-run"], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("vae/a.safetensors: would download 5000 bytes"), "{run:?}");
    assert!(run.stdout.contains("loras/qwen/b.safetensors: would download 7000 bytes"), "{run:?}");
    assert!(run.stdout.contains("total to download: 12000 bytes"), "{run:?}");
    assert!(run.stdout.contains("comfy/models"), "{run:?}");
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    assert!(!dir.path().join("comfy").exists() && !dir.path().join("models").exists());

    let real = comfygate(dir.path(), &["models", "pull", manifest.to_str().unwrap()], &[]).await;
    assert_eq!(real.code, 0, "{real:?}");
    assert_eq!(std::fs::read(dir.path().join("comfy/models/loras/qwen/b.safetensors")).unwrap(), b);
}

#[test]
fn the_shipped_example_manifests_are_valid_but_for_their_sha256_placeholders() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/models");
    let mut checked = 0;
    for file in std::fs::read_dir(&folder).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let error = comfygate::models::manifest::load(&path).unwrap_err();
        assert!(matches!(error, comfygate::models::ManifestError::NotFilledIn { .. }), "{}: {error}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("sha256 = \"\""), "{}", path.display());
        let filled = text.replace("sha256 = \"\"", &format!("sha256 = \"{}\"", "ab".repeat(32)));
        let manifest =
            comfygate::models::manifest::parse(&path, &filled).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(manifest.files.len() >= 3, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "no example manifests in {}", folder.display());
}

#[tokio::test]
async fn a_size_that_differs_from_the_servers_fails_before_writing_and_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(16, 30_000);
    let url = server.add("sized", &body, Behaviour::Honour);
    let mut wrong = entry("sized.safetensors", "vae", &url, &body);
    wrong.size = 30_001;
    let manifest = write_manifest(dir.path(), "", &[wrong]);
    let run = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("sized.safetensors: the server has 30000 bytes but the manifest says size = 30001"),
        "{run:?}"
    );
    assert!(read(dir.path(), "vae/sized.safetensors").is_none());
    assert!(read(dir.path(), "vae/.sized.safetensors.part").is_none());
}

#[tokio::test]
async fn ctrl_c_stops_a_download_keeping_its_partial_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    let body = content(17, 300_000);
    let url = server.add("stall", &body, Behaviour::Stall(100_000));
    let manifest = write_manifest(dir.path(), "", &[entry("stall.safetensors", "loras", &url, &body)]);
    let models = dir.path().join("models");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_comfygate"))
        .args(["models", "pull", manifest.to_str().unwrap(), "--models-dir", models.to_str().unwrap()])
        .current_dir(dir.path())
        .env("NO_PROXY", "127.0.0.1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.seen().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("stall.safetensors: interrupted at ") && stderr.contains("run again to resume"),
        "{stderr}"
    );
    let partial = read(dir.path(), "loras/.stall.safetensors.part").expect("the partial is kept");
    assert!(partial.len() <= 100_000 && partial == body[..partial.len()], "{}", partial.len());
    assert!(read(dir.path(), "loras/stall.safetensors").is_none());

    server.set("stall", Behaviour::Honour);
    server.forget();
    let again = pull(dir.path(), &manifest, &[], &[]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let expected = (!partial.is_empty()).then(|| format!("bytes={}-", partial.len()));
    assert_eq!(server.seen()[0].range, expected);
    assert_eq!(read(dir.path(), "loras/stall.safetensors").unwrap(), body);
}
