//! The rebalance drill's record and its checks (`onceq verify-groups`, docs/design.md,
//! "Consumer groups"): a consumer group of member processes works a stream of jobs with per-key
//! sequence numbers while members join, crash and leave; each member logs every handler run and
//! hook call, the driver logs each membership change, and [`analyze`] turns both into a
//! [`DrillReport`].
//!
//! What is checked over the whole run:
//! - **Per-key order** (Invariant 9): a key's completions come in sequence order; a completion of
//!   sequence `s` after one of a later sequence is a violation. A repeat of the same sequence (a
//!   redelivery whose first run was not acked) is not.
//! - **One member per key at a time** (Invariants 9 and 10): the runs of a key, each from its
//!   start to its completion (or to its member's death when it never completed), never overlap.
//! - **Nothing lost**: every enqueued sequence of every key completed.
//!
//! And for each membership change ([`StepRecord`]):
//! - **Partitions moved** between the stable assignments before and after, against the fewest any
//!   balanced assignment needs ([`onceq_core::ordering::fewest_moves`], Invariant 11).
//! - **Stalls**: a job's *wait* is the time from when it could first be leased (its enqueue
//!   acknowledged, and the key's previous job completed) to the start of its last run. The longest wait of the jobs of
//!   partitions that kept their owner, and of those that moved, among the jobs whose last run
//!   started in the step's window, beside the same figure in the steady window before the first
//!   change. The targets: a moved partition waits at most one heartbeat interval after a
//!   graceful change, and at most the session timeout plus the visibility timeout after a crash.

use std::collections::{BTreeMap, BTreeSet};

use onceq_core::ordering::{fewest_moves, moved, Assignment};
use serde::{Deserialize, Serialize};

/// One line of a member's log (JSON): times are microseconds since the Unix epoch, from the
/// machine's clock, which every process of a drill shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MemberEvent {
    /// A handler run began.
    Start {
        /// The member's name.
        member: String,
        /// The job.
        job: u64,
        /// Its ordering key.
        key: String,
        /// Its sequence number within the key.
        seq: u64,
        /// Its partition.
        partition: u32,
        /// When the producer sent its batch (the batch's key in [`DrillRecord::acked`]).
        enqueued_us: u64,
        /// When the run began.
        at_us: u64,
    },
    /// A handler run finished (the worker acks it next).
    Done {
        /// The member's name.
        member: String,
        /// The job.
        job: u64,
        /// Its ordering key.
        key: String,
        /// Its sequence number.
        seq: u64,
        /// When the run finished.
        at_us: u64,
    },
    /// `on_assigned`.
    Assigned {
        /// The member's name.
        member: String,
        /// The partitions.
        partitions: Vec<u32>,
        /// When.
        at_us: u64,
    },
    /// `on_revoked`.
    Revoked {
        /// The member's name.
        member: String,
        /// The partitions.
        partitions: Vec<u32>,
        /// When.
        at_us: u64,
    },
}

/// What a membership change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// New member processes start and join.
    Join,
    /// Member processes are killed with SIGKILL: their sessions expire.
    Crash,
    /// Member processes get SIGTERM: they settle their jobs and leave.
    Leave,
}

impl StepKind {
    /// `join`, `kill` or `leave`, as `--steps` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Join => "join",
            StepKind::Crash => "kill",
            StepKind::Leave => "leave",
        }
    }
}

/// One membership change as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// What it did.
    pub kind: StepKind,
    /// The members it started, killed or stopped.
    pub members: Vec<String>,
    /// Members before and after.
    pub members_before: usize,
    /// Members after.
    pub members_after: usize,
    /// When the driver acted.
    pub action_us: u64,
    /// When the group was next stable (the expected members, balanced, nothing moving);
    /// `None`: not within the settle timeout.
    pub stable_us: Option<u64>,
    /// The stable assignment before (member name → partitions).
    pub before: Assignment,
    /// The stable assignment after.
    pub after: Assignment,
    /// Partitions moved as the servers counted them (`onceq_group_partitions_moved_total`,
    /// summed over the servers), from the action to the next action; `None` when not read.
    pub moved_by_servers: Option<u64>,
}

