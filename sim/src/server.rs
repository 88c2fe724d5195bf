//! The listener, per-connection tasks, and the public `Simulator` handle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::state::{AppState, Dirs, PromptRun, RecordedRequest, Shared};
use crate::{exec, http, images, objinfo};

struct Run {
    cancel: CancellationToken,
    accept: JoinHandle<()>,
}

/// A running (or stopped) simulated ComfyUI server.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    run: Option<Run>,
    _tmp: Option<tempfile::TempDir>,
}

fn make_dirs(root: PathBuf) -> std::io::Result<Dirs> {
    let dirs = Dirs { input: root.join("input"), output: root.join("output"), temp: root.join("temp"), root };
    for d in [&dirs.input, &dirs.output, &dirs.temp] {
        std::fs::create_dir_all(d)?;
    }
    // A stock ComfyUI ships input/example.png (it appears in LoadImage's list in the fixture).
    let example = dirs.input.join("example.png");
    if !example.exists() {
        std::fs::write(example, images::small_png_bytes())?;
    }
    Ok(dirs)
}

fn launch(shared: &Arc<Shared>, listener: TcpListener) -> Run {
    let cancel = CancellationToken::new();
    let state = Arc::new(AppState::new(shared.clone(), cancel.clone()));
    tokio::spawn(exec::worker(state.clone()));
    let app = http::router(state);
    let token = cancel.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (stream, _peer) = tokio::select! {
                _ = token.cancelled() => break,
                res = listener.accept() => match res {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let token = token.clone();
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                // aiohttp writes `Content-Type`, not `content-type`; some clients look headers up by case.
                builder.http1().title_case_headers(true);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    });
    Run { cancel, accept }
}

impl Simulator {
    /// Starts on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        Simulator::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        let (root, tmp) = match &config.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("comfyui-sim-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let dirs = make_dirs(root)?;
        let shared = Arc::new(Shared {
            object_info: objinfo::object_info_for(&config),
            system_stats: objinfo::system_stats(&config).dumps(),
            config,
            dirs,
            requests: Mutex::new(Vec::new()),
            runs: Mutex::new(Vec::new()),
            life: std::sync::atomic::AtomicU64::new(0),
            resident: Mutex::new(Vec::new()),
            model_loads: std::sync::atomic::AtomicU64::new(0),
        });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let run = launch(&shared, listener);
        Ok(Simulator { shared, addr, run: Some(run), _tmp: tmp })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where `input/`, `output/` and `temp/` are.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.shared.dirs.root
    }

    /// Stops listening and drops every open connection (WebSockets included, without a close
    /// frame), the answers not yet written and the running job: what a SIGKILLed ComfyUI does.
    pub async fn stop(&mut self) {
        if let Some(run) = self.run.take() {
            run.cancel.cancel();
            let _ = run.accept.await;
        }
    }

    /// Listens again on the same port with fresh in-memory state (queue, history); files stay.
    /// Like ComfyUI, the port stays closed while the server "starts" (`SimConfig::startup_delay`).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        tokio::time::sleep(self.shared.config.startup_delay).await;
        self.shared.life.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.shared.resident().clear();
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.run = Some(launch(&self.shared, listener));
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
    }

    /// Every HTTP request received so far (WebSocket upgrades included), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every prompt the worker started, over all lives of the server (history is lost at a
    /// restart; this is not), with how each ended.
    pub fn runs(&self) -> Vec<PromptRun> {
        self.shared.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether it is listening (not stopped).
    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    /// How many model loads happened (a loader node naming a file that was not resident), over
    /// all lives of the server; also at `GET /sim/stats`.
    pub fn model_loads(&self) -> u64 {
        self.shared.model_loads.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The model files resident in (simulated) VRAM, least recently used first.
    pub fn resident_models(&self) -> Vec<String> {
        self.shared.resident().iter().map(|(f, _)| f.clone()).collect()
    }

    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
    }
}
