//! Where authentication failures come from, bounded: counts per client address prefix (IPv4
//! /24, IPv6 /64) over the last [`SOURCE_WINDOW`], for the `auth_failures_top_source` gauge.
//!
//! Many addresses must not grow it without bound: at most [`MAX_SOURCES`] prefixes are kept.
//! When a new prefix arrives and the table is full, prefixes with nothing in the window are
//! dropped; if none is, the smallest of a few sampled ones makes room. A heavy source keeps
//! its count (it is never the smallest for long), which is what the gauge is for; an attacker
//! spreading failures over many prefixes shows up in `auth_failures_total` instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back failures count.
pub const SOURCE_WINDOW: Duration = Duration::from_secs(300);
/// Most prefixes tracked at once.
pub const MAX_SOURCES: usize = 4096;
/// The window in slots (one per minute).
const SLOTS: usize = 5;
const SLOT: Duration = Duration::from_secs(60);
/// How many entries are compared to pick one to evict when nothing is stale.
const EVICTION_SAMPLE: usize = 8;

/// A client address prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6(u64),
}

impl Prefix {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    fn v4(ip: std::net::Ipv4Addr) -> Self {
        let [a, b, c, _] = ip.octets();
        Self::V4([a, b, c])
    }
}

/// Failures of one prefix, per minute slot of the window.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// The minute (since the table's start) each slot counts.
    minute: [u64; SLOTS],
    count: [u32; SLOTS],
}

impl Counts {
    fn add(&mut self, minute: u64) {
        let slot = (minute % SLOTS as u64) as usize;
        if self.minute[slot] != minute {
            self.minute[slot] = minute;
            self.count[slot] = 0;
        }
        self.count[slot] = self.count[slot].saturating_add(1);
    }

    /// Failures in the window ending at `minute`.
    fn total(&self, minute: u64) -> u32 {
        (0..SLOTS)
            .filter(|&i| self.minute[i] + (SLOTS as u64) > minute && self.minute[i] <= minute)
            .map(|i| self.count[i])
            .fold(0, u32::saturating_add)
    }
}

/// Failure counts by prefix.
#[derive(Debug)]
pub struct FailureSources {
    start: Instant,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    counts: HashMap<Prefix, Counts>,
    /// The minute stale prefixes were last dropped (at most once a minute: not per failure).
    pruned: u64,
}

impl Default for FailureSources {
    fn default() -> Self {
        Self { start: Instant::now(), table: Mutex::new(Table::default()) }
    }
}

impl FailureSources {
    fn minute(&self, now: Instant) -> u64 {
        // Minute 0 is never "recorded": slots start at 0, so real minutes start at 1.
        now.saturating_duration_since(self.start).as_secs() / SLOT.as_secs() + 1
    }

    /// Counts one failure from `ip` at `now`.
    pub fn record(&self, ip: IpAddr, now: Instant) {
        let minute = self.minute(now);
        let prefix = Prefix::of(ip);
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = &mut *table;
        if !table.counts.contains_key(&prefix) && table.counts.len() >= MAX_SOURCES {
            if table.pruned != minute {
                table.pruned = minute;
                table.counts.retain(|_, c| c.total(minute) > 0);
            }
            if table.counts.len() >= MAX_SOURCES {
                let smallest =
                    table.counts.iter().take(EVICTION_SAMPLE).min_by_key(|(_, c)| c.total(minute)).map(|(p, _)| *p);
                if let Some(p) = smallest {
                    table.counts.remove(&p);
                }
            }
        }
        table.counts.entry(prefix).or_default().add(minute);
    }

    /// The most failures from one prefix in the window ending at `now`.
    pub fn top(&self, now: Instant) -> u32 {
        let minute = self.minute(now);
        let table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        table.counts.values().map(|c| c.total(minute)).max().unwrap_or(0)
    }

    /// Prefixes tracked now.
    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.counts.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_one_prefix_count_together_others_apart() {
        let s = FailureSources::default();
        let now = Instant::now();
        for last in 0..10u8 {
            s.record(IpAddr::from([192, 0, 2, last]), now);
        }
        s.record(IpAddr::from([192, 0, 3, 1]), now);
        // IPv4-mapped IPv6 is the same client.
        s.record("::ffff:192.0.2.77".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), now);
        for last in 0..4u16 {
            s.record(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]), now);
        }
        assert_eq!(s.top(now), 11);
        assert_eq!(s.tracked(), 3);
    }

    #[test]
    fn failures_leave_the_window_after_five_minutes() {
        let s = FailureSources::default();
        let t0 = s.start;
        s.record(IpAddr::from([10, 0, 0, 1]), t0);
        s.record(IpAddr::from([10, 0, 0, 1]), t0 + Duration::from_secs(150));
        assert_eq!(s.top(t0 + Duration::from_secs(200)), 2);
        assert_eq!(s.top(t0 + Duration::from_secs(301)), 1);
        assert_eq!(s.top(t0 + Duration::from_secs(600)), 0);
    }

    #[test]
    fn many_addresses_cannot_grow_the_table_and_the_heavy_source_stays() {
        let s = FailureSources::default();
        let now = s.start;
        for _ in 0..50 {
            s.record(IpAddr::from([203, 0, 113, 9]), now);
        }
        for i in 0..(3 * MAX_SOURCES as u32) {
            let [_, _, a, b] = i.to_be_bytes();
            s.record(IpAddr::from([10, a, b, 1]), now);
            assert!(s.tracked() <= MAX_SOURCES);
        }
        assert_eq!(s.tracked(), MAX_SOURCES);
        assert_eq!(s.top(now), 50);
    }
}
