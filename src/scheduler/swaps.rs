//! What a model swap costs: which models each backend has loaded (the models of the last job
//! it ran or was given), how long loading them takes there (learnt from runs: the first job
//! after a swap minus the usual run time of jobs on the same models, a decaying average; before
//! that, `[scheduler] model_load_times` / `model_load_time`), how long jobs on a set of models
//! usually run, and which backends an operator meant for which models (`[[backends]] models`,
//! `exclusive`).

use std::collections::{BTreeSet, HashMap};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::SchedulerConfig;

/// Weight of a new sample in the decaying averages.
const ALPHA: f64 = 0.3;

/// A decaying average.
#[derive(Debug, Clone, Copy)]
struct Average {
    value: f64,
    samples: u32,
}

impl Average {
    fn add(slot: &mut Option<Average>, sample: f64) {
        *slot = Some(match *slot {
            None => Average { value: sample, samples: 1 },
            Some(a) => Average { value: a.value + ALPHA * (sample - a.value), samples: a.samples.saturating_add(1) },
        });
    }
}

/// How a backend's model pins relate to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pin {
    /// The backend is meant for every model the job uses.
    Meant,
    /// The backend has no pins.
    Open,
    /// The backend is meant for other models (it still may run the job).
    Other,
    /// The backend is exclusive to other models: it must not run the job.
    Barred,
}

/// Compiled `[[backends]] models` globs.
#[derive(Debug, Clone)]
pub struct Pins {
    patterns: Vec<String>,
    set: GlobSet,
    exclusive: bool,
}

impl Pins {
    /// Compiles a backend's `models` patterns (an unusable pattern is an error naming it).
    pub fn new(patterns: &[String], exclusive: bool) -> Result<Self, String> {
        Ok(Self { patterns: patterns.to_vec(), set: compile(patterns)?, exclusive })
    }

    /// How these pins relate to a job using `models`.
    pub fn of(&self, models: &BTreeSet<String>) -> Pin {
        if self.patterns.is_empty() {
            return Pin::Open;
        }
        let all = !models.is_empty() && models.iter().all(|m| matches(&self.set, m));
        match (all, self.exclusive) {
            (true, _) => Pin::Meant,
            (false, false) => Pin::Other,
            (false, true) => Pin::Barred,
        }
    }
}

fn compile(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|e| format!("model pattern `{pattern}`: {e}"))?;
        builder.add(glob);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Whether a model file (`flux/flux1-dev.safetensors`) matches: its whole name or its file name.
fn matches(set: &GlobSet, model: &str) -> bool {
    let file = model.rsplit(['/', '\\']).next().unwrap_or(model);
    set.is_match(model) || set.is_match(file)
}

/// The gateway's knowledge of model swaps.
#[derive(Debug)]
pub struct Swaps {
    default_load_ms: f64,
    default_run_ms: f64,
    load_defaults: Vec<(GlobSet, f64)>,
    /// Learnt load time by (backend, models loaded).
    loads: HashMap<(String, String), Average>,
    /// Learnt run time (without a swap) by models used.
    runs: HashMap<String, Average>,
    /// Compiled pins by backend name, with the patterns they came from.
    pins: HashMap<String, Pins>,
}

/// The key of a set of model files.
fn key(models: &BTreeSet<String>) -> String {
    models.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
}

impl Swaps {
    /// Empty knowledge with `config`'s defaults (patterns were checked when it was loaded;
    /// one that does not compile is left out).
    pub fn new(config: &SchedulerConfig) -> Self {
        let load_defaults = config
            .model_load_times
            .iter()
            .filter_map(|(pattern, time)| {
                Some((compile(std::slice::from_ref(pattern)).ok()?, time.as_secs_f64() * 1000.0))
            })
            .collect();
        Self {
            default_load_ms: config.model_load_time.as_secs_f64() * 1000.0,
            default_run_ms: config.default_run_time.as_secs_f64() * 1000.0,
            load_defaults,
            loads: HashMap::new(),
            runs: HashMap::new(),
            pins: HashMap::new(),
        }
    }

    /// How `backend`'s pins (`patterns`, `exclusive`) relate to a job using `models`.
    pub fn pin(&mut self, backend: &str, patterns: &[String], exclusive: bool, models: &BTreeSet<String>) -> Pin {
        if patterns.is_empty() {
            return Pin::Open;
        }
        let stale = self.pins.get(backend).is_none_or(|p| p.patterns != patterns || p.exclusive != exclusive);
        if stale {
            match Pins::new(patterns, exclusive) {
                Ok(pins) => {
                    self.pins.insert(backend.to_owned(), pins);
                }
                Err(_) => return Pin::Open,
            }
        }
        self.pins.get(backend).map_or(Pin::Open, |p| p.of(models))
    }

    /// What running a job on `models` costs in loading on `backend`, which has `resident`
    /// loaded (ms; zero when nothing is missing).
    pub fn load_ms(&self, backend: &str, resident: &BTreeSet<String>, models: &BTreeSet<String>) -> f64 {
        if models.is_subset(resident) {
            return 0.0;
        }
        let k = key(models);
        if let Some(learnt) = self.loads.get(&(backend.to_owned(), k.clone())) {
            return learnt.value;
        }
        // Learnt on other backends: their mean.
        let elsewhere: Vec<f64> = self.loads.iter().filter(|((_, m), _)| *m == k).map(|(_, a)| a.value).collect();
        if !elsewhere.is_empty() {
            return elsewhere.iter().sum::<f64>() / elsewhere.len() as f64;
        }
        models.difference(resident).map(|m| self.default_load_of(m)).sum()
    }

