//! `onceq bench --latency`: how long a job waits from its enqueue to its handler's start, under an
//! open-loop offered load (issue 26, "Latency under load").
//!
//! - **The maximum.** First a closed loop finds what the setup sustains: [`PRODUCERS`] tasks
//!   each enqueue one job per call, back to back, while [`WORKERS`] workers lease up to
//!   [`LEASE_MAX`] jobs per call (a long poll, as the worker runtime leases) and ack each batch in
//!   one call. Jobs acked per second over [`MAX_SECONDS`] is the maximum.
//! - **Open loop.** Then, for each offered load (10%, 50% and 80% of that maximum), arrivals are
//!   scheduled at a fixed rate for [`LEVEL_SECONDS`], and each one is sent when its time comes on
//!   a task of its own, whether or not earlier ones were answered: a slow reply never delays the
//!   next arrival, so the figures are free of coordinated omission. Arrivals are grouped per
//!   millisecond (tokio's timer ticks once a millisecond): at each tick, the jobs due by the time
//!   the tick was due are sent, each scheduled at that time. A tick that fires late counts
//!   against the store.
//! - **What is measured.** Each job carries its scheduled time in its payload; a worker that
//!   leases it records lease return (the handler's start) minus that time. The first
//!   [`WARMUP_MS`] of each level are left out; then p50, p99, p99.9 and the maximum are
//!   reported, with what was offered and what was acked per second.
//!
//! Benchmarks are not tests: this prints figures, with the targets of the issue beside them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::{LeaseOptions, LeaseRef, NewJob, QueueName, Store};
use tokio::task::JoinSet;

use super::error::BenchError;

/// Producers of the closed loop that finds the maximum (one job per call each).
pub(crate) const PRODUCERS: usize = 64;
/// Workers, in the closed loop and in every level.
pub(crate) const WORKERS: usize = 4;
/// Jobs a worker's lease asks for at most.
pub(crate) const LEASE_MAX: u32 = 100;
/// How long a worker's lease waits for jobs (a long poll; the worker runtime waits longer).
const LEASE_WAIT_MS: u64 = 1000;
/// Seconds of the closed loop.
pub(crate) const MAX_SECONDS: u64 = 3;
/// Seconds of arrivals at each offered load.
pub(crate) const LEVEL_SECONDS: u64 = 5;
/// The start of each level left out of its figures.
pub(crate) const WARMUP_MS: u64 = 500;
/// Offered loads, as fractions of the maximum.
pub(crate) const LOADS: [f64; 3] = [0.1, 0.5, 0.8];
/// A level gives up when this many sent enqueues are unanswered: the store is not keeping up.
const OUTSTANDING_MAX: u64 = 200_000;
/// How long a level waits, after its last arrival, for every job to be acked.
const DRAIN: Duration = Duration::from_secs(30);

/// How long each part of a latency run lasts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The closed loop that finds the maximum.
    pub max: Duration,
    /// Arrivals at each offered load.
    pub level: Duration,
    /// The start of each level left out of its figures.
    pub warmup: Duration,
}

impl Timing {
    /// [`MAX_SECONDS`], [`LEVEL_SECONDS`] and [`WARMUP_MS`]; with `quick`, a second each and
    /// 200 ms of warm-up (a check that it runs, not figures to quote).
    pub fn new(quick: bool) -> Timing {
        if quick {
            Timing { max: Duration::from_secs(1), level: Duration::from_secs(1), warmup: Duration::from_millis(200) }
        } else {
            Timing {
                max: Duration::from_secs(MAX_SECONDS),
                level: Duration::from_secs(LEVEL_SECONDS),
                warmup: Duration::from_millis(WARMUP_MS),
            }
        }
    }
}

/// One offered load's figures.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    /// The fraction of the maximum offered.
    pub load: f64,
    /// Jobs offered per second.
    pub offered_per_s: f64,
    /// Jobs acked per second over the level's arrivals.
    pub acked_per_s: f64,
    /// Enqueue-to-start latencies after the warm-up, sorted.
    pub latencies: Vec<Duration>,
    /// The 99th percentile of how late the generator's ticks fired after they were due: were
    /// it large, arrivals themselves would have come late (the generator starved of CPU).
    pub generator_late_p99: Duration,
}

impl Level {
    /// The `q` quantile (0 to 1) of the latencies, nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }

    /// The largest latency.
    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }
}

/// A payload of `size` bytes (at least 8) whose first 8 carry `at`: microseconds since `epoch`.
fn stamped(at: Duration, size: usize) -> Vec<u8> {
    let mut payload = vec![b' '; size.max(8)];
    payload[..8].copy_from_slice(&(at.as_micros() as u64).to_le_bytes());
    payload
}

