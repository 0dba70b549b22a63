//! `onceq verify-groups`: the rebalance drill. A consumer group of member processes (the shipped
//! worker runtime, each an `onceq verify-groups-member` process, [`member`]) works a stream of
//! jobs with per-key sequence numbers on `onceq serve` processes this command starts, while
//! members join, are killed with SIGKILL and leave on SIGTERM, step by step (`--steps`). It
//! reports, for each step, the partitions moved against the minimum and the longest stalls of
//! the partitions that kept their owner and of those that moved; and over the whole run, per-key
//! order, overlapping runs of a key and lost jobs ([`onceq_verify::rebalance`]).
//!
//! Exit codes: 0 every promise kept; 1 a promise broken (or the run failed); 2 bad options;
//! 3 a server or the database could not be reached.

pub mod member;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use onceq_client::Client;
use onceq_core::group::{GroupInfo, GroupName};
use onceq_core::metrics::GROUP_PARTITIONS_MOVED;
use onceq_core::ordering::Assignment;
use onceq_core::{Error, NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_verify::rebalance::{analyze, render_table, DrillRecord, MemberEvent, StepKind, StepRecord};
use onceq_verify::target::{ManagedServer, ServeStore};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use self::member::{now_us, DrillJob};
use crate::error::CliError;

/// The drill's group.
const GROUP: &str = "drill";
/// How often the driver reads the group.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often the producer sends a batch.
const PRODUCE_EVERY: Duration = Duration::from_millis(20);
/// Longest a client call may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most members at once.
const MEMBERS_MAX: usize = 64;
/// Longest wait for a member to exit after SIGTERM at the end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one enqueue batch before the drill gives up (each retry is safe: dedup ids).
const ENQUEUE_ATTEMPTS: u32 = 20;

/// The end of `onceq verify-groups --help`.
const AFTER_HELP: &str = "\
Steps (--steps, comma-separated, run in order after the first member is steady):
  join:N    start N member processes; they join the group
  kill:N    SIGKILL the N most recent members: their sessions expire, their leases time out
  leave:N   SIGTERM the N most recent members: they settle their jobs and leave the group

Per step it reports: partitions moved between the stable assignments before and after, the
fewest any balanced assignment needs, and what the servers counted; the longest wait of a job of
a partition that kept its owner and of one that moved (a job's wait runs from when it could
first be leased, its enqueue acknowledged and its key's previous job done, to the start of its
last run), beside the steady state before the first step.
Targets: a moved partition waits at most one heartbeat interval (a third of the session timeout)
after a join or leave, and at most the session timeout plus the visibility timeout after a kill.

Examples:
  onceq verify-groups                                   # embedded store, 64 partitions, 10,000 keys
  onceq verify-groups --store postgres://postgres@127.0.0.1:5432/test --servers 2
  onceq verify-groups --partitions 16 --keys 500 --steps join:1,kill:1 --hold-s 2

Exit codes: 0 every promise kept (per-key order, one member per key at a time, nothing lost,
every step settled, no step moved more than the minimum); 1 a promise broken, or the run
failed; 2 bad options; 3 a server or the database could not be reached.";

/// Options of `onceq verify-groups`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct VerifyGroupsArgs {
    /// The store the servers run on: `embedded` (one server, a temporary data directory) or a
    /// PostgreSQL URL (a fresh schema, dropped at the end, which --servers servers share).
    #[arg(long, value_name = "embedded|URL", default_value = "embedded")]
    pub store: String,
    /// `onceq serve` processes to start (PostgreSQL only above 1); member N works through
    /// server N mod --servers, and the producer takes turns.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub servers: u32,
    /// Partitions of the drill's queue.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub partitions: u32,
    /// Ordering keys the jobs are spread over (each key's jobs carry sequence numbers 0, 1, ...).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub keys: u64,
    /// Jobs sent per second, for the whole run.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// The membership changes, after one member is steady (see below).
    #[arg(long, default_value = "join:3,join:4,kill:2,leave:3")]
    pub steps: String,
    /// The members' session timeout, ms (heartbeats go every third of it).
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub session_timeout_ms: u64,
    /// The queue's visibility timeout, and the lease length the members ask for, ms.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub visibility_timeout_ms: u64,
    /// How long each handler run takes, ms.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub work_ms: u64,
    /// Jobs each member runs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub concurrency: u64,
    /// Steady running with the first member before the first step, s.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub warmup_s: u64,
    /// Running after each step settles, before the next, s.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hold_s: u64,
    /// Longest wait for the group to settle after a step, s: then the step counts as unsettled.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub settle_timeout_s: u64,
    /// Longest wait for the queue to drain after the last step, s.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub drain_timeout_s: u64,
    /// Keep the member logs, the servers' logs and the drill's record (drill.json) in DIR.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Print the report as JSON on stdout: `{"promise_kept", "broken": [...], "targets_missed":
    /// [...], "report": {...}}`.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// One parsed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    kind: StepKind,
    count: usize,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Parses `--steps`, checking that the group never has fewer than one member nor more than
/// [`MEMBERS_MAX`].
fn parse_steps(text: &str) -> Result<Vec<Step>, CliError> {
    let mut steps = Vec::new();
    let mut members = 1usize;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, count) = part
            .split_once(':')
            .ok_or_else(|| usage(format!("--steps: {part:?} is not KIND:N (join:3, kill:2, leave:1)")))?;
        let kind = match kind {
            "join" => StepKind::Join,
            "kill" => StepKind::Crash,
            "leave" => StepKind::Leave,
            other => return Err(usage(format!("--steps: unknown step {other:?}; use join, kill or leave"))),
        };
        let count: usize = count
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| usage(format!("--steps: {part:?}: the count must be a whole number from 1")))?;
        members = match kind {
            StepKind::Join => members + count,
            StepKind::Crash | StepKind::Leave => members.checked_sub(count).filter(|m| *m >= 1).ok_or_else(|| {
                usage(format!("--steps: {part:?} would leave no member ({members} before it); keep at least one"))
            })?,
        };
        if members > MEMBERS_MAX {
            return Err(usage(format!("--steps: {part:?} makes {members} members; at most {MEMBERS_MAX}")));
        }
        steps.push(Step { kind, count });
    }
    if steps.is_empty() {
        return Err(usage("--steps: give at least one step"));
    }
    Ok(steps)
}

