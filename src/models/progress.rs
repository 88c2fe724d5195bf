//! Progress and results: bars (one per file and a total) on a terminal, plain periodic lines
//! otherwise, so logs of unattended runs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line reports a file still in progress.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The display of a run: where bars or lines go, and the total.
#[derive(Clone)]
pub struct Progress {
    bars: Option<MultiProgress>,
    total: Option<ProgressBar>,
}

impl Progress {
    /// Bars when standard error is a terminal, plain lines otherwise; `total` adds a total bar
    /// of that many bytes.
    pub fn new(total: Option<u64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bars: None, total: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = total.map(|len| {
            let bar = multi.add(ProgressBar::new(len));
            bar.set_style(style("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"));
            bar.set_prefix(format!("{:<44}", "total"));
            bar
        });
        Self { bars: Some(multi), total }
    }

    /// A line on standard output, above the bars.
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(multi) => multi.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// A line on standard error, above the bars.
    pub fn eprintln(&self, line: &str) {
        match &self.bars {
            Some(multi) => multi.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// The progress of one file of `size` bytes from `start`; `downloading` counts it in the
    /// total (hashing a present file does not).
    pub fn file(&self, label: &str, verb: &'static str, size: u64, start: u64, downloading: bool) -> FileProgress {
        let bar = self.bars.as_ref().map(|multi| {
            let bar = ProgressBar::new(size);
            bar.set_style(style("{prefix} {msg:11} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"));
            bar.set_prefix(format!("{:<44}", shorten(label, 44)));
            bar.set_message(verb);
            bar.set_position(start);
            match &self.total {
                Some(total) => multi.insert_before(total, bar),
                None => multi.add(bar),
            }
        });
        FileProgress {
            label: label.to_owned(),
            verb,
            size,
            done: start,
            started_at: start,
            since: Instant::now(),
            last_line: Instant::now(),
            bar,
            total: if downloading { self.total.clone() } else { None },
        }
    }

    /// Clears the bars before the summary.
    pub fn finish(&self) {
        if let Some(total) = &self.total {
            total.finish_and_clear();
        }
        if let Some(multi) = &self.bars {
            let _ = multi.clear();
        }
    }
}

/// The progress of one file.
pub struct FileProgress {
    label: String,
    verb: &'static str,
    size: u64,
    done: u64,
    started_at: u64,
    since: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
    total: Option<ProgressBar>,
}

impl FileProgress {
    /// `n` more bytes written or hashed.
    pub fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(total) = &self.total {
            total.inc(n);
        }
        if self.bar.is_none() && self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    /// The file starts over from byte 0 (the server ignored the range, or the partial was wrong).
    pub fn restart(&mut self) {
        if let Some(total) = &self.total {
            // Everything of this file so far (the partial and this run's bytes) is fetched again.
            total.inc_length(self.done);
        }
        self.done = 0;
        self.started_at = 0;
        if let Some(bar) = &self.bar {
            bar.set_position(0);
            bar.reset_eta();
        }
    }

    /// Removes the bar (the result is printed as a line).
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn line(&self) -> String {
        let secs = self.since.elapsed().as_secs_f64().max(0.001);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rate = ((self.done.saturating_sub(self.started_at)) as f64 / secs) as u64;
        #[allow(clippy::cast_precision_loss)]
        let percent = if self.size == 0 { 100.0 } else { self.done as f64 * 100.0 / self.size as f64 };
        format!(
            "{}: {} {} of {} ({percent:.0} %), {}/s",
            self.label,
            self.verb,
            ByteSize(self.done),
            ByteSize(self.size),
            ByteSize(rate)
        )
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// The end of a long label, which names the file.
fn shorten(label: &str, width: usize) -> String {
    let count = label.chars().count();
    if count <= width {
        return label.to_owned();
    }
    let tail: String = label.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}
