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
    /// How long loading a model file takes when a job's loader node names it and it is not
    /// resident (by file name, e.g. `("flux1-dev.safetensors", 90 s)`); a file not listed loads
    /// instantly. The load happens while the loader node is `executing`, before the job's own
    /// duration, as in ComfyUI (models are loaded on first use).
    pub model_load: Vec<(String, Duration)>,
    /// The GPU's memory (MB): loaded models stay resident while they fit, least recently used
    /// evicted first; `/system_stats` reports it. `None`: a GPU that fits one job's models, so only
    /// the most recent job's models stay resident (and `/system_stats` keeps the fixture's figures).
    pub vram_mb: Option<u64>,
    /// How much of `vram_mb` a model file takes once loaded (MB); a file not listed takes 0 MB
    /// (small files such as LoRAs or VAEs then never evict anything).
    pub model_vram: Vec<(String, u64)>,
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
            model_load: Vec::new(),
            vram_mb: None,
            model_vram: Vec::new(),
        }
    }
}

impl SimConfig {
    /// Adds a model file, e.g. `with_model("checkpoints", "sd15.safetensors")`.
    pub fn with_model(mut self, folder: &str, file: &str) -> Self {
        self.models.push((folder.to_string(), file.to_string()));
        self
    }

    /// Sets how long loading `file` takes (see [`SimConfig::model_load`]).
    pub fn with_load_time(mut self, file: &str, load: Duration) -> Self {
        self.model_load.retain(|(f, _)| f != file);
        self.model_load.push((file.to_string(), load));
        self
    }

    /// Sets the GPU memory in MB (see [`SimConfig::vram_mb`]).
    pub fn with_vram_mb(mut self, mb: u64) -> Self {
        self.vram_mb = Some(mb);
        self
    }

    /// Sets how many MB `file` takes once loaded (see [`SimConfig::model_vram`]).
    pub fn with_model_vram(mut self, file: &str, mb: u64) -> Self {
        self.model_vram.retain(|(f, _)| f != file);
        self.model_vram.push((file.to_string(), mb));
        self
    }

    /// How long loading `file` takes (zero when not configured).
    pub fn load_time(&self, file: &str) -> Duration {
        self.model_load.iter().find(|(f, _)| f == file).map(|(_, d)| *d).unwrap_or(Duration::ZERO)
    }

    /// How many MB `file` takes once loaded (0 when not configured).
    pub fn vram_of(&self, file: &str) -> u64 {
        self.model_vram.iter().find(|(f, _)| f == file).map(|(_, mb)| *mb).unwrap_or(0)
    }
}
