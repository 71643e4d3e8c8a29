//! Streams in flight on one connection, so that a connection with none for
//! longer than `--max-connection-idle` is closed (GOAWAY): an idle HTTP/2
//! connection costs the node memory and a connection slot, and a client
//! reconnects on its next call. A connection with a stream (every vehicle's)
//! waits on a `Notify` and holds no timer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use tokio::sync::Notify;
use tonic::body::Body;

/// A connection's streams in flight.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    streams: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// Counts one more stream until the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> Active {
        if self.streams.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_waiters();
        }
        Active(self.clone())
    }

    /// Resolves once the connection has had no stream for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        loop {
            // Registered before the check, so no change is missed between.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.streams.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            // Boxed: only idle connections pay for a timer; a connection with a
            // stream (every vehicle's) keeps this future small.
            tokio::select! {
                () = Box::pin(tokio::time::sleep(limit)) => {
                    if self.streams.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// One stream in flight.
#[derive(Debug)]
pub(crate) struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// A response whose body holds its stream's [`Active`] until it ends.
pub(crate) fn tracked(response: Response<Body>, active: Active) -> Response<Body> {
    response.map(|inner| Body::new(TrackedBody { inner, _active: active }))
}

struct TrackedBody {
    inner: Body,
    _active: Active,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_stream_ends_and_the_limit_passes() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_secs(60);
        let stream = activity.begin();
        let started = tokio::time::Instant::now();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(limit).await }
        });
        tokio::time::sleep(limit * 3).await;
        assert!(!idle.is_finished(), "a connection with a stream is never idle");
        drop(stream);
        let ended = tokio::time::Instant::now();
        idle.await.unwrap();
        assert!(ended.elapsed() >= limit && started.elapsed() >= limit * 4);

        // A stream that comes and goes restarts the count.
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(limit).await }
        });
        tokio::time::sleep(limit / 2).await;
        drop(activity.begin());
        let last = tokio::time::Instant::now();
        idle.await.unwrap();
        assert!(last.elapsed() >= limit);
    }
}
