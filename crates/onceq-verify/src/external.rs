//! External workers (`onceq verify --worker-cmd CMD`): worker processes of another language
//! (the Python and Node clients' `verify_worker`s), checked by the same checker as the Rust
//! worker, under the same faults. docs/verify.md is the protocol a worker speaks; in short:
//!
//! - Verify starts `workers` processes of `CMD` (`sh -c`), each with the environment of
//!   [`ProcessEnv`], and starts a process again when it exits with [`CRASH_EXIT_CODE`] (a crash
//!   it was told to simulate). Any other exit stops the run with the end of the process's output.
//! - Each process talks to its own **recording API**: the onceq HTTP API (onceq-server's router)
//!   that verify serves on a local port over a [`RecordedStore`] of the target, and the target's
//!   idempotency store. So every lease, ack, nack, release, fail and extend the worker's runtime
//!   makes is recorded in the history exactly as the Rust worker's are, and `drop-ack` is
//!   injected there: the ack applies and the item's answer is `unavailable`.
//! - The worker applies a job's effect by `POST /verify/effect {"lease_token": ...}` on the same
//!   port, inside its effectively-once handler. Verify records the effect row in the ledger (one
//!   committed row, before the reply: durable before the handler returns), and answers with what
//!   the fault schedule ([`crate::faults`], the same per-delivery draw as for the Rust worker)
//!   says this delivery does next: `continue`; `crash` (exit now: the effect was *not*
//!   recorded, `crash-mid-handler`); `crash_before_complete` (exit before the idempotency key is
//!   completed); `crash_before_ack` (exit after the key is completed, before the ack:
//!   `crash-after-effect`). A `stall` is verify's to make: it marks the lease stalled (its
//!   extends are withheld, their items answered `unavailable`, as a partition would swallow
//!   them), and holds the reply until 600 ms past the lease's latest possible expiry; the
//!   worker then completes and acks as usual, and the ack must be refused.
//!
//! A process exit ends every delivery the process holds, not only the one told to crash. The
//! worker waits, before it exits, until no other delivery of its process is between its
//! recorded effect and its completed key: that window is `crash-before-complete`, which a
//! separate idempotency store cannot guard, and which is a fault of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use onceq_core::{DeliveryMode, IdempotencyStore, Result};
use onceq_server::error::ApiError;
use serde::{Deserialize, Serialize};

use crate::faults::Fault;
use crate::history::now_ms;
use crate::ledger::EffectRow;
use crate::recorded::{Cut, RecordedStore, Run};

/// The exit status of a worker process that crashed because verify told it to.
pub const CRASH_EXIT_CODE: i32 = 86;
/// Where a worker applies an effect, on its recording API's port.
pub const EFFECT_PATH: &str = "/verify/effect";
/// Lines of a failed process's output quoted in the run's error.
const OUTPUT_TAIL_LINES: usize = 30;
/// How often a supervisor looks whether the run stopped.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The settings of a mode's run that its worker processes are given.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The mode's queue.
    pub(crate) queue: String,
    /// The mode.
    pub(crate) mode: DeliveryMode,
    /// Worker processes.
    pub(crate) workers: u32,
    /// Lease length.
    pub(crate) visibility_timeout_ms: u64,
    /// Idempotency claim ttl.
    pub(crate) claim_ttl_ms: u64,
    /// Handlers at once per process, and jobs prefetched.
    pub(crate) lease_batch: u32,
    /// Run the handler without the effectively-once gate (tests).
    pub(crate) broken_gate: bool,
    /// The history's number of the first process.
    pub(crate) process_base: u32,
    /// How far past its lease's latest possible expiry a stalled delivery's reply is held.
    pub(crate) stall_past_expiry_ms: i64,
}

/// What the worker processes need of a mode's run (the workload's context).
#[async_trait::async_trait]
pub(crate) trait Host: Run + 'static {
    /// The run's settings.
    fn settings(&self) -> Settings;
    /// The idempotency store the gate uses; none where the run guards effects otherwise.
    fn idempotency(&self) -> Option<Arc<dyn IdempotencyStore>>;
    /// Whether the run is stopping.
    fn stopping(&self) -> bool;
    /// The crash or stall the delivery of (value, attempt) suffers, if any.
    fn crash_of(&self, value: u64, attempt: u32) -> Option<Fault>;
    /// Counts a fault that fired.
    fn fire(&self, fault: Fault);
    /// Records one effect in the run's ledger (committed when it returns).
    async fn record(&self, row: EffectRow) -> Result<()>;
}

