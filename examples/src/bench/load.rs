//! The write load of the write scenarios: a pool of SDK clients (one HTTP/2
//! connection each), an open-loop driver (writes at fixed scheduled times,
//! latency measured from the scheduled time, so coordinated omission is not
//! hidden) and a closed-loop driver (N writers, each sending its next write
//! when the last returned), both recording HDR histograms. The same drivers
//! and client code run against tetherd and against the raw-tonic baseline,
//! so only the server differs between the two figures.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tether_sdk::{Client, FieldStatus, Patch, RetryPolicy, Tls, WaitLevel, Window, WriteOutcome};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::lean_vehicle::AppliedLog;

/// The deadline of every write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the writes go, and what their answers must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// tetherd: every field must have reached the wait level.
    Tetherd,
    /// The baseline echo: any answer will do (it stores nothing).
    Baseline,
}

/// `--wait`, parsed.
pub fn parse_wait(text: &str) -> Result<WaitLevel, String> {
    match text {
        "applied" => Ok(WaitLevel::Applied),
        "delivered" => Ok(WaitLevel::Delivered),
        "none" | "accepted" => Ok(WaitLevel::None),
        other => Err(format!("--wait is applied, delivered or none, not {other:?}")),
    }
}

/// A wait level's name in reports.
pub fn wait_name(wait: WaitLevel) -> &'static str {
    match wait {
        WaitLevel::Applied => "applied",
        WaitLevel::Delivered => "delivered",
        WaitLevel::None => "none",
    }
}

/// Writes go out through `clients` in turn (each its own HTTP/2 connection),
/// to `vehicles` in turn; every write to a vehicle sets its front-left window
/// to a value other than the one before, so none is a no-op.
#[derive(Debug, Clone)]
pub struct Writes {
    clients: Arc<[Client]>,
    vehicles: Arc<[String]>,
    next_value: Arc<[AtomicU32]>,
    wait: WaitLevel,
    server: Server,
    /// Where the vehicles note when each snapshot arrived (tetherd's fleet).
    arrivals: Option<Arc<AppliedLog>>,
}

impl Server {
    /// `"tetherd"` or `"baseline"`.
    pub fn name(self) -> &'static str {
        match self {
            Server::Tetherd => "tetherd",
            Server::Baseline => "baseline",
        }
    }
}

impl Writes {
    /// The server written to.
    pub fn server(&self) -> Server {
        self.server
    }

    /// Connects `channels` clients to `url` (debounce and retries off: every
    /// write is sent once, and a failure shows as an error).
    pub async fn connect(
        url: &str,
        channels: usize,
        vehicles: Arc<[String]>,
        wait: WaitLevel,
        server: Server,
    ) -> anyhow::Result<Writes> {
        Self::connect_with(url, channels, vehicles, wait, server, None).await
    }

    /// [`connect`](Self::connect) over TLS (`https://…`), each client
    /// presenting the identity in `tls` (a service certificate for mTLS).
    pub async fn connect_tls(
        url: &str,
        channels: usize,
        vehicles: Arc<[String]>,
        wait: WaitLevel,
        server: Server,
        tls: &Tls,
    ) -> anyhow::Result<Writes> {
        Self::connect_with(url, channels, vehicles, wait, server, Some(tls)).await
    }

    async fn connect_with(
        url: &str,
        channels: usize,
        vehicles: Arc<[String]>,
        wait: WaitLevel,
        server: Server,
        tls: Option<&Tls>,
    ) -> anyhow::Result<Writes> {
        let mut clients = Vec::with_capacity(channels.max(1));
        for _ in 0..channels.max(1) {
            let client = match tls {
                None => Client::connect(url.to_string()).await,
                Some(tls) => Client::connect_tls(url.to_string(), tls).await,
            }
            .with_context(|| format!("cannot connect to {url}"))?;
            clients.push(client.with_debounce(Duration::ZERO).with_retry(RetryPolicy::never()));
        }
        let next_value = (0..vehicles.len()).map(|_| AtomicU32::new(0)).collect();
        Ok(Writes { clients: clients.into(), vehicles, next_value, wait, server, arrivals: None })
    }

