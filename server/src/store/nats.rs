//! The cluster's store: vehicle records, idempotency keys and audit records
//! in one replicated NATS JetStream stream, shared by every node.
//!
//! - A save is one atomic batch: the vehicle's key changes and audit
//!   records, then its record, the record guarded by compare-and-set on the
//!   stream sequence of the record this node last knew (its revision). A
//!   save made on a stale record is refused whole: the store reloads the
//!   vehicle with what is durable and the caller applies its call again on
//!   top ([`StoreError::conflict`]).
//! - Each node follows the stream (one ordered consumer over the record and
//!   key subjects, never one per vehicle) and keeps a durable image of every
//!   vehicle: a change committed by another node reloads the vehicle in the
//!   hub, which wakes its session, waiting calls and watchers here.
//! - A vehicle has one save in flight at a time; saves queued behind it are
//!   sent as one batch (the cluster's group commit).
//! - Keys and audit records carry a per-message TTL (the idempotency window,
//!   the audit retention): JetStream ages them out, no node sweeps.

mod lease;
mod presence;
mod publish;
mod subject;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, oneshot, watch};

use crate::stats::ClusterStats;

use self::publish::{Failure, Message, publish};
use self::subject::{Kind, Subjects};
use super::{
    AuditEntry, Claim, Claimed, Durable, DurableRows, PresenceHook, RecordSave, Reload, ReloadCause, ReloadHook,
    RemotePresence, Store, StoreError, StoreHealth, StoredRows,
};

/// The oldest nats-server with atomic batches and per-message TTLs.
const MIN_SERVER: (u64, u64) = (2, 12);
/// The oldest JetStream API level with atomic batch publish.
const MIN_API_LEVEL: usize = 2;
/// The header naming the node that published a record.
const NODE_HEADER: &str = "Tether-Node";
/// How long a reload waits for this node's feed to reach what the stream's
/// leader holds.
const CATCH_UP: Duration = Duration::from_secs(5);

/// How a node reaches the cluster's stream.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// nats-server URLs (any of the cluster's).
    pub servers: Vec<String>,
    /// The stream's name; its subjects are `<stream in lower case>.>`.
    pub stream: String,
    /// Replicas the stream must have (3 in production: a write is
    /// acknowledged once a majority stored it).
    pub replicas: usize,
    /// This node's name (unique in the cluster).
    pub node: String,
    /// How long idempotency keys are kept.
    pub key_ttl: Duration,
    /// How long audit records are kept.
    pub audit_ttl: Duration,
    /// How long a save may wait for the stream (a leader election) before it
    /// is refused as unavailable.
    pub publish_deadline: Duration,
    /// A node not heard from for this long is gone (renewed every third).
    pub lease: Duration,
}

/// A vehicle as this node knows it is durable, and its saves.
#[derive(Debug, Default)]
struct Vehicle {
    /// Stream sequence of its record (0: none): the revision a save's
    /// compare-and-set expects.
    rev: u64,
    /// The highest stream sequence applied to this image.
    applied: u64,
    /// Its encoded record.
    record: Option<Bytes>,
    /// Its keys.
    keys: BTreeMap<Arc<str>, Bytes>,
    /// Saves made with a lower epoch are refused (the vehicle was reloaded
    /// since they were made).
    floor: u64,
    /// The highest floor the hub has been given (its reload done): a save
    /// made below it is refused without a try. One below `floor` only is
    /// still tried (the reload that raised `floor` may not be in the hub
    /// yet, and a caller told of the conflict would apply its call again on
    /// what it had); its compare-and-set fails.
    hooked: u64,
    /// The revision the hub's record stands on: that of the rows it was last
    /// given, moved on by each of its saves committed since. A save's
    /// compare-and-set expects it (never `rev`, which the feed may have
    /// moved past a change the hub has not been given yet).
    base: u64,
    /// Saves waiting for the one in flight.
    queue: Vec<Pending>,
    /// Whether a save is in flight (a task drains the queue).
    busy: bool,
    /// Stream sequence of its last presence message.
    pres_rev: u64,
    /// Claims of this node on their way to the stream.
    claiming: u32,
    /// This node's claim: its session and its sequence (the fencing token).
    own: Option<(u64, u64)>,
    /// Another node's live claim, as the last presence message says.
    claimed_by: Option<presence::Claimant>,
}