/// The environment verify gives each worker process (docs/verify.md lists it).
#[derive(Debug, Clone)]
pub struct ProcessEnv {
    /// `ONCEQ_URL`: the recording API of this process.
    pub url: String,
    /// The run's settings, as `ONCEQ_VERIFY_*` variables.
    pub vars: Vec<(String, String)>,
}

impl ProcessEnv {
    fn new(settings: &Settings, url: String, process: u32) -> ProcessEnv {
        let vars = [
            ("ONCEQ_URL", url.clone()),
            ("ONCEQ_VERIFY_EFFECT_URL", format!("{url}{EFFECT_PATH}")),
            ("ONCEQ_VERIFY_QUEUE", settings.queue.clone()),
            ("ONCEQ_VERIFY_MODE", settings.mode.as_str().to_owned()),
            ("ONCEQ_VERIFY_VISIBILITY_TIMEOUT_MS", settings.visibility_timeout_ms.to_string()),
            ("ONCEQ_VERIFY_CLAIM_TTL_MS", settings.claim_ttl_ms.to_string()),
            ("ONCEQ_VERIFY_CONCURRENCY", settings.lease_batch.to_string()),
            ("ONCEQ_VERIFY_PREFETCH", settings.lease_batch.to_string()),
            ("ONCEQ_VERIFY_PROCESS", process.to_string()),
            ("ONCEQ_VERIFY_CRASH_EXIT_CODE", CRASH_EXIT_CODE.to_string()),
            ("ONCEQ_VERIFY_BROKEN_GATE", if settings.broken_gate { "1" } else { "0" }.to_owned()),
        ];
        ProcessEnv { url, vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }
    }
}

/// The body of `POST /verify/effect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EffectRequest {
    /// The lease under which the effect is applied (32 hex digits, as leased).
    lease_token: String,
}

/// What a delivery does after `POST /verify/effect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    /// Carry on: complete the key (effectively_once), return, let the runtime ack.
    Continue,
    /// Exit with [`CRASH_EXIT_CODE`] now; the effect was not recorded.
    Crash,
    /// Exit with [`CRASH_EXIT_CODE`] when the runtime is about to complete the job's key.
    CrashBeforeComplete,
    /// Exit with [`CRASH_EXIT_CODE`] once the job's key is completed (or, without a key, when
    /// the handler returns), before the ack.
    CrashBeforeAck,
}

#[derive(Debug, Serialize)]
struct EffectReply {
    action: Action,
}

/// Runs the settings' `workers` processes of `command`, each on a recording API of its own,
/// until the run stops; returns how many times a process exited as a crash fault told it to.
pub(crate) async fn run<H: Host>(ctx: Arc<H>, command: String) -> u64 {
    let settings = ctx.settings();
    let Some(idempotency) = ctx.idempotency() else {
        ctx.fail("an external worker needs the target's idempotency store".into());
        return 0;
    };
    let logs = match tempfile::Builder::new().prefix("onceq-verify-workers-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            ctx.fail(format!("cannot make a directory for the worker processes' output: {e}"));
            return 0;
        }
    };
    let crash_exits = Arc::new(AtomicU64::new(0));
    let mut servers = tokio::task::JoinSet::new();
    let mut supervisors = tokio::task::JoinSet::new();
    for i in 0..settings.workers {
        let process = settings.process_base + i;
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => {
                ctx.fail(format!("cannot listen for worker process {process}: {e}"));
                break;
            }
        };
        let url = match listener.local_addr() {
            Ok(address) => format!("http://{address}"),
            Err(e) => {
                ctx.fail(format!("cannot read the address of worker process {process}'s listener: {e}"));
                break;
            }
        };
        let store = Arc::new(RecordedStore::new(ctx.clone() as Arc<dyn Run>, process));
        let router = onceq_server::Api::new(store)
            .idempotency(idempotency.clone())
            .router()
            .merge(Router::new().route(EFFECT_PATH, post(effect::<H>)).with_state(ctx.clone()));
        servers.spawn(async move { axum::serve(listener, router).await });
        let env = ProcessEnv::new(&settings, url, process);
        let log = logs.path().join(format!("worker-{process}.log"));
        supervisors.spawn(supervise(ctx.clone(), command.clone(), env, log, process, crash_exits.clone()));
    }
    while supervisors.join_next().await.is_some() {}
    servers.abort_all();
    while servers.join_next().await.is_some() {}
    crash_exits.load(Ordering::SeqCst)
}

