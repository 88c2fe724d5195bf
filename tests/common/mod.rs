#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! The end-to-end harness: spawns the real `comfygate` binary against a `comfyui-sim`, with a
//! fresh temporary data directory, and offers small helpers for HTTP, cookies, logins and the CLI.

pub mod pool;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The first admin's password.
pub const ADMIN_PW: &str = "admin-password-123";
/// The password used for ordinary test users.
pub const USER_PW: &str = "user-password-456";
/// The gateway's session cookie.
pub const SESSION_COOKIE: &str = "comfygate_session";
/// How long a gateway may take to start.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Extra configuration lines, per section.
#[derive(Default, Clone)]
pub struct Options {
    /// Lines added to `[server]`.
    pub server: Vec<String>,
    /// Lines added to `[auth]`.
    pub auth: Vec<String>,
    /// Lines added to the backend.
    pub backend: Vec<String>,
    /// Text appended to the file (more `[[backends]]`, `[scheduler]`).
    pub extra: Vec<String>,
    /// Lines added to `[store]`.
    pub store: Vec<String>,
}

impl Options {
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_owned());
        self
    }
    pub fn auth(mut self, line: &str) -> Self {
        self.auth.push(line.to_owned());
        self
    }
    pub fn backend(mut self, line: &str) -> Self {
        self.backend.push(line.to_owned());
        self
    }
    /// Another backend, `[[backends]]` with `name`, `url` and extra lines.
    pub fn another_backend(mut self, name: &str, url: &str, lines: &[&str]) -> Self {
        let mut text = format!("\n[[backends]]\nname = {}\nurl = {}\n", toml_str(name), toml_str(url));
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        self.extra.push(text);
        self
    }
    /// A line for `[store]` (e.g. `url = "postgres://..."`).
    pub fn store(mut self, line: &str) -> Self {
        self.store.push(line.to_owned());
        self
    }
    /// Raw text appended to the configuration.
    pub fn extra(mut self, text: &str) -> Self {
        self.extra.push(text.to_owned());
        self
    }
}

/// Writes a configuration file in `dir` and returns its path.
pub fn write_config(dir: &Path, backend_url: &str, opts: &Options) -> PathBuf {
    let data = dir.join("data");
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    for l in &opts.server {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&format!("\n[store]\ndata_dir = {}\n", toml_str(&data.display().to_string())));
    for l in &opts.store {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&format!("\n[[backends]]\nname = \"sim\"\nurl = {}\n", toml_str(backend_url)));
    for l in &opts.backend {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("\n[auth]\n");
    for l in &opts.auth {
        text.push_str(l);
        text.push('\n');
    }
    for t in &opts.extra {
        text.push('\n');
        text.push_str(t);
        text.push('\n');
    }
    let path = dir.join("comfygate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A command for the gateway binary with a clean `COMFYGATE_*` environment.
pub fn command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfygate"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("COMFYGATE_") {
            cmd.env_remove(&k);
        }
    }
    // Warnings, the audit trail and where each job goes (tests check what they record).
    cmd.env("COMFYGATE_LOG", "warn,comfygate::audit=info,comfygate::scheduler=info").arg("--config").arg(config);
    cmd
}

/// What a CLI command did.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
}