/// Where the servers keep their data.
enum StoreSpec {
    Embedded,
    Postgres { url: String, schema: String },
}

fn plan_store(args: &VerifyGroupsArgs) -> Result<StoreSpec, CliError> {
    match args.store.as_str() {
        "embedded" => {
            if args.servers > 1 {
                return Err(usage(
                    "--servers above 1 needs --store postgres://...: the embedded store belongs to one server",
                ));
            }
            Ok(StoreSpec::Embedded)
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(StoreSpec::Postgres {
            url: url.to_owned(),
            schema: format!("onceq_verify_groups_{}_{:08x}", std::process::id(), rand::random::<u32>()),
        }),
        other => Err(usage(format!("--store {other:?}: use `embedded` or a postgres:// URL"))),
    }
}

fn from_store(error: Error) -> CliError {
    match error {
        Error::InvalidRequest(m) => CliError::Usage(m),
        Error::Unavailable(m) => CliError::Unavailable(m),
        other => CliError::Failed(other.to_string()),
    }
}

/// The group as the driver sees it at one moment.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Member name → the partitions it owns (leasable or revoking).
    owned: Assignment,
    /// Whether any partition is moving or unowned.
    settling: bool,
}

impl Snapshot {
    fn of(info: &GroupInfo, partitions: u32) -> Snapshot {
        let mut owned = Assignment::new();
        let mut settling = false;
        let mut covered = BTreeSet::new();
        for member in &info.members {
            let name = member.name.clone().unwrap_or_else(|| member.member_id.to_string());
            let mut mine: Vec<u32> = member.partitions.iter().chain(&member.revoking).copied().collect();
            mine.sort_unstable();
            settling |= !member.revoking.is_empty();
            covered.extend(mine.iter().copied());
            owned.insert(name, mine);
        }
        settling |= info.partitions.iter().any(|p| p.moving_to.is_some() || p.owner.is_none());
        settling |= covered.len() != partitions as usize;
        Snapshot { owned, settling }
    }

