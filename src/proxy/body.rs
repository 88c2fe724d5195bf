//! The request body on its way to ComfyUI: streamed, size-limited, and announcing when it
//! has been fully sent (the response timeout starts then, so long uploads never time out).
//! Its errors are the client's ([`TooLarge`], [`ClientBodyFailed`]): the proxy tells them from
//! the backend's by finding these in the error's source chain.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

/// The body grew past the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// The client's body could not be read (malformed chunking, the client went away, an upload
/// refused while it streamed).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct ClientBodyFailed(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Wraps a body: counts bytes against `limit` and fires `sent` at the end (or when dropped).
pub struct ForwardBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    sent: Option<oneshot::Sender<()>>,
}

impl<B> ForwardBody<B> {
    /// Wraps `inner`; the receiver resolves once the body is done.
    pub fn new(inner: B, limit: u64) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self { inner, seen: 0, limit, sent: Some(tx) }, rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl<B> Body for ForwardBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        this.finish();
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(Box::new(ClientBodyFailed(e.into())))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ForwardBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn signals_when_the_body_is_sent() {
        let (body, sent) = ForwardBody::new(Full::new(Bytes::from_static(b"hello")), 10);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        sent.await.unwrap();
    }

    #[tokio::test]
    async fn bodies_over_the_limit_fail() {
        let (body, _sent) = ForwardBody::new(Full::new(Bytes::from(vec![0u8; 11])), 10);
        let err = body.collect().await.unwrap_err();
        assert!(err.downcast_ref::<TooLarge>().is_some());
    }

    #[tokio::test]
    async fn errors_of_the_client_body_are_marked_as_the_clients() {
        let failing = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"hel"))),
            Err(std::io::Error::other("client went away")),
        ]));
        let (body, sent) = ForwardBody::new(failing, 10);
        let err = body.collect().await.unwrap_err();
        let failed = err.downcast_ref::<ClientBodyFailed>().unwrap();
        assert!(failed.to_string().contains("client went away"), "{failed}");
        sent.await.unwrap();
    }
}