/// Runs the CLI with `args` (and `stdin`, if any) against `config`, off the async workers.
pub async fn cli_at(config: &Path, args: &[&str], stdin: Option<&str>) -> CliOutput {
    let mut cmd = command(config);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::piped());
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn comfygate");
        {
            let mut pipe = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                use std::io::Write;
                let _ = pipe.write_all(text.as_bytes());
                let _ = pipe.write_all(b"\n");
            }
        }
        let out = child.wait_with_output().unwrap();
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// A running gateway process; killed (and reaped) on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub config: PathBuf,
    stderr: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway in front of `backend_url` with the default options.
    pub async fn start(backend_url: &str) -> Gateway {
        Gateway::start_with(backend_url, Options::default()).await
    }

    /// Starts a gateway with extra configuration.
    pub async fn start_with(backend_url: &str, opts: Options) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), backend_url, &opts);
        Gateway::spawn(dir, config).await
    }

    /// Starts a gateway on a configuration of the test's own: `text` with `{data_dir}` standing
    /// for a fresh data folder (as a TOML string), listening on `127.0.0.1:0`.
    pub async fn start_config(text: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let data = toml_str(&dir.path().join("data").display().to_string());
        let config = dir.path().join("comfygate.toml");
        std::fs::write(&config, text.replace("{data_dir}", &data)).unwrap();
        Gateway::spawn(dir, config).await
    }

    /// Stops the process (as a crash would) and starts it again on the same data.
    pub async fn restart(mut self) -> Gateway {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config = self.config.clone();
        drop(self);
        Gateway::spawn(dir, config).await
    }

    async fn spawn(dir: tempfile::TempDir, config: PathBuf) -> Gateway {
        let mut cmd = command(&config);
        cmd.env("COMFYGATE_ADMIN_PASSWORD", ADMIN_PW)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn comfygate serve");
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let rest = line.strip_prefix("comfygate listening on http://");
                if let Some(rest) = rest.or_else(|| line.strip_prefix("comfygate listening on https://")) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match tokio::time::timeout(START_DEADLINE, rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not start; stderr:\n{}", stderr.lock().unwrap());
            }
        };
        let addr: SocketAddr = addr.parse().unwrap();
        Gateway { child, addr, url: format!("http://{addr}"), config, stderr, dir }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid()).unwrap()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits (up to `deadline`) for the process to exit on its own, and says how.
    pub async fn exited(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = std::sync::Mutex::new(&mut self.child);
        poll(deadline, "the gateway to exit", || {
            let status = child.lock().unwrap().try_wait().unwrap();
            async move { status }
        })
        .await
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Starts the gateway again on the same data and configuration once it has exited.
    pub async fn start_again(mut self) -> Gateway {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config = self.config.clone();
        drop(self);
        Gateway::spawn(dir, config).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the gateway wrote on standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Runs a CLI command against this gateway's configuration.
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        cli_at(&self.config, args, stdin).await
    }

    /// Creates a user (role `user` or `admin`) with [`USER_PW`].
    pub async fn add_user(&self, name: &str, role: &str) {
        self.cli(&["user", "add", name, "--role", role, "--password-stdin"], Some(USER_PW)).await.ok();
    }

    /// Creates a token with the CLI and returns the secret.
    pub async fn token(&self, user: &str, name: &str) -> String {
        let out = self.cli(&["token", "create", user, "--name", name], None).await.ok();
        let token = out.stdout.trim().to_owned();
        assert!(token.starts_with("cg_"), "unexpected token output {out:?}");
        token
    }

    /// Logs in through the form; panics unless it works. Returns the session cookie value.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let r = self.login_response(user, password, "/").await;
        assert_eq!(r.status(), 303, "login of {user} failed: {}", r.text().await.unwrap_or_default());
        cookie_from(r.headers(), SESSION_COOKIE).expect("session cookie")
    }

    /// Fetches the login form and posts it; returns the raw response.
    pub async fn login_response(&self, user: &str, password: &str, next: &str) -> reqwest::Response {
        let (csrf_cookie, csrf) = self.login_form(next).await;
        let body = form(&[("username", user), ("password", password), ("csrf", &csrf), ("next", next)]);
        client()
            .post(self.at("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("comfygate_login_csrf={csrf_cookie}"))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /login`: the CSRF cookie value and the form's hidden `csrf` value.
    pub async fn login_form(&self, next: &str) -> (String, String) {
        let r = client().get(self.at(&format!("/login?next={}", enc(next)))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let cookie = cookie_from(r.headers(), "comfygate_login_csrf").expect("login csrf cookie");
        let html = r.text().await.unwrap();
        let csrf = hidden_input(&html, "csrf").expect("csrf input");
        (cookie, csrf)
    }

    /// GET with a bearer token; returns (status, JSON or Null).
    pub async fn get_json(&self, path: &str, auth: &Auth<'_>) -> (u16, Value) {
        let r = auth.apply(client().get(self.at(path))).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `whoami` with the given credential.
    pub async fn whoami(&self, auth: &Auth<'_>) -> (u16, Value) {
        self.get_json("/comfygate/api/whoami", auth).await
    }

    /// Peak resident memory of the gateway (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        vm_hwm_kib(self.pid())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A credential to send.
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

impl Auth<'_> {
    pub fn apply(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => rb,
            Auth::Bearer(t) => rb.bearer_auth(t),
            Auth::Cookie(c) => rb.header("cookie", format!("{SESSION_COOKIE}={c}")),
        }
    }
}

/// A client that does not follow redirects and keeps no cookies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The value of cookie `name` among a response's `Set-Cookie` headers (the last one set).
pub fn cookie_from(headers: &HeaderMap, name: &str) -> Option<String> {
    set_cookie_line(headers, name).and_then(|line| {
        let first = line.split(';').next()?;
        let (_, v) = first.split_once('=')?;
        Some(v.trim().to_owned())
    })
}

/// The whole `Set-Cookie` line for `name`.
pub fn set_cookie_line(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .rfind(|line| line.split(';').next().and_then(|c| c.split_once('=')).is_some_and(|(n, _)| n.trim() == name))
        .map(str::to_owned)
}

/// The `value` of `<input ... name="NAME" value="...">` in a page.
pub fn hidden_input(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// A form-urlencoded body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Polls `check` until it returns `Some`, or panics after `deadline` with `what`.
pub async fn poll<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `VmHWM` of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A raw HTTP/1.1 exchange: sends `head` (request line and headers, without the final blank
/// line; `Connection: close` is added) and `body`, and returns the status, head and body.
pub async fn raw_request(addr: SocketAddr, head: &[u8], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = head.to_vec();
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    req.extend_from_slice(body);
    stream.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let body = out.get(split + 4..).unwrap_or_default().to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, body)
}

/// The JSON error code of a response body.
pub fn code_of(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

/// An EmptyImage → SaveImage workflow.
pub fn workflow(prefix: &str, color: u32) -> Value {
    serde_json::json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
    })
}

/// The requests ComfyUI received on behalf of clients (proxied or dispatched, so carrying
/// `comfy-user`), leaving out the gateway's own health checks, capability reads and monitor
/// socket.
pub fn client_requests(sim: &comfyui_sim::Simulator) -> Vec<comfyui_sim::RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("comfy-user")))
        .collect()
}

/// Where the simulator keeps the uploads of the gateway user with id `user_id`.
pub fn user_input_dir(sim: &comfyui_sim::Simulator, user_id: &str) -> PathBuf {
    sim.data_dir().join("input").join("comfygate-users").join(user_id)
}
