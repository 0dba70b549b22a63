//! The harness of the black-box HTTP tests (`tests/http_*.rs`): the real `onceq serve` binary
//! on an ephemeral port in a fresh temporary directory, and a small HTTP client that checks the
//! API's response shapes.
//!
//! Each test starts its own [`Server`], so tests run in parallel without sharing anything.
//! Not every test uses every helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::http::{assert_error_detail, error_message, Reply, TokenSpec};

/// The binary under test.
pub const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

/// What `onceq serve` prints on stdout once it listens; the address follows it.
const LISTENING_PREFIX: &str = "onceq listening on http://";

/// Longest wait for a server to print its listening line (debug builds, a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables `onceq serve` reads: removed so the caller's shell cannot steer a test.
pub const ONCEQ_ENV: &[&str] = &[
    "ONCEQ_STORE",
    "ONCEQ_PG_SCHEMA",
    "ONCEQ_PG_CONNECT_TIMEOUT_MS",
    "ONCEQ_DATA_DIR",
    "ONCEQ_LISTEN",
    "ONCEQ_CONFIG",
    "ONCEQ_DURABILITY",
    "ONCEQ_PAGE_CACHE_MIB",
    "ONCEQ_INSECURE_NO_AUTH",
    "ONCEQ_LOG_FORMAT",
];

/// The TOML config file holding `tokens` (hashed, as the server wants them).
pub fn tokens_config(tokens: &[TokenSpec]) -> String {
    let list = |patterns: &[&str]| patterns.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    for token in tokens {
        out.push_str(&format!(
            "[[tokens]]\nname = {:?}\nsha256 = {:?}\nproduce = [{}]\nconsume = [{}]\nadmin = [{}]\n\n",
            token.name,
            onceq_server::hash_token(token.secret),
            list(token.produce),
            list(token.consume),
            list(token.admin),
        ));
    }
    out
}

/// A running `onceq serve` child process, its temporary directory, and how to start it again.
///
/// Layout of the directory: `data/` (the data directory, kept across restarts), `config.toml`
/// (when a config is given) and `stderr-<n>.log` (the n-th start's log).
///
/// Dropping it kills the process (SIGKILL) and removes the directory, so a failing test leaves
/// nothing running behind it.
pub struct Server {
    /// The running process, spawned with `kill_on_drop`; `None` between a stop and a restart.
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    /// Arguments after `serve --data-dir <dir>/data`.
    args: Vec<String>,
    /// How many times a process was started (names the stderr logs).
    starts: u32,
}

impl Server {
    /// A server on `127.0.0.1:0` without auth.
    pub async fn start() -> Server {
        Server::start_with(&["--listen", "127.0.0.1:0"], None).await
    }

    /// A server on `127.0.0.1:0` with this config file (e.g. [`tokens_config`]).
    pub async fn start_with_config(config: &str) -> Server {
        Server::start_with(&["--listen", "127.0.0.1:0"], Some(config)).await
    }

    /// A server with these arguments (after `serve --data-dir ...`), and `--config` pointing at
    /// `config` when given. Panics with the server's stderr if it does not start.
    pub async fn start_with(args: &[&str], config: Option<&str>) -> Server {
        let dir = tempfile::Builder::new().prefix("onceq-http-test").tempdir().expect("temp dir");
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if let Some(config) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, config).expect("write config");
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let mut server = Server { child: None, addr: SocketAddr::from(([127, 0, 0, 1], 0)), dir, args, starts: 0 };
        server.spawn().await;
        server
    }

    /// The data directory (the same across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The temporary directory holding the data directory, the config and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address the current process listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client without a token.
    pub fn api(&self) -> Api {
        Api::new(&self.url(), None)
    }

    /// A client sending `Authorization: Bearer <token>`.
    pub fn api_with_token(&self, token: &str) -> Api {
        Api::new(&self.url(), Some(token))
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("the server is running")
    }

    /// The stderr of the latest start, for failure messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("stderr-{}.log", self.starts))).unwrap_or_default()
    }

    /// Starts the process and waits for its listening line.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        self.starts += 1;
        let stderr_path = self.dir.path().join(format!("stderr-{}.log", self.starts));
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut command = Command::new(ONCEQ);
        command.arg("serve").arg("--data-dir").arg(self.data_dir()).args(&self.args);
        for var in ONCEQ_ENV {
            command.env_remove(var);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn onceq serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = tokio::sync::oneshot::channel();
        // Reads the listening line, then drains stdout until the process closes it.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut line_tx = Some(line_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(LISTENING_PREFIX) {
                    if let Some(tx) = line_tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let line = match tokio::time::timeout(START_TIMEOUT, line_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = child.wait().await;
                panic!(
                    "onceq serve {:?} exited ({status:?}) before listening; stderr:\n{}",
                    self.args,
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            Err(_) => panic!("onceq serve printed no listening line within {START_TIMEOUT:?}"),
        };
        self.addr = parse_listening_line(&line);
        self.child = Some(child);
    }

    /// Kills the process with SIGKILL (no shutdown at all) and reaps it.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().await.expect("kill -9 the server");
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn signal_terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit, at most `timeout`; panics if it does not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.expect("wait for the server"),
            Err(_) => {
                let _ = child.kill().await;
                panic!("the server did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
        }
    }

    /// SIGTERM, then waits for the exit (at most `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal_terminate();
        self.wait_exit(timeout).await
    }

    /// Starts a new process on the same data directory, with the same arguments.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// Starts a new process on the same data directory with other arguments (after
    /// `serve --data-dir ...`); later restarts keep them.
    pub async fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self.spawn().await;
    }
}