    /// Splits each open-loop write's latency at the moment its snapshot
    /// arrived at the vehicle, as noted in `log` (the fleet of these
    /// vehicles, in the same order).
    pub fn with_arrivals(mut self, log: Arc<AppliedLog>) -> Writes {
        self.arrivals = Some(log);
        self
    }

    /// Vehicles written to.
    pub fn vehicles(&self) -> usize {
        self.vehicles.len()
    }

    /// Client connections.
    pub fn channels(&self) -> usize {
        self.clients.len()
    }

    /// Write number `n` (through client `n % channels`) to vehicle `vehicle`.
    pub async fn write(&self, n: u64, vehicle: usize) -> Outcome {
        let client = &self.clients[(n % self.clients.len() as u64) as usize];
        let value = self.next_value[vehicle].fetch_add(1, Ordering::Relaxed) % 101;
        let result = client
            .set_desired(self.vehicles[vehicle].as_str(), Patch::new().window(Window::FrontLeft, value))
            .wait(self.wait)
            .timeout(WRITE_TIMEOUT)
            .await;
        match result {
            Ok(outcome) if self.server == Server::Baseline || reached(&outcome, self.wait) => {
                Outcome::Reached(outcome.generation)
            }
            Ok(outcome) => Outcome::NotReached(format!("{:?}", outcome.fields)),
            Err(error) => Outcome::Error(error.to_string()),
        }
    }
}

/// Whether every field of `outcome` is at `wait` (or past it, APPLIED).
fn reached(outcome: &WriteOutcome, wait: WaitLevel) -> bool {
    !outcome.fields.is_empty()
        && outcome.fields.iter().all(|f| match wait {
            WaitLevel::Applied => f.status == FieldStatus::Applied,
            WaitLevel::Delivered => matches!(f.status, FieldStatus::Delivered | FieldStatus::Applied),
            WaitLevel::None => matches!(f.status, FieldStatus::Pending | FieldStatus::Delivered | FieldStatus::Applied),
        })
}

/// How one write ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every field reached the wait level; the vehicle's desired generation
    /// after the write (0 from the baseline).
    Reached(u64),
    /// Answered, but a field ended otherwise (e.g. SUPERSEDED).
    NotReached(String),
    /// The call failed.
    Error(String),
}

/// Latency percentiles of a run's writes, µs (in a report's JSON line as its
/// own `p50_us` .. `mean_us` fields).
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest write, µs.
    pub max_us: u64,
    /// Mean, µs (to one decimal).
    pub mean_us: f64,
}

impl Percentiles {
    /// The percentiles of `histogram` (in µs).
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
        Percentiles {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: round(histogram.mean(), 10.0),
        }
    }
}

/// Latency percentiles and counts of one load phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    /// `"tetherd"` or `"baseline"`.
    pub server: &'static str,
    /// Writes sent in the measured window.
    pub writes: u64,
    /// Writes whose every field reached the wait level.
    pub reached: u64,
    /// Writes answered with a field short of the wait level.
    pub not_reached: u64,
    /// Calls that failed (timeouts included).
    pub errors: u64,
    /// The first failure or shortfall, if any.
    pub first_error: Option<String>,
    /// Measured window, seconds (open loop: first scheduled send to last answer).
    pub seconds: f64,
    /// Answered writes per second over `seconds`.
    pub writes_per_second: f64,
    /// Latency per write (open loop: from the scheduled send time).
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// Open loop: how late the generator itself dispatched writes (scheduled
    /// time → the write's task running), 99th percentile, µs.
    pub send_lag_p99_us: Option<u64>,
    /// Open loop: the same, slowest, µs.
    pub send_lag_max_us: Option<u64>,
    /// Open loop to tetherd: each write's latency split where its snapshot
    /// arrived at the vehicle.
    pub split: Option<LatencySplit>,
}

