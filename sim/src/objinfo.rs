//! The captured `/object_info` and `/system_stats`, adapted to the simulator's configuration.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::config::SimConfig;
use crate::json::{self, J, Obj};

const OBJECT_INFO: &str = include_str!("../fixtures/object_info.json");
const SYSTEM_STATS: &str = include_str!("../fixtures/system_stats.json");

/// Model folders a stock ComfyUI 0.3.64 knows (`folder_paths.folder_names_and_paths`), in its order.
pub const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

/// Which loader inputs list the files of which folder.
pub const LOADER_INPUTS: &[(&str, &str, &str)] = &[
    ("checkpoints", "CheckpointLoaderSimple", "ckpt_name"),
    ("checkpoints", "CheckpointLoader", "ckpt_name"),
    ("checkpoints", "unCLIPCheckpointLoader", "ckpt_name"),
    ("checkpoints", "ImageOnlyCheckpointLoader", "ckpt_name"),
    ("checkpoints", "CreateHookModelAsLora", "ckpt_name"),
    ("checkpoints", "CreateHookModelAsLoraModelOnly", "ckpt_name"),
    ("loras", "LoraLoader", "lora_name"),
    ("loras", "LoraLoaderModelOnly", "lora_name"),
    ("loras", "CreateHookLora", "lora_name"),
    ("loras", "CreateHookLoraModelOnly", "lora_name"),
    ("vae", "VAELoader", "vae_name"),
    ("diffusion_models", "UNETLoader", "unet_name"),
    ("text_encoders", "CLIPLoader", "clip_name"),
    ("text_encoders", "DualCLIPLoader", "clip_name1"),
    ("text_encoders", "DualCLIPLoader", "clip_name2"),
    ("text_encoders", "TripleCLIPLoader", "clip_name1"),
    ("text_encoders", "TripleCLIPLoader", "clip_name2"),
    ("text_encoders", "TripleCLIPLoader", "clip_name3"),
    ("text_encoders", "QuadrupleCLIPLoader", "clip_name1"),
    ("text_encoders", "QuadrupleCLIPLoader", "clip_name2"),
    ("text_encoders", "QuadrupleCLIPLoader", "clip_name3"),
    ("text_encoders", "QuadrupleCLIPLoader", "clip_name4"),
    ("controlnet", "ControlNetLoader", "control_net_name"),
    ("controlnet", "DiffControlNetLoader", "control_net_name"),
    ("style_models", "StyleModelLoader", "style_model_name"),
    ("clip_vision", "CLIPVisionLoader", "clip_name"),
    ("gligen", "GLIGENLoader", "gligen_name"),
    ("hypernetworks", "HypernetworkLoader", "hypernetwork_name"),
    ("upscale_models", "UpscaleModelLoader", "model_name"),
    ("photomaker", "PhotoMakerLoader", "photomaker_model_name"),
    ("model_patches", "ModelPatchLoader", "name"),
];

/// Legacy folder names ComfyUI maps onto the current ones.
pub fn canonical_folder(folder: &str) -> &str {
    match folder {
        "clip" => "text_encoders",
        "unet" => "diffusion_models",
        other => other,
    }
}

fn base_object_info() -> &'static J {
    static BASE: OnceLock<J> = OnceLock::new();
    BASE.get_or_init(|| json::parse(OBJECT_INFO.as_bytes()).unwrap_or(J::Obj(Obj::new())))
}

/// Model files by (canonical) folder, sorted like `folder_paths.get_filename_list`.
pub fn models_by_folder(config: &SimConfig) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (folder, file) in &config.models {
        let list = out.entry(canonical_folder(folder).to_string()).or_default();
        if !list.contains(file) {
            list.push(file.clone());
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

/// The object_info for this configuration (model lists filled in).
pub fn object_info_for(config: &SimConfig) -> J {
    let mut info = base_object_info().clone();
    let models = models_by_folder(config);
    for (folder, class, input) in LOADER_INPUTS {
        let Some(files) = models.get(*folder) else {
            continue;
        };
        let files: Vec<J> = files.iter().map(|f| J::s(f.as_str())).collect();
        let Some(spec) = info
            .get_mut(class)
            .and_then(|c| c.get_mut("input"))
            .and_then(|i| i.get_mut("required"))
            .and_then(|r| r.get_mut(input))
        else {
            continue;
        };
        set_combo_options(spec, files, *folder == "vae");
    }
    info
}

/// Replaces the options of a combo spec (`[[...], {..}]` or `["COMBO", {"options": [...]}]`).
/// With `prepend`, the existing options stay after the new ones (VAELoader's `pixel_space`).
pub fn set_combo_options(spec: &mut J, files: Vec<J>, prepend: bool) {
    let J::Arr(parts) = spec else { return };
    match parts.first_mut() {
        Some(J::Arr(list)) => {
            let mut new = files;
            if prepend {
                new.append(list);
            }
            *list = new;
        }
        Some(J::Str(t)) if t == "COMBO" => {
            if let Some(J::Obj(extra)) = parts.get_mut(1) {
                extra.insert("options".to_string(), J::Arr(files));
            }
        }
        _ => {}
    }
}

/// `/system_stats` with the configured device name.
pub fn system_stats(config: &SimConfig) -> J {
    let mut stats = json::parse(SYSTEM_STATS.as_bytes()).unwrap_or(J::Obj(Obj::new()));
    if let Some(J::Arr(devices)) = stats.get_mut("devices") {
        for d in devices.iter_mut() {
            if let J::Obj(d) = d {
                d.insert("name".to_string(), J::s(config.device_name.as_str()));
            }
        }
    }
    stats
}

/// The model files a node of `class` loads: the values of its loader inputs (see `LOADER_INPUTS`).
pub fn loaded_files(class: &str, inputs: Option<&Obj>) -> Vec<String> {
    let Some(inputs) = inputs else { return Vec::new() };
    let mut files = Vec::new();
    for (_, c, input) in LOADER_INPUTS {
        if *c == class
            && let Some(file) = inputs.get(*input).and_then(J::as_str)
            && !files.iter().any(|f| f == file)
        {
            files.push(file.to_string());
        }
    }
    files
}

/// `/system_stats` with `devices[*].vram_total` / `vram_free` (bytes, as ComfyUI) set from
/// `vram_mb` and the resident models' sizes; unchanged without `vram_mb`.
pub fn system_stats_now(config: &SimConfig, base: &str, resident_mb: u64) -> String {
    let Some(total_mb) = config.vram_mb else { return base.to_string() };
    let mut stats = json::parse(base.as_bytes()).unwrap_or(J::Obj(Obj::new()));
    let total = total_mb.saturating_mul(1024 * 1024);
    let free = total_mb.saturating_sub(resident_mb).saturating_mul(1024 * 1024);
    if let Some(J::Arr(devices)) = stats.get_mut("devices") {
        for d in devices.iter_mut() {
            if let J::Obj(d) = d {
                for (k, v) in
                    [("vram_total", total), ("vram_free", free), ("torch_vram_total", total), ("torch_vram_free", free)]
                {
                    d.insert(k.to_string(), J::u(v));
                }
            }
        }
    }
    stats.dumps()
}
