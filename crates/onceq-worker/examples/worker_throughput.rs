//! No-op job throughput of the Rust worker against a running `onceq serve`, over HTTP through
//! `onceq-client`: the yardstick the other clients' benches print beside their own figure
//! (`clients/python/bench.py`). It works the jobs already waiting in a queue with a no-op
//! handler (batched leases and acks) and prints one line: `rust-worker <jobs> jobs in <s> s:
//! <rate> jobs/s`.
//!
//! `cargo run --release -p onceq-worker --example worker_throughput -- URL QUEUE JOBS [CONCURRENCY]`
//!
//! Without arguments (as `cargo test` builds and runs examples) it only checks its arguments and
//! prints how to run it.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_client::Client;
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        println!("usage: worker_throughput URL QUEUE JOBS [CONCURRENCY]");
        return Ok(());
    }
    let [url, queue, jobs, rest @ ..] = args.as_slice() else {
        return Err("usage: worker_throughput URL QUEUE JOBS [CONCURRENCY]".into());
    };
    let jobs: u64 = jobs.parse().map_err(|e| format!("JOBS {jobs:?}: {e}"))?;
    let concurrency: usize = match rest.first() {
        Some(c) => c.parse().map_err(|e| format!("CONCURRENCY {c:?}: {e}"))?,
        None => 256,
    };
    let client = Arc::new(Client::new(url.clone())?);
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(Notify::new());
    let (counter, notify) = (done.clone(), finished.clone());
    let options = QueueOptions::concurrency(concurrency).poll_wait(Duration::from_millis(200));
    let worker = Worker::builder(client)
        .handle_with(queue, options, move |_ctx: JobContext, _payload: serde_json::Value| {
            let (counter, notify) = (counter.clone(), notify.clone());
            async move {
                if counter.fetch_add(1, Ordering::Relaxed) + 1 == jobs {
                    notify.notify_one();
                }
                Outcome::Done
            }
        })
        .build()?;
    let start = Instant::now();
    let report = worker.run(async move { finished.notified().await }).await;
    let seconds = start.elapsed().as_secs_f64();
    if report.acked < jobs {
        return Err(format!("expected {jobs} jobs acked, got {report:?}").into());
    }
    println!("rust-worker {jobs} jobs in {seconds:.2} s: {:.0} jobs/s", jobs as f64 / seconds);
    Ok(())
}
