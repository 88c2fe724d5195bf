//! Simulator configuration.

use std::path::PathBuf;
use std::time::Duration;

/// How a simulated ComfyUI behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long one job runs (spread over its nodes); `extra_data.sim_duration_ms` overrides it per job.
    pub job_duration: Duration,
    /// Model files the server "has": `(folder, file)`, e.g. `("checkpoints", "sd15.safetensors")`.
    pub models: Vec<(String, String)>,
    /// `devices[0].name` in `/system_stats`.
    pub device_name: String,
    /// Upload size limit (bytes); larger uploads get 413.
    pub max_upload_bytes: u64,
    /// Where `input/`, `output/` and `temp/` live; a fresh temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// How long `/object_info` takes to answer (a real ComfyUI with many custom nodes can take
    /// seconds); zero by default.
    pub object_info_delay: Duration,
    /// A folder of static web files served at `/` (ComfyUI's frontend, e.g. the `static` folder of
    /// the `comfyui-frontend-package` wheel); `None` answers 404 there.
    pub web_root: Option<PathBuf>,
    /// Whether the outputs of the last prompt's nodes are reused, as ComfyUI does
    /// (`execution.py`: a node whose inputs did not change is not run again): an identical prompt
    /// then ends at once, lists every node in `execution_cached` and writes no new file. Off by
    /// default: tests that run one workflow twice expect two runs.
    pub cache_outputs: bool,
    /// How long `POST /prompt` takes to queue a valid prompt: ComfyUI validates it first
    /// (`await execution.validate_prompt(...)`, which runs nodes' `VALIDATE_INPUTS` and can take
    /// long on a loaded server), and the prompt is in neither `/queue` nor `/history` meanwhile.
    /// Zero by default.
    pub prompt_accept_delay: Duration,
    /// How long `POST /prompt` takes to answer after the prompt is queued. ComfyUI's worker
    /// thread takes a prompt the moment it is queued (`PromptQueue.put` notifies it), so on a
    /// loaded server `execution_start`, or a whole short job, reaches the WebSocket before the
    /// HTTP answer, and a server killed in this window has accepted a prompt whose answer never
    /// comes. Zero by default.
    pub prompt_answer_delay: Duration,
    /// How long [`restart`](crate::Simulator::restart) keeps the port closed: ComfyUI loads
    /// its nodes before it listens (`main.py`: `init_extra_nodes`, then `start_multi_address`),
    /// which takes seconds. Zero by default.
    pub startup_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            job_duration: Duration::from_millis(50),
            models: Vec::new(),
            device_name: "cpu".to_string(),
            max_upload_bytes: 1024 * 1024 * 1024,
            data_dir: None,
            object_info_delay: Duration::ZERO,
            web_root: None,
            cache_outputs: false,
            prompt_accept_delay: Duration::ZERO,
            prompt_answer_delay: Duration::ZERO,
            startup_delay: Duration::ZERO,
        }
    }
}

impl SimConfig {
    /// Adds a model file, e.g. `with_model("checkpoints", "sd15.safetensors")`.
    pub fn with_model(mut self, folder: &str, file: &str) -> Self {
        self.models.push((folder.to_string(), file.to_string()));
        self
    }
}
