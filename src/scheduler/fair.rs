//! Fair share between users. Jobs wait in priority classes (every waiting `high` job is
//! offered before any `normal` one, and those before `low`); within a class each owner's jobs
//! go in order (FIFO) and owners are served by the GPU time they used recently: the time of
//! their jobs, decaying with a half-life (one hour by default), divided by their weight. An
//! owner served counts as having used one more job's worth at once (corrected when the job's
//! real run time is known), so equals take turns and a burst never monopolises the backends.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::priority::Priority;

/// One owner's recent GPU time.
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    /// GPU ms, decayed to `at`.
    ms: f64,
    /// When (unix ms) `ms` was last decayed.
    at: i64,
    /// When they were last served (a counter): least recently served first among equals.
    served: u64,
}

/// Queued prompt ids by class and owner, and what each owner used recently.
#[derive(Debug)]
pub struct FairQueue {
    /// Lines by class index ([`Priority::index`]), then owner.
    classes: [HashMap<i64, VecDeque<Arc<str>>>; 3],
    used: HashMap<i64, Used>,
    weights: HashMap<i64, f64>,
    half_life_ms: f64,
    /// What serving one job counts for before its run time is known (ms).
    step_ms: f64,
    served: u64,
    len: usize,
}

impl Default for FairQueue {
    fn default() -> Self {
        Self::new(Duration::from_secs(3600), Duration::from_secs(15))
    }
}

/// An owner's place in the merge of the owners' lines.
struct Turn {
    key: f64,
    served: u64,
    owner: i64,
    index: usize,
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Turn {}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Turn {
    /// Reversed: the heap pops the least used, then least recently served, then lowest id.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.total_cmp(&self.key).then(other.served.cmp(&self.served)).then(other.owner.cmp(&self.owner))
    }
}

impl FairQueue {
    /// An empty queue remembering GPU time with `half_life`; serving a job counts `step` until
    /// its run time is known.
    pub fn new(half_life: Duration, step: Duration) -> Self {
        Self {
            classes: Default::default(),
            used: HashMap::new(),
            weights: HashMap::new(),
            half_life_ms: half_life.as_secs_f64() * 1000.0,
            step_ms: (step.as_secs_f64() * 1000.0).max(1.0),
            served: 0,
            len: 0,
        }
    }

    /// Adds a job at the end of its owner's line in its class.
    pub fn push_back(&mut self, owner: i64, prompt_id: Arc<str>, class: Priority) {
        self.classes[class.index()].entry(owner).or_default().push_back(prompt_id);
        self.len += 1;
    }

    /// Puts a job back at the front of its owner's line (it was dispatched and came back).
    pub fn push_front(&mut self, owner: i64, prompt_id: Arc<str>, class: Priority) {
        self.classes[class.index()].entry(owner).or_default().push_front(prompt_id);
        self.len += 1;
    }

    /// Removes one of `owner`'s queued jobs (costs in proportion to that owner's lines only);
    /// true if it was queued.
    pub fn remove(&mut self, owner: i64, prompt_id: &str) -> bool {
        for class in &mut self.classes {
            let Some(line) = class.get_mut(&owner) else { continue };
            let Some(index) = line.iter().position(|id| &**id == prompt_id) else { continue };
            line.remove(index);
            if line.is_empty() {
                class.remove(&owner);
            }
            self.len -= 1;
            return true;
        }
        false
    }

    /// Sets an owner's weight (their share relative to weight 1; at most 1000, at least 0.001).
    pub fn set_weight(&mut self, owner: i64, weight: f64) {
        let weight = if weight.is_finite() { weight.clamp(0.001, 1000.0) } else { 1.0 };
        if weight == 1.0 {
            self.weights.remove(&owner);
        } else {
            self.weights.insert(owner, weight);
        }
    }

    /// Counts `ms` of GPU time (negative: a correction) for `owner` at `now` (unix ms).
    pub fn charge(&mut self, owner: i64, ms: f64, now: i64) {
        let half_life = self.half_life_ms;
        let used = self.used.entry(owner).or_insert(Used { at: now, ..Used::default() });
        used.ms = (decayed(used, now, half_life) + ms).max(0.0);
        used.at = now.max(used.at);
        if used.ms < 0.5 && used.served == 0 {
            self.used.remove(&owner);
        }
    }

    /// `owner`'s recent GPU time (ms, decayed to `now`).
    pub fn used_ms(&self, owner: i64, now: i64) -> f64 {
        self.used.get(&owner).map_or(0.0, |u| decayed(u, now, self.half_life_ms))
    }

    /// Takes job `prompt_id` of `owner` out of the queue as dispatched: they count as served
    /// now, and as having used one job's worth until [`charge`](Self::charge) corrects it.
    pub fn take_job(&mut self, owner: i64, prompt_id: &str, now: i64) -> bool {
        if !self.remove(owner, prompt_id) {
            return false;
        }
        self.served += 1;
        let served = self.served;
        let step = self.step_ms;
        self.charge(owner, step, now);
        if let Some(used) = self.used.get_mut(&owner) {
            used.served = served;
        }
        true
    }