/// Everything a drill recorded, besides the members' logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The queue's partitions.
    pub partitions: u32,
    /// The members' session timeout.
    pub session_timeout_ms: u64,
    /// Their heartbeat interval (a third of the session timeout).
    pub heartbeat_interval_ms: u64,
    /// The queue's visibility timeout.
    pub visibility_timeout_ms: u64,
    /// When the first member's assignment was stable: the steady window runs from here to the
    /// first step.
    pub steady_from_us: u64,
    /// The membership changes, in order.
    pub steps: Vec<StepRecord>,
    /// When the producer stopped.
    pub produced_until_us: u64,
    /// Each key's sequences sent: `0..n`.
    pub enqueued: BTreeMap<String, u64>,
    /// Each enqueue batch, by when it was sent: when the server acknowledged it. A job counts as
    /// leasable from then (it may have been a little earlier: the commit comes before the
    /// reply), so that a slow enqueue is not counted as a partition's stall.
    #[serde(default)]
    pub acked: BTreeMap<u64, u64>,
    /// When each member process ended (killed, or exited).
    pub member_ends: BTreeMap<String, u64>,
}

/// One step's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// `join 3`, `kill 2`, `leave 3`.
    pub step: String,
    /// What it did.
    pub kind: StepKind,
    /// Members before.
    pub members_before: usize,
    /// Members after.
    pub members_after: usize,
    /// From the action to a stable group, ms; `None`: it did not settle.
    pub settled_ms: Option<f64>,
    /// Partitions whose owner differs between the stable assignments before and after.
    pub moved: usize,
    /// The fewest any balanced assignment needs.
    pub minimum: usize,
    /// Moves as the servers counted them (intermediate moves included).
    pub moved_by_servers: Option<u64>,
    /// Longest wait of a job of a partition that kept its owner, ms.
    pub unmoved_stall_ms: f64,
    /// Longest wait of a job of a moved partition, ms.
    pub moved_stall_ms: f64,
    /// The target for `moved_stall_ms`.
    pub moved_stall_target_ms: u64,
    /// Jobs whose last run started in the step's window.
    pub jobs: u64,
}

/// A whole drill's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// Jobs sent.
    pub enqueued: u64,
    /// Jobs completed at least once.
    pub completed: u64,
    /// Handler runs (more than `completed` when runs were repeated).
    pub runs: u64,
    /// Jobs sent and never completed.
    pub lost: u64,
    /// Completions that came after a completion of a later sequence of their key.
    pub order_violations: u64,
    /// Pairs of overlapping runs of one key by two members.
    pub concurrent_key_runs: u64,
    /// Pairs of overlapping runs of one key within one member.
    pub concurrent_key_runs_in_member: u64,
    /// Up to ten examples of each violation, for people.
    pub examples: Vec<String>,
    /// Longest wait in the steady window before the first step, ms.
    pub steady_stall_ms: f64,
    /// The 99th percentile wait in the steady window, ms.
    pub steady_p99_ms: f64,
    /// Each step.
    pub steps: Vec<StepReport>,
}

impl DrillReport {
    /// The promises: per-key order, one member per key at a time, nothing lost, every step
    /// settled, and no step moved more than the minimum.
    pub fn promise_kept(&self) -> bool {
        self.broken().is_empty()
    }