    /// Exactly `members`, balanced, nothing moving.
    fn stable_with(&self, members: &BTreeSet<String>, partitions: u32) -> bool {
        if self.settling || self.owned.keys().cloned().collect::<BTreeSet<_>>() != *members || members.is_empty() {
            return false;
        }
        let m = members.len() as u32;
        self.owned.values().all(|ps| {
            let n = ps.len() as u32;
            n == partitions / m || n == partitions.div_ceil(m)
        })
    }
}

/// A member process.
struct MemberProcess {
    name: String,
    child: Child,
}

/// What the driver shares with its tasks.
struct Drill {
    binary: PathBuf,
    dir: PathBuf,
    urls: Vec<String>,
    clients: Vec<Client>,
    queue: QueueName,
    args: VerifyGroupsArgs,
}

impl Drill {
    fn say(&self, line: impl AsRef<str>) {
        if !self.args.quiet {
            eprintln!("onceq verify-groups: {}", line.as_ref());
        }
    }

    fn spawn_member(&self, index: usize) -> Result<MemberProcess, CliError> {
        let name = format!("m{index}");
        let log = self.dir.join(format!("{name}.jsonl"));
        let stderr_path = self.dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", stderr_path.display())))?;
        let child = Command::new(&self.binary)
            .arg("verify-groups-member")
            .arg("--server")
            .arg(&self.urls[index % self.urls.len()])
            .arg("--queue")
            .arg(self.queue.as_str())
            .arg("--group")
            .arg(GROUP)
            .arg("--name")
            .arg(&name)
            .arg("--log")
            .arg(&log)
            .arg("--session-timeout-ms")
            .arg(self.args.session_timeout_ms.to_string())
            .arg("--visibility-timeout-ms")
            .arg(self.args.visibility_timeout_ms.to_string())
            .arg("--concurrency")
            .arg(self.args.concurrency.to_string())
            .arg("--work-ms")
            .arg(self.args.work_ms.to_string())
            .env("ONCEQ_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError::Failed(format!("cannot start member {name}: {e}")))?;
        Ok(MemberProcess { name, child })
    }

    /// Sum of `onceq_group_partitions_moved_total` for the drill's queue over every server.
    async fn moved_by_servers(&self) -> Option<u64> {
        let mut total = 0u64;
        let label = format!("queue=\"{}\"", self.queue.as_str());
        for client in &self.clients {
            let text = client.metrics().await.ok()?;
            for line in text.lines().filter(|l| l.starts_with(GROUP_PARTITIONS_MOVED) && l.contains(&label)) {
                let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())?;
                total += value as u64;
            }
        }
        Some(total)
    }

    /// Waits until the group holds exactly `members`, balanced, nothing moving; returns when
    /// and the assignment, or `None` after the settle timeout.
    async fn wait_stable(
        &self,
        snapshots: &mut watch::Receiver<Option<(u64, Snapshot)>>,
        members: &BTreeSet<String>,
    ) -> Option<(u64, Assignment)> {
        let partitions = self.args.partitions;
        let wait = snapshots.wait_for(|s| s.as_ref().is_some_and(|(_, snap)| snap.stable_with(members, partitions)));
        match tokio::time::timeout(Duration::from_secs(self.args.settle_timeout_s), wait).await {
            Ok(Ok(seen)) => seen.as_ref().map(|(at, snap)| (*at, snap.owned.clone())),
            _ => None,
        }
    }
}

