//! What an autoscaler needs to know: the waiting jobs by the model files they need, and how
//! many backends the work held now needs.
//!
//! The work is the estimated run time (the scheduler's own estimates, [`swaps`](super::swaps):
//! learnt per set of model files, `[scheduler] default_run_time` before) of every waiting job,
//! plus what is left of every job on a backend (its estimate less the time it has run). Backends
//! run one job at a time, so draining that work within `scale_target` takes
//!
//! ```text
//! desired = max(busy backends, ceil(work ÷ scale_target))      (0 when nothing is held)
//! ```
//!
//! Never fewer than the backends busy now (scaling down must not take away a worker that is
//! running a job), at least 1 while any job waits, and 0 when the gateway holds nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Scheduler;
use crate::store::JobState;
use crate::time::now_ms;

/// The demand on the backends, as the scheduler sees it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demand {
    /// Waiting jobs by the model files they need (sorted, joined with `,`; `""` for none or not
    /// known yet), sorted by that key.
    pub waiting: Vec<(String, usize)>,
    /// The estimated work held (ms): waiting runs and what is left of the runs on backends.
    pub work_ms: f64,
    /// Backends that hold a job now.
    pub busy_backends: usize,
    /// Backends needed to drain the work within the scale target (see the module's formula).
    pub desired_backends: usize,
}

impl Scheduler {
    /// The demand now, for a wait of `scale_target` (see the module's formula).
    pub fn demand(&self, scale_target: Duration) -> Demand {
        let now = now_ms();
        let busy_backends = self.pool.all().iter().filter(|b| !b.load().inflight.is_empty()).count();
        let inner = self.inner();
        let mut waiting: BTreeMap<String, usize> = BTreeMap::new();
        let mut work_ms = 0.0;
        let mut held = 0;
        for job in inner.jobs.values() {
            let models = job.requirements.as_ref().map(|r| r.model_files()).unwrap_or_default();
            let run_ms = inner.swaps.run_ms(&models);
            held += 1;
            if job.state == JobState::Queued {
                let key: Vec<&str> = models.iter().map(String::as_str).collect();
                *waiting.entry(key.join(",")).or_default() += 1;
                work_ms += run_ms;
            } else {
                let ran = job.started_at.map_or(0, |t| (now - t).max(0)) as f64;
                work_ms += (run_ms - ran).max(0.0);
            }
        }
        drop(inner);
        Demand {
            waiting: waiting.into_iter().collect(),
            work_ms,
            busy_backends,
            desired_backends: desired(held, work_ms, busy_backends, scale_target),
        }
    }
}

/// The module's formula: `held` jobs of `work_ms` in all, `busy` backends holding some.
fn desired(held: usize, work_ms: f64, busy: usize, scale_target: Duration) -> usize {
    if held == 0 {
        return 0;
    }
    let target_ms = scale_target.as_secs_f64() * 1000.0;
    let needed = if target_ms > 0.0 { (work_ms / target_ms).ceil() } else { 1.0 };
    // `as` saturates: an absurd estimate cannot wrap.
    (needed as usize).max(busy).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_divided_by_the_target_at_least_the_busy_backends_and_nothing_when_idle() {
        let minute = Duration::from_secs(60);
        let cases = [
            // (held jobs, work ms, busy backends) → desired
            ((0, 0.0, 0), 0),
            ((0, 0.0, 2), 0),
            ((1, 15_000.0, 1), 1),
            ((10, 150_000.0, 1), 3),
            ((10, 180_000.0, 1), 3),
            ((10, 180_001.0, 1), 4),
            ((3, 30_000.0, 3), 3),
            ((2, 0.0, 0), 1),
        ];
        for ((held, work, busy), expected) in cases {
            assert_eq!(desired(held, work, busy, minute), expected, "{held} jobs, {work} ms, {busy} busy");
        }
        assert_eq!(desired(4, 40_000.0, 0, Duration::from_secs(10)), 4, "a shorter target wants more");
    }
}
