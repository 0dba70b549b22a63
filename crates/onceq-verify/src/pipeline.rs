//! Pipeline mode (`onceq verify --pipeline`): what a run of a consume → produce stage records,
//! and the checker that judges it.
//!
//! A stage leases input jobs from its queue A and turns each into one job in queue B and one in
//! queue C. Two stages run side by side in one run, under the same faults, each on queues of its
//! own ([`crate::workload`] runs them):
//!
//! - [`Stage::Committed`]: the shipped worker runtime, whose handler calls `ctx.produce` for B
//!   and C and returns done; the runtime acks A and enqueues B and C in one commit whose id is
//!   derived from the lease, and sends it again while the target cannot answer.
//! - [`Stage::EnqueueThenAck`]: the same runtime, whose handler enqueues B and C itself (two
//!   plain enqueues) and returns done, so the runtime acks A afterwards.
//!
//! Neither uses an idempotency store, and outputs carry no dedup id. Each output's payload
//! names its input job ([`OutputPayload`]). Downstream consumers drain B and C (lease and ack)
//! and record every delivery ([`OutputDelivery`]): a redelivery of the same output job (its ack
//! was lost) is recorded again with the same job id.
//!
//! # The rules
//!
//! An *input* is one job of queue A (by job id): every job id an ok enqueue returned, and every
//! one a lease handed out (an enqueue with an unknown outcome that took effect). A producer's
//! retried enqueue may make two inputs with one value: each must be turned into outputs once.
//!
//! - The run **drained** when, at its end, every queue of the run (A, B and C of both stages)
//!   held nothing ready, scheduled or leased: every input was acked or dead, and every output
//!   made was delivered downstream. Only then can an output be known missing.
//! - An input is **settled** when an ack or a commit of one of its leases completed ok, or,
//!   when the run drained, when it was handed out and is not among A's dead letters: nothing
//!   else removes a job from A.
//! - **dead**: inputs among A's dead letters; the rules below skip them (a job that ran out of
//!   attempts may have produced or not).
//! - **outputs_missing**: in a drained run, per settled input, each of B and C of which no job
//!   was delivered downstream (0, 1 or 2 per input), summed. An input acked without its outputs.
//! - **outputs_duplicated**: per input and per kind (B, C), the distinct output *jobs* beyond
//!   the first, summed. Deliveries of the same output job again are not duplicates
//!   (**output_redeliveries** counts them).
//! - **lost**: inputs not dead that lack an output and cannot be shown missing one: in a
//!   drained run, inputs never handed out nor settled with no output at all; in a run that did
//!   not drain, every input without both outputs delivered (what the run could not show done is
//!   counted as lost, as in the modes' runs).
//! - **unexpected**: output jobs whose input is no input of the stage (verify never enqueued it).
//! - **commits_replayed**: commits that returned the first outcome of their commit id (a retry
//!   after a lost reply): the committed stage's proof that the runtime's retry applied nothing
//!   twice.
//!
//! Violations: in both stages `outputs_missing`, `lost` and `unexpected` (enqueue-then-ack
//! enqueues before it acks, so it may duplicate but never lose); in [`Stage::Committed`] also
//! `outputs_duplicated`. The enqueue-then-ack stage's duplicates are the contrast the commit
//! exists for, not a failure.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{Event, History, Outcome, Request, Response};

/// How many example inputs a violation names.
const EXAMPLES_MAX: usize = 5;

/// A pipeline stage verify runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Outputs committed with the input's ack (`ctx.produce`).
    Committed,
    /// Outputs enqueued by the handler, then the input acked.
    EnqueueThenAck,
}

impl Stage {
    /// Both stages, in the order of the table.
    pub const ALL: [Stage; 2] = [Stage::Committed, Stage::EnqueueThenAck];

    /// The stage's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Committed => "committed",
            Stage::EnqueueThenAck => "enqueue-then-ack",
        }
    }

    /// The segment of the stage's queue names (`verify.<run>.pipe.<segment>.{a,b,c}`).
    pub fn queue_segment(self) -> &'static str {
        match self {
            Stage::Committed => "committed",
            Stage::EnqueueThenAck => "naive",
        }
    }
}

