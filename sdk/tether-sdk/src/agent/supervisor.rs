//! The [`Supervisor`]: the agent's task. Runs sessions one after another,
//! reconnecting with capped exponential backoff and full jitter (or after the
//! server's hint), until the agent is stopped or superseded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use tether_proto::vehicle::v1::GoodbyeReason;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::session::{self, SessionEnd};
use super::worker::Worker;
use super::{AgentEvent, Shared};
use crate::backoff;
use crate::client::ConnectError;
use crate::error::chain;

/// A session that lasted this long after Welcome resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Where sessions get their channel.
#[derive(Debug)]
pub(crate) enum Connector {
    /// A fresh connection per session (a dead link is never reused) to the
    /// first endpoint that answers, from the one that answered last: the
    /// nodes of a cluster, any of which serves the vehicle.
    Endpoints(Vec<Endpoint>, AtomicUsize),
    /// A channel shared with other agents of the process.
    Channel(Channel),
    /// The configuration is unusable; the message says why.
    Invalid(String),
}

/// The agent's task.
pub(crate) struct Supervisor {
    pub(crate) vehicle_id: String,
    pub(crate) agent_version: String,
    pub(crate) clock_offset_millis: i64,
    pub(crate) connector: Connector,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) worker: Worker,
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: broadcast::Sender<AgentEvent>,
    pub(crate) cancel: CancellationToken,
}

impl Supervisor {
    /// Runs until stopped, superseded, or misconfigured.
    pub(crate) async fn run(mut self) {
        if let Connector::Invalid(problem) = &self.connector {
            tracing::error!(%problem, "agent not started");
            let _ = self.events.send(AgentEvent::Disconnected { error: problem.clone() });
            return;
        }
        let mut failures: u32 = 0;
        loop {
            let (end, welcomed_at) = self.session().await;
            // A snapshot being applied is finished first, so the next Hello
            // reports its generation and actual state.
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.worker.settle() => {}
            }
            if welcomed_at.is_some_and(|at| at.elapsed() >= STABLE_SESSION) {
                failures = 0;
            }
            // A node that refused the session, or sent it away, is tried last
            // next time: another node of the cluster may serve it.
            let sent_away = matches!(&end, SessionEnd::Goodbye { reason: GoodbyeReason::ShuttingDown, .. });
            if welcomed_at.is_none() || sent_away {
                self.connector.rotate();
            }
            let delay = match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Goodbye { reason, message, reconnect_after } => {
                    tracing::info!(reason = reason.as_str_name(), %message, "tetherd said goodbye");
                    let _ = self.events.send(AgentEvent::Goodbye { reason, message });
                    if reason == GoodbyeReason::Superseded {
                        tracing::info!("superseded by a newer connection; stopping");
                        return;
                    }
                    match reconnect_after {
                        Some(hint) => after_hint(hint, &mut rand::rng()),
                        None => self.backoff_delay(failures),
                    }
                }
                SessionEnd::Lost(error) => {
                    // Loud once, then quiet while the outage lasts.
                    if failures == 0 || welcomed_at.is_some() {
                        tracing::warn!(%error, "session lost; reconnecting");
                    } else {
                        tracing::debug!(%error, failures, "still cannot reach tetherd");
                    }
                    let _ = self.events.send(AgentEvent::Disconnected { error });
                    self.backoff_delay(failures)
                }
            };
            failures = failures.saturating_add(1);
            tracing::debug!(?delay, failures, "reconnecting after a delay");
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Connects and runs one session.
    async fn session(&mut self) -> (SessionEnd, Option<Instant>) {
        let channel = tokio::select! {
            _ = self.cancel.cancelled() => return (SessionEnd::Shutdown, None),
            channel = connect(&self.connector) => channel,
        };
        let channel = match channel {
            Ok(channel) => channel,
            Err(error) => return (SessionEnd::Lost(error), None),
        };
        let ctx = session::Context {
            vehicle_id: &self.vehicle_id,
            agent_version: &self.agent_version,
            clock_offset_millis: self.clock_offset_millis,
            shared: &self.shared,
            events: &self.events,
            cancel: &self.cancel,
        };
        let span = tracing::info_span!("session", session_id = tracing::field::Empty);
        session::run(&ctx, channel, &mut self.worker).instrument(span).await
    }

    fn backoff_delay(&self, failures: u32) -> Duration {
        let (min, max) = self.backoff;
        backoff::full_jitter(backoff::ceiling(min, max, failures), &mut rand::rng())
    }
}

impl Connector {
    /// Starts the next connection from the endpoint after the one that
    /// answered last.
    fn rotate(&self) {
        if let Connector::Endpoints(endpoints, last) = self {
            let next = (last.load(Ordering::Relaxed) + 1) % endpoints.len().max(1);
            last.store(next, Ordering::Relaxed);
        }
    }
}

/// The channel of the next session.
async fn connect(connector: &Connector) -> Result<Channel, String> {
    match connector {
        Connector::Channel(channel) => Ok(channel.clone()),
        Connector::Endpoints(endpoints, last) => {
            let first = last.load(Ordering::Relaxed);
            let mut errors = Vec::new();
            for i in (0..endpoints.len()).map(|n| (first + n) % endpoints.len()) {
                let endpoint = &endpoints[i];
                match crate::client::connect_bounded(endpoint).await {
                    Ok(channel) => {
                        last.store(i, Ordering::Relaxed);
                        return Ok(channel);
                    }
                    Err(ConnectError::Transport(e)) => errors.push(format!("{}: {}", endpoint.uri(), chain(&e))),
                    Err(ConnectError::TimedOut) => errors.push(format!(
                        "{}: no TCP, TLS and HTTP/2 handshake within {:?}",
                        endpoint.uri(),
                        crate::client::CONNECT_BOUND
                    )),
                }
            }
            Err(format!("cannot connect to tetherd: {}", errors.join("; ")))
        }
        Connector::Invalid(problem) => Err(problem.clone()),
    }
}

/// The wait after a Goodbye's hint: at least the hint, plus up to a quarter
/// more so that a fleet told to come back does not come back at once.
pub(crate) fn after_hint(hint: Duration, rng: &mut impl Rng) -> Duration {
    backoff::uniform(hint, hint + hint / 4, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_a_lower_bound() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let d = after_hint(Duration::from_secs(4), &mut rng);
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(5), "{d:?}");
        }
        assert_eq!(after_hint(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
