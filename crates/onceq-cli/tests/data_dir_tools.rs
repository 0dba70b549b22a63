//! The embedded store's data directory, through the real binary (issue 25): `onceq doctor` checks
//! a stopped store (sound: exit 0; damaged: exit 1 naming what is wrong; in use: refused);
//! `onceq serve --verify-on-start` refuses a damaged file that a plain start takes; `onceq backup`
//! copies a store while it serves under load, and the copy, put back with `onceq restore`, holds
//! every job whose enqueue was acknowledged before the backup began; restore refuses a store in
//! use and, without `--replace`, a directory that holds one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{id_of, run_onceq, Server};
use onceq_core::{JobId, NewJob, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore, DATA_FILE_NAME};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A stopped store in `dir` with a few small jobs and one big one of `Z`s.
async fn a_store_with_a_big_job(dir: &Path) {
    let store = SqliteStore::open(SqliteOptions::new(dir)).unwrap();
    let q = QueueName::new("q").unwrap();
    store.job_enqueue(&q, vec![NewJob::new(format!("\"{}\"", "Z".repeat(200_000)).into_bytes())]).await.unwrap();
    store.job_enqueue(&q, (0..5).map(|n| NewJob::new(n.to_string())).collect()).await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_verify_on_start_find_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    a_store_with_a_big_job(&data).await;

    let out = run_onceq(&["doctor", data_arg], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("integrity       ok") && said.contains("jobs            6"), "{said}");

    onceq_testkit::damage::overflow_page(&data.join(DATA_FILE_NAME), b'Z');
    let out = run_onceq(&["doctor", data_arg], LIMIT).await;
    let (said, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}{stderr}");
    assert!(said.contains("DAMAGED"), "{said}");
    assert!(stderr.contains("restore it from a backup"), "{stderr}");

    // A plain start takes the file (the damage is where only one job's payload is); with
    // --verify-on-start serve refuses it.
    let out =
        run_onceq(&["serve", "--data-dir", data_arg, "--listen", "127.0.0.1:0", "--verify-on-start"], LIMIT).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("integrity check") && stderr.contains("backup"), "{stderr}");

    // Nothing to check, and a store in use.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run_onceq(&["doctor", empty.to_str().unwrap()], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let server = Server::start().await;
    let out = run_onceq(&["doctor", server.data_dir().to_str().unwrap()], LIMIT).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_job_acknowledged_before_it() {
    let server = Server::start().await;
    let api = server.api();
    let data = server.data_dir();
    // Producers enqueue until told to stop, noting when each enqueue was acknowledged.
    let acknowledged: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (api, acknowledged, stop) = (api.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let jobs: Vec<_> = (0..20).map(|k| json!({"payload": format!("p{p}-{n}-{k}")})).collect();
                    let reply = api.post("/v1/queues/load/jobs", json!({ "jobs": jobs })).await.ok(200);
                    let at = Instant::now();
                    let mut acknowledged = acknowledged.lock().unwrap();
                    for job in reply["jobs"].as_array().unwrap() {
                        acknowledged.insert(id_of(job), at);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 2_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("onceq.backup");
    let began = Instant::now();
    let out = run_onceq(&["backup", "--data-dir", data.to_str().unwrap(), "--to", file.to_str().unwrap()], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("backed up"), "{}", text(&out.stdout));
    // The load went on during the backup.
    let before_end = acknowledged.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for producer in producers {
        producer.await.unwrap();
    }
    assert!(acknowledged.lock().unwrap().len() > before_end, "the load stopped during the backup");

    // A second backup to the same file is refused; restore into the running server's directory too.
    let out = run_onceq(&["backup", "--data-dir", data.to_str().unwrap(), "--to", file.to_str().unwrap()], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run_onceq(
        &["restore", "--from", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--replace"],
        LIMIT,
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");

    // Restored into a new directory: every job acknowledged before the backup began is there.
    let restored = tempfile::tempdir().unwrap();
    let into = restored.path().join("data");
    let out =
        run_onceq(&["restore", "--from", file.to_str().unwrap(), "--data-dir", into.to_str().unwrap()], LIMIT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("integrity ok"), "{}", text(&out.stdout));
    let out =
        run_onceq(&["restore", "--from", file.to_str().unwrap(), "--data-dir", into.to_str().unwrap()], LIMIT).await;
    assert_eq!(out.status.code(), Some(2), "a second restore without --replace: {}", text(&out.stderr));
    let store = SqliteStore::open(SqliteOptions::new(&into)).unwrap();
    let before: Vec<String> =
        acknowledged.lock().unwrap().iter().filter(|(_, at)| **at < began).map(|(id, _)| id.clone()).collect();
    assert!(before.len() >= 2_000);
    let mut missing = Vec::new();
    for id in &before {
        if store.job_get(JobId::new(id.parse().unwrap())).await.is_err() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} jobs acknowledged before the backup are missing: {:?}",
        missing.len(),
        before.len(),
        &missing[..missing.len().min(10)]
    );
    let copied = store.queue_get(&QueueName::new("load").unwrap()).await.unwrap().stats.ready;
    eprintln!("backup under load: {} acknowledged before it, {copied} in the copy", before.len());
    store.close().await;
}
