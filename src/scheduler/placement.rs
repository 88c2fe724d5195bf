//! Which waiting job goes to which backend with room. Fair order decides ([`fair`](super::fair):
//! class, then recent GPU time), and a plan of which models the backends hold bends it within a
//! bound, so that the farm loads models as rarely as the waiting work allows:
//!
//! - a backend with room keeps its loaded models while jobs on them wait: it takes the first of
//!   those in fair order;
//! - it swaps to other models when that evens out the work: each set of models waiting has a
//!   *drain time*, its waiting work (estimated run times) divided over the backends that hold
//!   it. A backend leaves its models only when others hold them too and the move shortens the
//!   longer of the two drain times by more than the load costs; a backend whose models nobody
//!   waits for loads the models whose waiting work exceeds the load times the backends holding
//!   them already, models nobody holds first, then the longest drain;
//! - of the backends' proposals the one whose job comes first in fair order goes first.
//!
//! The first job in fair order that a backend with room passes over starts counting its extra
//! wait; once that reaches `[scheduler] max_extra_wait`, the jobs up to it in fair order (itself
//! and any that came ahead of it since) each take the next backend that can run them, swap or
//! not (the one with the least to load, then meant for their models, then whose loaded models
//! the fewest waiting jobs need, then the least loaded). A backend `exclusive` to its models
//! never gets another job.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Map;

use super::jobs::Active;
use super::swaps::{Pin, Swaps};
use super::{Dispatch, Inner, Scheduler, workflow};
use crate::backends::{Backend, Reach};
use crate::store::JobState;
use crate::time::now_ms;

/// How many waiting jobs, in fair order, a decision looks at first.
const FIRST: usize = 64;
/// How many it looks at when some of those use model files: the work the plan sees.
const SCAN: usize = 512;

/// A backend as one round of decisions sees it.
struct Seat {
    backend: Arc<Backend>,
    /// The models it will have loaded once the jobs it holds have run.
    resident: BTreeSet<String>,
    /// When (ms from now) it is expected to have room again.
    free_in_ms: f64,
    room: bool,
}

/// A waiting job as one decision sees it.
struct Candidate {
    id: Arc<str>,
    models: BTreeSet<String>,
    /// Its estimated run (ms).
    run_ms: f64,
}

/// The waiting work on one set of models.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    /// Estimated runs of the jobs waiting on it (ms).
    work_ms: f64,
    /// Backends in service that have it loaded (or will, after the jobs they hold).
    holders: usize,
}

