//! Publishing to the stream: one message, or several as one atomic batch
//! (nats-server 2.12+: the `Nats-Batch-*` headers on a stream with
//! `allow_atomic`; async-nats has no API for it), retried with backoff while
//! the stream has no leader (an election answers "no responders" at once).

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;

/// One message of a batch.
#[derive(Debug, Clone)]
pub(super) struct Message {
    /// Its subject.
    pub(super) subject: String,
    /// Its headers.
    pub(super) headers: HeaderMap,
    /// Its body.
    pub(super) payload: Bytes,
}

/// Why a publish did not commit.
#[derive(Debug)]
pub(super) enum Failure {
    /// A compare-and-set did not hold: another writer changed the subject.
    /// Nothing of the batch is stored.
    Conflict(String),
    /// The stream refused it, or could not be reached within the deadline.
    /// Whether it committed is unknown when the last try timed out.
    Failed(String),
}

/// The JetStream error codes of a wrong expected last sequence (10164: the
/// subject was expected empty).
const WRONG_LAST_SEQUENCE: [u64; 2] = [10071, 10164];

/// Publishes `messages` (one, or several as one atomic batch) and returns the
/// stream sequence of the last one, retrying what the stream did not take
/// until `deadline` passes.
pub(super) async fn publish(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    messages: &[Message],
    deadline: Duration,
) -> Result<u64, Failure> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(25);
    loop {
        let tried = match messages {
            [one] => single(js, one).await,
            many => batch(client, many).await,
        };
        match tried {
            Ok(seq) => return Ok(seq),
            Err(Try::Final(failure)) => return Err(failure),
            Err(Try::Again(why)) => {
                if started.elapsed() + backoff >= deadline {
                    return Err(Failure::Failed(format!("no answer from the stream within {deadline:?}: {why}")));
                }
                tracing::debug!(%why, "publish retried");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// One try's outcome when it did not commit.
enum Try {
    Final(Failure),
    Again(String),
}

async fn single(js: &async_nats::jetstream::Context, m: &Message) -> Result<u64, Try> {
    let ack = match js.publish_with_headers(m.subject.clone(), m.headers.clone(), m.payload.clone()).await {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(e) => Err(match e.kind() {
            PublishErrorKind::WrongLastSequence => Try::Final(Failure::Conflict(e.to_string())),
            // async-nats names only 10071; 10164 (expected empty) is the same refusal.
            _ if e.to_string().contains("wrong last sequence") => Try::Final(Failure::Conflict(e.to_string())),
            PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                Try::Again(e.to_string())
            }
            _ => Try::Final(Failure::Failed(e.to_string())),
        }),
    }
}

async fn batch(client: &async_nats::Client, messages: &[Message]) -> Result<u64, Try> {
    let id = format!("{:032x}", rand::random::<u128>());
    let count = messages.len();
    for (n, m) in messages.iter().enumerate() {
        let mut headers = m.headers.clone();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
        let last = n + 1 == count;
        if last {
            headers.insert("Nats-Batch-Commit", "1");
        }
        // The first message and the commit are requests (the first is
        // answered with nothing, or an error; the commit with the publish
        // ack); the ones between need no answer.
        if n == 0 || last {
            let reply = client
                .request_with_headers(m.subject.clone(), headers, m.payload.clone())
                .await
                .map_err(|e| Try::Again(e.to_string()))?;
            if let Some(failure) = refusal(&reply.payload) {
                return Err(failure);
            }
            if last {
                let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
                    .map_err(|e| Try::Final(Failure::Failed(format!("a batch's ack does not parse: {e}"))))?;
                return ack["seq"]
                    .as_u64()
                    .ok_or_else(|| Try::Final(Failure::Failed(format!("a batch's ack has no sequence: {ack}"))));
            }
        } else {
            client
                .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                .await
                .map_err(|e| Try::Again(e.to_string()))?;
        }
    }
    unreachable!("the commit returned")
}

/// The stream's refusal in a reply, if it is one.
fn refusal(payload: &[u8]) -> Option<Try> {
    if payload.is_empty() {
        return None;
    }
    let reply: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let error = reply.get("error")?;
    let code = error["err_code"].as_u64().unwrap_or(0);
    let text = format!("{} (code {code})", error["description"].as_str().unwrap_or("refused"));
    Some(if WRONG_LAST_SEQUENCE.contains(&code) {
        Try::Final(Failure::Conflict(text))
    } else if error["code"].as_u64() == Some(503) {
        // No leader yet, or the stream is catching up.
        Try::Again(text)
    } else {
        Try::Final(Failure::Failed(text))
    })
}