/// A reload for the hub from a vehicle's image, with the revision of its
/// rows (none when the rows are unknown).
struct Delivery {
    reload: Reload,
    rev: Option<u64>,
}

impl Vehicle {
    /// A reload of the hub's vehicle from this image, at its floor.
    fn delivery(&self, id: &Arc<str>, cause: ReloadCause, known: bool) -> Delivery {
        let rows = if known { DurableRows::Known(self.rows(id)) } else { DurableRows::Unknown };
        Delivery {
            reload: Reload { vehicle: id.clone(), cause, valid_from: self.floor, rows },
            rev: known.then_some(self.rev),
        }
    }

    fn rows(&self, vehicle: &Arc<str>) -> Option<StoredRows> {
        let record = self.record.clone()?;
        Some(StoredRows {
            vehicle: vehicle.clone(),
            record,
            keys: self.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            damage: None,
        })
    }
}

/// A save waiting to be published.
#[derive(Debug)]
struct Pending {
    save: RecordSave,
    audit: Option<AuditEntry>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    subjects: Subjects,
    options: NatsOptions,
    vehicles: Mutex<HashMap<Arc<str>, Vehicle>>,
    /// Woken whenever the feed applied a message.
    fed: Notify,
    /// Woken when the hub set its hooks: the feed starts then.
    ready: Notify,
    hook: OnceLock<ReloadHook>,
    presence_hook: OnceLock<PresenceHook>,
    /// Other nodes' sessions found at the load, for the presence hook.
    loaded_presence: Mutex<Vec<RemotePresence>>,
    health: watch::Sender<StoreHealth>,
    /// This node could not renew its lease for a lease.
    isolated: watch::Sender<bool>,
    /// Other nodes' leases.
    leases: Mutex<lease::Leases>,
    /// This start's count (0 until counted).
    boot: AtomicU32,
    /// Figures for the node's metrics.
    stats: Arc<ClusterStats>,
    closed: AtomicBool,
    runtime: tokio::runtime::Handle,
}

/// The store of a cluster node.
pub struct NatsStore {
    shared: Arc<Shared>,
    loaded: Mutex<Option<Vec<StoredRows>>>,
    boot: u32,
    feed: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore").field("stream", &self.shared.options.stream).finish()
    }
}

impl NatsStore {
    /// Connects, checks that the servers and the stream can keep tether's
    /// promises (creating the stream if there is none), loads every
    /// vehicle and starts following the stream.
    pub async fn connect(options: NatsOptions, connect: async_nats::ConnectOptions) -> Result<Self, StoreError> {
        let (health, _) = watch::channel(StoreHealth::Healthy);
        let events = health.clone();
        let connect = connect.name(format!("tetherd {}", options.node)).event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("lost the connection to NATS");
                        events.send_replace(StoreHealth::Degraded("no connection to NATS".into()));
                    }
                    async_nats::Event::Connected => {
                        tracing::info!("connected to NATS");
                        events.send_replace(StoreHealth::Healthy);
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
        let servers: Vec<async_nats::ServerAddr> = options
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| StoreError::new(format!("`{s}` is not a NATS server address: {e}"))))
            .collect::<Result<_, _>>()?;
        let client = connect
            .connect(servers)
            .await
            .map_err(|e| StoreError::new(format!("cannot connect to NATS ({}): {e}", options.servers.join(","))))?;
        check_server(&client.server_info())?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(&options.stream.to_ascii_lowercase());
        check_api_level(&js).await?;
        let stream = open_stream(&js, &options, &subjects).await?;
        let shared = Arc::new(Shared {
            client,
            js,
            stream,
            subjects,
            options,
            vehicles: Mutex::new(HashMap::new()),
            fed: Notify::new(),
            ready: Notify::new(),
            hook: OnceLock::new(),
            presence_hook: OnceLock::new(),
            loaded_presence: Mutex::new(Vec::new()),
            health,
            isolated: watch::channel(false).0,
            leases: Mutex::new(lease::Leases::default()),
            boot: AtomicU32::new(0),
            stats: Arc::default(),
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        let boot = until_ready(|| count_boot(&shared)).await?;
        shared.boot.store(boot, Ordering::Relaxed);
        let (rows, last) = until_ready(|| load(&shared)).await?;
        tokio::spawn(shared.clone().keep_lease());
        let feed = tokio::spawn(follow(shared.clone(), last + 1));
        Ok(NatsStore { shared, loaded: Mutex::new(Some(rows)), boot, feed })
    }
}

