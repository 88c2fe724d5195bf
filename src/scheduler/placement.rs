//! Which waiting job goes to which backend with room. Fair order decides
//! ([`fair`](super::fair): class, then recent GPU time), and model swaps bend it within a
//! bound: when the job first in line would have to load models on every free backend,
//!
//! - it may wait for a busy backend that has its models loaded, when that one is expected to be
//!   free sooner than the load would take;
//! - a later job of the same class that needs no load on a free backend may go first;
//!
//! both only until the job has been held back for `[scheduler] max_extra_wait` in all (the
//! estimated runs of the jobs that went first, and the time it waited for a busy backend): then
//! it takes the next backend that can run it, swap or not. Among backends, the one with the least to
//! load wins, then the one meant for the job's models (`[[backends]] models`), then the one
//! whose loaded models the fewest waiting jobs need, then the least loaded. A backend
//! `exclusive` to its models never gets another job.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Map;

use super::jobs::Active;
use super::swaps::{Pin, Swaps};
use super::{Dispatch, Inner, Scheduler, workflow};
use crate::backends::{Backend, Reach};
use crate::store::JobState;
use crate::time::now_ms;

/// How many waiting jobs, in fair order, a decision looks at.
const CANDIDATES: usize = 64;

/// A backend as one round of decisions sees it.
struct Seat {
    backend: Arc<Backend>,
    /// The models it will have loaded once the jobs it holds have run.
    resident: BTreeSet<String>,
    /// When (ms from now) it is expected to have room again.
    free_in_ms: f64,
    room: bool,
}

impl Scheduler {
    /// Decides the next dispatches under the scheduler's lock (see the module's rules).
    pub(super) fn assign(&self) -> Vec<Dispatch> {
        if self.dispatch_stopped.load(std::sync::atomic::Ordering::SeqCst) || !self.is_leading() {
            return Vec::new();
        }
        let known = self.pool.capabilities_complete().then(|| self.pool.known_capabilities(Reach::Any)).flatten();
        let backends = self.pool.all().to_vec();
        let now = now_ms();
        let max_extra_ms = i64::try_from(self.config.max_extra_wait.as_millis()).unwrap_or(i64::MAX);
        let mut inner = self.inner();
        let inner = &mut *inner;
        if let (Some(known), false) = (&known, inner.unanalysed.is_empty()) {
            for id in std::mem::take(&mut inner.unanalysed) {
                let Some(job) = inner.jobs.get_mut(&*id) else { continue };
                let empty = Map::new();
                let prompt = job.request.as_deref().and_then(|r| r["prompt"].as_object()).unwrap_or(&empty);
                let req = workflow::analyse(prompt, known).unwrap_or_default();
                job.requirements = Some(inner.names.requirements(req));
                job.request = None;
            }
        }
        let mut out = Vec::new();
        // Jobs each owner has on backends, for their `max_running` limit.
        let mut running: HashMap<i64, u64> = HashMap::new();
        for backend in &backends {
            for id in backend.load().inflight.iter() {
                if let Some(job) = inner.job(id) {
                    *running.entry(job.owner).or_default() += 1;
                }
            }
        }
        let mut seats: Vec<Seat> = backends.iter().map(|b| seat(inner, b, now)).collect();
        // Jobs left for a busy backend in this round.
        let mut deferred: HashSet<Arc<str>> = HashSet::new();
        loop {
            if !seats.iter().any(|s| s.room) {
                break;
            }
            let (jobs, limits) = (&inner.jobs, &inner.limits);
            let may_run = |owner: i64| {
                let max = limits.get(&owner).and_then(|l| l.max_running);
                max.is_none_or(|max| running.get(&owner).copied().unwrap_or(0) < max)
            };
            let swaps = &mut inner.swaps;
            let candidates = inner.queue.candidates(now, CANDIDATES, |id| {
                !deferred.contains(id)
                    && jobs.get(id).is_some_and(|j| {
                        j.state == JobState::Queued
                            && may_run(j.owner)
                            && seats.iter().any(|s| s.room && runs_on(swaps, j, &s.backend))
                    })
            });
            let Some((_, head_id, head_class)) = candidates.first().cloned() else { break };
            let Some(head) = jobs.get(&head_id) else { break };
            let head_models = models_of(head);
            // The candidates' models, read once for every seat's demand below.
            let wanted: Vec<BTreeSet<String>> =
                candidates.iter().filter_map(|(_, id, _)| jobs.get(id)).map(models_of).collect();
            let demand = |s: &Seat| wanted.iter().filter(|m| !m.is_empty() && m.is_subset(&s.resident)).count();
            let Some((head_seat, head_cost)) = best_seat(swaps, head, &seats, demand) else { break };
            let held_long = |job: &Active| max_extra_ms == 0 || job.extra_wait_ms(now) >= max_extra_ms as f64;
            let mut choice = (head_id.clone(), head_seat);
            if head_cost > 0.0 && !held_long(head) {
                // A busy backend with its models, free before the load would be done?
                let soon = seats.iter().any(|s| {
                    !s.room
                        && s.backend.in_service()
                        && !head_models.is_empty()
                        && head_models.is_subset(&s.resident)
                        && runs_on(swaps, head, &s.backend)
                        && s.free_in_ms < head_cost
                });
                if soon {
                    deferred.insert(head_id.clone());
                    if let Some(job) = inner.jobs.get_mut(&head_id) {
                        job.waiting_since.get_or_insert(now);
                    }
                    continue;
                }
                // A later job of the same class that loads nothing on a free backend.
                let mut passed: Vec<Arc<str>> = vec![head_id.clone()];
                for (_, id, class) in candidates.iter().skip(1) {
                    let Some(job) = jobs.get(id) else { continue };
                    if *class != head_class {
                        break;
                    }
                    let free = seats.iter().position(|s| {
                        s.room
                            && runs_on(swaps, job, &s.backend)
                            && swaps.load_ms(s.backend.name(), &s.resident, &models_of(job)) == 0.0
                    });
                    if let Some(seat) = free {
                        choice = (id.clone(), seat);
                        break;
                    }
                    if held_long(job) {
                        // Nobody goes past a job held back long enough.
                        break;
                    }
                    passed.push(id.clone());
                }
                if choice.0 != head_id {
                    passed.retain(|id| *id != choice.0);
                    let delay = jobs.get(&choice.0).map_or(0.0, |j| swaps.run_ms(&models_of(j)));
                    pass_over(&mut inner.jobs, &passed, delay);
                }
            }
            let (id, seat_index) = choice;
            let Some(owner) = inner.jobs.get(&id).map(|j| j.owner) else { break };
            inner.queue.take_job(owner, &id, now);
            let Some(job) = inner.jobs.get_mut(&id) else { continue };
            let seat = &mut seats[seat_index];
            let backend = seat.backend.clone();
            let models = models_of(job);
            let run = inner.swaps.run_ms(&models) + inner.swaps.load_ms(backend.name(), &seat.resident, &models);
            if !models.is_empty() {
                seat.resident = models;
            }
            seat.free_in_ms += run;
            backend.load().inflight.push(id.to_string());
            seat.room = backend.has_room();
            job.state = JobState::Dispatched;
            job.backend = Some(backend.name().to_owned());
            job.attempt += 1;
            job.accepted = false;
            job.held_back_ms = 0.0;
            job.waiting_since = None;
            *running.entry(job.owner).or_default() += 1;
            out.push(Dispatch {
                public_id: job.public_id.to_string(),
                number: job.number,
                attempt: job.attempt,
                owner: job.owner,
                token_id: job.token_id,
                username: job.username.clone(),
                secrets: job.secrets.as_deref().cloned(),
                waiter: job.waiter.take(),
                backend,
                id: id.to_string(),
            });
        }
        out
    }
}