    /// The next job any `runnable` accepts, in fair order, taken as dispatched.
    pub fn take(&mut self, now: i64, runnable: impl FnMut(&str) -> bool) -> Option<(i64, Arc<str>)> {
        let (owner, id, _) = self.candidates(now, 1, runnable).into_iter().next()?;
        self.take_job(owner, &id, now);
        Some((owner, id))
    }

    /// The first `limit` jobs that `runnable` accepts, in the order they would be served: by
    /// class, then owners by recent GPU time over weight, each later job of an owner counting
    /// as one more job's worth.
    pub fn candidates(
        &self,
        now: i64,
        limit: usize,
        mut runnable: impl FnMut(&str) -> bool,
    ) -> Vec<(i64, Arc<str>, Priority)> {
        let mut out = Vec::new();
        self.walk(now, |owner, id, class| {
            if runnable(id) {
                out.push((owner, id.clone(), class));
            }
            out.len() < limit
        });
        out
    }

    /// Visits waiting jobs in fair order until `visit` says stop.
    fn walk(&self, now: i64, mut visit: impl FnMut(i64, &Arc<str>, Priority) -> bool) {
        for class in Priority::ALL.into_iter().rev() {
            let lines = &self.classes[class.index()];
            let mut heap: BinaryHeap<Turn> = lines
                .keys()
                .map(|&owner| {
                    let used = self.used.get(&owner).copied().unwrap_or_default();
                    Turn {
                        key: decayed(&used, now, self.half_life_ms) / self.weight(owner),
                        served: used.served,
                        owner,
                        index: 0,
                    }
                })
                .collect();
            while let Some(turn) = heap.pop() {
                let Some(line) = lines.get(&turn.owner) else { continue };
                let Some(id) = line.get(turn.index) else { continue };
                if !visit(turn.owner, id, class) {
                    return;
                }
                if turn.index + 1 < line.len() {
                    let key = turn.key + self.step_ms / self.weight(turn.owner);
                    heap.push(Turn { key, index: turn.index + 1, ..turn });
                }
            }
        }
    }

    fn weight(&self, owner: i64) -> f64 {
        self.weights.get(&owner).copied().unwrap_or(1.0)
    }

    /// One owner's waiting jobs, in the order they would go (by class, then FIFO).
    pub fn line(&self, owner: i64) -> Vec<Arc<str>> {
        Priority::ALL
            .into_iter()
            .rev()
            .filter_map(|class| self.classes[class.index()].get(&owner))
            .flat_map(|line| line.iter().cloned())
            .collect()
    }

    /// How many jobs `owner` has waiting.
    pub fn waiting_of(&self, owner: i64) -> usize {
        self.classes.iter().filter_map(|c| c.get(&owner)).map(VecDeque::len).sum()
    }

    /// How many jobs wait in `class`.
    pub fn waiting_in(&self, class: Priority) -> usize {
        self.classes[class.index()].values().map(VecDeque::len).sum()
    }

    /// Every queued job in the order they would run if every backend could run all of them.
    pub fn in_order(&self, now: i64) -> Vec<(i64, Arc<str>)> {
        self.first_in_order(now, usize::MAX)
    }

    /// The first `limit` jobs of [`in_order`](Self::in_order), in time proportional to what it
    /// returns (times the log of the number of owners).
    pub fn first_in_order(&self, now: i64, limit: usize) -> Vec<(i64, Arc<str>)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        self.walk(now, |owner, id, _| {
            out.push((owner, id.clone()));
            out.len() < limit
        });
        out
    }

    /// How many jobs wait.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `used.ms` decayed from `used.at` to `now`.
