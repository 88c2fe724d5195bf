//! Per-run server state: queue, history, WebSocket clients, and the things that outlive a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::json::J;

/// ComfyUI keeps at most this many history entries.
pub const MAX_HISTORY: usize = 10_000;

/// One HTTP request the simulator received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// When it arrived (ms since the Unix epoch).
    pub at_ms: u64,
    pub headers: Vec<(String, String)>,
}

/// One run of a prompt, kept across restarts (a restarted server has an empty history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRun {
    pub prompt_id: String,
    /// Which life of the server ran it: 0 until the first restart, then 1, ...
    pub life: u64,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// `None` while running, or when the server died running it; else the history's `status_str`
    /// (`"success"` or `"error"`).
    pub ended: Option<String>,
}

/// The simulator's folders.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub root: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub temp: PathBuf,
}

impl Dirs {
    pub fn by_type(&self, t: &str) -> Option<&PathBuf> {
        match t {
            "input" => Some(&self.input),
            "output" => Some(&self.output),
            "temp" => Some(&self.temp),
            _ => None,
        }
    }
}

/// What survives a restart.
pub struct Shared {
    pub config: SimConfig,
    pub dirs: Dirs,
    pub requests: Mutex<Vec<RecordedRequest>>,
    /// Every prompt the worker started, in order, over all lives of the server.
    pub runs: Mutex<Vec<PromptRun>>,
    /// How many times the server was (re)started, minus one.
    pub life: std::sync::atomic::AtomicU64,
    /// object_info with the configured model lists.
    pub object_info: J,
    pub system_stats: String,
    /// Model files in (simulated) VRAM with their size in MB, least recently used first; emptied
    /// at a restart (a new process starts with an empty GPU).
    pub resident: Mutex<Vec<(String, u64)>>,
    /// How many model loads happened, over all lives of the server.
    pub model_loads: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The resident set, poison-tolerant.
    pub fn resident(&self) -> MutexGuard<'_, Vec<(String, u64)>> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queued prompt.
#[derive(Clone, Debug)]
pub struct QueueItem {
    pub number: J,
    pub sort_key: f64,
    pub seq: u64,
    pub prompt_id: String,
    pub prompt: J,
    pub extra_data: J,
    pub outputs: Vec<String>,
}

impl QueueItem {
    pub fn to_j(&self) -> J {
        J::Arr(vec![
            self.number.clone(),
            J::s(self.prompt_id.as_str()),
            self.prompt.clone(),
            self.extra_data.clone(),
            J::Arr(self.outputs.iter().map(|o| J::s(o.as_str())).collect()),
        ])
    }
    pub fn client_id(&self) -> Option<String> {
        self.extra_data.get("client_id").map(|c| c.py_str())
    }
}

pub struct Running {
    pub item: QueueItem,
    pub interrupt: Arc<Notify>,
    pub last_node: Option<String>,
}

pub struct Client {
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
pub struct Inner {
    pub number: i64,
    pub seq: u64,
    pub pending: Vec<QueueItem>,
    pub running: Option<Running>,
    pub history: IndexMap<String, J>,
    pub clients: HashMap<String, Client>,
    pub next_conn: u64,
    /// The last prompt's node outputs by node id: (cache key, `executed` output or null).
    pub cache: HashMap<String, (String, J)>,
}

impl Inner {
    pub fn queue_remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    pub fn status_message(&self, sid: Option<&str>) -> J {
        let mut data = crate::json::Obj::new();
        data.insert(
            "status".into(),
            J::obj([("exec_info", J::obj([("queue_remaining", J::u(self.queue_remaining() as u64))]))]),
        );
        if let Some(sid) = sid {
            data.insert("sid".into(), J::s(sid));
        }
        message("status", J::Obj(data))
    }

    /// Sends a message to one client (`Some`) or every client (`None`).
    pub fn send(&self, msg: &J, to: Option<&str>) {
        let text = msg.dumps();
        match to {
            Some(sid) => {
                if let Some(c) = self.clients.get(sid) {
                    let _ = c.tx.send(text);
                }
            }
            None => {
                for c in self.clients.values() {
                    let _ = c.tx.send(text.clone());
                }
            }
        }
    }

    pub fn broadcast_status(&self) {
        let msg = self.status_message(None);
        self.send(&msg, None);
    }

    /// Pending items in execution order.
    pub fn sorted_pending(&self) -> Vec<&QueueItem> {
        let mut v: Vec<&QueueItem> = self.pending.iter().collect();
        v.sort_by(|a, b| a.sort_key.total_cmp(&b.sort_key).then(a.seq.cmp(&b.seq)));
        v
    }

    pub fn take_next(&mut self) -> Option<QueueItem> {
        let idx = self
            .pending
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.sort_key.total_cmp(&b.sort_key).then(a.seq.cmp(&b.seq)))
            .map(|(i, _)| i)?;
        Some(self.pending.remove(idx))
    }
}

/// `{"type": t, "data": data}`.
pub fn message(t: &str, data: J) -> J {
    J::obj([("type", J::s(t)), ("data", data)])
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One run of the server (a restart makes a new one).
pub struct AppState {
    pub shared: Arc<Shared>,
    inner: Mutex<Inner>,
    pub work: Notify,
    pub cancel: CancellationToken,
}

impl AppState {
    pub fn new(shared: Arc<Shared>, cancel: CancellationToken) -> AppState {
        AppState { shared, inner: Mutex::new(Inner::default()), work: Notify::new(), cancel }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    pub fn dirs(&self) -> &Dirs {
        &self.shared.dirs
    }

    /// Records that the worker started `prompt_id`; returns the record's index.
    pub fn run_started(&self, prompt_id: &str) -> usize {
        let life = self.shared.life.load(std::sync::atomic::Ordering::Acquire);
        let mut runs = self.shared.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.push(PromptRun { prompt_id: prompt_id.to_string(), life, started_ms: now_ms(), ended: None });
        runs.len() - 1
    }

    /// Records how the run at `index` ended (its history `status_str`).
    pub fn run_ended(&self, index: usize, status_str: &str) {
        let mut runs = self.shared.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = runs.get_mut(index) {
            run.ended = Some(status_str.to_string());
        }
    }
}