/// An output queue of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Queue B.
    B,
    /// Queue C.
    C,
}

impl OutputKind {
    /// Both kinds.
    pub const ALL: [OutputKind; 2] = [OutputKind::B, OutputKind::C];

    /// The last segment of its queue's name.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::B => "b",
            OutputKind::C => "c",
        }
    }
}

/// The payload of an output job: the input it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPayload {
    /// The input's value (so that every job verify writes carries one).
    pub value: u64,
    /// The input job's id.
    pub input: u64,
    /// Which output it is.
    pub output: OutputKind,
}

/// One delivery of an output job to a downstream consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDelivery {
    /// Its queue.
    pub kind: OutputKind,
    /// The output job.
    pub job_id: u64,
    /// The input job its payload names.
    pub input: u64,
    /// The input's value.
    pub value: u64,
    /// When it was handed out (verify clock, Unix ms).
    pub at_ms: i64,
}

/// Everything the checker reads about one stage's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageHistory {
    /// The stage.
    pub stage: Stage,
    /// Queue A's history: enqueues, leases, acks, commits, extends, and A's dead letters (its
    /// mode is `at_least_once`; it has no effects: a stage's effects are its outputs).
    pub inputs: History,
    /// Every delivery of an output job downstream.
    pub outputs: Vec<OutputDelivery>,
    /// True when every queue of the run (A, B and C of both stages) held nothing ready,
    /// scheduled or leased at the end.
    pub drained: bool,
}

/// What the checker found in one stage's run. See the [module docs](self) for each rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// Distinct input jobs.
    pub inputs: u64,
    /// Inputs settled (acked, alone or in a commit).
    pub settled: u64,
    /// Inputs among A's dead letters.
    pub dead: u64,
    /// Inputs not dead that lack an output and cannot be shown missing one (see the rules).
    pub lost: u64,
    /// Outputs (B or C) missing from settled inputs.
    pub outputs_missing: u64,
    /// Output jobs beyond the first, per input and kind.
    pub outputs_duplicated: u64,
    /// Deliveries of an output job beyond its first (not duplicates).
    pub output_redeliveries: u64,
    /// Output jobs naming no input of the stage.
    pub unexpected: u64,
    /// Commits that replayed an earlier application of their commit id.
    pub commits_replayed: u64,
    /// Milliseconds from the last injected fault to the last settle, if a fault was injected.
    pub drain_ms: Option<i64>,
    /// The broken promises, in words; empty when the stage kept its promise.
    pub violations: Vec<String>,
}

