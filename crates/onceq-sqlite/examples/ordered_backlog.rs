//! The work of `onceq bench`'s `lease-ack-ordered-backlog`, split so that one fill can be
//! leased from many times, on copies of its directory, and the writer's CPU time counted: on a
//! shared machine the time an fsync takes swings by ten times from one minute to the next, the
//! CPU time per job does not.
//!
//! - `fill DIR HELD`: a `per_key` queue of HELD jobs over 100,000 keys (`key-{n mod 100000}`),
//!   1000 per call, as the bench fills it (there from 4 producers at once).
//! - `lease DIR N`: lease 100 + ack 100, one worker, until N jobs are done; prints the wall time
//!   and the CPU time of every thread of the process, per job.
//!
//! `PAGE_CACHE_MIB` sets the writer's page cache (`SqliteOptions::page_cache_bytes`), and
//! `RELAXED` durability relaxed; the default is fsync, as in the figures the issue targets.
//!
//! ```text
//! cargo build --release -p onceq-sqlite --example ordered_backlog
//! B=target/release/examples/ordered_backlog
//! $B fill /tmp/big 1200000 && $B fill /tmp/small 200000
//! for s in big small; do rm -rf /tmp/run && cp -r /tmp/$s /tmp/run && $B lease /tmp/run 100000; done
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{LeaseOptions, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};

const KEYS: u64 = 100_000;
const BATCH: u64 = 100;

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: ordered_backlog fill|lease DIR N".into());
    };
    let n: u64 = n.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let durability =
            if std::env::var("RELAXED").is_ok() { Durability::Relaxed } else { Durability::Fsync };
        let mut options = SqliteOptions::new(dir).durability(durability);
        if let Ok(mib) = std::env::var("PAGE_CACHE_MIB") {
            options = options.page_cache_bytes(mib.parse::<u64>()? << 20);
        }
        let store = SqliteStore::open(options)?;
        let queue = QueueName::new("bench")?;
        let mut payload = br#"{"task":"bench","data":""#.to_vec();
        payload.resize(98, b'x');
        payload.extend_from_slice(br#""}"#);
        let payload: Arc<[u8]> = payload.into();
        match mode.as_str() {
            "fill" => {
                let patch =
                    QueueConfigPatch { ordering: Some(onceq_core::Ordering::PerKey), ..QueueConfigPatch::default() };
                store.queue_upsert(&queue, patch).await?;
                let started = Instant::now();
                let mut filled = 0;
                while filled < n {
                    let k = 1000.min(n - filled);
                    let jobs: Vec<NewJob> = (filled..filled + k)
                        .map(|i| NewJob::new(payload.to_vec()).ordering_key(format!("key-{}", i % KEYS)))
                        .collect();
                    store.job_enqueue(&queue, jobs).await?;
                    filled += k;
                }
                eprintln!("filled {n} in {:.1} s", started.elapsed().as_secs_f64());
            }
            "lease" => {
                let options =
                    LeaseOptions { max_jobs: BATCH as u32, visibility_timeout_ms: Some(600_000), wait_ms: 0 };
                if let Ok(secs) = std::env::var("PAUSE_SECS") {
                    eprintln!("pid {} pausing", std::process::id());
                    tokio::time::sleep(Duration::from_secs(secs.parse()?)).await;
                }
                let cpu0 = cpu_ns();
                let started = Instant::now();
                let (mut lease_t, mut ack_t) = (Duration::ZERO, Duration::ZERO);
                let mut done = 0;
                while done < n {
                    let t = Instant::now();
                    let leased = store.job_lease(&queue, options).await?;
                    lease_t += t.elapsed();
                    if leased.is_empty() {
                        return Err(format!("ran dry after {done}").into());
                    }
                    let leases: Vec<_> = leased.iter().map(|job| job.lease()).collect();
                    let t = Instant::now();
                    for result in store.job_ack(&leases).await? {
                        result?;
                    }
                    ack_t += t.elapsed();
                    done += leased.len() as u64;
                }
                let s = started.elapsed().as_secs_f64();
                let cpu = (cpu_ns() - cpu0) as f64 / 1e9;
                eprintln!(
                    "leased+acked {done} in {s:.2} s = {:.0} jobs/s, cpu {cpu:.2} s = {:.1} us/job (lease {:.2} s, ack {:.2} s)",
                    done as f64 / s,
                    cpu * 1e6 / done as f64,
                    lease_t.as_secs_f64(),
                    ack_t.as_secs_f64()
                );
            }
            other => return Err(format!("unknown mode {other}").into()),
        }
        store.close().await;
        Ok(())
    })
}

/// On-CPU nanoseconds of every thread of this process so far.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}
