//! Requests that are not HTTP, too big, too slow or too many at once, against the real listener
//! (`serve`, over a socket): every answer is in the API's error format (docs/api.md, "Errors"),
//! in onceq's words, including the ones the HTTP parser gives before any handler runs (400 for a
//! malformed request line or header, 414 for a URI over 65,534 bytes, 431 for more than 100
//! headers) and the 408 of a request past the request timeout. A well-formed request beside them
//! is answered as usual. A body declared over the limit is refused from its header at once; a body
//! that trickles or stalls is cut at the body deadline with 408, however slowly it trickles; and
//! bodies being read at once cannot take more than the server's memory budget for them (503
//! past it), so slow senders cannot pin the server's memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onceq_core::Store;
use onceq_server::{Api, ServeOptions};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Running {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(options: ServeOptions) -> Running {
        Running::start_with(options, onceq_server::BODY_MEMORY_BYTES_DEFAULT).await
    }

    async fn start_with(options: ServeOptions, body_memory: usize) -> Running {
        Running::start_api(options, |api| api.body_memory(body_memory)).await
    }

    async fn start_api(options: ServeOptions, configure: impl FnOnce(Api) -> Api) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
        let api = configure(Api::new(Arc::new(store) as Arc<dyn Store>));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            onceq_server::serve(api, listener, options, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Running { address, stop: Some(stop), task, _dir: dir }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task).await.unwrap().unwrap();
    }
}

/// A response read off the socket until the server closes it (or `Content-Length` is met).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The API's error body with `status` and `code`; its message.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.body);
        assert!(self.head.to_ascii_lowercase().contains("content-type: application/json"), "{}", self.head);
        let body: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body));
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert!(!message.is_empty());
        message
    }
}