/// The model files a job uses (empty when not known).
fn models_of(job: &Active) -> BTreeSet<String> {
    job.requirements.as_ref().map(|r| r.model_files()).unwrap_or_default()
}

/// Counts `delay_ms` (the run of the job that went first) against each job it passed.
fn pass_over(jobs: &mut HashMap<Arc<str>, Active>, ids: &[Arc<str>], delay_ms: f64) {
    for id in ids {
        if let Some(job) = jobs.get_mut(id) {
            job.held_back_ms += delay_ms;
        }
    }
}

impl Active {
    /// How much longer (ms) than fair order alone it has waited, to spare model swaps.
    fn extra_wait_ms(&self, now: i64) -> f64 {
        self.held_back_ms + self.waiting_since.map_or(0.0, |t| (now - t).max(0) as f64)
    }
}

/// How `backend` looks to this round: what it will have loaded and when it has room again.
fn seat(inner: &Inner, backend: &Arc<Backend>, now: i64) -> Seat {
    let room = backend.has_room();
    let load = backend.load();
    let mut resident = load.last_models.clone();
    let mut free_in_ms = 0.0;
    for id in load.inflight.iter() {
        let Some(job) = inner.job(id) else { continue };
        let models = models_of(job);
        let mut cost = inner.swaps.run_ms(&models) + inner.swaps.load_ms(backend.name(), &resident, &models);
        if let Some(started) = job.started_at {
            cost -= (now - started).max(0) as f64;
        }
        free_in_ms += cost.max(0.0);
        if !models.is_empty() {
            resident = models;
        }
    }
    drop(load);
    Seat { backend: backend.clone(), resident, free_in_ms, room }
}

/// Whether `job` may go to `backend`: it can run it (and holds its input files), has not
/// refused it, and is not exclusive to other models.
fn runs_on(swaps: &mut Swaps, job: &Active, backend: &Backend) -> bool {
    job.pinned.as_deref().is_none_or(|p| p == backend.name())
        && !job.refused_by.iter().any(|r| r == backend.name())
        && match (&job.requirements, backend.capabilities()) {
            (Some(req), Some(caps)) => req.satisfied_by(&caps),
            // A backend that has not said what it has gets no job whose needs are known.
            (Some(_), None) => false,
            (None, _) => true,
        }
        && pin(swaps, job, backend) != Pin::Barred
}

fn pin(swaps: &mut Swaps, job: &Active, backend: &Backend) -> Pin {
    swaps.pin(backend.name(), &backend.config.models, backend.config.exclusive, &models_of(job))
}

/// The free seat for `job` with the least to load, then meant for its models, then whose
/// loaded models the fewest waiting jobs need (`demand`), then the least loaded; with the load
/// it would cost (ms).
fn best_seat(swaps: &mut Swaps, job: &Active, seats: &[Seat], demand: impl Fn(&Seat) -> usize) -> Option<(usize, f64)> {
    let models = models_of(job);
    /// Load (ms, rounded), pins, demand for what it has loaded, jobs it holds: lowest wins.
    type Rank = (u64, Pin, usize, usize);
    let mut best: Option<(Rank, usize, f64)> = None;
    for (index, seat) in seats.iter().enumerate() {
        if !seat.room || !runs_on(swaps, job, &seat.backend) {
            continue;
        }
        let cost = swaps.load_ms(seat.backend.name(), &seat.resident, &models);
        let rank =
            (cost.round() as u64, pin(swaps, job, &seat.backend), demand(seat), seat.backend.load().inflight.len());
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, index, cost));
        }
    }
    best.map(|(_, index, cost)| (index, cost))
}