fn decayed(used: &Used, now: i64, half_life_ms: f64) -> f64 {
    if half_life_ms <= 0.0 {
        return 0.0;
    }
    let elapsed = (now - used.at).max(0) as f64;
    used.ms * 0.5f64.powf(elapsed / half_life_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Priority = Priority::Normal;

    fn ids(q: &mut FairQueue, n: usize) -> Vec<String> {
        (0..n).filter_map(|_| q.take(0, |_| true).map(|(_, id)| id.to_string())).collect()
    }

    fn order(q: &FairQueue) -> Vec<String> {
        q.in_order(0).into_iter().map(|(_, id)| id.to_string()).collect()
    }

    #[test]
    fn owners_take_turns_and_keep_their_order() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push_back(1, format!("a{i}").into(), N);
        }
        q.push_back(2, "b0".into(), N);
        q.push_back(2, "b1".into(), N);
        assert_eq!(ids(&mut q, 7), ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_job_nobody_can_run_does_not_block_the_next() {
        let mut q = FairQueue::default();
        q.push_back(1, "big".into(), N);
        q.push_back(1, "small".into(), N);
        assert_eq!(q.take(0, |id| id != "big"), Some((1, Arc::from("small"))));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn returned_jobs_go_first_and_removal_works() {
        let mut q = FairQueue::default();
        q.push_back(1, "a".into(), N);
        q.push_back(2, "b".into(), N);
        q.push_front(1, "back".into(), N);
        assert_eq!(order(&q), ["back", "b", "a"]);
        assert!(q.remove(2, "b"));
        assert!(!q.remove(2, "b"));
        assert!(!q.remove(2, "a"), "only the owner's own line is searched");
        assert_eq!(q.line(1).iter().map(|id| &**id).collect::<Vec<_>>(), ["back", "a"]);
        assert_eq!((q.waiting_of(1), q.len()), (2, 2));
        assert_eq!(ids(&mut q, 3), ["back", "a"]);
    }

    #[test]
    fn the_first_jobs_in_order_are_a_prefix_of_the_whole_order() {
        let mut q = FairQueue::default();
        for (owner, count) in [(1, 5), (2, 1), (3, 3)] {
            for i in 0..count {
                q.push_back(owner, format!("{owner}-{i}").into(), N);
            }
        }
        let all = order(&q);
        assert_eq!(all, ["1-0", "2-0", "3-0", "1-1", "3-1", "1-2", "3-2", "1-3", "1-4"]);
        for limit in 0..=all.len() + 2 {
            let first: Vec<String> = q.first_in_order(0, limit).into_iter().map(|(_, id)| id.to_string()).collect();
            assert_eq!(first, all[..limit.min(all.len())], "limit {limit}");
        }
    }

    #[test]
    fn a_higher_class_goes_first_whoever_submitted_it() {
        let mut q = FairQueue::default();
        q.push_back(1, "n1".into(), N);
        q.push_back(2, "low".into(), Priority::Low);
        q.push_back(1, "n2".into(), N);
        q.push_back(3, "high".into(), Priority::High);
        assert_eq!(order(&q), ["high", "n1", "n2", "low"]);
        assert_eq!(q.line(1).len(), 2);
        assert_eq!(q.waiting_in(Priority::High), 1);
        assert_eq!(ids(&mut q, 4), ["high", "n1", "n2", "low"]);
    }

    #[test]
    fn recent_gpu_time_goes_last_and_is_forgotten_with_its_half_life() {
        let hour = 3_600_000;
        let mut q = FairQueue::new(Duration::from_millis(hour as u64), Duration::from_secs(10));
        // Owner 1 used the GPUs for 10 minutes just now; owner 2 for 30 s.
        q.charge(1, 600_000.0, 0);
        q.charge(2, 30_000.0, 0);
        for i in 0..3 {
            q.push_back(1, format!("heavy{i}").into(), N);
            q.push_back(2, format!("light{i}").into(), N);
        }
        let now: Vec<String> = q.in_order(0).into_iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(now, ["light0", "light1", "light2", "heavy0", "heavy1", "heavy2"]);
        assert!((q.used_ms(1, hour) - 300_000.0).abs() < 1.0, "half of it an hour later");
        // A day and more later both are all but forgotten: they take turns again.
        let later: Vec<String> = q.in_order(30 * hour).into_iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(later, ["light0", "heavy0", "light1", "heavy1", "light2", "heavy2"]);
    }

    #[test]
    fn weights_scale_the_share() {
        let mut q = FairQueue::new(Duration::from_secs(3600), Duration::from_secs(10));
        q.set_weight(1, 2.0);
        for i in 0..6 {
            q.push_back(1, format!("a{i}").into(), N);
            q.push_back(2, format!("b{i}").into(), N);
        }
        let first6: Vec<String> = ids(&mut q, 6);
        let a = first6.iter().filter(|id| id.starts_with('a')).count();
        assert_eq!(a, 4, "weight 2 gets two of every three: {first6:?}");
        q.set_weight(1, f64::NAN);
        q.set_weight(2, -5.0);
        assert_eq!(q.len(), 6);
    }

    #[test]
    fn charges_correct_the_estimate_and_never_go_below_zero() {
        let mut q = FairQueue::new(Duration::from_secs(3600), Duration::from_secs(10));
        q.push_back(1, "a".into(), N);
        assert!(q.take_job(1, "a", 0));
        assert!(!q.take_job(1, "a", 0), "taken once");
        assert!((q.used_ms(1, 0) - 10_000.0).abs() < 1e-6);
        q.charge(1, -10_000.0 + 2_000.0, 0);
        assert!((q.used_ms(1, 0) - 2_000.0).abs() < 1e-6);
        q.charge(1, -1e12, 0);
        assert_eq!(q.used_ms(1, 0), 0.0);
    }
}