impl StageReport {
    /// True when the stage kept its promise.
    pub fn promise_kept(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks one stage's history. See the [module docs](self) for every rule.
pub fn check(history: &StageHistory) -> StageReport {
    let events = &history.inputs.events;
    let mut requests: HashMap<u64, &Request> = HashMap::new();
    for event in events {
        if let Event::Invoke { op, request, .. } = event {
            requests.entry(*op).or_insert(request);
        }
    }
    let mut inputs: BTreeSet<u64> = BTreeSet::new();
    let mut delivered: HashSet<u64> = HashSet::new();
    let mut settled: HashSet<u64> = HashSet::new();
    let mut commits_replayed = 0u64;
    for event in events {
        let Event::Complete { op, outcome: Outcome::Ok, response, .. } = event else { continue };
        match (requests.get(op), response) {
            (Some(Request::Enqueue { .. }), Response::Enqueued { job_id, .. }) => {
                inputs.insert(*job_id);
            }
            (Some(Request::Lease { .. }), Response::Leased { jobs }) => {
                for lease in jobs {
                    inputs.insert(lease.job_id);
                    delivered.insert(lease.job_id);
                }
            }
            (Some(Request::Ack { job_id, .. }), _) => {
                settled.insert(*job_id);
            }
            (Some(Request::Commit { job_id, .. }), Response::Committed { replayed }) => {
                settled.insert(*job_id);
                commits_replayed += u64::from(*replayed);
            }
            _ => {}
        }
    }
    let dead: HashSet<u64> = history.inputs.dead.iter().map(|d| d.job_id).collect();
    if history.drained {
        settled.extend(delivered.iter().filter(|job| !dead.contains(job)));
    }

    // Per input and kind, the distinct output jobs; and redeliveries of each output job.
    let mut jobs_of: HashMap<(u64, OutputKind), BTreeSet<u64>> = HashMap::new();
    let mut seen_jobs: HashSet<u64> = HashSet::new();
    let mut output_redeliveries = 0u64;
    let mut unexpected: BTreeSet<u64> = BTreeSet::new();
    for output in &history.outputs {
        if !seen_jobs.insert(output.job_id) {
            output_redeliveries += 1;
            continue;
        }
        if !inputs.contains(&output.input) {
            unexpected.insert(output.job_id);
            continue;
        }
        jobs_of.entry((output.input, output.kind)).or_default().insert(output.job_id);
    }

    let (mut lost, mut missing, mut duplicated) = (Vec::new(), Vec::new(), Vec::new());
    let (mut outputs_missing, mut outputs_duplicated) = (0u64, 0u64);
    for &input in &inputs {
        if dead.contains(&input) {
            continue;
        }
        let counts: Vec<u64> = OutputKind::ALL
            .iter()
            .map(|kind| jobs_of.get(&(input, *kind)).map_or(0, |jobs| jobs.len() as u64))
            .collect();
        let extra: u64 = counts.iter().map(|n| n.saturating_sub(1)).sum();
        if extra > 0 {
            outputs_duplicated += extra;
            duplicated.push(input);
        }
        let absent = counts.iter().filter(|n| **n == 0).count() as u64;
        if !history.drained {
            // Outputs may wait in B or C, and inputs in A: nothing can be shown missing.
            if absent > 0 {
                lost.push(input);
            }
        } else if settled.contains(&input) {
            if absent > 0 {
                outputs_missing += absent;
                missing.push(input);
            }
        } else if absent == OutputKind::ALL.len() as u64 {
            lost.push(input);
        }
    }

    let drain_ms = history.inputs.last_fault_at_ms.map(|fault| history.inputs.drained_at_ms.saturating_sub(fault));
    let mut report = StageReport {
        stage: history.stage,
        inputs: inputs.len() as u64,
        settled: settled.iter().filter(|job| inputs.contains(job)).count() as u64,
        dead: dead.len() as u64,
        lost: lost.len() as u64,
        outputs_missing,
        outputs_duplicated,
        output_redeliveries,
        unexpected: unexpected.len() as u64,
        commits_replayed,
        drain_ms,
        violations: Vec::new(),
    };
    let examples = |jobs: &[u64]| {
        let shown: Vec<String> = jobs.iter().take(EXAMPLES_MAX).map(u64::to_string).collect();
        shown.join(", ")
    };
    if !missing.is_empty() {
        report.violations.push(format!(
            "{} outputs missing: {} inputs settled without their B or C (input jobs {})",
            outputs_missing,
            missing.len(),
            examples(&missing)
        ));
    }
    if !lost.is_empty() {
        let why = if history.drained {
            "neither settled nor dead, and no output"
        } else {
            "the run did not drain, and they lack an output"
        };
        report.violations.push(format!("{} inputs lost: {why} (input jobs {})", lost.len(), examples(&lost)));
    }
    if !unexpected.is_empty() {
        let jobs: Vec<u64> = unexpected.iter().copied().collect();
        report.violations.push(format!(
            "{} output jobs name no input of the stage (jobs {})",
            jobs.len(),
            examples(&jobs)
        ));
    }
    if history.stage == Stage::Committed && outputs_duplicated > 0 {
        report.violations.push(format!(
            "{outputs_duplicated} outputs duplicated: {} inputs made more than one job in B or C (input jobs {})",
            duplicated.len(),
            examples(&duplicated)
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stage_names_parse_back() {
        for stage in Stage::ALL {
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.name()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
    }
}
