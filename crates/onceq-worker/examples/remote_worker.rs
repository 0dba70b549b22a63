//! A worker on another machine: the same handler code, against `onceq serve` over HTTP through
//! `onceq-client`. The example serves the API itself on a loopback port (the very router
//! `onceq serve` runs), so it needs nothing else; point `ONCEQ_SERVER` at a running `onceq serve`
//! to use that instead.
//!
//! `cargo run --example remote_worker -p onceq-worker`

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use onceq_client::Client;
use onceq_core::{NewJob, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

const JOBS: usize = 30;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}

async fn run() -> Result<(), Box<dyn Error>> {
    // The server side (skipped when ONCEQ_SERVER names one).
    let dir = tempfile::tempdir()?;
    let (base_url, server) = match std::env::var("ONCEQ_SERVER") {
        Ok(url) => (url, None),
        Err(_) => {
            let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path()))?);
            let router = onceq_server::Api::new(store.clone() as Arc<dyn Store>).router();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let task = tokio::spawn(async move { axum::serve(listener, router).await });
            (url, Some((task, store)))
        }
    };
    println!("using the onceq server at {base_url}");

    // The client side: a producer and a worker, both through the HTTP client.
    let client = Arc::new(Client::builder(&base_url).token(std::env::var("ONCEQ_TOKEN").ok()).build()?);
    let queue = QueueName::new("thumbnails")?;
    let jobs = (0..JOBS).map(|i| NewJob::new(format!(r#"{{"image":"photo-{i}.jpg"}}"#))).collect();
    client.job_enqueue(&queue, jobs).await?;

    let made = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let (counter, done) = (made.clone(), finished.clone());
    let worker = Worker::builder(client.clone())
        .handle_with("thumbnails", QueueOptions::concurrency(8), move |_ctx: JobContext, job: serde_json::Value| {
            let (counter, done) = (counter.clone(), done.clone());
            async move {
                println!("thumbnail of {}", job["image"]);
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == JOBS {
                    done.notify_one();
                }
                Outcome::Done
            }
        })
        .build()?;
    let report = worker.run(async move { finished.notified().await }).await;
    println!("{report:?}");
    if let Some((task, store)) = server {
        task.abort();
        store.close().await;
    }
    if report.acked as usize != JOBS {
        return Err(format!("expected {JOBS} jobs acked over HTTP, got {report:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_works_over_http() {
        if let Err(error) = super::run().await {
            panic!("{error}");
        }
    }
}