/// A write's latency in two parts, cut when the vehicle (a lean vehicle of
/// this process) received the snapshot carrying the write: before, the app
/// call, tetherd's commit and its push down the session; after, the vehicle's
/// Ack and Report, tetherd handling the report, and the answer to the call.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySplit {
    /// Writes split: those whose vehicle's latest snapshot was the write's
    /// own generation when it was answered.
    pub writes: u64,
    /// Scheduled send → snapshot at the vehicle.
    pub to_vehicle: Percentiles,
    /// Snapshot at the vehicle → answer at the app.
    pub vehicle_to_answer: Percentiles,
}

/// Counts and histograms filled while a phase runs.
pub(crate) struct Recorder {
    latency: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
    /// (scheduled → at the vehicle, at the vehicle → answered).
    split: Mutex<(Histogram<u64>, Histogram<u64>)>,
    reached: AtomicU64,
    not_reached: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// The latest answer, µs after the phase started.
    last_answer_us: AtomicU64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits; bounds are valid, so this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            latency: Mutex::new(histogram()),
            lag: Mutex::new(histogram()),
            split: Mutex::new((histogram(), histogram())),
            reached: AtomicU64::new(0),
            not_reached: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            last_answer_us: AtomicU64::new(0),
        }
    }

    /// Counts `outcome`; a reached write's latency goes into `latency`.
    pub(crate) fn count(&self, outcome: Outcome, took: Duration, latency: &mut Histogram<u64>) {
        let failure = match outcome {
            Outcome::Reached(_) => {
                self.reached.fetch_add(1, Ordering::Relaxed);
                latency.saturating_record(micros(took));
                return;
            }
            Outcome::NotReached(why) => {
                self.not_reached.fetch_add(1, Ordering::Relaxed);
                why
            }
            Outcome::Error(why) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                why
            }
        };
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::warn!(error = %failure, "a write fell short");
            *first = Some(failure);
        }
    }

    /// Notes where write `outcome` to `vehicle`, scheduled at `scheduled` and
    /// answered at `answered`, arrived at the vehicle, if `writes` can tell.
    fn split(
        &self,
        writes: &Writes,
        vehicle: usize,
        outcome: &Outcome,
        scheduled: std::time::Instant,
        answered: std::time::Instant,
    ) {
        let (Some(log), Outcome::Reached(generation)) = (&writes.arrivals, outcome) else { return };
        let Some(arrived) = log.arrival(vehicle, *generation) else { return };
        let mut split = self.split.lock().unwrap_or_else(|p| p.into_inner());
        split.0.saturating_record(micros(arrived.saturating_duration_since(scheduled)));
        split.1.saturating_record(micros(answered.saturating_duration_since(arrived)));
    }

    /// Adds a writer's own latency histogram.
    pub(crate) fn merge(&self, latency: &Histogram<u64>) {
        // Same bounds, so adding cannot fail.
        let _ = self.latency.lock().unwrap_or_else(|p| p.into_inner()).add(latency);
    }

    /// Adds everything `other` recorded.
    fn absorb(&self, other: &Recorder) {
        let add = |into: &Mutex<Histogram<u64>>, from: &Mutex<Histogram<u64>>| {
            let from = from.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds, so adding cannot fail.
            let _ = into.lock().unwrap_or_else(|p| p.into_inner()).add(&*from);
        };
        add(&self.latency, &other.latency);
        add(&self.lag, &other.lag);
        {
            let from = other.split.lock().unwrap_or_else(|p| p.into_inner());
            let mut into = self.split.lock().unwrap_or_else(|p| p.into_inner());
            let _ = into.0.add(&from.0);
            let _ = into.1.add(&from.1);
        }
        for (into, from) in
            [(&self.reached, &other.reached), (&self.not_reached, &other.not_reached), (&self.errors, &other.errors)]
        {
            into.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            first.clone_from(&other.first_error.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    pub(crate) fn figures(&self, server: Server, writes: u64, seconds: f64, open_loop: bool) -> LoadFigures {
        let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        let split = self.split.lock().unwrap_or_else(|p| p.into_inner());
        let reached = self.reached.load(Ordering::Relaxed);
        let not_reached = self.not_reached.load(Ordering::Relaxed);
        LoadFigures {
            server: server.name(),
            writes,
            reached,
            not_reached,
            errors: self.errors.load(Ordering::Relaxed),
            first_error: self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            seconds: round(seconds, 1000.0),
            writes_per_second: round((reached + not_reached) as f64 / seconds.max(1e-6), 1.0),
            percentiles: Percentiles::of(&latency),
            send_lag_p99_us: open_loop.then(|| lag.value_at_quantile(0.99)),
            send_lag_max_us: open_loop.then(|| lag.max()),
            split: (!split.0.is_empty()).then(|| LatencySplit {
                writes: split.0.len(),
                to_vehicle: Percentiles::of(&split.0),
                vehicle_to_answer: Percentiles::of(&split.1),
            }),
        }
    }
}

/// `x` rounded to `1 / per_unit`.
pub(crate) fn round(x: f64, per_unit: f64) -> f64 {
    (x * per_unit).round() / per_unit
}

/// What one load run recorded against one server, kept whole (histograms,
/// counts) so the rounds of a scenario that alternates servers add up into
/// one figure per server: [`add`](Self::add), then [`figures`](Self::figures).
pub struct Measured {
    server: Server,
    recorder: Arc<Recorder>,
    writes: u64,
    seconds: f64,
    open_loop: bool,
}

impl Measured {
    /// Latency percentiles, counts and throughput of what was recorded.
    pub fn figures(&self) -> LoadFigures {
        self.recorder.figures(self.server, self.writes, self.seconds, self.open_loop)
    }

    /// Adds `other`, a later run against the same server: histograms merge,
    /// counts and measured seconds add.
    pub fn add(&mut self, other: &Measured) {
        debug_assert_eq!(self.server, other.server, "rounds of one server only");
        self.recorder.absorb(&other.recorder);
        self.writes += other.writes;
        self.seconds += other.seconds;
    }
}

impl fmt::Debug for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.figures(), f)
    }
}