/// How long `work_ms` takes over `holders` backends (infinite when nobody holds it).
fn drain(work_ms: f64, holders: usize) -> f64 {
    if work_ms <= 0.0 {
        0.0
    } else if holders == 0 {
        f64::INFINITY
    } else {
        work_ms / holders as f64
    }
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
        // Jobs held back long enough that wait, this round, for a busy backend with their models.
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
            let (queue, swaps) = (&inner.queue, &mut inner.swaps);
            let mut scan = |limit: usize| -> Vec<Candidate> {
                queue
                    .candidates(now, limit, |id| {
                        jobs.get(id).is_some_and(|j| {
                            j.state == JobState::Queued
                                && may_run(j.owner)
                                && seats.iter().any(|s| s.room && runs_on(swaps, j, &s.backend))
                        })
                    })
                    .into_iter()
                    .filter_map(|(_, id, _)| {
                        let models = models_of(jobs.get(&id)?);
                        Some(Candidate { run_ms: swaps.run_ms(&models), models, id })
                    })
                    .collect()
            };
            // Jobs that use no model files need no plan: the first few in fair order will do.
            let mut order = scan(FIRST);
            if order.len() == FIRST && order.iter().any(|c| !c.models.is_empty()) {
                order = scan(SCAN);
            }
            let Some(head_id) = order.first().map(|c| c.id.clone()) else { break };
            let mut groups: HashMap<&BTreeSet<String>, Group> = HashMap::new();
            for c in order.iter().filter(|c| !c.models.is_empty()) {
                groups.entry(&c.models).or_default().work_ms += c.run_ms;
            }
            for s in seats.iter().filter(|s| s.backend.in_service()) {
                for (models, group) in groups.iter_mut() {
                    if models.is_subset(&s.resident) {
                        group.holders += 1;
                    }
                }
            }
            let held_long = |job: &Active| max_extra_ms == 0 || job.extra_wait_ms(now) >= max_extra_ms as f64;
            // Once a job has been held back to the bound, fair order goes as it is up to that job:
            // it overtakes nobody ahead of it (a job of a higher class that arrived since, say).
            let forced = order
                .iter()
                .rposition(|c| jobs.get(&c.id).is_some_and(held_long))
                .and_then(|last| order[..=last].iter().position(|c| !deferred.contains(&c.id)));
            let choice = match forced {
                Some(index) => {
                    let demand = |s: &Seat| {
                        order.iter().filter(|c| !c.models.is_empty() && c.models.is_subset(&s.resident)).count()
                    };
                    let c = &order[index];
                    let job = jobs.get(&c.id);
                    let seat = job.and_then(|job| best_seat(swaps, job, &seats, demand));
                    // A busy backend with its models, free before the load would be done, serves
                    // it sooner and loads nothing: it waits for that one (not in strict fair order).
                    let mut sooner = |cost: f64| {
                        seats.iter().any(|s| {
                            !s.room
                                && s.backend.in_service()
                                && !c.models.is_empty()
                                && c.models.is_subset(&s.resident)
                                && s.free_in_ms < cost
                                && job.is_some_and(|job| runs_on(swaps, job, &s.backend))
                        })
                    };
                    match seat {
                        Some((_, cost)) if cost > 0.0 && max_extra_ms > 0 && sooner(cost) => {
                            deferred.insert(c.id.clone());
                            continue;
                        }
                        seat => seat.map(|(seat, _)| (index, seat)),
                    }
                }
                None => {
                    // Each backend's proposal; the first in fair order wins, then one that loads
                    // nothing, then the backend meant for the job, then the least loaded.
                    let mut best: Option<((usize, bool, Pin, usize), usize)> = None;
                    for (seat_index, seat) in seats.iter().enumerate().filter(|(_, s)| s.room) {
                        let Some((index, swap)) = propose(swaps, jobs, &order, &groups, seat) else { continue };
                        let Some(job) = jobs.get(&order[index].id) else { continue };
                        let rank = (index, swap, pin(swaps, job, &seat.backend), seat.backend.load().inflight.len());
                        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                            best = Some((rank, seat_index));
                        }
                    }
                    best.map(|((index, ..), seat)| (index, seat))
                }
            };
            let chosen = choice.map(|(index, seat)| (order[index].id.clone(), seat));
            drop(groups);
            drop(order);
            if chosen.as_ref().is_none_or(|(id, _)| *id != head_id) {
                // The first job in fair order was passed over: its extra wait counts from now.
                if let Some(job) = inner.jobs.get_mut(&head_id) {
                    job.waiting_since.get_or_insert(now);
                }
            }
            let Some((id, seat_index)) = chosen else { break };
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

/// What a backend with room has to do without loading anything.
#[derive(Debug, Clone, Copy)]
enum Keeps {
    /// No waiting job it could run runs on what it has loaded.
    Nothing,
    /// Jobs wait on its loaded models: the work on them.
    Work(Group),
    /// Jobs that use no model files wait.
    Anything,
}

/// Whether a backend that `keeps` what it has should load models for `group` at the cost of
/// `load_ms`: with nothing of its own to do, when the load shortens the group's drain; leaving
/// work of its own, only when others hold those models too and the move shortens the longer of
/// the two drains by more than the load.
fn worth_swapping(keeps: Keeps, group: Group, load_ms: f64) -> bool {
    let joined = drain(group.work_ms + load_ms, group.holders + 1);
    match keeps {
        Keeps::Nothing => joined < drain(group.work_ms, group.holders),
        Keeps::Work(kept) if kept.holders >= 2 => {
            let before = drain(kept.work_ms, kept.holders).max(drain(group.work_ms, group.holders));
            let after = drain(kept.work_ms, kept.holders - 1).max(joined);
            after + load_ms < before
        }
        Keeps::Work(_) | Keeps::Anything => false,
    }
}

