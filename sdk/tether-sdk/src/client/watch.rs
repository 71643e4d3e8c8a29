//! [`WatchStream`]: the events of a watched vehicle as a `Stream` that
//! outlives its connection's troubles: when the server ends the watch because
//! the caller's token expired (UNAUTHENTICATED) or the node went away
//! (UNAVAILABLE), it reconnects — with a fresh token from the client's token
//! source — and resumes from the last generation it delivered. Events are
//! complete views, so nothing is missed across a resume.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
use tether_proto::app::v1::{VehicleEvent, WatchVehicleRequest};
use tonic::Code;

use crate::{Client, Error};

/// Consecutive failed reconnects before the stream gives up with the error.
const MAX_RECONNECTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The events of one watched vehicle: the current view first, then one event
/// per change (a slow reader gets the latest view, never a backlog). Resumes
/// by itself after an expired token or a restarted node; ends with an error
/// only when it cannot. Dropping it ends the watch.
pub struct WatchStream {
    inner: BoxStream<'static, Result<VehicleEvent, Error>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

struct State {
    client: Client,
    vehicle_id: String,
    last_generation: u64,
    stream: Option<tonic::Streaming<VehicleEvent>>,
    done: bool,
}

/// Whether a watch that ended with `code` should be resumed.
fn resumable(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::Unavailable)
}

async fn open(client: &Client, vehicle_id: &str, from: u64) -> Result<tonic::Streaming<VehicleEvent>, Error> {
    let request = client.request(WatchVehicleRequest { vehicle_id: vehicle_id.to_string(), from_generation: from })?;
    Ok(client.raw().watch_vehicle(request).await?.into_inner())
}

impl WatchStream {
    /// Opens the watch (failing at once if the first call fails).
    pub(crate) async fn open(client: Client, vehicle_id: String, from_generation: u64) -> Result<Self, Error> {
        let stream = open(&client, &vehicle_id, from_generation).await?;
        let state = State { client, vehicle_id, last_generation: from_generation, stream: Some(stream), done: false };
        let inner = futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let mut failures = 0;
            loop {
                let stream = match st.stream.as_mut() {
                    Some(stream) => stream,
                    None => match open(&st.client, &st.vehicle_id, st.last_generation).await {
                        Ok(stream) => st.stream.insert(stream),
                        Err(e) => match e.code() {
                            Some(code) if resumable(code) && failures < MAX_RECONNECTS => {
                                failures += 1;
                                tokio::time::sleep(backoff(failures)).await;
                                continue;
                            }
                            _ => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        },
                    },
                };
                match stream.message().await {
                    Ok(Some(event)) => {
                        if let Some(v) = &event.vehicle {
                            st.last_generation = v.generation;
                        }
                        return Some((Ok(event), st));
                    }
                    Ok(None) => return None,
                    Err(status) if resumable(status.code()) && failures < MAX_RECONNECTS => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "watch ended; resuming");
                        st.stream = None;
                    }
                    Err(status) => {
                        st.done = true;
                        return Some((Err(status.into()), st));
                    }
                }
            }
        });
        Ok(WatchStream { inner: Box::pin(inner) })
    }
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << failures.min(5)).min(MAX_BACKOFF)
}

impl Stream for WatchStream {
    type Item = Result<VehicleEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_unpin_and_send_and_resumes_only_what_a_reconnect_can_fix() {
        fn check<T: Unpin + Send + 'static>() {}
        check::<WatchStream>();
        assert!(resumable(Code::Unauthenticated) && resumable(Code::Unavailable));
        assert!(!resumable(Code::PermissionDenied) && !resumable(Code::NotFound));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }
}