/// Open loop: `rate` writes per second for `duration`, write `i` scheduled
/// at `start + i / rate` and sent to vehicle `(first + i) % vehicles`
/// whatever the earlier writes are doing. A paced thread of its own
/// (`std::thread::sleep`, microsecond precision rather than tokio's 1 ms
/// timer wheel) dispatches them onto the runtime; each write's latency runs
/// from its scheduled time to its answer.
pub async fn open_loop(writes: &Writes, rate: f64, duration: Duration, first: u64) -> anyhow::Result<Measured> {
    anyhow::ensure!(rate > 0.0, "--rate must be positive");
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let recorder = Arc::new(Recorder::new());
    let tasks = TaskTracker::new();
    let handle = tokio::runtime::Handle::current();
    // The first send a little ahead, so the pacer starts on time.
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = {
        let (writes, recorder, tasks) = (writes.clone(), recorder.clone(), tasks.clone());
        let start = start.into_std();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                for i in 0..total {
                    let scheduled = start + interval.mul_f64(i as f64);
                    let now = std::time::Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    let (writes, recorder) = (writes.clone(), recorder.clone());
                    let vehicle = ((first + i) % writes.vehicles() as u64) as usize;
                    let task = async move {
                        let lag = scheduled.elapsed();
                        let outcome = writes.write(first + i, vehicle).await;
                        let took = scheduled.elapsed();
                        recorder.split(&writes, vehicle, &outcome, scheduled, scheduled + took);
                        let answered = micros(std::time::Instant::now().saturating_duration_since(start));
                        recorder.last_answer_us.fetch_max(answered, Ordering::Relaxed);
                        recorder.lag.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros(lag));
                        let mut latency = recorder.latency.lock().unwrap_or_else(|p| p.into_inner());
                        recorder.count(outcome, took, &mut latency);
                    };
                    let _guard = handle.enter();
                    tasks.spawn(task);
                }
            })
            .context("cannot start the pacer thread")?
    };
    // The pacer ends after the last dispatch; then every write ends within its deadline.
    tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("cannot join the pacer")?
        .map_err(|_| anyhow::anyhow!("the pacer panicked"))?;
    tasks.close();
    tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(5), tasks.wait())
        .await
        .context("writes still running after their deadline")?;
    let seconds = Duration::from_micros(recorder.last_answer_us.load(Ordering::Relaxed)).as_secs_f64();
    Ok(Measured { server: writes.server, recorder, writes: total, seconds, open_loop: true })
}