    /// The promises broken, said plainly.
    pub fn broken(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.order_violations > 0 {
            out.push(format!("{} per-key order violations", self.order_violations));
        }
        if self.concurrent_key_runs + self.concurrent_key_runs_in_member > 0 {
            out.push(format!(
                "{} overlapping runs of one key ({} across members)",
                self.concurrent_key_runs + self.concurrent_key_runs_in_member,
                self.concurrent_key_runs
            ));
        }
        if self.lost > 0 {
            out.push(format!("{} jobs never completed", self.lost));
        }
        for step in &self.steps {
            if step.settled_ms.is_none() {
                out.push(format!("{}: the group did not settle", step.step));
            }
            if step.moved > step.minimum {
                out.push(format!("{}: moved {} partitions, the minimum is {}", step.step, step.moved, step.minimum));
            }
        }
        out
    }

    /// The stall targets missed (reported, not promises: they depend on the machine's load).
    pub fn targets_missed(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| s.moved > 0 && s.moved_stall_ms > s.moved_stall_target_ms as f64)
            .map(|s| {
                format!(
                    "{}: a moved partition waited {:.0} ms (target {} ms)",
                    s.step, s.moved_stall_ms, s.moved_stall_target_ms
                )
            })
            .collect()
    }
}

/// A run of a key, from start to completion or its member's end.
struct Run<'a> {
    member: &'a str,
    start: u64,
    end: u64,
}