    fn default_load_of(&self, model: &str) -> f64 {
        self.load_defaults.iter().find(|(set, _)| matches(set, model)).map_or(self.default_load_ms, |(_, ms)| *ms)
    }

    /// How long a job on `models` usually runs, without a swap (ms).
    pub fn run_ms(&self, models: &BTreeSet<String>) -> f64 {
        self.runs.get(&key(models)).map_or(self.default_run_ms, |a| a.value)
    }

    /// Learns from a job on `models` that ran `run_ms` on `backend`, after loading them when
    /// `swapped`. A swap's load time is what the run took beyond the usual run time of jobs on
    /// the same models; before any such run is known it teaches nothing.
    pub fn observe(&mut self, backend: &str, models: &BTreeSet<String>, run_ms: f64, swapped: bool) {
        if models.is_empty() || !run_ms.is_finite() || run_ms < 0.0 {
            return;
        }
        let k = key(models);
        if !swapped {
            let mut slot = self.runs.get(&k).copied();
            Average::add(&mut slot, run_ms);
            if let Some(a) = slot {
                self.runs.insert(k, a);
            }
            return;
        }
        let Some(usual) = self.runs.get(&k).map(|a| a.value) else { return };
        let mut slot = self.loads.get(&(backend.to_owned(), k.clone())).copied();
        Average::add(&mut slot, (run_ms - usual).max(0.0));
        if let Some(a) = slot {
            self.loads.insert((backend.to_owned(), k), a);
        }
    }

    /// What has been learnt, for operators: (backend, models, load ms, samples).
    pub fn learnt_loads(&self) -> Vec<(String, String, f64, u32)> {
        let mut out: Vec<_> =
            self.loads.iter().map(|((b, m), a)| (b.clone(), m.replace('\n', ", "), a.value, a.samples)).collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn swaps() -> Swaps {
        let config = SchedulerConfig {
            model_load_time: Duration::from_secs(30),
            default_run_time: Duration::from_secs(10),
            model_load_times: vec![("flux1-dev*".to_owned(), Duration::from_secs(90))],
            ..SchedulerConfig::default()
        };
        Swaps::new(&config)
    }

    #[test]
    fn nothing_to_load_costs_nothing_and_defaults_come_from_the_patterns() {
        let s = swaps();
        let flux = set(&["flux1-dev-fp8.safetensors"]);
        assert_eq!(s.load_ms("a", &flux, &flux), 0.0);
        assert_eq!(s.load_ms("a", &flux, &set(&[])), 0.0, "a job without models swaps nothing");
        assert_eq!(s.load_ms("a", &set(&[]), &flux), 90_000.0);
        assert_eq!(s.load_ms("a", &set(&[]), &set(&["unet/flux1-dev.safetensors"])), 90_000.0, "file name matched");
        assert_eq!(s.load_ms("a", &flux, &set(&["sd15.safetensors"])), 30_000.0);
        assert_eq!(s.load_ms("a", &set(&["x"]), &set(&["x", "lora.safetensors"])), 30_000.0, "only what is missing");
    }

    #[test]
    fn load_times_are_learnt_from_the_first_run_after_a_swap() {
        let mut s = swaps();
        let sd = set(&["sd15.safetensors"]);
        s.observe("a", &sd, 5_000.0, true);
        assert_eq!(s.load_ms("a", &set(&[]), &sd), 30_000.0, "no usual run time yet: nothing learnt");
        s.observe("a", &sd, 4_000.0, false);
        s.observe("a", &sd, 4_000.0, false);
        assert_eq!(s.run_ms(&sd), 4_000.0);
        s.observe("a", &sd, 24_000.0, true);
        assert_eq!(s.load_ms("a", &set(&[]), &sd), 20_000.0);
        assert_eq!(s.load_ms("b", &set(&[]), &sd), 20_000.0, "another backend borrows what was learnt");
        s.observe("a", &sd, 14_000.0, true);
        assert!((s.load_ms("a", &set(&[]), &sd) - 17_000.0).abs() < 1e-6, "a decaying average");
        s.observe("a", &sd, 1_000.0, true);
        assert!(s.load_ms("a", &set(&[]), &sd) >= 0.0);
        s.observe("a", &sd, f64::NAN, true);
        assert_eq!(s.learnt_loads().len(), 1);
    }

    #[test]
    fn pins_prefer_and_exclusive_pins_bar() {
        let mut s = swaps();
        let flux = set(&["flux1-dev-fp8.safetensors"]);
        let both = set(&["flux1-dev-fp8.safetensors", "sd15.safetensors"]);
        let pins = vec!["flux1-dev*.safetensors".to_owned()];
        assert_eq!(s.pin("a", &pins, false, &flux), Pin::Meant);
        assert_eq!(s.pin("a", &pins, false, &both), Pin::Other);
        assert_eq!(s.pin("a", &pins, true, &both), Pin::Barred, "changed config is recompiled");
        assert_eq!(s.pin("a", &pins, true, &set(&[])), Pin::Barred, "an exclusive backend takes only its models");
        assert_eq!(s.pin("b", &[], true, &flux), Pin::Open);
        assert!(Pins::new(&["[".to_owned()], false).is_err());
        for spelling in ["FLUX1-dev.safetensors", "flux1-dev.ckpt", "xflux1-dev.safetensors"] {
            assert_eq!(s.pin("a", &pins, true, &set(&[spelling])), Pin::Barred, "{spelling}");
        }
        assert_eq!(s.pin("a", &pins, true, &set(&["sub/dir/flux1-dev-q8.safetensors"])), Pin::Meant);
    }
}