/// Reads the group every [`POLL_EVERY`] into `tx`.
async fn poll_group(client: Client, queue: QueueName, partitions: u32, tx: watch::Sender<Option<(u64, Snapshot)>>) {
    let Ok(group) = GroupName::new(GROUP) else { return };
    loop {
        if let Ok(info) = client.group_get(&queue, &group).await {
            tx.send_replace(Some((now_us(), Snapshot::of(&info, partitions))));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// What the producer sent: each key's sequences (`0..n`), and when each batch (by its send
/// time) was acknowledged.
type Produced = (BTreeMap<String, u64>, BTreeMap<u64, u64>);

/// Sends `rate` jobs a second over `keys` keys (each key's sequence numbers counting up), taking
/// turns over the clients, until `stop`. A batch whose outcome is unknown is sent again: each
/// job's dedup id (`key:seq`) makes that safe.
async fn produce(
    clients: Vec<Client>,
    queue: QueueName,
    keys: u64,
    rate: u32,
    mut stop: watch::Receiver<bool>,
) -> Result<Produced, CliError> {
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut ticker = tokio::time::interval(PRODUCE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let per_tick = f64::from(rate) * PRODUCE_EVERY.as_secs_f64();
    let (mut owed, mut turn) = (0.0f64, 0usize);
    while !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        owed += per_tick;
        let n = owed.floor() as u64;
        owed -= n as f64;
        if n == 0 {
            continue;
        }
        // Unique per batch: the batch's key in `acked`.
        let sent_us = now_us().max(acked.last_key_value().map_or(0, |(k, _)| k + 1));
        let jobs: Vec<NewJob> = (0..n)
            .map(|_| {
                let key = format!("key-{}", rand::random::<u64>() % keys);
                let seq = sent.entry(key.clone()).or_insert(0);
                let payload = serde_json::to_vec(&DrillJob { seq: *seq, sent_us }).unwrap_or_default();
                let job = NewJob::new(payload).ordering_key(key.clone()).dedup_id(format!("{key}:{seq}"));
                *seq += 1;
                job
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = &clients[turn % clients.len()];
            turn += 1;
            match client.job_enqueue(&queue, jobs.clone()).await {
                Ok(_) => {
                    acked.insert(sent_us, now_us());
                    break;
                }
                Err(e) if attempt < ENQUEUE_ATTEMPTS && matches!(e, Error::Unavailable(_) | Error::Storage(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(CliError::Failed(format!("enqueue failed after {attempt} attempts: {e}"))),
            }
        }
    }
    Ok((sent, acked))
}

/// Sends SIGTERM to `child` (tokio and std send only SIGKILL, so through `kill(1)`).
fn terminate(child: &Child) -> Result<(), CliError> {
    let pid = child.id().ok_or_else(|| CliError::Failed("a member exited before its SIGTERM".into()))?;
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .map_err(|e| CliError::Failed(format!("cannot run kill -TERM {pid}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("kill -TERM {pid} failed: {status}")))
    }
}

/// Reads every member's log in `dir`; a line cut short (never expected: each is one `write`)
/// is skipped and counted.
fn read_logs(dir: &Path, names: &[String]) -> Result<(Vec<MemberEvent>, usize), CliError> {
    let mut events = Vec::new();
    let mut unreadable = 0;
    for name in names {
        let path = dir.join(format!("{name}.jsonl"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CliError::Failed(format!("cannot read {}: {e}", path.display()))),
        };
        for line in text.lines() {
            match serde_json::from_str::<MemberEvent>(line) {
                Ok(event) => events.push(event),
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((events, unreadable))
}

/// Runs `onceq verify-groups`.
pub fn run(args: &VerifyGroupsArgs) -> Result<(), CliError> {
    let steps = parse_steps(&args.steps)?;
    let store = plan_store(args)?;
    let binary = std::env::current_exe().map_err(|e| CliError::Failed(format!("cannot find the onceq binary: {e}")))?;
    let (dir, _temp) = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| usage(format!("--log-dir {}: cannot create it: {e}", dir.display())))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("onceq-verify-groups")
                .tempdir()
                .map_err(|e| CliError::Failed(format!("cannot make a temporary directory: {e}")))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let outcome = runtime.block_on(drive(args, &steps, &store, binary, &dir));
    let dropped = match &store {
        StoreSpec::Postgres { url, schema } => runtime.block_on(drop_schema(url, schema)),
        StoreSpec::Embedded => Ok(()),
    };
    let (record, events, unreadable) = outcome?;
    dropped?;

    if let Ok(json) = serde_json::to_vec_pretty(&record) {
        let _ = std::fs::write(dir.join("drill.json"), json);
    }
    let report = analyze(&record, &events);
    if args.json {
        let json = serde_json::json!({
            "promise_kept": report.promise_kept(),
            "broken": report.broken(),
            "targets_missed": report.targets_missed(),
            "report": report,
        });
        let json = serde_json::to_string_pretty(&json)
            .map_err(|e| CliError::Failed(format!("cannot encode the report: {e}")))?;
        outln_lossy!("{json}");
    } else {
        out_lossy!("{}", render_table(&report));
    }
    if unreadable > 0 {
        eprintln!("onceq verify-groups: {unreadable} member log lines could not be read and were skipped");
    }
    for missed in report.targets_missed() {
        eprintln!("onceq verify-groups: target missed: {missed}");
    }
    if let Some(dir) = &args.log_dir {
        eprintln!("onceq verify-groups: logs and the drill's record are in {}", dir.display());
    }
    let broken = report.broken();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("promise broken: {}", broken.join("; "))))
    }
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), CliError> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| CliError::Unavailable(format!("dropping schema {schema}: {e}")))?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .map_err(|e| CliError::Failed(format!("dropping schema {schema}: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

/// The drill itself: servers, queue, producer, members, steps, drain; returns the record and
/// the members' events.
async fn drive(
    args: &VerifyGroupsArgs,
    steps: &[Step],
    store: &StoreSpec,
    binary: PathBuf,
    dir: &Path,
) -> Result<(DrillRecord, Vec<MemberEvent>, usize), CliError> {
    let mut servers = Vec::new();
    for index in 0..args.servers {
        let server_dir = dir.join(format!("server-{index}"));
        std::fs::create_dir_all(&server_dir)
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", server_dir.display())))?;
        let serve_store = match store {
            StoreSpec::Embedded => ServeStore::Embedded,
            StoreSpec::Postgres { url, schema } => ServeStore::Postgres { url: url.clone(), schema: schema.clone() },
        };
        let server = ManagedServer::start(binary.clone(), server_dir, serve_store).await.map_err(|e| match e {
            Error::Unavailable(m) => CliError::Unavailable(m),
            other => CliError::Unavailable(format!("cannot start onceq serve: {other}")),
        })?;
        servers.push(server);
    }
    let urls: Vec<String> = servers.iter().map(ManagedServer::url).collect();
    let clients = urls
        .iter()
        .map(|u| Client::builder(u.clone()).timeout(CLIENT_TIMEOUT).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(from_store)?;
    let queue = QueueName::new(format!("verify-groups-{:08x}", rand::random::<u32>())).map_err(from_store)?;
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(args.partitions),
        visibility_timeout_ms: Some(args.visibility_timeout_ms),
        // Jobs here never fail: only kills and lost acks cost attempts.
        max_attempts: Some(1000),
        ..QueueConfigPatch::default()
    };
    clients[0].queue_upsert(&queue, patch).await.map_err(from_store)?;
    let drill = Arc::new(Drill { binary, dir: dir.to_owned(), urls, clients, queue, args: args.clone() });
    drill.say(format!(
        "{} server(s) on {}; queue {} ({} partitions); {} keys at {} jobs/s; logs in {}",
        args.servers,
        match store {
            StoreSpec::Embedded => "the embedded store".to_owned(),
            StoreSpec::Postgres { schema, .. } => format!("PostgreSQL schema {schema}"),
        },
        drill.queue,
        args.partitions,
        args.keys,
        args.rate,
        dir.display()
    ));
    let result = steps_and_drain(&drill, steps).await;
    for server in &servers {
        server.stop().await;
    }
    result
}

async fn steps_and_drain(
    drill: &Arc<Drill>,
    steps: &[Step],
) -> Result<(DrillRecord, Vec<MemberEvent>, usize), CliError> {
    let args = &drill.args;
    let (snap_tx, mut snapshots) = watch::channel(None);
    let poller = tokio::spawn(poll_group(drill.clients[0].clone(), drill.queue.clone(), args.partitions, snap_tx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let producer = tokio::spawn(produce(drill.clients.clone(), drill.queue.clone(), args.keys, args.rate, stop_rx));

    let mut live: Vec<MemberProcess> = vec![drill.spawn_member(1)?];
    let mut next_index = 2;
    let mut all_names = vec![live[0].name.clone()];
    let mut member_ends: BTreeMap<String, u64> = BTreeMap::new();
    let mut leaving: Vec<(String, tokio::task::JoinHandle<u64>)> = Vec::new();
    let names = |live: &[MemberProcess]| live.iter().map(|m| m.name.clone()).collect::<BTreeSet<_>>();

    let (steady_from_us, mut assignment) = drill
        .wait_stable(&mut snapshots, &names(&live))
        .await
        .ok_or_else(|| CliError::Failed("the first member never owned every partition".into()))?;
    drill.say(format!("m1 owns all {} partitions; steady for {} s", args.partitions, args.warmup_s));
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;

    let mut records = Vec::new();
    for step in steps {
        let before = assignment.clone();
        let moved_before = drill.moved_by_servers().await;
        let members_before = live.len();
        let action_us = now_us();
        let mut touched = Vec::new();
        match step.kind {
            StepKind::Join => {
                for _ in 0..step.count {
                    let member = drill.spawn_member(next_index)?;
                    next_index += 1;
                    touched.push(member.name.clone());
                    all_names.push(member.name.clone());
                    live.push(member);
                }
            }
            StepKind::Crash => {
                for _ in 0..step.count {
                    let Some(mut member) = live.pop() else { break };
                    member.child.start_kill().map_err(|e| CliError::Failed(format!("kill -9 {}: {e}", member.name)))?;
                    member_ends.insert(member.name.clone(), now_us());
                    let _ = member.child.wait().await;
                    touched.push(member.name);
                }
            }
            StepKind::Leave => {
                for _ in 0..step.count {
                    let Some(mut member) = live.pop() else { break };
                    terminate(&member.child)?;
                    touched.push(member.name.clone());
                    leaving.push((
                        member.name,
                        tokio::spawn(async move {
                            let _ = member.child.wait().await;
                            now_us()
                        }),
                    ));
                }
            }
        }
        let stable = drill.wait_stable(&mut snapshots, &names(&live)).await;
        let step_name = format!("{} {}", step.kind.as_str(), step.count);
        match &stable {
            Some((at, _)) => drill.say(format!(
                "{step_name} ({members_before}→{}): settled in {:.1} s; holding {} s",
                live.len(),
                at.saturating_sub(action_us) as f64 / 1e6,
                args.hold_s
            )),
            None => drill.say(format!("{step_name}: the group did not settle within {} s", args.settle_timeout_s)),
        }
        tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
        let moved_after = drill.moved_by_servers().await;
        let after = stable.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
        if stable.is_some() {
            assignment = after.clone();
        }
        records.push(StepRecord {
            kind: step.kind,
            members: touched,
            members_before,
            members_after: live.len(),
            action_us,
            stable_us: stable.map(|(at, _)| at),
            before,
            after,
            moved_by_servers: moved_before.zip(moved_after).map(|(b, a)| a.saturating_sub(b)),
        });
    }

    let produced_until_us = now_us();
    let _ = stop_tx.send(true);
    let (enqueued, acked) = producer.await.map_err(|e| CliError::Failed(format!("the producer panicked: {e}")))??;
    drill.say(format!("producer stopped after {} jobs; draining", enqueued.values().sum::<u64>()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.drain_timeout_s);
    loop {
        let stats = drill.clients[0].queue_get(&drill.queue).await.map(|q| q.stats);
        if let Ok(s) = stats {
            if s.ready + s.scheduled + s.leased + s.blocked == 0 {
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            drill.say(format!("the queue did not drain within {} s", args.drain_timeout_s));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    poller.abort();
    for member in &live {
        terminate(&member.child)?;
    }
    for mut member in live {
        let exited = tokio::time::timeout(EXIT_TIMEOUT, member.child.wait()).await;
        if exited.is_err() {
            let _ = member.child.start_kill();
            let _ = member.child.wait().await;
        }
        member_ends.insert(member.name, now_us());
    }
    for (name, handle) in leaving {
        let ended = handle.await.unwrap_or_else(|_| now_us());
        member_ends.insert(name, ended);
    }
    let (events, unreadable) = read_logs(&drill.dir, &all_names)?;
    let record = DrillRecord {
        partitions: args.partitions,
        session_timeout_ms: args.session_timeout_ms,
        heartbeat_interval_ms: args.session_timeout_ms / 3,
        visibility_timeout_ms: args.visibility_timeout_ms,
        steady_from_us,
        steps: records,
        produced_until_us,
        enqueued,
        acked,
        member_ends,
    };
    Ok((record, events, unreadable))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn steps_parse_and_keep_a_member() {
        let steps = parse_steps("join:3, join:4,kill:2,leave:3").unwrap();
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[2], Step { kind: StepKind::Crash, count: 2 });
        for bad in ["", "join", "join:0", "join:x", "swap:1", "leave:1", "join:1,kill:2", "join:64"] {
            assert!(matches!(parse_steps(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }
}
