//! The process's own figures, read from `/proc/self` at scrape time (Linux; elsewhere the
//! families are left out): resident memory, open descriptors, CPU time, start time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 in Linux's ABI).
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self` on each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What `/proc/self` says.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl Figures {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().map(stat_fields).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        Self {
            resident_bytes: std::fs::read_to_string("/proc/self/status").ok().and_then(|s| resident_bytes(&s)),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as i64),
            cpu_seconds: ticks(11).zip(ticks(12)).map(|(user, system)| (user + system) / USER_HZ),
            start_time_seconds: ticks(19).zip(boot).map(|(start, boot)| boot + start / USER_HZ),
        }
    }
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses): index 0 is the state, 11 `utime`, 12 `stime`, 19 `starttime`.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default()
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn resident_bytes(status: &str) -> Option<i64> {
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim();
    kib.parse::<i64>().ok().map(|k| k * 1024)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = Figures::read();
        let e = &mut encoder;
        if let Some(v) = f.resident_bytes {
            put(e, "process_resident_memory_bytes", "Resident memory", &ConstGauge::new(v))?;
        }
        if let Some(v) = f.open_fds {
            put(e, "process_open_fds", "Open file descriptors", &ConstGauge::new(v))?;
        }
        if let Some(v) = f.cpu_seconds {
            put(e, "process_cpu_seconds", "User and system CPU time", &ConstCounter::new(v))?;
        }
        if let Some(v) = f.start_time_seconds {
            put(
                e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch",
                &ConstGauge::new(v),
            )?;
        }
        Ok(())
    }
}

/// Writes one family of one value.
fn put(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: &impl EncodeMetric) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000 200";
        let fields = stat_fields(stat);
        assert_eq!(fields[0], "S");
        assert_eq!(fields[11], "250");
        assert_eq!(fields[12], "50");
        assert_eq!(fields[19], "12345");
    }

    #[test]
    fn resident_memory_and_boot_time_are_parsed() {
        assert_eq!(resident_bytes("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000.0));
    }

    #[test]
    fn this_process_has_figures_on_linux() {
        if std::path::Path::new("/proc/self/stat").exists() {
            let f = Figures::read();
            assert!(f.resident_bytes.is_some_and(|b| b > 0), "{f:?}");
            assert!(f.open_fds.is_some_and(|n| n > 0), "{f:?}");
            assert!(f.cpu_seconds.is_some(), "{f:?}");
            assert!(f.start_time_seconds.is_some_and(|t| t > 1_000_000_000.0), "{f:?}");
        }
    }
}
