//! Requests that are not HTTP, or that run too long, against the real listener (`serve`, over a
//! socket): every answer is in the API's error format (docs/api.md, "Errors"), in onceq's words,
//! including the ones the HTTP parser gives before any handler runs (400 for a malformed request
//! line or header, 414 for a URI over 65,534 bytes, 431 for more than 100 headers) and the 408 of
//! a request past the request timeout. A well-formed request beside them is answered as usual.

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
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
        let api = Api::new(Arc::new(store) as Arc<dyn Store>);
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