/// Resolves once the run stops.
async fn stopped<H: Host>(ctx: &H) {
    while !ctx.stopping() {
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Keeps one worker process running until the run stops (then kills it: every job is settled
/// or dead by then, or the run is failing), starting it again after each crash exit.
async fn supervise<H: Host>(
    ctx: Arc<H>,
    command: String,
    env: ProcessEnv,
    log: PathBuf,
    process: u32,
    exits: Arc<AtomicU64>,
) {
    loop {
        if ctx.stopping() {
            return;
        }
        let mut child = match spawn(&command, &env, &log) {
            Ok(child) => child,
            Err(e) => {
                ctx.fail(format!("worker process {process}: `{command}` could not start: {e}"));
                return;
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            () = stopped(&*ctx) => {
                let _ = child.kill().await;
                return;
            }
        };
        match status {
            Ok(status) if status.code() == Some(CRASH_EXIT_CODE) => {
                exits.fetch_add(1, Ordering::SeqCst);
            }
            Ok(status) => {
                if !ctx.stopping() {
                    ctx.fail(format!(
                        "worker process {process} (`{command}`, ONCEQ_URL={}) exited with {status}; the end of its \
                         output:\n{}",
                        env.url,
                        tail(&log)
                    ));
                }
                return;
            }
            Err(e) => {
                ctx.fail(format!("worker process {process}: waiting for it failed: {e}"));
                return;
            }
        }
    }
}

fn spawn(command: &str, env: &ProcessEnv, log: &Path) -> std::io::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
}

/// The last lines of a process's output file.
fn tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

/// `POST /verify/effect`: records the effect of the delivery of `lease_token` (unless it
/// crashes before it) and says what the delivery does next.
async fn effect<H: Host>(
    State(ctx): State<Arc<H>>,
    body: std::result::Result<Json<EffectRequest>, JsonRejection>,
) -> Response {
    let settings = ctx.settings();
    let request = match body {
        Ok(Json(request)) => request,
        Err(e) => {
            return ApiError::invalid(format!("{EFFECT_PATH} takes {{\"lease_token\": \"...\"}}: {e}")).into_response()
        }
    };
    let token = request.lease_token;
    let Some(leased) = ctx.deliveries().get(&token) else {
        return ApiError::invalid(format!(
            "lease token {token:?} was not handed out through this verify run's API; send the token of the job being \
             handled, as leased"
        ))
        .into_response();
    };
    let fault = ctx.crash_of(leased.value, leased.attempt);
    if fault == Some(Fault::CrashMidHandler) {
        ctx.fire(Fault::CrashMidHandler);
        return Json(EffectReply { action: Action::Crash }).into_response();
    }
    let row = EffectRow {
        queue: settings.queue.clone(),
        value: leased.value,
        job_id: leased.job_id,
        lease_token: token.clone(),
        at_ms: now_ms(),
    };
    if let Err(e) = ctx.record(row).await {
        ctx.fail(format!("the ledger failed: {e}"));
        return ApiError::unavailable("verify's ledger failed; the run stops").into_response();
    }
    if settings.mode == DeliveryMode::AtMostOnce {
        // Leasing removed the job: the effect is its settle.
        ctx.settled();
    }
    let action = match fault {
        Some(Fault::CrashBeforeComplete) => {
            ctx.fire(Fault::CrashBeforeComplete);
            Action::CrashBeforeComplete
        }
        Some(Fault::CrashAfterEffect) => {
            ctx.fire(Fault::CrashAfterEffect);
            Action::CrashBeforeAck
        }
        Some(Fault::Stall) => {
            ctx.fire(Fault::Stall);
            ctx.deliveries().cut(token, Cut::Stalled);
            // A heartbeat sent just before the cut may have moved the expiry to about now plus
            // the visibility timeout.
            let vt = i64::try_from(settings.visibility_timeout_ms).unwrap_or(i64::MAX);
            let expiry = leased.lease_expires_at_ms.max(now_ms().saturating_add(vt));
            let wait = u64::try_from(expiry + settings.stall_past_expiry_ms - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Action::Continue
        }
        _ => Action::Continue,
    };
    Json(EffectReply { action }).into_response()
}