/// The time a payload was stamped with.
fn stamp_of(payload: &[u8]) -> Option<Duration> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(Duration::from_micros(u64::from_le_bytes(bytes)))
}

/// What the workers of one run share.
struct Shared {
    /// Every run's times are measured from here.
    epoch: Instant,
    /// Jobs acked.
    acked: AtomicU64,
    /// Latencies of jobs scheduled at or after `from`.
    latencies: Mutex<Vec<Duration>>,
    from: Duration,
    /// Set when the run is over: workers stop.
    stop: AtomicBool,
}

/// Workers lease (long poll) and ack until told to stop, recording each job's latency.
fn spawn_workers<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<Result<(), BenchError>>,
) {
    for _ in 0..WORKERS {
        let (store, queue, shared) = (store.clone(), queue.clone(), shared.clone());
        tasks.spawn(async move {
            let options = LeaseOptions { max_jobs: LEASE_MAX, visibility_timeout_ms: None, wait_ms: LEASE_WAIT_MS };
            while !shared.stop.load(Ordering::Relaxed) {
                let leased = store.job_lease(&queue, options).await?;
                if leased.is_empty() {
                    continue;
                }
                let started = shared.epoch.elapsed();
                {
                    let mut latencies = shared.latencies.lock().unwrap_or_else(|p| p.into_inner());
                    for job in &leased {
                        let scheduled = stamp_of(&job.payload)
                            .ok_or_else(|| BenchError::Check(format!("job {} has no time in its payload", job.id)))?;
                        if scheduled >= shared.from {
                            latencies.push(started.saturating_sub(scheduled));
                        }
                    }
                }
                let leases: Vec<LeaseRef> = leased.iter().map(|job| job.lease()).collect();
                for result in store.job_ack(&leases).await? {
                    result?;
                }
                shared.acked.fetch_add(leased.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        });
    }
}

/// Waits for every task; the first error wins.
async fn join_all(mut tasks: JoinSet<Result<(), BenchError>>) -> Result<(), BenchError> {
    let mut first = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| BenchError::Check(format!("a bench task failed: {e}"))).and_then(|r| r);
        if first.is_ok() {
            first = result;
        }
    }
    first
}

/// The closed loop: jobs acked per second with [`PRODUCERS`] producers sending one job per call
/// back to back, for [`MAX_SECONDS`].
pub(crate) async fn max_rate<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload_bytes: usize,
    timing: Timing,
) -> Result<f64, BenchError> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        acked: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        from: Duration::MAX,
        stop: AtomicBool::new(false),
    });
    let mut workers = JoinSet::new();
    spawn_workers(store, queue, &shared, &mut workers);
    let until = Instant::now() + timing.max;
    let mut producers = JoinSet::new();
    for _ in 0..PRODUCERS {
        let (store, queue, shared) = (store.clone(), queue.clone(), shared.clone());
        producers.spawn(async move {
            while Instant::now() < until {
                let payload = stamped(shared.epoch.elapsed(), payload_bytes);
                store.job_enqueue(&queue, vec![NewJob::new(payload)]).await?;
            }
            Ok(())
        });
    }
    let started = Instant::now();
    join_all(producers).await?;
    let acked_at_end = shared.acked.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    drain(&shared, store, queue).await?;
    shared.stop.store(true, Ordering::Relaxed);
    join_all(workers).await?;
    Ok(acked_at_end as f64 / elapsed.as_secs_f64())
}

