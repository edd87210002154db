use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// No data arrived on a body for its idle timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyIdleTimeout {
    /// The timeout that passed.
    pub after: Duration,
}

impl fmt::Display for BodyIdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no body data for {:?}", self.after)
    }
}

impl std::error::Error for BodyIdleTimeout {}

pin_project! {
    /// A body that fails with [`BodyIdleTimeout`] when its inner body makes no progress for
    /// `timeout`; every frame starts the wait anew, so a steady transfer of any length is
    /// never cut. The timer is armed at the first pending poll and then left alone: a frame
    /// only notes the time, and a timer that rings early is moved to the real deadline, so a
    /// streaming body costs one timer, not one per frame.
    ///
    /// Needs a tokio runtime with time enabled.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    /// use tower_session_persistence::edge::IdleTimeoutBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let body = IdleTimeoutBody::new(http_body_util::Full::new(&b"hello"[..]), Duration::from_secs(30));
    /// assert_eq!(body.collect().await?.to_bytes(), "hello");
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // When the last frame came, once a timer is armed (before that, no one is waiting).
        progress: Option<Instant>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// `inner`, failing after `timeout` without progress.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self { inner, timeout, progress: None, sleep: None }
    }

    /// The body inside.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if this.sleep.is_some() {
                    *this.progress = Some(Instant::now());
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.sleep.is_none() {
                    let now = Instant::now();
                    *this.progress = Some(now);
                    this.sleep.set(Some(tokio::time::sleep_until(now + *this.timeout)));
                }
                let Some(mut sleep) = this.sleep.as_pin_mut() else { return Poll::Pending };
                loop {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let deadline = this.progress.unwrap_or_else(Instant::now) + *this.timeout;
                    if deadline <= sleep.deadline() {
                        return Poll::Ready(Some(Err(Box::new(BodyIdleTimeout {
                            after: *this.timeout,
                        }))));
                    }
                    // Frames came since it was set: wait for the real deadline.
                    sleep.as_mut().reset(deadline);
                }
            }
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
    use std::future::poll_fn;

    use bytes::Bytes;

    use super::*;

    /// A body that yields a frame every `every`, `count` times.
    struct Trickle {
        every: Duration,
        left: usize,
        sleep: Pin<Box<Sleep>>,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            std::task::ready!(self.sleep.as_mut().poll(cx));
            self.left -= 1;
            let next = Instant::now() + self.every;
            self.sleep.as_mut().reset(next);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    fn trickle(every: Duration, left: usize) -> Trickle {
        Trickle { every, left, sleep: Box::pin(tokio::time::sleep(every)) }
    }

    async fn drain<B: Body<Error = Box<dyn std::error::Error + Send + Sync>> + Unpin>(
        mut body: B,
    ) -> Result<usize, String> {
        let mut frames = 0;
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame.map_err(|e| e.to_string())?;
            frames += 1;
        }
        Ok(frames)
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_longer_than_the_timeout_is_never_cut() {
        let started = Instant::now();
        let body =
            IdleTimeoutBody::new(trickle(Duration::from_secs(4), 20), Duration::from_secs(5));
        assert_eq!(drain(Box::pin(body)).await, Ok(20));
        assert!(started.elapsed() >= Duration::from_secs(80));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let started = Instant::now();
        let body = IdleTimeoutBody::new(trickle(Duration::from_secs(6), 3), Duration::from_secs(5));
        let err = drain(Box::pin(body)).await.unwrap_err();
        assert!(err.contains("no body data"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
