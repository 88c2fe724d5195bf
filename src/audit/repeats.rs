//! Repeated refusals, coalesced: anyone can send the same refused request (a throttled login, an
//! admin-only route, a quota refusal) thousands of times a second (failures, such as wrong
//! passwords, are bounded by the lockout and written one by one), and a line (and a store row)
//! for each would let them fill the disk. The first of a kind in a window is written at once;
//! identical ones after it (same event, user, address, outcome, reason and fields) within the
//! window are counted, and when the window closes one line says how many there were
//! (`"repeated": n`, with the last one's request id and user agent). Nothing is lost: every
//! refusal is in a line or in a count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::event::{Context, Event};

/// Kinds tracked at once; past this, events are written one by one (no refusal goes uncounted).
const MAX_KINDS: usize = 4096;

/// The coalescing windows of one audit log.
pub(super) struct Repeats {
    window: Duration,
    kinds: Mutex<HashMap<String, Kind>>,
}

struct Kind {
    /// When this kind's window closes.
    until: Instant,
    /// Identical events since the line that opened the window, and the last of them.
    suppressed: u64,
    last: Option<(Context, Event)>,
}

/// What to write for one event.
pub(super) struct Admission {
    /// Write this event now (else it is counted in its kind's window).
    pub write: bool,
    /// The summary of a window that closed, to write first.
    pub summary: Option<(Context, Event)>,
}

impl Repeats {
    /// Windows of `window` (zero: every event is written).
    pub fn new(window: Duration) -> Self {
        Self { window, kinds: Mutex::new(HashMap::new()) }
    }

    /// Whether `event` (in `context`, at `now`) is written now or counted.
    pub fn admit(&self, context: &Context, event: &Event, now: Instant) -> Admission {
        let write_it = Admission { write: true, summary: None };
        if self.window.is_zero() {
            return write_it;
        }
        let Ok(mut kinds) = self.kinds.lock() else { return write_it };
        let key = key(context, event);
        if let Some(kind) = kinds.get_mut(&key) {
            if now < kind.until {
                kind.suppressed += 1;
                kind.last = Some((context.clone(), event.clone()));
                return Admission { write: false, summary: None };
            }
            let summary = summary(kind);
            *kind = Kind { until: now + self.window, suppressed: 0, last: None };
            return Admission { write: true, summary };
        }
        if kinds.len() >= MAX_KINDS {
            kinds.retain(|_, kind| now < kind.until || kind.suppressed > 0);
            if kinds.len() >= MAX_KINDS {
                return write_it;
            }
        }
        kinds.insert(key, Kind { until: now + self.window, suppressed: 0, last: None });
        write_it
    }

    /// The summaries of the windows closed by `now` (their kinds forgotten).
    pub fn due(&self, now: Instant) -> Vec<(Context, Event)> {
        let Ok(mut kinds) = self.kinds.lock() else { return Vec::new() };
        let mut due = Vec::new();
        kinds.retain(|_, kind| {
            if now < kind.until {
                return true;
            }
            due.extend(summary(kind));
            false
        });
        due
    }

    /// How often [`Repeats::due`] should be asked.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// The line for a window's suppressed events, if any.
fn summary(kind: &mut Kind) -> Option<(Context, Event)> {
    let (context, event) = kind.last.take()?;
    let n = std::mem::take(&mut kind.suppressed);
    Some((context, event.field("repeated", n)))
}

/// What makes two events the same kind: everything but the time, request id and user agent.
fn key(context: &Context, event: &Event) -> String {
    let plain = Context { by: context.by.clone(), address: context.address.clone(), ..Context::default() };
    event.line(&plain, 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn from(address: &str, rid: &str) -> Context {
        Context::request(address.to_owned(), Some("ua"), Some(rid))
    }

    #[test]
    fn the_first_is_written_the_rest_counted_and_summarised_when_the_window_closes() {
        let repeats = Repeats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let refusal = || Event::refused("login_throttled").user("victim").reason("lockout");
        assert!(repeats.admit(&from("10.0.0.9", "r0"), &refusal(), t0).write);
        for i in 1..=99 {
            let a = repeats.admit(&from("10.0.0.9", &format!("r{i}")), &refusal(), t0 + Duration::from_millis(i));
            assert!(!a.write && a.summary.is_none(), "{i}");
        }
        // Another address, user or reason is another kind.
        assert!(repeats.admit(&from("10.0.0.8", "x"), &refusal(), t0).write);
        assert!(repeats.admit(&from("10.0.0.9", "x"), &refusal().reason("other"), t0).write);
        assert!(repeats.due(t0 + Duration::from_secs(9)).is_empty());
        let due = repeats.due(t0 + Duration::from_secs(10));
        assert_eq!(due.len(), 1, "only the kind with repeats has a summary");
        let (context, event) = &due[0];
        let line: serde_json::Value = serde_json::from_str(&event.line(context, 0)).unwrap();
        assert_eq!(line["repeated"], 99);
        assert_eq!(line["request_id"], "r99");
        assert_eq!(line["event"], "login_throttled");
        // The window is over: the next one is written again.
        assert!(repeats.admit(&from("10.0.0.9", "r100"), &refusal(), t0 + Duration::from_secs(11)).write);
    }

    #[test]
    fn a_new_window_first_writes_the_summary_of_the_old_one() {
        let repeats = Repeats::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let e = || Event::refused("admin_route_refused").user("bob").field("path_class", "admin");
        assert!(repeats.admit(&from("::1", "a"), &e(), t0).write);
        assert!(!repeats.admit(&from("::1", "b"), &e(), t0).write);
        assert!(!repeats.admit(&from("::1", "c"), &e(), t0).write);
        let next = repeats.admit(&from("::1", "d"), &e(), t0 + Duration::from_secs(2));
        assert!(next.write);
        let (context, event) = next.summary.unwrap();
        let line: serde_json::Value = serde_json::from_str(&event.line(&context, 0)).unwrap();
        assert_eq!((line["repeated"].as_u64(), line["request_id"].as_str()), (Some(2), Some("c")));
        assert!(repeats.due(t0 + Duration::from_secs(2)).is_empty(), "nothing suppressed in the new window yet");
    }

    #[test]
    fn a_zero_window_writes_everything_and_a_full_table_never_hides_a_refusal() {
        let off = Repeats::new(Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(off.admit(&from("::1", "a"), &Event::refused("x"), t0).write);
        }
        let repeats = Repeats::new(Duration::from_secs(60));
        for i in 0..MAX_KINDS {
            assert!(
                repeats.admit(&from(&format!("10.{}.{}.1", i / 256, i % 256), "a"), &Event::refused("x"), t0).write
            );
        }
        // Full of live kinds: a new kind is written, and so is every repeat of it.
        for _ in 0..3 {
            assert!(repeats.admit(&from("192.0.2.1", "a"), &Event::refused("x"), t0).write);
        }
        assert_eq!(repeats.kinds.lock().unwrap().len(), MAX_KINDS);
    }
}
