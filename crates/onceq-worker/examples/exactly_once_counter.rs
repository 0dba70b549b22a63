//! An effectively-once worker whose side effect — adding to a counter — must end at exactly N,
//! although deliveries are duplicated on purpose.
//!
//! Every fourth job, on its first attempt, stalls past its lease (the example jumps the store's
//! clock forward, as a long GC pause or a network partition would): the lease expires and the
//! job is delivered again while the first delivery has already applied its effect. The
//! idempotency store records each effect before the ack, so the redelivery is acked without
//! running the handler: the counter ends at exactly N, and the report shows the duplicates.
//!
//! `cargo run --example exactly_once_counter -p onceq-worker`

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{DeliveryMode, IdempotencyStore, ManualClock, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{EffectivelyOnce, JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

const N: u64 = 40;
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}

async fn run() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::at_default_start();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock.clone()))?);
    let queue = QueueName::new("deposits")?;
    let patch = QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() };
    store.queue_upsert(&queue, patch).await?;
    let jobs = (1..=N).map(|i| NewJob::new("1").dedup_id(format!("deposit-{i}"))).collect();
    store.job_enqueue(&queue, jobs).await?;

    let counter = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(Notify::new());
    let guard = EffectivelyOnce::new(store.clone() as Arc<dyn IdempotencyStore>);
    let options = QueueOptions::concurrency(1)
        .visibility_timeout(VISIBILITY_TIMEOUT)
        .poll_wait(Duration::from_millis(50))
        .effectively_once(guard);
    let (count, done, stall) = (counter.clone(), finished.clone(), clock.clone());
    let worker = Worker::builder(store.clone())
        .handle_with("deposits", options, move |ctx: JobContext, amount: u64| {
            let (count, done, stall) = (count.clone(), done.clone(), stall.clone());
            async move {
                let total = count.fetch_add(amount, Ordering::SeqCst) + amount; // the effect
                let nth: u64 =
                    ctx.dedup_id.as_deref().and_then(|d| d.strip_prefix("deposit-")?.parse().ok()).unwrap_or(0);
                if nth.is_multiple_of(4) && ctx.attempt == 1 {
                    // Stall past the lease after the effect: the job will be delivered again.
                    stall.advance(2 * VISIBILITY_TIMEOUT.as_millis() as u64);
                }
                if total == N {
                    done.notify_one();
                }
                Outcome::Done
            }
        })
        .build()?;
    let store_for_end = store.clone();
    let report = worker
        .run(async move {
            finished.notified().await;
            // Let the redeliveries of the stalled jobs come through and be acked.
            for _ in 0..500 {
                let stats =
                    store_for_end.queue_get(&QueueName::new("deposits").unwrap_or_else(|e| panic!("{e}"))).await;
                if stats.is_ok_and(|q| q.stats.ready + q.stats.leased + q.stats.scheduled == 0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    store.close().await;
    let total = counter.load(Ordering::SeqCst);
    println!("counter = {total} (expected {N}); {report:?}");
    if total != N {
        return Err(format!("the counter is {total}, not {N}: an effect ran twice").into());
    }
    if report.duplicates_skipped == 0 {
        return Err(format!("no redelivery was detected; the demonstration did not happen: {report:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_counter_ends_at_exactly_n() {
        if let Err(error) = super::run().await {
            panic!("{error}");
        }
    }
}
