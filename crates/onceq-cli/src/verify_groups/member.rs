//! One member of a rebalance drill: `onceq verify-groups-member`, a process of its own that
//! `onceq verify-groups` starts, kills and stops. It runs the shipped worker runtime
//! ([`onceq_worker::Worker`], over HTTP through [`onceq_client::Client`]) as a member of the
//! drill's consumer group and appends one JSON line ([`MemberEvent`]) per handler start, handler
//! end and hook call to its log, each line in one `write` call, so that a SIGKILL loses no line
//! already written and cuts none.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use onceq_client::Client;
use onceq_core::QueueName;
use onceq_verify::rebalance::MemberEvent;
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker, WorkerOptions};
use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// How long a member waits in one lease call.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// Longest a client call may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A drill job's payload: its sequence number within its key, and when the producer sent it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DrillJob {
    /// Sequence number within the key, from 0.
    pub seq: u64,
    /// When the producer sent it, µs since the Unix epoch.
    pub sent_us: u64,
}

/// Now, µs since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Options of `onceq verify-groups-member` (started by `onceq verify-groups`, not by people).
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// The server to work through.
    #[arg(long)]
    pub server: String,
    /// The drill's queue.
    #[arg(long)]
    pub queue: String,
    /// The drill's group.
    #[arg(long)]
    pub group: String,
    /// This member's name.
    #[arg(long)]
    pub name: String,
    /// The log to append to.
    #[arg(long)]
    pub log: PathBuf,
    /// Session timeout, ms.
    #[arg(long)]
    pub session_timeout_ms: u64,
    /// Lease length asked for, ms (the worker extends it while a handler runs).
    #[arg(long)]
    pub visibility_timeout_ms: u64,
    /// Jobs run at once.
    #[arg(long)]
    pub concurrency: usize,
    /// How long each handler run takes, ms.
    #[arg(long)]
    pub work_ms: u64,
}

/// The member's log: whole lines, one `write` each.
struct Log {
    file: Mutex<File>,
}

impl Log {
    fn write(&self, event: &MemberEvent) {
        let Ok(mut line) = serde_json::to_vec(event) else { return };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = file.write_all(&line) {
            // The drill reads the log to check the run: without it the run proves nothing.
            eprintln!("onceq verify-groups-member: cannot write the log: {e}");
            std::process::exit(1);
        }
    }
}

struct Hooks {
    member: String,
    log: Arc<Log>,
}

#[async_trait]
impl PartitionHooks for Hooks {
    async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
        let event =
            MemberEvent::Assigned { member: self.member.clone(), partitions: partitions.to_vec(), at_us: now_us() };
        self.log.write(&event);
    }

    async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
        let event =
            MemberEvent::Revoked { member: self.member.clone(), partitions: partitions.to_vec(), at_us: now_us() };
        self.log.write(&event);
    }
}

/// Runs the member until SIGTERM or Ctrl-C, then shuts the worker down (it settles its jobs
/// and leaves the group).
pub fn run(args: &MemberArgs) -> Result<(), CliError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", args.log.display())))?;
    let log = Arc::new(Log { file: Mutex::new(file) });
    let client = Client::builder(args.server.clone())
        .timeout(CLIENT_TIMEOUT)
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let group = GroupOptions::new(&args.group)
        .member_name(&args.name)
        .session_timeout(Duration::from_millis(args.session_timeout_ms))
        .hooks(Hooks { member: args.name.clone(), log: log.clone() });
    let options = QueueOptions::concurrency(args.concurrency)
        .poll_wait(POLL_WAIT)
        .visibility_timeout(Duration::from_millis(args.visibility_timeout_ms))
        .group(group);
    let mut worker_options = WorkerOptions::default();
    worker_options.worker_id = args.name.clone();
    let (member, work) = (args.name.clone(), Duration::from_millis(args.work_ms));
    let worker = Worker::builder(Arc::new(client))
        .options(worker_options)
        .handle_with(&args.queue, options, move |ctx: JobContext, job: DrillJob| {
            let (log, member) = (log.clone(), member.clone());
            async move {
                let key = ctx.ordering_key.clone().unwrap_or_default();
                log.write(&MemberEvent::Start {
                    member: member.clone(),
                    job: ctx.id.get(),
                    key: key.clone(),
                    seq: job.seq,
                    partition: ctx.partition.unwrap_or(0),
                    enqueued_us: job.sent_us,
                    at_us: now_us(),
                });
                tokio::time::sleep(work).await;
                log.write(&MemberEvent::Done { member, job: ctx.id.get(), key, seq: job.seq, at_us: now_us() });
                Outcome::Done
            }
        })
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        worker.run(crate::serve::shutdown_signal()).await;
    });
    Ok(())
}
