//! Fair share between users: owners take turns (round-robin), each owner's jobs go in order
//! (FIFO), and a job is only taken by a backend that can run it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Queued prompt ids by owner.
#[derive(Debug, Default)]
pub struct FairQueue {
    turns: VecDeque<i64>,
    jobs: HashMap<i64, VecDeque<Arc<str>>>,
}

impl FairQueue {
    /// Adds a job at the end of its owner's line (a new owner joins the end of the turns).
    pub fn push_back(&mut self, owner: i64, prompt_id: Arc<str>) {
        let line = self.jobs.entry(owner).or_default();
        if line.is_empty() && !self.turns.contains(&owner) {
            self.turns.push_back(owner);
        }
        line.push_back(prompt_id);
    }

    /// Puts a job back at the front of its owner's line (it was dispatched and came back).
    pub fn push_front(&mut self, owner: i64, prompt_id: Arc<str>) {
        let line = self.jobs.entry(owner).or_default();
        if !self.turns.contains(&owner) {
            self.turns.push_front(owner);
        }
        line.push_front(prompt_id);
    }

    /// Takes the next job any of `runnable` accepts: owners in turn, each owner's jobs in
    /// order; the owner served goes to the end of the turns.
    pub fn take(&mut self, mut runnable: impl FnMut(&str) -> bool) -> Option<(i64, Arc<str>)> {
        for turn in 0..self.turns.len() {
            let owner = self.turns[turn];
            let line = self.jobs.get_mut(&owner)?;
            let Some(index) = line.iter().position(|id| runnable(id)) else { continue };
            let prompt_id = line.remove(index)?;
            self.turns.remove(turn);
            if !line.is_empty() {
                self.turns.push_back(owner);
            } else {
                self.jobs.remove(&owner);
            }
            return Some((owner, prompt_id));
        }
        None
    }

    /// Removes one of `owner`'s queued jobs (costs in proportion to that owner's line only);
    /// true if it was queued.
    pub fn remove(&mut self, owner: i64, prompt_id: &str) -> bool {
        let Some(line) = self.jobs.get_mut(&owner) else { return false };
        let before = line.len();
        line.retain(|id| &**id != prompt_id);
        let removed = line.len() != before;
        if line.is_empty() {
            self.jobs.remove(&owner);
            self.turns.retain(|o| *o != owner);
        }
        removed
    }

    /// One owner's waiting jobs, in their order.
    pub fn line(&self, owner: i64) -> Vec<Arc<str>> {
        self.jobs.get(&owner).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// How many jobs `owner` has waiting.
    pub fn waiting_of(&self, owner: i64) -> usize {
        self.jobs.get(&owner).map_or(0, VecDeque::len)
    }

    /// Every queued job in the order they would run if every backend could run all of them.
    pub fn in_order(&self) -> Vec<(i64, Arc<str>)> {
        self.first_in_order(usize::MAX)
    }

    /// The first `limit` jobs of [`in_order`](Self::in_order), in time proportional to what it
    /// returns: each round takes one job of every owner with jobs left, and owners whose line
    /// is done leave the rounds (no line is copied).
    pub fn first_in_order(&self, limit: usize) -> Vec<(i64, Arc<str>)> {
        let mut lines: Vec<(i64, &VecDeque<Arc<str>>)> =
            self.turns.iter().filter_map(|o| self.jobs.get(o).map(|l| (*o, l))).collect();
        let mut out = Vec::new();
        let mut round = 0;
        while !lines.is_empty() && out.len() < limit {
            lines.retain(|(_, line)| line.len() > round);
            for (owner, line) in &lines {
                if out.len() == limit {
                    break;
                }
                out.push((*owner, line[round].clone()));
            }
            round += 1;
        }
        out
    }

    /// How many jobs wait.
    pub fn len(&self) -> usize {
        self.jobs.values().map(VecDeque::len).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(q: &mut FairQueue, n: usize) -> Vec<String> {
        (0..n).filter_map(|_| q.take(|_| true).map(|(_, id)| id.to_string())).collect()
    }

    #[test]
    fn owners_take_turns_and_keep_their_order() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push_back(1, format!("a{i}").into());
        }
        q.push_back(2, "b0".into());
        q.push_back(2, "b1".into());
        assert_eq!(ids(&mut q, 7), ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_job_nobody_can_run_does_not_block_the_next() {
        let mut q = FairQueue::default();
        q.push_back(1, "big".into());
        q.push_back(1, "small".into());
        assert_eq!(q.take(|id| id != "big"), Some((1, Arc::from("small"))));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn returned_jobs_go_first_and_removal_works() {
        let mut q = FairQueue::default();
        q.push_back(1, "a".into());
        q.push_back(2, "b".into());
        q.push_front(1, "back".into());
        let order: Vec<(i64, String)> = q.in_order().into_iter().map(|(o, id)| (o, id.to_string())).collect();
        assert_eq!(order, [(1, "back".to_owned()), (2, "b".to_owned()), (1, "a".to_owned())]);
        assert!(q.remove(2, "b"));
        assert!(!q.remove(2, "b"));
        assert!(!q.remove(2, "a"), "only the owner's own line is searched");
        assert_eq!(q.line(1).iter().map(|id| &**id).collect::<Vec<_>>(), ["back", "a"]);
        assert_eq!(q.waiting_of(1), 2);
        assert_eq!(ids(&mut q, 3), ["back", "a"]);
    }

    #[test]
    fn the_first_jobs_in_order_are_a_prefix_of_the_whole_order_taken_in_rounds() {
        let mut q = FairQueue::default();
        for (owner, count) in [(1, 5), (2, 1), (3, 3)] {
            for i in 0..count {
                q.push_back(owner, format!("{owner}-{i}").into());
            }
        }
        let all: Vec<String> = q.in_order().into_iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(all, ["1-0", "2-0", "3-0", "1-1", "3-1", "1-2", "3-2", "1-3", "1-4"]);
        for limit in 0..=all.len() + 2 {
            let first: Vec<String> = q.first_in_order(limit).into_iter().map(|(_, id)| id.to_string()).collect();
            assert_eq!(first, all[..limit.min(all.len())], "limit {limit}");
        }
    }
}