/// Waits until the queue holds no job (every job sent was acked), up to [`DRAIN`].
async fn drain<S: Store>(shared: &Shared, store: &S, queue: &QueueName) -> Result<(), BenchError> {
    let until = Instant::now() + DRAIN;
    loop {
        let stats = store.queue_get(queue).await?.stats;
        if stats.ready + stats.scheduled + stats.leased == 0 {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(BenchError::Check(format!(
                "{} jobs were still in the queue {DRAIN:?} after the last arrival ({} acked)",
                stats.ready + stats.scheduled + stats.leased,
                shared.acked.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One offered load: `rate` jobs/s for `timing.level`, open loop.
pub(crate) async fn level<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload_bytes: usize,
    load: f64,
    rate: f64,
    timing: Timing,
) -> Result<Level, BenchError> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        acked: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        from: timing.warmup,
        stop: AtomicBool::new(false),
    });
    let mut workers = JoinSet::new();
    spawn_workers(store, queue, &shared, &mut workers);
    let total = (rate * timing.level.as_secs_f64()).round() as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut senders: JoinSet<Result<(), BenchError>> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut issued = 0u64;
    let mut lateness = Vec::new();
    while issued < total {
        // Arrivals come with the generator's clock: those due by the instant a tick fires arrive
        // then. (tokio fires a tick up to a millisecond after it was due; that is the clock's
        // grain, not the store's doing, and is reported apart as the generator's lateness.)
        let deadline = tick.tick().await.into_std();
        let fired = Instant::now();
        lateness.push(fired.saturating_duration_since(deadline));
        let at = fired.saturating_duration_since(shared.epoch);
        let due = ((rate * at.as_secs_f64()).floor() as u64).min(total);
        while issued < due {
            issued += 1;
            let outstanding = sent.load(Ordering::Relaxed) - answered.load(Ordering::Relaxed);
            if outstanding > OUTSTANDING_MAX {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(BenchError::Check(format!(
                    "at {rate:.0} jobs/s offered, {outstanding} enqueues were unanswered: the store does not keep up"
                )));
            }
            let (store, queue, sent, answered) = (store.clone(), queue.clone(), sent.clone(), answered.clone());
            let payload = stamped(at, payload_bytes);
            sent.fetch_add(1, Ordering::Relaxed);
            senders.spawn(async move {
                store.job_enqueue(&queue, vec![NewJob::new(payload)]).await?;
                answered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
            // Reap finished senders as we go, so the set does not grow with the run.
            while let Some(joined) = senders.try_join_next() {
                joined.map_err(|e| BenchError::Check(format!("a bench task failed: {e}"))).and_then(|r| r)?;
            }
        }
    }
    let arrivals = shared.epoch.elapsed();
    join_all(senders).await?;
    drain(&shared, store, queue).await?;
    shared.stop.store(true, Ordering::Relaxed);
    join_all(workers).await?;
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_unstable();
    let acked = shared.acked.load(Ordering::Relaxed);
    lateness.sort_unstable();
    let generator_late_p99 = lateness.get((lateness.len() * 99 / 100).min(lateness.len().saturating_sub(1))).copied();
    Ok(Level {
        load,
        offered_per_s: rate,
        acked_per_s: acked as f64 / arrivals.as_secs_f64(),
        latencies,
        generator_late_p99: generator_late_p99.unwrap_or_default(),
    })
}

/// Where a latency run's store lives, for its report.
pub(crate) enum Target {
    /// The embedded store at a durability level (`fsync` or `relaxed`).
    Embedded(&'static str),
    /// The PostgreSQL store.
    Postgres,
}

impl Target {
    /// The targets at 50% load: (p50, p99) bounds, if it sets them for this store.
    fn targets(&self) -> Option<(Duration, Duration)> {
        match self {
            Target::Embedded("fsync") => Some((Duration::from_millis(1), Duration::from_millis(5))),
            Target::Embedded(_) => None,
            Target::Postgres => Some((Duration::from_millis(5), Duration::from_millis(25))),
        }
    }

    fn name(&self) -> String {
        match self {
            Target::Embedded(level) => format!("embedded, durability {level}"),
            Target::Postgres => "PostgreSQL".into(),
        }
    }
}

/// Runs the maximum and every level on `store`'s `queue`, printing the report as it goes.
pub(crate) async fn report<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload_bytes: usize,
    target: Target,
    timing: Timing,
) -> Result<(), BenchError> {
    use std::fmt::Write as _;

    use super::report::{emit, millis, progress, target_line, thousands};

    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "latency, open loop ({})", target.name());
    emit(&mut out);
    progress(&format!("latency ({}): the maximum, closed loop", target.name()));
    let max = max_rate(store, queue, payload_bytes, timing).await?;
    let _ = writeln!(
        out,
        "maximum {} jobs/s (closed loop, {} s: {PRODUCERS} producers enqueue 1 job per call back to back; \
         {WORKERS} workers lease up to {LEASE_MAX} per call, waiting up to {LEASE_WAIT_MS} ms, and ack each batch)",
        thousands(max),
        timing.max.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "offered", "offered/s", "acked/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "measured", "gen p99 ms"
    );
    emit(&mut out);
    let mut at_half = None;
    for load in LOADS {
        progress(&format!("latency ({}): {:.0}% of the maximum, open loop", target.name(), 100.0 * load));
        let level = level(store, queue, payload_bytes, load, max * load, timing).await?;
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            format!("{:.0}%", 100.0 * level.load),
            thousands(level.offered_per_s),
            thousands(level.acked_per_s),
            millis(Some(level.quantile(0.5))),
            millis(Some(level.quantile(0.99))),
            millis(Some(level.quantile(0.999))),
            millis(Some(level.max())),
            thousands(level.latencies.len() as f64),
            millis(Some(level.generator_late_p99)),
        );
        emit(&mut out);
        if load == 0.5 {
            at_half = Some(level);
        }
    }
    let _ = writeln!(
        out,
        "enqueue → handler start: from each job's arrival to the lease that handed it out; arrivals sent on time \
         whatever the replies (no coordinated omission), those due at each tick of a 1 ms clock; gen p99 = how late \
         that clock's ticks fired (its grain; large only if the generator was starved); the first {} ms of each {} s \
         level left out",
        timing.warmup.as_millis(),
        timing.level.as_secs_f64()
    );
    if let (Some((p50, p99)), Some(level)) = (target.targets(), at_half) {
        let _ = writeln!(out, "targets ({}, 50% load):", target.name());
        let (got50, got99) = (level.quantile(0.5), level.quantile(0.99));
        target_line(&mut out, got50 < p50, format_args!("p50 < {} ms: {} ms", p50.as_millis(), millis(Some(got50))));
        target_line(&mut out, got99 < p99, format_args!("p99 < {} ms: {} ms", p99.as_millis(), millis(Some(got99))));
    }
    emit(&mut out);
    Ok(())
}

/// `onceq bench --latency` on the embedded store: a fresh store per durability level.
pub(crate) fn run_embedded(args: &super::BenchArgs, command_line: &str) -> Result<(), BenchError> {
    use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};

    use super::DurabilityChoice;

    let levels: &[(&'static str, Durability)] = match args.durability {
        DurabilityChoice::Fsync => &[("fsync", Durability::Fsync)],
        DurabilityChoice::Relaxed => &[("relaxed", Durability::Relaxed)],
        DurabilityChoice::Both => &[("fsync", Durability::Fsync), ("relaxed", Durability::Relaxed)],
    };
    let root = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new().prefix("onceq-bench-").tempdir_in(dir)?
        }
        None => tempfile::Builder::new().prefix("onceq-bench-").tempdir()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    outln_lossy!("$ {command_line}");
    outln_lossy!(
        "onceq {} · SQLite {} (bundled, WAL) · {} CPUs · payload {} B · data dir {}",
        env!("CARGO_PKG_VERSION"),
        rusqlite::version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.payload_bytes,
        root.path().display(),
    );
    for &(name, durability) in levels {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let store = SqliteStore::open(SqliteOptions::new(&dir).durability(durability))?;
        let queue = QueueName::new("bench-latency")?;
        let result = runtime.block_on(async {
            let result =
                report(&store, &queue, args.payload_bytes, Target::Embedded(name), Timing::new(args.quick)).await;
            store.close().await;
            result
        });
        result?;
        std::fs::remove_dir_all(&dir)?;
    }
    root.close()?;
    Ok(())
}

/// `onceq bench --latency --store URL`: the PostgreSQL store on a fresh schema, dropped at the end.
pub(crate) fn run_postgres(args: &super::BenchArgs, url: &str, command_line: &str) -> Result<(), BenchError> {
    use onceq_postgres::{PgOptions, PgStore};

    let schema = args.pg_schema.clone().unwrap_or_else(|| format!("onceq_bench_{:08x}", rand::random::<u32>()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    outln_lossy!("$ {command_line}");
    outln_lossy!(
        "onceq {} · PostgreSQL at {} · {} CPUs · payload {} B · schema {schema}, dropped at the end",
        env!("CARGO_PKG_VERSION"),
        url.split('@').next_back().unwrap_or(url),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.payload_bytes,
    );
    runtime.block_on(async {
        let options = PgOptions::new(url)
            .schema(&schema)
            .pool_size(u32::try_from(PRODUCERS + WORKERS + 4).unwrap_or(u32::MAX))
            .acquire_timeout(Duration::from_secs(30));
        let store = PgStore::connect(options).await?;
        let queue = QueueName::new("bench-latency")?;
        let result = report(&store, &queue, args.payload_bytes, Target::Postgres, Timing::new(args.quick)).await;
        let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await
            .map(|_| ())
            .map_err(|e| BenchError::Check(format!("dropping schema {schema}: {e}")));
        store.close().await;
        result.and(dropped)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_time() {
        let at = Duration::from_micros(1_234_567);
        let payload = stamped(at, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(stamp_of(&payload), Some(at));
        assert_eq!(stamped(at, 3).len(), 8, "room for the time at least");
        assert_eq!(stamp_of(b"short"), None);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let level = Level {
            load: 0.5,
            offered_per_s: 1.0,
            acked_per_s: 1.0,
            latencies: (1..=1000).map(Duration::from_millis).collect(),
            generator_late_p99: Duration::ZERO,
        };
        assert_eq!(level.quantile(0.5), Duration::from_millis(500));
        assert_eq!(level.quantile(0.99), Duration::from_millis(990));
        assert_eq!(level.quantile(0.999), Duration::from_millis(999));
        assert_eq!(level.max(), Duration::from_millis(1000));
        let empty = Level { latencies: Vec::new(), ..level };
        assert_eq!(empty.quantile(0.5), Duration::ZERO);
    }
}