/// Runs `step` again while it fails for want of a JetStream leader (a
/// cluster that just formed, an election): its requests time out or find no
/// responders meanwhile. The caller bounds the whole start.
async fn until_ready<T, F, Fut>(mut step: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match step().await {
            Err(e)
                if ["timed out", "no responders", "temporarily unavailable"].iter().any(|t| e.reason.contains(t)) =>
            {
                tracing::info!(error = %e, "JetStream not ready yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// Refuses a server too old for atomic batches and message TTLs.
fn check_server(info: &async_nats::ServerInfo) -> Result<(), StoreError> {
    let mut parts = info.version.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < MIN_SERVER {
        return Err(StoreError::new(format!(
            "nats-server {} is too old: tether needs {}.{} or newer (atomic batch publish, per-message TTL)",
            info.version, MIN_SERVER.0, MIN_SERVER.1
        )));
    }
    if !info.jetstream {
        return Err(StoreError::new(format!("nats-server {} at {} has JetStream off", info.version, info.host)));
    }
    Ok(())
}

/// Refuses a JetStream whose API level lacks atomic batch publish (level 2,
/// nats-server 2.12): a server may report a newer version behind a proxy or
/// in a mixed cluster whose JetStream still runs an older level.
async fn check_api_level(js: &jetstream::Context) -> Result<(), StoreError> {
    let account = until_ready(|| async {
        js.query_account().await.map_err(|e| StoreError::new(format!("reading the JetStream account: {e}")))
    })
    .await?;
    let level = account.requests.level;
    if level < MIN_API_LEVEL {
        return Err(StoreError::new(format!(
            "the JetStream API level is {level}: tether needs {MIN_API_LEVEL} or newer (atomic batch publish, \
             nats-server 2.12)"
        )));
    }
    Ok(())
}

/// The stream, created if absent; refused if it cannot keep tether's
/// promises (too few replicas, no atomic batches, no message TTLs, memory
/// storage).
async fn open_stream(
    js: &jetstream::Context,
    options: &NatsOptions,
    subjects: &Subjects,
) -> Result<stream::Stream, StoreError> {
    let wanted = stream::Config {
        name: options.stream.clone(),
        subjects: vec![subjects.all()],
        num_replicas: options.replicas,
        storage: stream::StorageType::File,
        allow_atomic_publish: true,
        allow_message_ttl: true,
        allow_rollup: true,
        allow_direct: true,
        // Every subject keeps its last message (keys and audit records go by
        // their TTL); a record's history is of no use.
        max_messages_per_subject: -1,
        ..Default::default()
    };
    // A cluster that just formed may not have elected its JetStream leader
    // yet: its requests time out or answer "no responders" meanwhile. The
    // caller bounds the whole start.
    let mut stream = until_ready(|| async {
        js.get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| StoreError::new(format!("cannot open or create the JetStream stream {}: {e}", options.stream)))
    })
    .await?;
    let info = stream.info().await.map_err(|e| StoreError::new(format!("stream {}: {e}", options.stream)))?;
    let c = &info.config;
    let mut wrong = Vec::new();
    if c.num_replicas < options.replicas {
        wrong.push(format!("{} replicas, {} required", c.num_replicas, options.replicas));
    }
    if c.storage != stream::StorageType::File {
        wrong.push("memory storage".to_string());
    }
    if !c.allow_atomic_publish {
        wrong.push("no atomic batch publish (allow_atomic)".to_string());
    }
    if !c.allow_message_ttl {
        wrong.push("no per-message TTL (allow_msg_ttl)".to_string());
    }
    if !c.subjects.contains(&subjects.all()) {
        wrong.push(format!("subjects {:?}, not {}", c.subjects, subjects.all()));
    }
    if !wrong.is_empty() {
        return Err(StoreError::new(format!(
            "the JetStream stream {} cannot keep tether's promises: {}",
            options.stream,
            wrong.join("; ")
        )));
    }
    Ok(stream)
}

/// Counts this start in the stream (compare-and-set on one subject), so
/// session ids stay ordered across the cluster's starts.
async fn count_boot(shared: &Shared) -> Result<u32, StoreError> {
    let subject = shared.subjects.boot();
    for _ in 0..100 {
        let (seq, count) = match shared.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                (m.sequence, std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => (0, 0),
            Err(e) => return Err(StoreError::new(format!("reading the start count: {e}"))),
        };
        let next = count.wrapping_add(1).max(1);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string().as_str());
        let message = Message { subject: subject.clone(), headers, payload: next.to_string().into() };
        match publish(&shared.client, &shared.js, &[message], shared.options.publish_deadline).await {
            Ok(_) => return Ok(next),
            Err(Failure::Conflict(_)) => continue,
            Err(Failure::Failed(e)) => return Err(StoreError::new(format!("counting this start: {e}"))),
        }
    }
    Err(StoreError::new("counting this start: 100 conflicts in a row"))
}

/// A stored message as a consumer read it.
struct Read {
    seq: u64,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

/// Every message `filter` and `deliver` select, read once through an
/// ephemeral consumer.
async fn read_all(
    stream: &stream::Stream,
    filter: Vec<String>,
    deliver: consumer::DeliverPolicy,
) -> Result<Vec<Read>, StoreError> {
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subjects: filter,
            deliver_policy: deliver,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError::new(format!("reading the stream: {e}")))?;
    let pending = consumer.info().await.map_err(|e| StoreError::new(format!("reading the stream: {e}")))?.num_pending;
    let mut out = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| StoreError::new(format!("reading the stream: {e}")))?;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .map_err(|_| StoreError::new("reading the stream: no message for 30 s"))?
    {
        let m = m.map_err(|e| StoreError::new(format!("reading the stream: {e}")))?;
        let info = m.info().map_err(|e| StoreError::new(format!("reading the stream: {e}")))?;
        let (seq, left) = (info.stream_sequence, info.pending);
        let m = m.split().0;
        out.push(Read { seq, subject: m.subject.to_string(), headers: m.headers, payload: m.payload });
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

/// Reads every vehicle's last record and keys; returns them and the highest
/// stream sequence read, from which the feed goes on.
async fn load(shared: &Shared) -> Result<(Vec<StoredRows>, u64), StoreError> {
    let s = &shared.subjects;
    let filter = vec![s.records(), s.keys(), s.presences(), s.leases()];
    let read = read_all(&shared.stream, filter, consumer::DeliverPolicy::LastPerSubject).await?;
    let last = read.iter().map(|r| r.seq).max().unwrap_or(0);
    let mut vehicles = shared.vehicles.lock().unwrap_or_else(|p| p.into_inner());
    let mut leases = shared.leases.lock().unwrap_or_else(|p| p.into_inner());
    for r in read.iter().filter(|r| s.kind(&r.subject) == Kind::Lease) {
        if let Some(lease) = lease::Lease::decode(&r.payload).filter(|l| l.node != shared.options.node) {
            leases.renewed(lease);
        }
    }
    let mut sessions = Vec::new();
    for r in read {
        if let Applied::Presence(p) = apply(&mut vehicles, s, &shared.options.node, &r)
            && p.online
        {
            // A claim of a node without a live lease (gone, or an earlier
            // start of it) is over.
            let v = vehicles.get_mut(&p.vehicle).expect("applied");
            match v.claimed_by.take() {
                Some(c) if leases.live(&c.node, c.boot) => {
                    v.claimed_by = Some(c);
                    sessions.push(p);
                }
                _ => {}
            }
        }
    }
    drop(leases);
    *shared.loaded_presence.lock().unwrap_or_else(|p| p.into_inner()) = sessions;
    // The hub starts from these rows.
    for v in vehicles.values_mut() {
        v.base = v.rev;
    }
    let rows = vehicles.iter().filter_map(|(id, v)| v.rows(id)).collect();
    Ok((rows, last))
}

/// What a stored message changed in the images.
enum Applied {
    /// Nothing (seen before, or not of a vehicle).
    Nothing,
    /// A vehicle's key.
    Key,
    /// A vehicle's record (a save's last message).
    Record(Arc<str>),
    /// Another node's session of a vehicle started or ended.
    Presence(RemotePresence),
    /// A node renewed its lease.
    Lease,
}

/// Puts a stored message into the images (`node` is this node).
fn apply(vehicles: &mut HashMap<Arc<str>, Vehicle>, subjects: &Subjects, node: &str, r: &Read) -> Applied {
    let (vehicle, key) = match subjects.kind(&r.subject) {
        Kind::Record(v) => (v, None),
        Kind::Key(v, k) => (v, Some(k)),
        Kind::Presence(v) => {
            let id: Arc<str> = Arc::from(v.as_str());
            let v = vehicles.entry(id.clone()).or_default();
            let body = presence::Body::decode(&r.payload);
            return presence::observe(v, node, r.seq, body, id).map_or(Applied::Nothing, Applied::Presence);
        }
        Kind::Lease => return Applied::Lease,
        Kind::Audit(_) | Kind::Other => return Applied::Nothing,
    };
    let id: Arc<str> = Arc::from(vehicle.as_str());
    let v = vehicles.entry(id.clone()).or_default();
    if r.seq <= v.applied {
        return Applied::Nothing;
    }
    v.applied = r.seq;
    match key {
        Some(k) if r.payload.is_empty() => {
            v.keys.remove(k.as_str());
            Applied::Key
        }
        Some(k) => {
            v.keys.insert(Arc::from(k.as_str()), r.payload.clone());
            Applied::Key
        }
        None => {
            v.rev = r.seq;
            v.record = Some(r.payload.clone());
            Applied::Record(id)
        }
    }
}

/// Follows the stream from `start`: every record another node commits
/// reloads its vehicle here.
async fn follow(shared: Arc<Shared>, mut start: u64) {
    // Changes are for the hub: none is taken before it loaded what was read.
    shared.ready.notified().await;
    let s = &shared.subjects;
    let node = shared.options.node.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let consumer = shared
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: vec![s.records(), s.keys(), s.presences(), s.leases()],
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the stream; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Every node's lease renewal is on the feed, this node's too: a feed
        // silent for two renewals is stuck (a consumer on a server that died
        // may never say so) and is followed again from where it stopped.
        let stalled = shared.options.lease * 2 / 3;
        loop {
            let m = match tokio::time::timeout(stalled, messages.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(silent = ?stalled, from = start, "the stream's feed is stuck; following it again");
                    crate::stats::bump(&shared.stats.feed_restarts);
                    break;
                }
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "following the stream");
                    break;
                }
            };
            let Ok(seq) = m.info().map(|i| i.stream_sequence) else { continue };
            let m = m.split().0;
            let from_here =
                m.headers.as_ref().and_then(|h| h.get(NODE_HEADER)).is_some_and(|n| n.as_str() == node.as_str());
            let read = Read { seq, subject: m.subject.to_string(), headers: m.headers, payload: m.payload };
            start = seq + 1;
            let (reload, presence) = {
                let mut vehicles = shared.vehicles.lock().unwrap_or_else(|p| p.into_inner());
                match apply(&mut vehicles, s, &node, &read) {
                    // A record this node saved is in memory already.
                    Applied::Record(id) if !from_here => {
                        let v = vehicles.get_mut(&id).expect("applied");
                        v.floor += 1;
                        (Some(v.delivery(&id, ReloadCause::Changed, true)), None)
                    }
                    Applied::Presence(p) => (None, Some(p)),
                    Applied::Lease => {
                        if let Some(lease) = lease::Lease::decode(&read.payload).filter(|l| l.node != node) {
                            shared.leases.lock().unwrap_or_else(|p| p.into_inner()).renewed(lease);
                        }
                        (None, None)
                    }
                    Applied::Record(_) | Applied::Key | Applied::Nothing => (None, None),
                }
            };
            drop(read.headers);
            shared.fed.notify_waiters();
            if let Some(delivery) = reload {
                shared.deliver(delivery);
            }
            if let (Some(presence), Some(hook)) = (presence, shared.presence_hook.get()) {
                hook(presence);
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

impl Shared {
    /// Sends a vehicle's queued saves, one batch at a time, until none is
    /// left.
    async fn drain(self: Arc<Self>, vehicle: Arc<str>) {
        loop {
            let (batch, rev, floor) = {
                let mut vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
                let v = vehicles.entry(vehicle.clone()).or_default();
                if v.queue.is_empty() {
                    v.busy = false;
                    return;
                }
                (std::mem::take(&mut v.queue), v.base, v.hooked)
            };
            let (stale, live): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.save.epoch < floor);
            for p in stale {
                let _ = p.done.send(Err(conflict(&vehicle)));
            }
            if live.is_empty() {
                continue;
            }
            let messages = self.messages(&vehicle, rev, &live);
            let started = std::time::Instant::now();
            let published = publish(&self.client, &self.js, &messages, self.options.publish_deadline).await;
            self.stats.publish.observe(started.elapsed());
            if let Err(Failure::Conflict(_)) = &published {
                crate::stats::bump(&self.stats.conflicts);
            }
            match published {
                Ok(seq) => {
                    {
                        let mut vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
                        let v = vehicles.entry(vehicle.clone()).or_default();
                        if seq > v.applied {
                            apply_save(v, seq, &live);
                        }
                        // The hub's record is this save's (unless a reload
                        // since gave it another).
                        if live.iter().all(|p| p.save.epoch == v.hooked) {
                            v.base = v.base.max(seq);
                        }
                    }
                    self.health.send_if_modified(|h| {
                        let degraded = matches!(h, StoreHealth::Degraded(_));
                        if degraded {
                            *h = StoreHealth::Healthy;
                        }
                        degraded
                    });
                    for mut p in live {
                        if let Some(on_commit) = p.save.on_commit.take() {
                            on_commit.run();
                        }
                        let _ = p.done.send(Ok(()));
                    }
                }
                Err(failure) => {
                    let epoch = live.iter().map(|p| p.save.epoch).max().unwrap_or(0);
                    let reloaded = self.reload(&vehicle, epoch).await;
                    let error = match &failure {
                        // The caller may apply its call again on what is
                        // durable, now in the hub.
                        Failure::Conflict(why) if reloaded => {
                            tracing::debug!(vehicle = %vehicle, %why, "save refused: another node changed the vehicle");
                            conflict(&vehicle)
                        }
                        Failure::Conflict(why) | Failure::Failed(why) => {
                            tracing::warn!(vehicle = %vehicle, %why, "save failed");
                            StoreError::new(format!("the cluster's stream did not take the save: {why}"))
                        }
                    };
                    for p in live {
                        let _ = p.done.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// The messages of a batch of saves: audit records, key changes, then
    /// the record (the last save's: each save holds the whole record) with
    /// its compare-and-set on `rev`.
    fn messages(&self, vehicle: &str, rev: u64, saves: &[Pending]) -> Vec<Message> {
        let s = &self.subjects;
        let mut out = Vec::new();
        for p in saves {
            if let Some(audit) = &p.audit {
                out.push(Message {
                    subject: s.audit(vehicle),
                    headers: ttl(self.options.audit_ttl),
                    payload: audit.record.clone(),
                });
            }
        }
        for (key, entry) in key_changes(saves) {
            let (headers, payload) = match entry {
                Some(entry) => (ttl(self.options.key_ttl), entry),
                // A deleted key: an empty body, itself gone soon.
                None => (ttl(Duration::from_secs(1)), Bytes::new()),
            };
            out.push(Message { subject: s.key(vehicle, &key), headers, payload });
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", rev.to_string().as_str());
        headers.insert(NODE_HEADER, self.options.node.as_str());
        let record = saves.last().map(|p| p.save.record.clone()).unwrap_or_default();
        out.push(Message { subject: s.record(vehicle), headers, payload: record });
        out
    }

    /// After a refused save: waits until the feed holds what the stream's
    /// leader holds of the vehicle, then reloads it in the hub with a floor
    /// above every save made so far (`epoch` is the highest of the refused
    /// ones). Returns whether the hub got what is durable (else it hides the
    /// vehicle until a later reload tells it).
    async fn reload(self: &Arc<Self>, vehicle: &Arc<str>, epoch: u64) -> bool {
        let caught_up = self.catch_up(vehicle).await;
        let delivery = self.with(vehicle, |v| {
            let queued = v.queue.iter().map(|p| p.save.epoch).max().unwrap_or(0);
            v.floor = v.floor.max(epoch.max(queued) + 1);
            v.delivery(vehicle, ReloadCause::Refused, caught_up)
        });
        self.deliver(delivery);
        if !caught_up {
            // The hub hides the vehicle until it is told what is durable.
            let shared = self.clone();
            let vehicle = vehicle.clone();
            self.runtime.spawn(async move {
                let mut wait = Duration::from_millis(200);
                loop {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    if shared.catch_up(&vehicle).await {
                        let delivery = shared.with(&vehicle, |v| {
                            v.floor += 1;
                            v.delivery(&vehicle, ReloadCause::Refused, true)
                        });
                        shared.deliver(delivery);
                        return;
                    }
                }
            });
        }
        caught_up
    }

    /// Waits (bounded) until this node's image of `vehicle` holds what the
    /// stream's leader holds of it; false if it could not tell or wait.
    async fn catch_up(&self, vehicle: &Arc<str>) -> bool {
        match self.leader_revision(vehicle).await {
            Some(target) => self.wait_for_feed(vehicle, target).await,
            None => false,
        }
    }

    /// Gives the hub a reload (outside the images' lock: the hub's lock
    /// comes first when it saves), then lets saves below its floor be
    /// refused without a try.
    fn deliver(&self, Delivery { reload, rev }: Delivery) {
        let (vehicle, floor) = (reload.vehicle.clone(), reload.valid_from);
        if let Some(hook) = self.hook.get() {
            hook(reload);
        }
        self.with(&vehicle, |v| {
            if floor > v.hooked {
                v.hooked = floor;
                // Unknown rows: the hub hides the vehicle; saves made now
                // are refused by the stream (base 0) until a reload.
                v.base = rev.unwrap_or(0);
            }
        });
    }

    /// The stream sequence of the vehicle's record on the stream's leader, 0
    /// if it has none.
    async fn leader_revision(&self, vehicle: &str) -> Option<u64> {
        self.leader_sequence(&self.subjects.record(vehicle)).await
    }

    /// The stream sequence of the last message on `subject` as the stream's
    /// leader says (a direct get may be answered by a stale follower), 0 if
    /// there is none.
    async fn leader_sequence(&self, subject: &str) -> Option<u64> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Some(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Some(0),
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot read the last sequence from the stream's leader");
                None
            }
        }
    }

    /// Runs `f` on the vehicle's image, under the lock.
    fn with<R>(&self, vehicle: &Arc<str>, f: impl FnOnce(&mut Vehicle) -> R) -> R {
        let mut vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
        f(vehicles.entry(vehicle.clone()).or_default())
    }

    /// Waits (bounded) until the image of `vehicle` is at revision `target`.
    async fn wait_for_feed(&self, vehicle: &Arc<str>, target: u64) -> bool {
        let reached = || {
            let vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
            vehicles.get(vehicle).map_or(target == 0, |v| v.rev >= target)
        };
        tokio::time::timeout(CATCH_UP, async {
            loop {
                let fed = self.fed.notified();
                if reached() {
                    return;
                }
                fed.await;
            }
        })
        .await
        .is_ok()
    }

    fn spawn_save(self: &Arc<Self>, vehicle: Arc<str>, pending: Pending) {
        let mut vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
        let v = vehicles.entry(vehicle.clone()).or_default();
        v.queue.push(pending);
        if !v.busy {
            v.busy = true;
            self.runtime.spawn(self.clone().drain(vehicle));
        }
    }
}

/// A conflict's error for `vehicle`.
fn conflict(vehicle: &str) -> StoreError {
    StoreError::conflict(format!("vehicle {vehicle:?} was changed on another node first"))
}

/// A save's key changes in order: the last change of each key counts.
fn key_changes(saves: &[Pending]) -> BTreeMap<Arc<str>, Option<Bytes>> {
    let mut changes = BTreeMap::new();
    for p in saves {
        for (key, entry) in &p.save.put_keys {
            changes.insert(key.clone(), Some(entry.clone()));
        }
        for key in &p.save.gone_keys {
            changes.insert(key.clone(), None);
        }
    }
    changes
}

/// Puts a committed batch of saves (its record at `seq`) into the image.
fn apply_save(v: &mut Vehicle, seq: u64, saves: &[Pending]) {
    for (key, entry) in key_changes(saves) {
        match entry {
            Some(entry) => v.keys.insert(key, entry),
            None => v.keys.remove(&key),
        };
    }
    v.rev = seq;
    v.applied = seq;
    v.record = saves.last().map(|p| p.save.record.clone());
}

/// A `Nats-TTL` header (whole seconds, at least one).
fn ttl(ttl: Duration) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-TTL", format!("{}s", ttl.as_secs().max(1)).as_str());
    headers
}

impl Store for NatsStore {
    fn load_all(&self) -> Result<Vec<StoredRows>, StoreError> {
        Ok(self.loaded.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default())
    }

    fn save(&self, vehicle: Arc<str>, save: RecordSave, audit: Option<AuditEntry>) -> Durable {
        let (done, durable) = oneshot::channel();
        if self.shared.closed.load(Ordering::Acquire) {
            let _ = done.send(Err(StoreError::new("the store is closed")));
            return durable;
        }
        self.shared.spawn_save(vehicle, Pending { save, audit, done });
        durable
    }

    fn audit(&self, entry: AuditEntry) -> Durable {
        let (done, durable) = oneshot::channel();
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            let message = Message {
                subject: shared.subjects.audit(&entry.vehicle),
                headers: ttl(shared.options.audit_ttl),
                payload: entry.record,
            };
            let result = publish(&shared.client, &shared.js, &[message], shared.options.publish_deadline)
                .await
                .map(|_| ())
                .map_err(|f| match f {
                    Failure::Conflict(e) | Failure::Failed(e) => StoreError::new(format!("audit record: {e}")),
                });
            let _ = done.send(result);
        });
        durable
    }

    fn audit_page(&self, vehicle: &str, before: Option<u64>, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let subject = self.shared.subjects.audit(vehicle);
        let read =
            self.shared.runtime.block_on(read_all(&self.shared.stream, vec![subject], consumer::DeliverPolicy::All))?;
        let mut page: Vec<(u64, Bytes)> =
            read.into_iter().filter(|r| before.is_none_or(|b| r.seq < b)).map(|r| (r.seq, r.payload)).collect();
        page.reverse();
        page.truncate(limit);
        Ok(page)
    }

    fn prune_audit(&self, _before: SystemTime, _limit: usize) -> oneshot::Receiver<Result<usize, StoreError>> {
        // Audit records carry their retention as a TTL: the stream ages them out.
        let (done, pruned) = oneshot::channel();
        let _ = done.send(Ok(0));
        pruned
    }

    fn boot_epoch(&self) -> u32 {
        self.boot
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    fn on_reload(&self, hook: ReloadHook) {
        let _ = self.shared.hook.set(hook);
        // `notify_one` keeps the permit if the feed is not waiting yet.
        self.shared.ready.notify_one();
    }

    fn quarantine(&self, vehicle: &str, why: &str) -> Result<(), StoreError> {
        Err(StoreError::new(format!(
            "vehicle {vehicle:?} has a record that does not decode ({why}); the cluster's store cannot quarantine it: \
             remove its subject from the stream by hand"
        )))
    }

    fn may_conflict(&self) -> bool {
        true
    }

    fn claim(&self, vehicle: &Arc<str>, claim: Claim) -> Claimed {
        // Counted now: a release that comes before the claim is sent waits for it.
        self.shared.with(vehicle, |v| v.claiming += 1);
        let (done, claimed) = oneshot::channel();
        self.shared.runtime.spawn(self.shared.clone().claim(vehicle.clone(), claim, done));
        claimed
    }

    fn release(&self, vehicle: &Arc<str>, session: u64, last_seen: SystemTime) {
        self.shared.runtime.spawn(self.shared.clone().release(vehicle.clone(), session, last_seen));
    }

    fn cluster_stats(&self) -> Option<Arc<ClusterStats>> {
        Some(self.shared.stats.clone())
    }

    fn isolated(&self) -> watch::Receiver<bool> {
        self.shared.isolated.subscribe()
    }

    fn on_presence(&self, hook: PresenceHook) {
        let loaded = std::mem::take(&mut *self.shared.loaded_presence.lock().unwrap_or_else(|p| p.into_inner()));
        for p in loaded {
            hook(p);
        }
        let _ = self.shared.presence_hook.set(hook);
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.feed.abort();
    }
}