/// The address in `onceq listening on http://ADDR (data dir ..., durability ...)`.
fn parse_listening_line(line: &str) -> SocketAddr {
    let rest = line.strip_prefix(LISTENING_PREFIX).expect("listening prefix");
    let addr = rest.split_whitespace().next().expect("an address after the prefix");
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    // A wildcard address (0.0.0.0) is reached through loopback.
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Runs `onceq <args>` to its end (at most `timeout`) with a clean environment, for commands
/// that must fail at start.
pub async fn run_onceq(args: &[&str], timeout: Duration) -> Output {
    let mut command = Command::new(ONCEQ);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for var in ONCEQ_ENV {
        command.env_remove(var);
    }
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(output) => output.expect("run onceq"),
        Err(_) => panic!("onceq {args:?} did not exit within {timeout:?}"),
    }
}

/// An HTTP client of one server, with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client of `base` (`http://addr`).
    pub fn new(base: &str, token: Option<&str>) -> Api {
        let client = reqwest::Client::builder()
            // A proxy from the environment must not stand between the test and its server.
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        Api { client, base: base.to_owned(), token: token.map(str::to_owned) }
    }

    /// The same server with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api { token: token.map(str::to_owned), ..self.clone() }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request with a raw body and extra headers; `Err` on a transport failure.
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, reqwest::Error> {
        let request = format!("{method} {path}");
        let mut builder = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder.header("content-type", "application/json").body(body);
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = header("content-type");
        let retry_after = header("retry-after");
        let text = response.text().await?;
        Ok(Reply { request, status, content_type, retry_after, text })
    }

    /// A request with a raw body and extra headers; panics on a transport failure.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let request = format!("{method} {path}");
        self.try_send(method, path, body, headers).await.unwrap_or_else(|e| panic!("{request}: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// `POST path` with a JSON body; `Err` on a transport failure.
    pub async fn try_post(&self, path: &str, body: Value) -> Result<Reply, reqwest::Error> {
        self.try_send(reqwest::Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// `POST path` without a body.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send(reqwest::Method::POST, path, None, &[]).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None, &[]).await
    }

    /// Enqueues one job per payload to `queue` in one request; returns the new ids.
    pub async fn enqueue(&self, queue: &str, payloads: &[Value]) -> Vec<String> {
        let jobs: Vec<Value> = payloads.iter().map(|p| serde_json::json!({ "payload": p })).collect();
        let body = self.post(&format!("/v1/queues/{queue}/jobs"), serde_json::json!({ "jobs": jobs })).await.ok(200);
        let entries = body["jobs"].as_array().expect("jobs array");
        assert_eq!(entries.len(), payloads.len(), "one entry per job: {body}");
        entries
            .iter()
            .map(|entry| {
                assert_eq!(entry["duplicate"], false, "fresh jobs: {body}");
                id_of(entry)
            })
            .collect()
    }

    /// Leases up to `max_jobs` from `queue` with this visibility timeout; returns the jobs.
    pub async fn lease(&self, queue: &str, max_jobs: u32, visibility_timeout_ms: u64) -> Vec<Value> {
        let body = self
            .post(
                &format!("/v1/queues/{queue}/leases"),
                serde_json::json!({ "max_jobs": max_jobs, "visibility_timeout_ms": visibility_timeout_ms }),
            )
            .await
            .ok(200);
        body["jobs"].as_array().expect("jobs array").clone()
    }
}

/// The `id` string of a JSON object.
#[track_caller]
pub fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no string id in {value}")).to_owned()
}

/// The `lease_token` string of a leased job.
#[track_caller]
pub fn token_of(value: &Value) -> String {
    value["lease_token"].as_str().unwrap_or_else(|| panic!("no lease token in {value}")).to_owned()
}
