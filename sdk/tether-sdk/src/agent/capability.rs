//! [`Capability`]: what a vehicle can do, one per top-level state field; the
//! [`FieldChange`] it is asked to make and the [`Refusal`] it may answer; and
//! [`RecordingCapability`], a ready one that accepts everything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tether_proto::common::v1::FieldStatus;

/// One thing a vehicle can do: the owner of a top-level field of the state
/// (`"windows"`, `"doors"`, `"climate"`, ...), asked to apply each change of
/// its leaves that passed the agent's guards.
///
/// `apply` brings the actual state to the desired value and resolves once it
/// matches; it may take time (the agent keeps its session alive meanwhile).
/// Applying the same value twice must be harmless: these are target states.
pub trait Capability: Send + 'static {
    /// The top-level state field this capability owns, e.g. `"windows"`.
    fn name(&self) -> &str;

    /// Applies one change, or says why not.
    fn apply<'a>(&'a mut self, change: &'a FieldChange) -> BoxFuture<'a, Result<(), Refusal>>;
}

/// A change of one desired field, as handed to a [`Capability`].
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// The field's path, e.g. `"windows.front_left"`.
    pub path: Arc<str>,
    /// The desired value (read through the agent's schema).
    pub value: prost_reflect::Value,
    /// The generation of the write that set it.
    pub generation: u64,
    /// When it stops being desired; `None` for a standing state.
    pub expires_at: Option<SystemTime>,
    /// The W3C trace context of the write, empty if none.
    pub traceparent: String,
}

/// Why a capability did not apply a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// REJECTED (refused without trying) or FAILED (tried and failed).
    pub status: FieldStatus,
    /// A machine-readable reason, e.g. `"precondition:parked"`.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
}

impl Refusal {
    /// The change was refused without trying.
    pub fn rejected(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal { status: FieldStatus::Rejected, reason: reason.into(), message: message.into() }
    }

    /// The change was tried and failed.
    pub fn failed(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal { status: FieldStatus::Failed, reason: reason.into(), message: message.into() }
    }

    /// The change had expired when it arrived.
    pub(crate) fn expired(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal { status: FieldStatus::Expired, reason: reason.into(), message: message.into() }
    }
}

/// A capability that accepts every change (after an optional delay, like a
/// motor taking its time) and records what it applied. For simulators and
/// tests.
#[derive(Debug, Clone)]
pub struct RecordingCapability {
    name: String,
    delay: Duration,
    applied: Arc<Mutex<Vec<FieldChange>>>,
}

impl RecordingCapability {
    /// A capability owning the top-level field `name`.
    pub fn new(name: impl Into<String>) -> Self {
        RecordingCapability { name: name.into(), delay: Duration::ZERO, applied: Arc::default() }
    }

    /// Takes `delay` to apply each change.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The changes applied so far, in order (a shared handle: keep it before
    /// handing the capability to the agent).
    pub fn applied(&self) -> Arc<Mutex<Vec<FieldChange>>> {
        self.applied.clone()
    }
}

impl Capability for RecordingCapability {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply<'a>(&'a mut self, change: &'a FieldChange) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(change.clone());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn recording_capability_records_after_its_delay() {
        let mut cap = RecordingCapability::new("windows").with_delay(Duration::from_millis(300));
        let applied = cap.applied();
        let change = FieldChange {
            path: "windows.front_left".into(),
            value: prost_reflect::Value::U32(40),
            generation: 3,
            expires_at: None,
            traceparent: String::new(),
        };
        let start = tokio::time::Instant::now();
        cap.apply(&change).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(cap.name(), "windows");
        assert_eq!(*applied.lock().unwrap(), vec![change]);
    }

    #[test]
    fn refusals() {
        let r = Refusal::rejected("precondition:parked", "not parked");
        assert_eq!((r.status, r.reason.as_str()), (FieldStatus::Rejected, "precondition:parked"));
        assert_eq!(Refusal::failed("motor", "stuck").status, FieldStatus::Failed);
        assert_eq!(Refusal::expired("expired_on_arrival", "late").status, FieldStatus::Expired);
    }
}
