//! An in-process worker on the embedded store: enqueue welcome emails, send them, stop.
//!
//! `cargo run --example embedded_worker -p onceq-worker`

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use onceq_core::{NewJob, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};
use serde::Deserialize;
use tokio::sync::Notify;

#[derive(Deserialize)]
struct WelcomeEmail {
    to: String,
}

const EMAILS: usize = 25;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}

async fn run() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path()))?);
    let queue = QueueName::new("emails")?;
    let jobs = (0..EMAILS).map(|i| NewJob::new(format!(r#"{{"to":"user{i}@example.com"}}"#))).collect();
    store.job_enqueue(&queue, jobs).await?;

    let sent = Arc::new(AtomicUsize::new(0));
    let all_sent = Arc::new(Notify::new());
    let (counter, done) = (sent.clone(), all_sent.clone());
    let worker = Worker::builder(store.clone())
        .handle_with("emails", QueueOptions::concurrency(8), move |ctx: JobContext, email: WelcomeEmail| {
            let (counter, done) = (counter.clone(), done.clone());
            async move {
                println!("sending to {} (job {}, attempt {})", email.to, ctx.id, ctx.attempt);
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == EMAILS {
                    done.notify_one();
                }
                Outcome::Done
            }
        })
        .build()?;
    let report = worker.run(async move { all_sent.notified().await }).await;
    println!("{report:?}");
    store.close().await;
    if report.acked as usize != EMAILS || sent.load(Ordering::SeqCst) != EMAILS {
        return Err(format!("expected {EMAILS} emails acked, got {report:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_sends_every_email() {
        if let Err(error) = super::run().await {
            panic!("{error}");
        }
    }
}