/// Reads one response from `stream`.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_owned()))
                .map(|v| v.parse::<usize>().unwrap());
            if let Some(length) = length {
                if bytes.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
                    let status = head[9..12].parse().unwrap();
                    return Answer { status, head, body };
                }
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("an answer within 20 s")
            .unwrap();
        assert!(n > 0, "the connection closed before a whole answer: {}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` on a new connection and reads the answer.
async fn send(address: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parser_s_rejections_are_in_the_api_s_format() {
    let server = Running::start(ServeOptions::default()).await;
    let address = server.address;

    // A malformed request line.
    let message = send(address, b"HELLO THERE\r\n\r\n").await.error(400, "invalid_request");
    assert!(message.contains("request line"), "{message}");
    // A malformed header (a space in its name).
    let message = send(address, b"GET /v1/queues HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n")
        .await
        .error(400, "invalid_request");
    assert!(message.contains("header"), "{message}");
    // A URI over 65,534 bytes.
    let long = format!("GET /v1/queues?{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let message = send(address, long.as_bytes()).await.error(414, "invalid_request");
    assert!(message.contains("65,534"), "{message}");
    // More than 100 headers.
    let mut many = String::from("GET /v1/queues HTTP/1.1\r\nhost: x\r\n");
    for k in 0..120 {
        many.push_str(&format!("x-h{k}: v\r\n"));
    }
    many.push_str("\r\n");
    let message = send(address, many.as_bytes()).await.error(431, "invalid_request");
    assert!(message.contains("100 headers"), "{message}");

    // On one connection: a good request is answered as usual, then a malformed one in the API's format.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /v1/queues HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let first = read_answer(&mut stream).await;
    assert_eq!(first.status, 200, "{}\n{}", first.head, first.body);
    stream.write_all(b"GET /v1/queues HTTP/1.1\r\nho st: x\r\n\r\n").await.unwrap();
    read_answer(&mut stream).await.error(400, "invalid_request");

    // The router's own 400 (not the parser's) keeps its own words.
    let body = b"{not json";
    let request = format!(
        "POST /v1/queues/q/jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let message = send(address, &bytes).await.error(400, "invalid_request");
    assert!(!message.contains("request line"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_gets_408_in_the_api_s_format() {
    let mut options = ServeOptions::default();
    options.request_timeout = Duration::from_millis(300);
    let server = Running::start(options).await;
    let put =
        b"PUT /v1/queues/idle HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let created = send(server.address, put).await;
    assert_eq!(created.status, 200, "{}", created.body);
    // A long poll that would wait 5 s.
    let body = br#"{"max_jobs": 1, "wait_ms": 5000}"#;
    let request = format!(
        "POST /v1/queues/idle/leases HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let message = send(server.address, &bytes).await.error(408, "request_timeout");
    assert!(message.contains("0.3 s"), "{message}");
    server.stop().await;
}

/// The head of a JSON POST declaring `length` bytes of body.
fn post_head(path: &str, length: u64) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_over_the_limit_is_refused_from_its_header_at_once() {
    let server = Running::start(ServeOptions::default()).await;
    let sent = std::time::Instant::now();
    let answer = send(server.address, &post_head("/v1/queues/q/jobs", 99_999_999_999)).await;
    let message = answer.error(413, "payload_too_large");
    assert!(message.contains("16777216"), "{message}");
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}: the body was waited for", sent.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_or_stalls_is_cut_at_the_body_deadline_with_408() {
    let mut options = ServeOptions::default();
    options.body_read_timeout = Duration::from_millis(1500);
    let server = Running::start(options).await;
    let body = br#"{"jobs": [{"payload": "trickled"}]}"#;

    // Trickled: a byte every 100 ms would take 3.5 s in all; each byte comes well within any
    // per-read timeout, and the whole body still must arrive by the deadline.
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream.write_all(&post_head("/v1/queues/q/jobs", body.len() as u64)).await.unwrap();
    let sent = std::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in body {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stream
    });
    // The answer comes while the client is still sending: read it on a second handle.
    let mut stream = trickle.await.unwrap();
    let answer = read_answer(&mut stream).await;
    let message = answer.error(408, "request_timeout");
    assert!(message.contains("1.5 s"), "{message}");
    assert!(sent.elapsed() < Duration::from_secs(6), "took {:?}", sent.elapsed());

    // Stalled: 10 of the declared bytes, then nothing.
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream.write_all(&post_head("/v1/queues/q/jobs", body.len() as u64)).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let sent = std::time::Instant::now();
    read_answer(&mut stream).await.error(408, "request_timeout");
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_secs(5), "took {took:?}");

    // Nothing of either was enqueued.
    let listed = send(server.address, b"GET /v1/queues HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let list: Value = serde_json::from_str(&listed.body).unwrap();
    assert!(list["queues"].as_array().unwrap().iter().all(|q| q["stats"]["ready"] == 0), "{list}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_being_read_at_once_stay_within_the_memory_budget() {
    // A budget of 1 MiB: one body declaring 700,000 bytes that is slow to come holds most of it.
    let budget = 1 << 20;
    let server = Running::start_with(ServeOptions::default(), budget).await;
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    slow.write_all(&post_head("/v1/queues/q/jobs", 700_000)).await.unwrap();
    slow.write_all(b"{\"jobs\": [").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A second big one is refused at once with 503 and Retry-After, before its body is read.
    let answer = send(server.address, &post_head("/v1/queues/q/jobs", 700_000)).await;
    let message = answer.error(503, "unavailable");
    assert!(message.contains("memory"), "{message}");
    assert!(answer.head.to_ascii_lowercase().contains("retry-after: 1"), "{}", answer.head);
    // A small one still fits beside it.
    let small = br#"{"jobs": [{"payload": 1}]}"#;
    let mut request = post_head("/v1/queues/q/jobs", small.len() as u64);
    request.extend_from_slice(small);
    let answer = send(server.address, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Once the slow body is whole (and parsed), its share is back: the next big one is read.
    let payload = "x".repeat(699_000 - 40);
    let rest = format!("{{\"payload\": \"{payload}\"}}]}}");
    let mut body = b"{\"jobs\": [".to_vec();
    body.extend_from_slice(rest.as_bytes());
    let padding = 700_000 - body.len();
    body.extend(std::iter::repeat_n(b' ', padding));
    slow.write_all(&body[10..]).await.unwrap();
    let answer = read_answer(&mut slow).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut request = post_head("/v1/queues/q/jobs", body.len() as u64);
    request.extend_from_slice(&body);
    let answer = send(server.address, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_the_path_decides_are_checked_before_the_body_is_read() {
    use onceq_server::{hash_token, Auth, TokenConfig};
    let token = |name: &str, produce: &[&str]| TokenConfig {
        name: name.to_owned(),
        sha256: hash_token(name),
        produce: produce.iter().map(|p| (*p).to_owned()).collect(),
        consume: Vec::new(),
        admin: Vec::new(),
    };
    let auth = Auth::from_tokens(&[token("nobody", &[]), token("producer", &["orders.*"])]).unwrap();
    let server = Running::start_api(ServeOptions::default(), |api| api.auth(auth)).await;
    // Only the head of a request declaring 1,000,000 bytes of body: the answer comes without it.
    let head = |path: &str, bearer: Option<&str>| {
        let authorization = bearer.map(|b| format!("authorization: Bearer {b}\r\n")).unwrap_or_default();
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\n{authorization}content-type: application/json\r\ncontent-length: \
             1000000\r\n\r\n"
        )
        .into_bytes()
    };
    send(server.address, &head("/v1/queues/orders.x/jobs", None)).await.error(401, "unauthorized");
    let message = send(server.address, &head("/v1/queues/orders.x/jobs", Some("nobody"))).await.error(403, "forbidden");
    assert!(message.contains("produce") && message.contains("orders.x"), "{message}");
    let message = send(server.address, &head("/v1/queues/other/jobs", Some("producer"))).await.error(403, "forbidden");
    assert!(message.contains("produce") && message.contains("other"), "{message}");
    for path in ["/v1/acks", "/v1/jobs/1/ack", "/v1/queues/orders.x/leases", "/v1/idempotency/orders.k/begin"] {
        let message = send(server.address, &head(path, Some("producer"))).await.error(403, "forbidden");
        assert!(message.contains("consume"), "{path}: {message}");
    }
    let message = send(server.address, &head("/v1/commits", Some("nobody"))).await.error(403, "forbidden");
    assert!(message.contains("any queue"), "{message}");

    // Allowed: the body is read and the request served as before.
    let body = br#"{"jobs": [{"payload": 1}]}"#;
    let mut request = format!(
        "POST /v1/queues/orders.x/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer producer\r\ncontent-type: \
         application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let answer = send(server.address, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let enqueued: Value = serde_json::from_str(&answer.body).unwrap();
    let id = enqueued["jobs"][0]["id"].as_str().unwrap().to_owned();
    // Reading a job needs consume or admin on its queue, and the refusal says so.
    let get = format!("GET /v1/jobs/{id} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer producer\r\n\r\n");
    let message = send(server.address, get.as_bytes()).await.error(403, "forbidden");
    assert!(message.contains("consume") && message.contains("admin"), "{message}");
    server.stop().await;
}
