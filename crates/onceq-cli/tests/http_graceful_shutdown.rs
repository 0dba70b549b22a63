//! Graceful shutdown and the data-directory lock of `onceq serve` (issue 3, items 1 and 3):
//! - on SIGTERM, with a long poll waiting, a stream of enqueues running and a request whose body
//!   is still arriving: the long poll ends at once with 200 and no jobs; from then on new
//!   connections are refused while the process is still finishing; the half-sent request, once
//!   its body arrives, is served (200) and its job kept; the process exits 0 within a few
//!   seconds; and after a restart every enqueue that got a 2xx reply is there;
//! - a second server on a data directory in use exits non-zero, saying the directory is in use,
//!   without disturbing the first; once the first has stopped, the directory can be used again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{id_of, run_onceq, Api, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PRODUCERS: usize = 4;
/// How long the process may take to exit after SIGTERM, in-flight requests included.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Enqueues one job at a time until a request fails; records every 2xx reply's id and payload.
async fn produce(api: Api, producer: usize, acknowledged: Arc<Mutex<Vec<(String, String)>>>) {
    for seq in 0u64.. {
        let payload = format!("p{producer}-{seq}");
        let Ok(reply) = api.try_post("/v1/queues/gs/jobs", json!({"jobs": [{"payload": payload}]})).await else {
            return;
        };
        let body = reply.ok(200);
        acknowledged.lock().unwrap().push((id_of(&body["jobs"][0]), payload));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_work_refuses_new_connections_and_loses_nothing() {
    let mut server = Server::start().await;
    let addr = server.addr();

    // A long poll on an empty queue.
    let poller = server.api();
    let long_poll = tokio::spawn(async move {
        let reply = poller.try_post("/v1/queues/idle/leases", json!({"wait_ms": 15_000})).await;
        (reply, Instant::now())
    });
    // A stream of enqueues.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..PRODUCERS {
        producers.spawn(produce(server.api(), producer, acknowledged.clone()));
    }
    // An enqueue whose body is half sent: the server is inside that request at the SIGTERM.
    let body = json!({"jobs": [{"payload": "slow upload"}]}).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/queues/gs/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{head}",
        body.len()
    );
    slow.write_all(request.as_bytes()).await.unwrap();

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!long_poll.is_finished(), "the long poll is waiting");
    assert!(!acknowledged.lock().unwrap().is_empty(), "enqueues are flowing");
    let terminated = Instant::now();
    server.signal_terminate();

    // The long poll ends promptly, with a 200 and no jobs.
    let (reply, returned) = long_poll.await.unwrap();
    let reply = reply.expect("the long poll gets a response, not a dropped connection");
    assert_eq!(reply.ok(200), json!({"jobs": []}));
    let after = returned - terminated;
    assert!(after < Duration::from_secs(2), "the long poll ended {after:?} after SIGTERM");

    // Long polls end only after the listener is closed: from now on no connection is accepted,
    // while the process is still alive, finishing the half-sent request.
    match TcpStream::connect(addr).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted after the shutdown began"),
    }
    assert!(server.is_running(), "the process waits for the in-flight request");

    // The in-flight request completes, and its job is acknowledged.
    slow.write_all(tail.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut response))
        .await
        .expect("the in-flight request is answered and its connection closed")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "the in-flight enqueue is served: {response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a response body");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    let slow_id = id_of(&body["jobs"][0]);

    let status = server.wait_exit(EXIT_WITHIN).await;
    assert_eq!(status.code(), Some(0), "a graceful shutdown exits 0; stderr:\n{}", server.stderr());
    let exited = terminated.elapsed();
    while let Some(joined) = producers.join_next().await {
        joined.expect("a producer failed");
    }

    // Everything acknowledged is on disk.
    server.restart().await;
    let api = server.api();
    let mut acknowledged = acknowledged.lock().unwrap().clone();
    acknowledged.push((slow_id, "slow upload".to_owned()));
    for (id, payload) in &acknowledged {
        let job = api.get(&format!("/v1/jobs/{id}")).await.ok(200);
        assert_eq!((&job["state"], &job["payload"]), (&json!("ready"), &json!(payload)), "job {id}");
    }
    let stats = api.get("/v1/queues/gs").await.ok(200)["stats"].clone();
    let ready = stats["ready"].as_u64().unwrap();
    // A reply lost to the shutdown may hide a committed job, never the other way round.
    assert!(ready >= acknowledged.len() as u64, "{ready} ready, {} acknowledged", acknowledged.len());
    eprintln!("{} enqueues acknowledged; the process exited {exited:?} after SIGTERM", acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_data_directory_in_use_is_refused() {
    let mut first = Server::start().await;
    let id = first.api().enqueue("locked", &[json!("mine")]).await.remove(0);
    let data_dir = first.data_dir();

    let output = run_onceq(
        &["serve", "--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second server must not start: {:?}", output.status);
    assert!(stderr.contains("in use"), "the message says the data directory is in use: {stderr}");
    assert!(stderr.contains(data_dir.to_str().unwrap()), "the message names the directory: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "it never listened");

    // The first is undisturbed.
    assert_eq!(first.api().get(&format!("/v1/jobs/{id}")).await.ok(200)["payload"], "mine");
    first.api().enqueue("locked", &[json!("still mine")]).await;

    // Stopped, it releases the directory: a new server opens it, with the data.
    let status = first.terminate(EXIT_WITHIN).await;
    assert_eq!(status.code(), Some(0));
    first.restart().await;
    assert_eq!(first.api().get("/v1/queues/locked").await.ok(200)["stats"]["ready"], 2);
}

/// `--page-cache-mib` sizes the embedded writer's page cache: a value in range serves (and keeps
/// what was written across a restart with another size); out of range is a usage error (exit 2)
/// before anything is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_cache_is_a_knob_with_named_bounds() {
    let mut server = Server::start_with(&["--listen", "127.0.0.1:0", "--page-cache-mib", "2"], None).await;
    let id = server.api().enqueue("cached", &[json!("kept")]).await.remove(0);
    server.terminate(EXIT_WITHIN).await;
    server.restart_with(&["--listen", "127.0.0.1:0", "--page-cache-mib", "64"]).await;
    assert_eq!(server.api().get(&format!("/v1/jobs/{id}")).await.ok(200)["payload"], "kept");
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "65537", "lots"] {
        let output = run_onceq(
            &["serve", "--data-dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--page-cache-mib", bad],
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(output.status.code(), Some(2), "--page-cache-mib {bad}: {output:?}");
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a refused start opens nothing");
}