/// Closed loop: `concurrency` writers for `warmup` (not measured) then
/// `duration`, each sending its next write when its last one returned.
/// Writer `w` writes only to vehicles `w`, `w + concurrency`, ... in turn, so
/// no two writes to one vehicle are ever in flight together.
pub async fn closed_loop(
    writes: &Writes,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    anyhow::ensure!(concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        concurrency <= writes.vehicles(),
        "--concurrency {concurrency} exceeds the {} vehicles (each writer needs vehicles of its own)",
        writes.vehicles()
    );
    let recorder = Arc::new(Recorder::new());
    let sent = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + duration;
    let tasks = TaskTracker::new();
    for writer in 0..concurrency {
        let (writes, recorder, sent) = (writes.clone(), recorder.clone(), sent.clone());
        tasks.spawn(async move {
            let mut latency = histogram();
            let mine = (writes.vehicles() - writer).div_ceil(concurrency);
            let mut k = 0u64;
            loop {
                let at = Instant::now();
                if at >= end {
                    break;
                }
                let vehicle = writer + (k % mine as u64) as usize * concurrency;
                let outcome = writes.write(k * concurrency as u64 + writer as u64, vehicle).await;
                k += 1;
                // Writes sent during the warm-up are not measured.
                if at >= measure_from {
                    sent.fetch_add(1, Ordering::Relaxed);
                    recorder.count(outcome, at.elapsed(), &mut latency);
                }
            }
            recorder.merge(&latency);
        });
    }
    tasks.close();
    tokio::time::timeout(warmup + duration + WRITE_TIMEOUT + Duration::from_secs(5), tasks.wait())
        .await
        .context("writers still running after their deadline")?;
    // Writes sent before `end` may be answered after it: count the window until the last answer.
    let seconds = Instant::now().duration_since(measure_from).as_secs_f64();
    Ok(Measured { server: writes.server, recorder, writes: sent.load(Ordering::Relaxed), seconds, open_loop: false })
}

/// `us` as milliseconds for a table.
pub fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

impl LoadFigures {
    /// One table row: server, writes/s, p50 p90 p99 p99.9 max, errors.
    pub fn row(&self) -> String {
        format!(
            "  {:<9} {:>9.0} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}",
            self.server,
            self.writes_per_second,
            ms(self.percentiles.p50_us),
            ms(self.percentiles.p90_us),
            ms(self.percentiles.p99_us),
            ms(self.percentiles.p999_us),
            ms(self.percentiles.max_us),
            self.errors + self.not_reached,
        )
    }

    /// The header of [`row`](Self::row).
    pub fn header() -> String {
        format!(
            "  {:<9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}",
            "server", "writes/s", "p50", "p90", "p99", "p99.9", "max", "errors"
        )
    }
}

impl fmt::Display for LoadFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.row())
    }
}