/// What `seat` would run next (an index into `order`), and whether it swaps models for it: the
/// first job in fair order on the models it has loaded, unless swapping evens out the work (the
/// module's rules).
fn propose(
    swaps: &mut Swaps,
    jobs: &HashMap<Arc<str>, Active>,
    order: &[Candidate],
    groups: &HashMap<&BTreeSet<String>, Group>,
    seat: &Seat,
) -> Option<(usize, bool)> {
    // The first job it can run without a load, and the first of each set of models it would
    // have to load.
    let mut stay = None;
    let mut firsts: Vec<usize> = Vec::new();
    let mut seen: HashSet<&BTreeSet<String>> = HashSet::new();
    for (index, c) in order.iter().enumerate() {
        let loads = !c.models.is_subset(&seat.resident);
        if (!loads && stay.is_some()) || (loads && seen.contains(&c.models)) {
            continue;
        }
        if !jobs.get(&c.id).is_some_and(|job| runs_on(swaps, job, &seat.backend)) {
            continue;
        }
        if loads {
            seen.insert(&c.models);
            firsts.push(index);
        } else {
            stay = Some(index);
        }
    }
    let keeps = match stay {
        None => Keeps::Nothing,
        Some(i) => groups.get(&order[i].models).map_or(Keeps::Anything, |kept| Keeps::Work(*kept)),
    };
    // Best swap: the backend's pins first, then models nobody holds, then the longest drain.
    let mut best: Option<((Pin, bool, f64), usize)> = None;
    for index in firsts {
        let c = &order[index];
        let (Some(group), Some(job)) = (groups.get(&c.models), jobs.get(&c.id)) else { continue };
        let load = swaps.load_ms(seat.backend.name(), &seat.resident, &c.models);
        let only_here = job.pinned.as_deref() == Some(seat.backend.name());
        if !(worth_swapping(keeps, *group, load) || (only_here && stay.is_none())) {
            continue;
        }
        let rank = (pin(swaps, job, &seat.backend), group.holders > 0, drain(group.work_ms, group.holders));
        let better = best
            .as_ref()
            .is_none_or(|(b, _)| (rank.0, rank.1).cmp(&(b.0, b.1)).then(b.2.total_cmp(&rank.2)) == Ordering::Less);
        if better {
            best = Some((rank, index));
        }
    }
    match best {
        Some((_, index)) => Some((index, true)),
        None => stay.map(|index| (index, false)),
    }
}

/// The model files a job uses (empty when not known).
fn models_of(job: &Active) -> BTreeSet<String> {
    job.requirements.as_ref().map(|r| r.model_files()).unwrap_or_default()
}

impl Active {
    /// How much longer (ms) than fair order alone it has waited, to spare model swaps: since a
    /// backend with room first passed it over while it was first in line.
    fn extra_wait_ms(&self, now: i64) -> f64 {
        self.waiting_since.map_or(0.0, |t| (now - t).max(0) as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn g(work_ms: f64, holders: usize) -> Group {
        Group { work_ms, holders }
    }

    #[test]
    fn drain_is_work_over_holders_and_endless_when_nobody_holds_waiting_work() {
        assert_eq!(drain(0.0, 0), 0.0);
        assert_eq!(drain(-1.0, 3), 0.0);
        assert_eq!(drain(10.0, 0), f64::INFINITY);
        assert_eq!(drain(10.0, 4), 2.5);
    }

    #[test]
    fn a_swap_is_worth_it_only_where_it_evens_out_the_work() {
        use Keeps::{Anything, Nothing, Work};
        // (what the backend keeps, the group it would load, load ms, worth it?)
        let table = [
            // Idle: models nobody holds are always worth loading.
            (Nothing, g(1.0, 0), 90_000.0, true),
            // Idle: a second holder only when the waiting work exceeds load x holders.
            (Nothing, g(60_000.0, 1), 30_000.0, true),
            (Nothing, g(30_000.0, 1), 30_000.0, false),
            (Nothing, g(20_000.0, 1), 30_000.0, false),
            (Nothing, g(100_000.0, 3), 30_000.0, true),
            (Nothing, g(90_000.0, 3), 30_000.0, false),
            (Nothing, g(0.0, 0), 1.0, false),
            // The only backend holding its models never leaves work of its own.
            (Work(g(1.0, 1)), g(1e9, 0), 1.0, false),
            (Work(g(1e9, 1)), g(1e9, 1), 0.0, false),
            // Held elsewhere too: move to models nobody holds...
            (Work(g(50_000.0, 3)), g(10_000.0, 0), 30_000.0, true),
            // ...even from models with much more work (nobody else would take it before the bound).
            (Work(g(600_000.0, 2)), g(10_000.0, 0), 30_000.0, true),
            // Rebalancing: 3 holders with 30 s of work against 1 holder with 200 s.
            (Work(g(30_000.0, 3)), g(200_000.0, 1), 30_000.0, true),
            // Not when leaving makes its own models the longer drain (100 s -> 200 s)...
            (Work(g(200_000.0, 2)), g(240_000.0, 3), 30_000.0, false),
            // ...nor for a gain smaller than the load (50 s -> 43.3 s, load 30 s).
            (Work(g(60_000.0, 3)), g(100_000.0, 2), 30_000.0, false),
            // Jobs without model files keep any backend busy.
            (Anything, g(1e9, 0), 1.0, false),
        ];
        for (keeps, group, load, expected) in table {
            assert_eq!(worth_swapping(keeps, group, load), expected, "{keeps:?} -> {group:?}, load {load}");
        }
    }
}