const EXAMPLES_MAX: usize = 10;

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Checks a drill: `events` are every member's log lines, in any order.
pub fn analyze(record: &DrillRecord, events: &[MemberEvent]) -> DrillReport {
    let mut examples = Vec::new();
    let example = |text: String, examples: &mut Vec<String>| {
        if examples.len() < EXAMPLES_MAX {
            examples.push(text);
        }
    };

    // Per key: starts (member, job, seq, partition, enqueued, at) and completions.
    struct Start<'a> {
        member: &'a str,
        job: u64,
        seq: u64,
        partition: u32,
        enqueued_us: u64,
        at_us: u64,
    }
    let mut starts: BTreeMap<&str, Vec<Start<'_>>> = BTreeMap::new();
    let mut dones: BTreeMap<&str, Vec<(&str, u64, u64, u64)>> = BTreeMap::new();
    for event in events {
        match event {
            MemberEvent::Start { member, job, key, seq, partition, enqueued_us, at_us } => {
                starts.entry(key).or_default().push(Start {
                    member,
                    job: *job,
                    seq: *seq,
                    partition: *partition,
                    enqueued_us: *enqueued_us,
                    at_us: *at_us,
                });
            }
            MemberEvent::Done { member, job, key, seq, at_us } => {
                dones.entry(key).or_default().push((member, *job, *seq, *at_us));
            }
            MemberEvent::Assigned { .. } | MemberEvent::Revoked { .. } => {}
        }
    }

    let mut order_violations = 0;
    let mut concurrent_key_runs = 0;
    let mut concurrent_key_runs_in_member = 0;
    let mut completed = 0u64;
    let mut lost = 0u64;
    let runs = events.iter().filter(|e| matches!(e, MemberEvent::Start { .. })).count() as u64;
    // (partition, wait, last start) of each completed job.
    let mut waits: Vec<(u32, u64, u64)> = Vec::new();

    let keys: BTreeSet<&str> = record.enqueued.keys().map(String::as_str).chain(starts.keys().copied()).collect();
    for key in keys {
        let mut key_starts = starts.remove(key).unwrap_or_default();
        let mut key_dones = dones.remove(key).unwrap_or_default();
        key_starts.sort_by_key(|s| s.at_us);
        key_dones.sort_by_key(|d| d.3);

        // Order: completions by time never go back in sequence.
        let mut highest: Option<u64> = None;
        for (member, _, seq, at) in &key_dones {
            if let Some(h) = highest {
                if *seq < h {
                    order_violations += 1;
                    example(format!("key {key}: {member} completed seq {seq} at {at} after seq {h}"), &mut examples);
                }
            }
            highest = Some(highest.map_or(*seq, |h| h.max(*seq)));
        }
        let done_seqs: BTreeSet<u64> = key_dones.iter().map(|d| d.2).collect();
        let sent = record.enqueued.get(key).copied().unwrap_or(0);
        completed += done_seqs.len() as u64;
        let missing = (0..sent).filter(|s| !done_seqs.contains(s)).count() as u64;
        if missing > 0 {
            example(format!("key {key}: {missing} of {sent} sequences never completed"), &mut examples);
        }
        lost += missing;

        // Runs: each start paired with the next completion of that job by that member after it.
        let mut key_runs: Vec<Run<'_>> = Vec::with_capacity(key_starts.len());
        let mut used = vec![false; key_dones.len()];
        for start in &key_starts {
            let done = key_dones
                .iter()
                .enumerate()
                .find(|(i, d)| !used[*i] && d.0 == start.member && d.1 == start.job && d.3 >= start.at_us);
            let end = match done {
                Some((i, d)) => {
                    used[i] = true;
                    d.3
                }
                None => record.member_ends.get(start.member).copied().unwrap_or(u64::MAX),
            };
            key_runs.push(Run { member: start.member, start: start.at_us, end });
        }
        for (i, run) in key_runs.iter().enumerate() {
            for other in &key_runs[..i] {
                if other.end > run.start {
                    if other.member == run.member {
                        concurrent_key_runs_in_member += 1;
                    } else {
                        concurrent_key_runs += 1;
                    }
                    example(
                        format!(
                            "key {key}: {} started a run at {} while {}'s run (from {}) had not ended",
                            run.member, run.start, other.member, other.start
                        ),
                        &mut examples,
                    );
                }
            }
        }

        // Waits: from when a sequence could first be leased to the start of its last run.
        for seq in &done_seqs {
            let Some(last) = key_starts.iter().filter(|s| s.seq == *seq).max_by_key(|s| s.at_us) else {
                continue;
            };
            let previous_done = seq
                .checked_sub(1)
                .and_then(|p| key_dones.iter().filter(|d| d.2 == p && d.3 <= last.at_us).map(|d| d.3).max())
                .unwrap_or(0);
            let sent = record.acked.get(&last.enqueued_us).copied().unwrap_or(last.enqueued_us);
            let ready = sent.max(previous_done);
            waits.push((last.partition, last.at_us.saturating_sub(ready), last.at_us));
        }
    }

    let in_window = |from: u64, to: u64| waits.iter().filter(move |w| w.2 >= from && w.2 < to);
    let first_action = record.steps.first().map_or(record.produced_until_us, |s| s.action_us);
    let mut steady: Vec<u64> = in_window(record.steady_from_us, first_action).map(|w| w.1).collect();
    steady.sort_unstable();
    let steady_stall_ms = steady.last().map_or(0.0, |w| ms(*w));
    let steady_p99_ms = if steady.is_empty() { 0.0 } else { ms(steady[(steady.len() - 1) * 99 / 100]) };

    let steps = record
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let until = record.steps.get(i + 1).map_or(record.produced_until_us, |s| s.action_us);
            let owner = |a: &Assignment| -> BTreeMap<u32, String> {
                a.iter().flat_map(|(m, ps)| ps.iter().map(move |p| (*p, m.clone()))).collect()
            };
            let (old, new) = (owner(&step.before), owner(&step.after));
            let moved_partitions: BTreeSet<u32> = (0..record.partitions).filter(|p| old.get(p) != new.get(p)).collect();
            let members_after: BTreeSet<String> = step.after.keys().cloned().collect();
            let (mut unmoved, mut moved_max, mut jobs) = (0u64, 0u64, 0u64);
            for (partition, wait, _) in in_window(step.action_us, until) {
                jobs += 1;
                if moved_partitions.contains(partition) {
                    moved_max = moved_max.max(*wait);
                } else {
                    unmoved = unmoved.max(*wait);
                }
            }
            let target = match step.kind {
                StepKind::Join | StepKind::Leave => record.heartbeat_interval_ms,
                StepKind::Crash => record.session_timeout_ms + record.visibility_timeout_ms,
            };
            StepReport {
                step: format!("{} {}", step.kind.as_str(), step.members.len()),
                kind: step.kind,
                members_before: step.members_before,
                members_after: step.members_after,
                settled_ms: step.stable_us.map(|t| ms(t.saturating_sub(step.action_us))),
                moved: moved(&step.before, &step.after),
                minimum: fewest_moves(record.partitions, &step.before, &members_after),
                moved_by_servers: step.moved_by_servers,
                unmoved_stall_ms: ms(unmoved),
                moved_stall_ms: ms(moved_max),
                moved_stall_target_ms: target,
                jobs,
            }
        })
        .collect();

    DrillReport {
        enqueued: record.enqueued.values().sum(),
        completed,
        runs,
        lost,
        order_violations,
        concurrent_key_runs,
        concurrent_key_runs_in_member,
        examples,
        steady_stall_ms,
        steady_p99_ms,
        steps,
    }
}

