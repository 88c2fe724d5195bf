//! The slowest request body accepted: while the gateway waits for a body, each `period` of
//! waiting must bring at least `min_bytes_per_sec × period` bytes, or the body fails (and the
//! connection closes after the answer). Time the gateway spends not reading (a backend
//! taking an upload slowly) does not count, so an upload that keeps streaming is never cut,
//! however long it takes; one that trickles or stalls is.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The minimum rate.
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    /// Bytes per second; 0 disables the rule.
    pub min_bytes_per_sec: u64,
    /// The window the rate is measured over.
    pub period: Duration,
}

impl BodyRate {
    /// Wraps `body`, unless the rule is disabled.
    pub fn apply<B>(self, body: B) -> axum::body::Body
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.min_bytes_per_sec == 0 {
            return axum::body::Body::new(body);
        }
        axum::body::Body::new(MinRateBody {
            inner: body,
            rate: self,
            window_bytes: 0,
            window_waited: Duration::ZERO,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(self.period)),
        })
    }

    fn bytes_per_period(&self) -> u64 {
        let per_period = u128::from(self.min_bytes_per_sec) * self.period.as_millis() / 1000;
        u64::try_from(per_period).unwrap_or(u64::MAX)
    }
}

/// The body came slower than `server.min_body_rate`.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {min_bytes_per_sec} bytes per second")]
pub struct BodyTooSlow {
    /// The configured minimum.
    pub min_bytes_per_sec: u64,
}

struct MinRateBody<B> {
    inner: B,
    rate: BodyRate,
    /// Bytes received in the current window.
    window_bytes: u64,
    /// Time spent waiting for the client in the current window, before `waiting_since`.
    window_waited: Duration,
    /// Since when the gateway has been waiting for the client, if it is.
    waiting_since: Option<Instant>,
    /// Fires when the current window's waiting time is used up.
    timer: Pin<Box<Sleep>>,
}

impl<B> MinRateBody<B> {
    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.window_waited += since.elapsed();
        }
    }

    /// Ends the window if its waiting time is used up: an error if it brought too little.
    fn end_window_if_over(&mut self) -> Result<(), BodyTooSlow> {
        if self.window_waited < self.rate.period {
            return Ok(());
        }
        if self.window_bytes < self.rate.bytes_per_period() {
            return Err(BodyTooSlow { min_bytes_per_sec: self.rate.min_bytes_per_sec });
        }
        self.window_bytes = 0;
        self.window_waited = Duration::ZERO;
        Ok(())
    }
}

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
                this.stop_waiting();
                if let Some(Ok(frame)) = &frame {
                    this.window_bytes += frame.data_ref().map_or(0, |data| data.len() as u64);
                    this.end_window_if_over()?;
                }
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            let now = Instant::now();
            if this.waiting_since.is_none() {
                this.waiting_since = Some(now);
                let left = this.rate.period.saturating_sub(this.window_waited);
                this.timer.as_mut().reset(now + left);
            }
            ready!(this.timer.as_mut().poll(cx));
            this.stop_waiting();
            this.end_window_if_over()?;
            // A new window: poll again, so the timer is armed for it.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    const RATE: BodyRate = BodyRate { min_bytes_per_sec: 1000, period: Duration::from_millis(200) };

    /// A body fed by a channel, as a client would send it.
    fn body() -> (mpsc::Sender<Bytes>, axum::body::Body) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let frames = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|data| data.map(|data| Ok::<_, std::convert::Infallible>(Frame::data(data))))
        });
        (tx, RATE.apply(StreamBody::new(frames)))
    }

    #[tokio::test]
    async fn a_trickling_body_fails_after_one_period() {
        let (tx, body) = body();
        let start = Instant::now();
        tokio::spawn(async move {
            while tx.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("slower than 1000 bytes"), "{err}");
        assert!(start.elapsed() >= RATE.period && start.elapsed() < RATE.period * 2);
    }

    #[tokio::test]
    async fn a_body_that_keeps_coming_is_never_cut() {
        let (tx, body) = body();
        tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Bytes::from(vec![0; 250])).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 5000);
    }

    #[tokio::test]
    async fn time_the_gateway_spends_not_reading_does_not_count() {
        let (tx, mut body) = body();
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        assert!(body.frame().await.is_some());
        tokio::time::sleep(RATE.period * 3).await;
        tx.send(Bytes::from(vec![0; 300])).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 300);
    }
}
