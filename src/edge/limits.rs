//! How many client connections may be open: in total and per address (the TCP peer's: a
//! forwarded address is not known before the request head), within what the open file limit
//! allows. A connection counts until its socket closes, upgraded or not. Refusals and accept
//! errors are logged at most once per [`LOG_EVERY`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Descriptors kept for everything that is not a client connection: the listener, the store,
/// health checks, monitor sockets, logs.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Refused connections being answered at once, at most (more are closed unanswered).
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// At most one log line per kind of event in this time.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open file limit to the hard limit and returns it (`None`: unknown).
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open file limit");
            None
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_address` are open from this address.
    PerAddress,
}

/// The open connections, counted against the caps.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_address: usize,
    max_refusals: usize,
    open: Mutex<Open>,
    refusals_logged: LogThrottle,
}

#[derive(Default)]
struct Open {
    total: usize,
    refusing: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl ConnectionLimits {
    /// Caps of `max_total` and `max_per_address`; `max_total` (and the refusals answered) are
    /// lowered to fit `open_files` if it is known: each connection may hold a second
    /// descriptor, to a backend.
    pub fn new(max_total: usize, max_per_address: usize, open_files: Option<u64>) -> Self {
        let (mut total, mut refusals) = (max_total, MAX_REFUSALS_IN_FLIGHT);
        if let Some(limit) = open_files {
            let usable = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
            refusals = refusals.min(usable / 8).max(1);
            let fits = (usable.saturating_sub(refusals) / 2).max(1);
            if fits < total {
                tracing::warn!(
                    max_connections = max_total,
                    lowered_to = fits,
                    open_file_limit = limit,
                    "server.max_connections lowered to fit the open file limit"
                );
                total = fits;
            }
        }
        Self {
            max_total: total,
            max_per_address: max_per_address.min(total),
            max_refusals: refusals,
            open: Mutex::new(Open::default()),
            refusals_logged: LogThrottle::default(),
        }
    }

    /// The connection cap in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// The cap per address in force.
    pub fn max_per_address(&self) -> usize {
        self.max_per_address
    }

    /// Counts a new connection from `ip`, or tells why it is refused. A refused connection
    /// that should be answered gets a [`Slot`] too (counted apart); `Err(None)` means close it
    /// at once (too many refusals are being answered already).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, (Refusal, Option<Slot>)> {
        let refusal = {
            let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let from_ip = open.per_address.get(&ip).copied().unwrap_or(0);
            let refusal = if open.total >= self.max_total {
                Refusal::Total
            } else if from_ip >= self.max_per_address {
                Refusal::PerAddress
            } else {
                open.total += 1;
                open.per_address.insert(ip, from_ip + 1);
                return Ok(Slot { limits: self.clone(), kind: SlotKind::Connection(ip) });
            };
            let answered = open.refusing < self.max_refusals;
            if answered {
                open.refusing += 1;
            }
            (refusal, answered)
        };
        self.log_refusal(refusal.0, ip);
        let slot = refusal.1.then(|| Slot { limits: self.clone(), kind: SlotKind::Refusal });
        Err((refusal.0, slot))
    }

    fn release(&self, kind: &SlotKind) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match kind {
            SlotKind::Connection(ip) => {
                open.total = open.total.saturating_sub(1);
                if let Some(count) = open.per_address.get_mut(ip) {
                    *count -= 1;
                    if *count == 0 {
                        open.per_address.remove(ip);
                    }
                }
            }
            SlotKind::Refusal => open.refusing = open.refusing.saturating_sub(1),
        }
    }

    fn log_refusal(&self, refusal: Refusal, ip: IpAddr) {
        if let Some(refused) = self.refusals_logged.tick() {
            match refusal {
                Refusal::Total => tracing::warn!(
                    refused,
                    max_connections = self.max_total,
                    "refusing connections: too many open (server.max_connections)"
                ),
                Refusal::PerAddress => tracing::warn!(
                    refused,
                    %ip,
                    max_connections_per_address = self.max_per_address,
                    "refusing connections: too many open from one address (server.max_connections_per_address)"
                ),
            }
        }
    }
}

/// One counted connection; released when dropped.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    kind: SlotKind,
}

impl Slot {
    /// Ties the slot to the connection's socket, so it stays counted as long as the socket is
    /// open: after an upgrade (WebSockets) too, when hyper hands the socket on.
    pub fn hold<I>(self, io: I) -> Counted<I> {
        Counted { io, _slot: self }
    }
}

/// A socket counted against the caps until it is dropped.
pub struct Counted<I> {
    io: I,
    _slot: Slot,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

enum SlotKind {
    Connection(IpAddr),
    Refusal,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(&self.kind);
    }
}

/// Lets one log line through per [`LOG_EVERY`], counting the events in between.
#[derive(Default)]
pub struct LogThrottle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    /// Counts an event; `Some(events since the last line)` when a line should be written.
    pub fn tick(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_apply_in_total_and_per_address_and_free_on_drop() {
        let limits = Arc::new(ConnectionLimits::new(3, 2, None));
        let a1 = limits.admit(ip(1)).ok();
        let _a2 = limits.admit(ip(1)).ok();
        assert!(matches!(limits.admit(ip(1)), Err((Refusal::PerAddress, Some(_)))));
        let _b1 = limits.admit(ip(2)).ok();
        assert!(matches!(limits.admit(ip(3)), Err((Refusal::Total, Some(_)))));
        drop(a1);
        assert!(limits.admit(ip(3)).is_ok());
    }

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let limits = ConnectionLimits::new(10_000, 256, Some(128));
        // 64 usable: 8 for refusals, two descriptors for each connection.
        assert_eq!(limits.max_total(), 28);
        assert_eq!(ConnectionLimits::new(100, 256, Some(1 << 20)).max_total(), 100);
    }

    #[test]
    fn refusals_answered_at_once_are_bounded() {
        let limits = Arc::new(ConnectionLimits::new(1, 1, Some(RESERVED_DESCRIPTORS + 16)));
        let _open = limits.admit(ip(1)).ok();
        let _answered = limits.admit(ip(1));
        let _second = limits.admit(ip(1));
        assert!(matches!(limits.admit(ip(1)), Err((Refusal::Total, None))));
    }

    #[test]
    fn log_lines_are_throttled_and_count_what_they_skip() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.tick(), Some(1));
        assert_eq!(throttle.tick(), None);
        assert_eq!(throttle.tick(), None);
        *throttle.state.lock().unwrap_or_else(|p| p.into_inner()) = (None, 2);
        assert_eq!(throttle.tick(), Some(3));
    }
}
