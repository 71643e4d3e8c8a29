//! [`FaultProxy`]: a TCP proxy on loopback, between simulated vehicles and
//! tetherd, that makes the link flaky for real — it resets connections,
//! stalls them and delays every chunk — because this machine has no
//! `tc netem` (see FIELD-NOTES.md): faults have to be made in user space.
//!
//! Each accepted connection gets its own upstream connection and its own
//! fault schedule. A link ends as a whole: when either side closes or fails,
//! both are closed (HTTP/2 has no use for a half-closed connection).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::faults::{FaultCounters, Faults};

/// Bytes read at once from one side.
const CHUNK: usize = 16 * 1024;
/// Chunks read but not yet written, per direction: what is "in the air"
/// during a delay or a stall. Beyond it the proxy stops reading, and TCP's
/// flow control pushes back on the sender.
const CHUNKS_IN_FLIGHT: usize = 64;
/// How long to wait before accepting again after an accept error (at the
/// open-files limit an immediate retry would spin a core).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running proxy. Dropping it stops it; [`close`](Self::close) also waits
/// until every link is closed.
#[derive(Debug)]
pub struct FaultProxy {
    local_addr: SocketAddr,
    tasks: TaskTracker,
    _stop: DropGuard,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`
    /// through `faults`, counting them in `counters`.
    pub async fn start(upstream: SocketAddr, faults: Faults, counters: Arc<FaultCounters>) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let accept = Accept { listener, upstream, faults, counters, stop: stop.clone(), tasks: tasks.clone() };
        tasks.spawn(accept.run());
        tracing::debug!(%local_addr, %upstream, %faults, "proxy listening");
        Ok(FaultProxy { local_addr, tasks, _stop: stop.drop_guard() })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every link, and waits until all are closed.
    pub async fn close(self) {
        let FaultProxy { tasks, _stop: stop, .. } = self;
        drop(stop);
        tasks.close();
        tasks.wait().await;
    }
}

// === impl Accept ===

/// The accept loop of one proxy.
struct Accept {
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Faults,
    counters: Arc<FaultCounters>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Accept {
    async fn run(self) {
        loop {
            let accepted = tokio::select! {
                // The proxy was closed: links see the same token and close too.
                _ = self.stop.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((client, peer)) => {
                    self.counters.add_connection();
                    let link = Link {
                        upstream: self.upstream,
                        faults: self.faults,
                        counters: self.counters.clone(),
                        stop: self.stop.clone(),
                    };
                    self.tasks.spawn(link.run(client, peer));
                }
                Err(error) => {
                    tracing::warn!(%error, "proxy cannot accept; retrying shortly");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
}

// === impl Link ===

/// One proxied connection.
struct Link {
    upstream: SocketAddr,
    faults: Faults,
    counters: Arc<FaultCounters>,
    stop: CancellationToken,
}

/// Why a link ended.
#[derive(Debug, PartialEq, Eq)]
enum LinkEnd {
    /// A side closed or failed.
    Closed,
    /// The fault schedule cut it.
    Cut,
    /// The proxy is closing.
    Stopped,
}

impl Link {
    async fn run(self, mut client: TcpStream, peer: SocketAddr) {
        let mut server = tokio::select! {
            _ = self.stop.cancelled() => return,
            server = TcpStream::connect(self.upstream) => match server {
                Ok(server) => server,
                Err(error) => {
                    // Dropping the client's socket tells it, as a refused
                    // connect to the server itself would.
                    tracing::debug!(%peer, %error, "proxy cannot reach the server");
                    return;
                }
            },
        };
        for socket in [&client, &server] {
            if let Err(error) = socket.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        }
        // "Stalled until": both directions hold their chunks until then.
        let (stall, stalled) = watch::channel(Instant::now());
        let end = {
            let (client_in, client_out) = client.split();
            let (server_in, server_out) = server.split();
            tokio::select! {
                _ = self.stop.cancelled() => LinkEnd::Stopped,
                () = pump(client_in, server_out, self.faults.delay, stalled.clone()) => LinkEnd::Closed,
                () = pump(server_in, client_out, self.faults.delay, stalled) => LinkEnd::Closed,
                () = schedule(self.faults, &self.counters, stall) => LinkEnd::Cut,
            }
        };
        if end == LinkEnd::Cut {
            // A reset, not a polite FIN: both ends learn at once that the
            // link is gone, and nothing still buffered gets through.
            for socket in [&client, &server] {
                if let Err(error) = socket.set_zero_linger() {
                    tracing::debug!(%error, "cannot set SO_LINGER");
                }
            }
            tracing::debug!(%peer, "fault: connection cut");
        }
    }
}

/// Forwards `from` to `to`, each chunk `delay` after it was read and never
/// during a stall. Ends when `from` is at its end and everything read was
/// written, or when `to` fails.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, delay: Duration, mut stalled: watch::Receiver<Instant>) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Dropping `queue` on return lets the writer drain and end.
            if queue.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            wait_out_stall(&mut stalled).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::pin!(read, write);
    tokio::select! {
        // The writer failed (or drained after the reader ended).
        () = &mut write => {}
        // The reader is at its end: deliver what is in flight, then end.
        () = &mut read => write.await,
    }
}

/// Returns once no stall is in force (stalls may be extended meanwhile).
async fn wait_out_stall(stalled: &mut watch::Receiver<Instant>) {
    loop {
        let until = *stalled.borrow_and_update();
        if until <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(until).await;
    }
}

/// Runs the link's fault schedule: begins stalls as they fall due, and
/// returns when it is time to cut the link (never, at a zero cut rate).
async fn schedule(faults: Faults, counters: &FaultCounters, stall: watch::Sender<Instant>) {
    let after = |per_minute: f64| Faults::next_after(per_minute, &mut rand::rng()).map(|d| Instant::now() + d);
    let cut_at = after(faults.drop_per_minute);
    let stall_rate = if faults.stall_for.is_zero() { 0.0 } else { faults.stall_per_minute };
    let mut stall_at = after(stall_rate);
    loop {
        tokio::select! {
            () = at(cut_at) => {
                counters.add_drop();
                return;
            }
            () = at(stall_at) => {
                counters.add_stall();
                let until = Instant::now() + faults.stall_for;
                tracing::debug!(stall_for = ?faults.stall_for, "fault: link stalled");
                stall.send_replace(until);
                // The next stall is counted from the end of this one.
                stall_at = Faults::next_after(stall_rate, &mut rand::rng()).map(|d| until + d);
            }
        }
    }
}

/// Sleeps until `deadline`; forever if there is none.
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
        let start = Instant::now();
        stream.write_all(message).await.unwrap();
        let mut back = vec![0; message.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
        start.elapsed()
    }

    #[tokio::test]
    async fn forwards_with_the_added_delay() {
        let counters = Arc::new(FaultCounters::default());
        let faults = Faults { delay: Duration::from_millis(30), ..Faults::NONE };
        let proxy = FaultProxy::start(echo_server().await, faults, counters.clone()).await.unwrap();
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let rtt = round_trip(&mut stream, b"hello").await;
        // Delayed one way in each direction.
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        assert_eq!(counters.read().connections, 1);
        proxy.close().await;
        // Closing the proxy closed the link.
        let mut buf = [0; 1];
        assert!(matches!(stream.read(&mut buf).await, Ok(0) | Err(_)));
    }

    #[tokio::test]
    async fn stalls_hold_traffic_and_cuts_reset_the_connection() {
        let counters = Arc::new(FaultCounters::default());
        // Stalls come very often here; each holds traffic for 200 ms.
        let faults = Faults { stall_per_minute: 6000.0, stall_for: Duration::from_millis(200), ..Faults::NONE };
        let proxy = FaultProxy::start(echo_server().await, faults, counters.clone()).await.unwrap();
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        // Stalls start at random times, so a given round trip may miss them
        // all: ping until one is held for at least half a stall, within a
        // bound far beyond the ≈ 10 ms mean gap between stalls.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut slowest = Duration::ZERO;
        let mut pings = 0;
        while slowest < Duration::from_millis(100) && Instant::now() < deadline {
            slowest = slowest.max(round_trip(&mut stream, b"ping").await);
            pings += 1;
        }
        assert!(slowest >= Duration::from_millis(100), "slowest of {pings} round trips: {slowest:?}");
        assert!(counters.read().stalls >= 1);
        proxy.close().await;

        let faults = Faults { drop_per_minute: 6000.0, ..Faults::NONE };
        let proxy = FaultProxy::start(echo_server().await, faults, counters.clone()).await.unwrap();
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(counters.read().drops, 1);
        proxy.close().await;
    }
}