/// The report as a table for people.
pub fn render_table(report: &DrillReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>7} {:>9} {:>6} {:>7} {:>8} {:>14} {:>12} {:>10} {:>7}",
        "step", "members", "settled", "moved", "minimum", "(server)", "unmoved stall", "moved stall", "target", "jobs"
    );
    let opt_ms = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.0} ms"));
    for s in &report.steps {
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:>9} {:>6} {:>7} {:>8} {:>14} {:>12} {:>10} {:>7}",
            s.step,
            format!("{}→{}", s.members_before, s.members_after),
            opt_ms(s.settled_ms),
            s.moved,
            s.minimum,
            s.moved_by_servers.map_or_else(|| "-".to_owned(), |m| m.to_string()),
            format!("{:.0} ms", s.unmoved_stall_ms),
            if s.moved == 0 { "-".to_owned() } else { format!("{:.0} ms", s.moved_stall_ms) },
            format!("{} ms", s.moved_stall_target_ms),
            s.jobs
        );
    }
    let _ = writeln!(
        out,
        "steady state before the first step: longest wait {:.0} ms, p99 {:.0} ms",
        report.steady_stall_ms, report.steady_p99_ms
    );
    let _ = writeln!(
        out,
        "jobs: {} sent, {} completed, {} lost; {} handler runs; per-key order violations {}; \
         overlapping runs of a key: {} across members, {} within one",
        report.enqueued,
        report.completed,
        report.lost,
        report.runs,
        report.order_violations,
        report.concurrent_key_runs,
        report.concurrent_key_runs_in_member
    );
    for e in &report.examples {
        let _ = writeln!(out, "  {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(member: &str, job: u64, key: &str, seq: u64, partition: u32, enqueued_us: u64, at_us: u64) -> MemberEvent {
        MemberEvent::Start { member: member.into(), job, key: key.into(), seq, partition, enqueued_us, at_us }
    }

    fn done(member: &str, job: u64, key: &str, seq: u64, at_us: u64) -> MemberEvent {
        MemberEvent::Done { member: member.into(), job, key: key.into(), seq, at_us }
    }

    fn assignment(pairs: &[(&str, &[u32])]) -> Assignment {
        pairs.iter().map(|(m, ps)| ((*m).to_owned(), ps.to_vec())).collect()
    }

    /// Two partitions, `a` owns both, then `b` joins and takes partition 1.
    fn record() -> DrillRecord {
        DrillRecord {
            partitions: 2,
            session_timeout_ms: 3000,
            heartbeat_interval_ms: 1000,
            visibility_timeout_ms: 2000,
            steady_from_us: 0,
            steps: vec![StepRecord {
                kind: StepKind::Join,
                members: vec!["b".into()],
                members_before: 1,
                members_after: 2,
                action_us: 10_000,
                stable_us: Some(12_000),
                before: assignment(&[("a", &[0, 1])]),
                after: assignment(&[("a", &[0]), ("b", &[1])]),
                moved_by_servers: Some(1),
            }],
            produced_until_us: 100_000,
            enqueued: [("k0".to_owned(), 2), ("k1".to_owned(), 2)].into_iter().collect(),
            // The batch sent at 9,000 µs was acknowledged at 9,500.
            acked: [(9_000, 9_500)].into_iter().collect(),
            member_ends: [("a".to_owned(), 100_000), ("b".to_owned(), 100_000)].into_iter().collect(),
        }
    }

    fn clean_history() -> Vec<MemberEvent> {
        vec![
            start("a", 1, "k0", 0, 0, 0, 100),
            done("a", 1, "k0", 0, 200),
            start("a", 2, "k1", 0, 1, 0, 300),
            done("a", 2, "k1", 0, 400),
            start("a", 3, "k0", 1, 0, 500, 11_000),
            done("a", 3, "k0", 1, 11_100),
            // k1's second job waited from 9,500 (its batch acknowledged) to 14,000: the move's stall.
            start("b", 4, "k1", 1, 1, 9_000, 14_000),
            done("b", 4, "k1", 1, 14_100),
        ]
    }

    #[test]
    fn a_clean_history_keeps_every_promise_and_measures_the_stall_of_the_moved_partition() {
        let report = analyze(&record(), &clean_history());
        assert!(report.promise_kept(), "{:?}", report.broken());
        assert_eq!((report.enqueued, report.completed, report.runs, report.lost), (4, 4, 4, 0));
        let step = &report.steps[0];
        assert_eq!((step.moved, step.minimum, step.jobs), (1, 1, 2));
        assert_eq!(step.moved_stall_ms, 4.5);
        // k0's seq 1 was sent at 500 µs but its key's seq 0 completed at 200: ready at 500.
        assert_eq!(step.unmoved_stall_ms, 10.5);
        assert_eq!(step.settled_ms, Some(2.0));
    }

    #[test]
    fn an_order_violation_is_reported() {
        let mut history = clean_history();
        // k0's seq 0 runs again, and completes, after seq 1 did.
        history.push(start("a", 1, "k0", 0, 0, 0, 20_000));
        history.push(done("a", 1, "k0", 0, 20_100));
        let report = analyze(&record(), &history);
        assert_eq!(report.order_violations, 1);
        assert!(!report.promise_kept());
        assert!(report.examples[0].contains("completed seq 0"), "{:?}", report.examples);
    }

    #[test]
    fn two_members_running_one_key_at_once_are_reported() {
        let mut history = clean_history();
        // b starts k1's seq 1 while a still runs it (a never completed it and lived on).
        history.push(start("a", 4, "k1", 1, 1, 9_000, 13_000));
        let report = analyze(&record(), &history);
        assert_eq!(report.concurrent_key_runs, 1, "{:?}", report.examples);
        assert!(!report.promise_kept());
    }

    #[test]
    fn a_run_cut_short_by_its_members_death_ends_at_the_death() {
        let mut record = record();
        record.member_ends.insert("a".into(), 13_500);
        let mut history = clean_history();
        history.push(start("a", 4, "k1", 1, 1, 9_000, 13_000));
        let report = analyze(&record, &history);
        assert!(report.promise_kept(), "{:?}", report.broken());
    }

    #[test]
    fn a_lost_job_and_an_unneeded_move_are_reported() {
        let mut record = record();
        record.enqueued.insert("k2".into(), 1);
        // b takes both partitions where taking one restores balance.
        record.steps[0].after = assignment(&[("a", &[]), ("b", &[0, 1])]);
        let report = analyze(&record, &clean_history());
        assert_eq!(report.lost, 1);
        assert_eq!((report.steps[0].moved, report.steps[0].minimum), (2, 1));
        assert_eq!(report.broken().len(), 2, "{:?}", report.broken());
    }
}
