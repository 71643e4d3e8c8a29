//! [`WatchStream`]: the events of a `WatchVehicle` call as a `Stream`.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tether_proto::app::v1::VehicleEvent;

use crate::Error;

/// The events of one watched vehicle: the current view first, then one event
/// per change (a slow reader gets the latest view, never a backlog).
///
/// Dropping it ends the watch.
#[derive(Debug)]
pub struct WatchStream {
    inner: tonic::Streaming<VehicleEvent>,
}

impl WatchStream {
    pub(crate) fn new(inner: tonic::Streaming<VehicleEvent>) -> Self {
        WatchStream { inner }
    }
}

impl Stream for WatchStream {
    type Item = Result<VehicleEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| item.map(|r| r.map_err(Error::from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_unpin_and_send() {
        fn check<T: Unpin + Send + 'static>() {}
        check::<WatchStream>();
    }
}
