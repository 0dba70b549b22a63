//! The checker: reads a [`History`] and reports, for its mode, what the service-tier matrix
//! (docs/design.md) promises about. It counts only definite violations: where the history cannot tell
//! (an operation with an unknown outcome, two events closer than [`CLOCK_MARGIN_MS`] across
//! clocks), it gives the target the benefit of the doubt, like Jepsen's queue checkers.
//!
//! # The rules
//!
//! Words: a *delivery* is one job of the `jobs` of a `Lease` completion with outcome ok; a
//! *settle* is an `Ack`, `Nack`, `Release` or `Fail`: it ends the lease. An `Extend` (a
//! heartbeat) moves the lease's expiry and does not end it. A delivery's lease is identified by
//! its (job id, lease token).
//! A delivery was handed out by the store at some moment between its lease's invoke and
//! completion; the checker takes the *latest* possible moment (the completion) when it must show
//! that something was still live, and the *earliest* (the invoke) when it must show that something
//! had already ended. Verify-clock times (`at_ms`) are compared with each other directly (one
//! clock); a target-clock time (`lease_expires_at_ms`) is trusted only with [`CLOCK_MARGIN_MS`] to
//! spare. Comparisons of verify-clock times are strict, so two events in the same millisecond
//! are never ordered.
//!
//! Enqueues and values:
//! - **enqueued**: distinct values with an `Enqueue` completion of outcome ok (a dedup duplicate
//!   counts: the target vouches for the job).
//! - **enqueue_unknown**: distinct values never enqueued with outcome ok, with at least one
//!   enqueue whose outcome is unknown or that never completed (it may or may not exist). Values
//!   whose enqueues all failed are in neither figure.
//! - **recovered** (Jepsen's word): values never enqueued with outcome ok that were nevertheless
//!   delivered, processed or dead-lettered, so the target did take them. Not a violation.
//! - **delivered** / **processed**: distinct values with at least one delivery / one ledger effect.
//! - **lost**: values enqueued (ok) with no effect in the ledger and not among the dead letters.
//!   A violation in `at_least_once` and `effectively_once`; reported, permitted, in `at_most_once`.
//! - **duplicate_deliveries**: per value, deliveries beyond the first, summed. Counted per value,
//!   not per job: two jobs carrying one value (an enqueue retried without a dedup id) count too,
//!   so the workload must send dedup ids where it retries enqueues in `at_most_once`.
//!   A violation in `at_most_once` only.
//! - **duplicate_effects**: per value, ledger effects beyond the first, summed. A violation in
//!   `at_most_once` and `effectively_once`; permitted in `at_least_once`.
//! - **unexpected**: distinct values delivered, processed or dead-lettered that no `Enqueue`
//!   invoke carried (whatever its outcome). A violation in every mode.
//!
//! Leases (Invariants 2 and 3). Each applies in every mode. The workload never redrives, so a
//! lease ends only by expiry or by a settle. A release gives its attempt back, so a job's next
//! lease may carry the same attempt; a delivery is *later* than another of the same job when its
//! attempt is higher, or equal and its lease was invoked after the other's completed.
//! - A lease's *possible expiry* at a moment is the latest expiry it may have had then: its
//!   `lease_expires_at_ms`, raised by every extend invoked before that moment that may have
//!   taken effect (the returned expiry of an ok one; for an unknown one, its completion plus
//!   the visibility timeout it asked for, or never, if it never completed).
//! - **stale_acks_accepted** / **stale_nacks_accepted** / **stale_extends_accepted**: acks /
//!   nacks, releases and fails / extends with outcome ok whose lease was definitely no longer
//!   the job's live lease when they were invoked, in any of three ways:
//!   1. *expired*: invoked more than [`CLOCK_MARGIN_MS`] after the lease's possible expiry;
//!   2. *superseded*: a later delivery of the same job completed before the invoke (the store
//!      had handed the job out again, so the token was not current);
//!   3. *settled*: a settle of the same lease had completed with outcome ok before the invoke
//!      (an ack deletes the job; a nack, release or fail ends the lease).
//!
//!   A settle refused by the target (`lease_lost`, `job_not_found`) must be recorded as outcome
//!   fail; it then counts nowhere.
//! - **overlapping_leases**: pairs of deliveries of one job that were definitely live at one
//!   moment. A lease is definitely live from its completion until the earlier of its latest
//!   known expiry (`lease_expires_at_ms`, or the expiry an ok extend returned) minus
//!   [`CLOCK_MARGIN_MS`] and the invoke of its first settle that may have
//!   taken effect (outcome ok, unknown, or never completed). Two deliveries overlap when the later
//!   completion of the two comes before both of those ends: at that moment both had been handed
//!   out and neither had ended. The count is of pairs, found with a sweep per job.
//!
//! Dead letters (Invariants 4 and 5):
//! - **dead**: distinct values among the dead letters.
//! - **dead_more_than_once**: distinct dead jobs whose history contradicts going dead exactly once:
//!   listed more than once; or handed out more times (not counting deliveries that may have
//!   been released: a release gives its attempt back and records no error), or with a higher
//!   attempt, than the attempt errors their dead letter carries (every attempt of a dead job
//!   ended in an error and each is kept, so a delivery beyond them came after the job went dead,
//!   or its error was dropped); or
//!   acked by a settle with outcome ok that was not stale (an acked job is deleted). Counted per
//!   job, not per value: two jobs of one value (an enqueue retried without a dedup id) may each go
//!   dead once. A violation in every mode.
//!
//! Ordering (Invariant 9), in an ordered run only (`History::ordered_keys`; the key of a value
//! is `value mod ordered_keys`, and a job's key is its value's). A job *leaves* its key when it is
//! acked, or, in `at_most_once`, leased; the earliest moment it may have left is the invoke of its
//! first ack that may have taken effect (outcome ok, unknown or never completed), or in
//! `at_most_once` the invoke of its first delivery. A job that went dead may have left at any
//! time, and constrains nothing.
//! - **order_violations**: deliveries of a job handed out (completed) before the earliest moment
//!   an earlier job of its key (a lower job id: the store's enqueue order) may have left. Counted
//!   per delivery. A violation in every mode.
//! - **concurrent_key_deliveries**: pairs of deliveries of *different* jobs of one key definitely
//!   live at one moment (the sweep of `overlapping_leases`, over a key's deliveries, minus the
//!   pairs within one job). A violation in `at_least_once` and `effectively_once`. Not counted
//!   in `at_most_once` (always 0 there): a leased job has already left its key, so the next may
//!   run beside it, and its lease, never settled, stays "live" until it expires.
//!
//! Time:
//! - **drain_ms**: `drained_at_ms - last_fault_at_ms`, when a fault was injected.
//!
//! Besides the figures, two more conditions make a report fail: a history that
//! [`History::validate`] rejects (its figures cannot be trusted), and settles accepted (outcome
//! ok) for a lease that no recorded delivery handed out (either the history is incomplete or the
//! target accepted a token it never issued).
//!
//! [`CLOCK_MARGIN_MS`]: crate::history::CLOCK_MARGIN_MS

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use onceq_core::DeliveryMode;

use crate::history::{Event, History, Outcome, Request, Response, CLOCK_MARGIN_MS};

/// How many example values or job ids a violation names.
const EXAMPLES_MAX: usize = 5;

/// What the checker found in one mode's history. See the [module docs](self) for the exact rule
/// behind each figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The mode checked.
    pub mode: DeliveryMode,
    /// Distinct values whose enqueue the target acknowledged (outcome ok).
    pub enqueued: u64,
    /// Distinct values whose enqueue outcome stayed unknown and never succeeded on a retry.
    pub enqueue_unknown: u64,
    /// Distinct values with at least one effect in the ledger.
    pub processed: u64,
    /// Acknowledged enqueues never processed and not in the dead letters.
    pub lost: u64,
    /// Deliveries beyond the first, summed over values (a lease handing a value out again).
    pub duplicate_deliveries: u64,
    /// Effects beyond the first, summed over values.
    pub duplicate_effects: u64,
    /// Values with an effect, delivered, or dead-lettered, that no enqueue ever carried.
    pub unexpected: u64,
    /// Acks that succeeded although their lease was no longer live (must be 0).
    pub stale_acks_accepted: u64,
    /// Pairs of leases of one job live at the same time (must be 0).
    pub overlapping_leases: u64,
    /// Distinct values in the dead letters at the end.
    pub dead: u64,
    /// Dead jobs whose history contradicts going dead exactly once: listed twice, delivered
    /// beyond their recorded attempt errors, or acked (must be 0).
    pub dead_more_than_once: u64,
    /// Milliseconds from the last injected fault to the last settle, if a fault was injected.
    pub drain_ms: Option<i64>,
    /// The broken promises, in words; empty when the mode kept its promise.
    pub violations: Vec<String>,
    /// Distinct values handed out by at least one lease.
    #[serde(default)]
    pub delivered: u64,
    /// Values never enqueued with outcome ok that the target delivered, processed or
    /// dead-lettered anyway (an enqueue with an unknown outcome that did take effect).
    #[serde(default)]
    pub recovered: u64,
    /// Nacks, releases and fails that succeeded although their lease was no longer live (must
    /// be 0).
    #[serde(default)]
    pub stale_nacks_accepted: u64,
    /// Extends that succeeded although their lease was no longer live (must be 0).
    #[serde(default)]
    pub stale_extends_accepted: u64,
    /// In an ordered run: deliveries handed out before an earlier job of their key had left
    /// (must be 0).
    #[serde(default)]
    pub order_violations: u64,
    /// In an ordered run: pairs of deliveries of different jobs of one key live at once (must be
    /// 0; not counted in `at_most_once`).
    #[serde(default)]
    pub concurrent_key_deliveries: u64,
}

impl Report {
    /// True when the mode kept its promise (and the invariants that hold in every mode held).
    pub fn promise_kept(&self) -> bool {
        self.violations.is_empty()
    }
}

/// One figure of a [`Report`], for tables and for the rule of which mode forbids what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Figure {
    /// [`Report::enqueued`].
    Enqueued,
    /// [`Report::enqueue_unknown`].
    EnqueueUnknown,
    /// [`Report::recovered`].
    Recovered,
    /// [`Report::delivered`].
    Delivered,
    /// [`Report::processed`].
    Processed,
    /// [`Report::lost`].
    Lost,
    /// [`Report::duplicate_deliveries`].
    DuplicateDeliveries,
    /// [`Report::duplicate_effects`].
    DuplicateEffects,
    /// [`Report::unexpected`].
    Unexpected,
    /// [`Report::stale_acks_accepted`].
    StaleAcksAccepted,
    /// [`Report::stale_nacks_accepted`].
    StaleNacksAccepted,
    /// [`Report::stale_extends_accepted`].
    StaleExtendsAccepted,
    /// [`Report::overlapping_leases`].
    OverlappingLeases,
    /// [`Report::dead`].
    Dead,
    /// [`Report::dead_more_than_once`].
    DeadMoreThanOnce,
    /// [`Report::order_violations`].
    OrderViolations,
    /// [`Report::concurrent_key_deliveries`].
    ConcurrentKeyDeliveries,
    /// [`Report::drain_ms`].
    DrainMs,
}

impl Figure {
    /// Every figure, in the order reports show them.
    pub const ALL: [Figure; 18] = [
        Figure::Enqueued,
        Figure::EnqueueUnknown,
        Figure::Recovered,
        Figure::Delivered,
        Figure::Processed,
        Figure::Lost,
        Figure::DuplicateDeliveries,
        Figure::DuplicateEffects,
        Figure::Unexpected,
        Figure::StaleAcksAccepted,
        Figure::StaleNacksAccepted,
        Figure::StaleExtendsAccepted,
        Figure::OverlappingLeases,
        Figure::Dead,
        Figure::DeadMoreThanOnce,
        Figure::OrderViolations,
        Figure::ConcurrentKeyDeliveries,
        Figure::DrainMs,
    ];

    /// The figure's name, the same as its [`Report`] field and JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Figure::Enqueued => "enqueued",
            Figure::EnqueueUnknown => "enqueue_unknown",
            Figure::Recovered => "recovered",
            Figure::Delivered => "delivered",
            Figure::Processed => "processed",
            Figure::Lost => "lost",
            Figure::DuplicateDeliveries => "duplicate_deliveries",
            Figure::DuplicateEffects => "duplicate_effects",
            Figure::Unexpected => "unexpected",
            Figure::StaleAcksAccepted => "stale_acks_accepted",
            Figure::StaleNacksAccepted => "stale_nacks_accepted",
            Figure::StaleExtendsAccepted => "stale_extends_accepted",
            Figure::OverlappingLeases => "overlapping_leases",
            Figure::Dead => "dead",
            Figure::DeadMoreThanOnce => "dead_more_than_once",
            Figure::OrderViolations => "order_violations",
            Figure::ConcurrentKeyDeliveries => "concurrent_key_deliveries",
            Figure::DrainMs => "drain_ms",
        }
    }

    /// The figure's count in `report`; `None` for [`Figure::DrainMs`], which is a duration.
    pub fn count(self, report: &Report) -> Option<u64> {
        Some(match self {
            Figure::Enqueued => report.enqueued,
            Figure::EnqueueUnknown => report.enqueue_unknown,
            Figure::Recovered => report.recovered,
            Figure::Delivered => report.delivered,
            Figure::Processed => report.processed,
            Figure::Lost => report.lost,
            Figure::DuplicateDeliveries => report.duplicate_deliveries,
            Figure::DuplicateEffects => report.duplicate_effects,
            Figure::Unexpected => report.unexpected,
            Figure::StaleAcksAccepted => report.stale_acks_accepted,
            Figure::StaleNacksAccepted => report.stale_nacks_accepted,
            Figure::StaleExtendsAccepted => report.stale_extends_accepted,
            Figure::OverlappingLeases => report.overlapping_leases,
            Figure::Dead => report.dead,
            Figure::DeadMoreThanOnce => report.dead_more_than_once,
            Figure::OrderViolations => report.order_violations,
            Figure::ConcurrentKeyDeliveries => report.concurrent_key_deliveries,
            Figure::DrainMs => return None,
        })
    }

    /// True when `mode` promises this figure is 0 (docs/design.md's service-tier matrix and the
    /// invariants that hold in every mode).
    pub fn forbidden_in(self, mode: DeliveryMode) -> bool {
        match self {
            Figure::Lost => mode != DeliveryMode::AtMostOnce,
            Figure::DuplicateDeliveries => mode == DeliveryMode::AtMostOnce,
            Figure::DuplicateEffects => mode != DeliveryMode::AtLeastOnce,
            Figure::ConcurrentKeyDeliveries => mode != DeliveryMode::AtMostOnce,
            Figure::OrderViolations
            | Figure::Unexpected
            | Figure::StaleAcksAccepted
            | Figure::StaleNacksAccepted
            | Figure::StaleExtendsAccepted
            | Figure::OverlappingLeases
            | Figure::DeadMoreThanOnce => true,
            Figure::Enqueued
            | Figure::EnqueueUnknown
            | Figure::Recovered
            | Figure::Delivered
            | Figure::Processed
            | Figure::Dead
            | Figure::DrainMs => false,
        }
    }

    /// True when `report` shows this figure breaking its mode's promise.
    pub fn breaks_promise(self, report: &Report) -> bool {
        self.forbidden_in(report.mode) && self.count(report).is_some_and(|count| count > 0)
    }
}

/// Checks one mode's history. See the [module docs](self) for every rule. Runs in time linear
/// in the history's size (plus sorting the deliveries of each job).
pub fn check(history: &History) -> Report {
    let ops = index_operations(&history.events);

    // Enqueues.
    let mut carried: HashSet<u64> = HashSet::new();
    let mut enqueued_ok: HashSet<u64> = HashSet::new();
    let mut maybe_enqueued: HashSet<u64> = HashSet::new();
    // Deliveries and settles.
    let mut deliveries: Vec<Delivery<'_>> = Vec::new();
    let mut settles: Vec<Settle<'_>> = Vec::new();

    for (index, event) in history.events.iter().enumerate() {
        let Event::Invoke { op, .. } = event else {
            continue;
        };
        let Some(operation) = ops.get(op) else {
            continue;
        };
        if operation.invoke_index != index {
            continue; // a repeated op number: the first invoke stands (validate reports it)
        }
        let completion = operation.completion;
        match operation.request {
            Request::Enqueue { value, .. } => {
                carried.insert(*value);
                match completion.map(|c| c.outcome) {
                    Some(Outcome::Ok) => {
                        enqueued_ok.insert(*value);
                    }
                    Some(Outcome::Unknown) | None => {
                        maybe_enqueued.insert(*value);
                    }
                    Some(Outcome::Fail) => {}
                }
            }
            Request::Lease { .. } => {
                let Some(done) = completion else { continue };
                if done.outcome != Outcome::Ok {
                    continue;
                }
                let Response::Leased { jobs } = done.response else {
                    continue; // validate reports an ok lease without jobs
                };
                for lease in jobs {
                    deliveries.push(Delivery {
                        job_id: lease.job_id,
                        value: lease.value,
                        token: &lease.lease_token,
                        attempt: lease.attempt,
                        expires_at_ms: lease.lease_expires_at_ms,
                        invoked_at_ms: operation.invoked_at_ms,
                        completed_at_ms: done.at_ms,
                        settle_from_ms: i64::MAX,
                        settled_ok_by_ms: i64::MAX,
                        known_expiry_ms: lease.lease_expires_at_ms,
                        raises: Vec::new(),
                        maybe_released: false,
                    });
                }
            }
            Request::Extend { job_id, lease_token, visibility_timeout_ms } => settles.push(Settle {
                kind: SettleKind::Extend { visibility_timeout_ms: *visibility_timeout_ms },
                job_id: *job_id,
                token: lease_token,
                invoked_at_ms: operation.invoked_at_ms,
                outcome: completion.map(|c| c.outcome),
                completed_at_ms: completion.map(|c| c.at_ms),
                extended_to_ms: match completion.map(|c| c.response) {
                    Some(Response::Extended { lease_expires_at_ms }) => Some(*lease_expires_at_ms),
                    _ => None,
                },
            }),
            // A commit settles its lease as an ack does (it also enqueues, which this checker
            // does not judge: `crate::pipeline` does).
            Request::Ack { job_id, lease_token }
            | Request::Commit { job_id, lease_token }
            | Request::Nack { job_id, lease_token }
            | Request::Release { job_id, lease_token }
            | Request::Fail { job_id, lease_token } => settles.push(Settle {
                kind: match operation.request {
                    Request::Ack { .. } | Request::Commit { .. } => SettleKind::Ack,
                    Request::Release { .. } => SettleKind::Release,
                    _ => SettleKind::Nack,
                },
                job_id: *job_id,
                token: lease_token,
                invoked_at_ms: operation.invoked_at_ms,
                outcome: completion.map(|c| c.outcome),
                completed_at_ms: completion.map(|c| c.at_ms),
                extended_to_ms: None,
            }),
        }
    }

    // Which delivery each settle names; when each lease may have, and surely has, been settled;
    // how its extends may have moved its expiry.
    let mut lease_of: HashMap<(u64, &str), usize> = HashMap::with_capacity(deliveries.len());
    for (index, delivery) in deliveries.iter().enumerate() {
        lease_of.entry((delivery.job_id, delivery.token)).or_insert(index);
    }
    let settle_lease: Vec<Option<usize>> =
        settles.iter().map(|settle| lease_of.get(&(settle.job_id, settle.token)).copied()).collect();
    for (settle, lease) in settles.iter().zip(&settle_lease) {
        let Some(lease) = *lease else { continue };
        let delivery = &mut deliveries[lease];
        let may_have_applied = settle.outcome != Some(Outcome::Fail);
        match settle.kind {
            SettleKind::Extend { visibility_timeout_ms } => {
                let raised_to = match (settle.outcome, settle.extended_to_ms, settle.completed_at_ms) {
                    (Some(Outcome::Ok), Some(to), _) => {
                        delivery.known_expiry_ms = delivery.known_expiry_ms.max(to);
                        to
                    }
                    (Some(Outcome::Fail), _, _) => continue,
                    (_, _, Some(at_ms)) => {
                        at_ms.saturating_add(i64::try_from(visibility_timeout_ms).unwrap_or(i64::MAX))
                    }
                    (_, _, None) => i64::MAX,
                };
                delivery.raises.push((settle.invoked_at_ms, raised_to));
            }
            kind => {
                if may_have_applied {
                    delivery.settle_from_ms = delivery.settle_from_ms.min(settle.invoked_at_ms);
                    if kind == SettleKind::Release {
                        delivery.maybe_released = true;
                    }
                }
                if let (Some(Outcome::Ok), Some(at_ms)) = (settle.outcome, settle.completed_at_ms) {
                    delivery.settled_ok_by_ms = delivery.settled_ok_by_ms.min(at_ms);
                }
            }
        }
    }

    // Per job: when a later delivery was first handed out, and the overlapping pairs.
    let mut by_job: Vec<usize> = (0..deliveries.len()).collect();
    by_job.sort_unstable_by_key(|&i| (deliveries[i].job_id, deliveries[i].attempt, deliveries[i].completed_at_ms));
    // Per delivery: the earliest completion of a later delivery of the same job.
    let mut superseded_by_ms = vec![i64::MAX; deliveries.len()];
    let mut overlapping_leases = 0u64;
    let mut overlap_jobs: Vec<u64> = Vec::new();
    let mut jobs: HashMap<u64, JobSummary> = HashMap::new();
    for run in by_job.chunk_by(|&a, &b| deliveries[a].job_id == deliveries[b].job_id) {
        // A job has a few deliveries: compare each pair.
        for &i in run {
            for &j in run {
                if deliveries[j].is_later_than(&deliveries[i]) {
                    superseded_by_ms[i] = superseded_by_ms[i].min(deliveries[j].completed_at_ms);
                }
            }
        }

        let job_id = deliveries[run[0]].job_id;
        let pairs = overlapping_pairs(&deliveries, run);
        if pairs > 0 {
            overlapping_leases += pairs;
            overlap_jobs.push(job_id);
        }
        let counted = run.iter().filter(|&&i| !deliveries[i].maybe_released).count();
        jobs.insert(
            job_id,
            JobSummary {
                deliveries: u32::try_from(counted).unwrap_or(u32::MAX),
                attempt_max: run.iter().map(|&i| deliveries[i].attempt).max().unwrap_or(0),
                acked: false,
            },
        );
    }

    // Stale settles and extends.
    let mut stale_acks = Vec::new();
    let mut stale_nacks = Vec::new();
    let mut stale_extends = Vec::new();
    let mut untraceable = Vec::new();
    for (settle, lease) in settles.iter().zip(&settle_lease) {
        if settle.outcome != Some(Outcome::Ok) {
            continue;
        }
        let Some(lease) = *lease else {
            untraceable.push(settle.job_id);
            continue;
        };
        let delivery = &deliveries[lease];
        let expiry = delivery.possible_expiry_at(settle.invoked_at_ms);
        let expired = settle.invoked_at_ms > expiry.saturating_add(CLOCK_MARGIN_MS);
        let superseded = superseded_by_ms[lease] < settle.invoked_at_ms;
        let settled = delivery.settled_ok_by_ms < settle.invoked_at_ms;
        let stale = expired || superseded || settled;
        match settle.kind {
            SettleKind::Ack if stale => stale_acks.push(settle.job_id),
            SettleKind::Ack => {
                if let Some(job) = jobs.get_mut(&settle.job_id) {
                    job.acked = true;
                }
            }
            SettleKind::Nack | SettleKind::Release if stale => stale_nacks.push(settle.job_id),
            SettleKind::Extend { .. } if stale => stale_extends.push(settle.job_id),
            SettleKind::Nack | SettleKind::Release | SettleKind::Extend { .. } => {}
        }
    }

    let ordered = history
        .ordered_keys
        .map(|keys| order_figures(history.mode, keys, &deliveries, &settles, &settle_lease, &dead_jobs(history), &ops));

    // Values delivered and effected.
    let mut delivered_count: HashMap<u64, u64> = HashMap::new();
    for delivery in &deliveries {
        *delivered_count.entry(delivery.value).or_default() += 1;
    }
    let mut effect_count: HashMap<u64, u64> = HashMap::new();
    for effect in &history.effects {
        *effect_count.entry(effect.value).or_default() += 1;
    }

    // Dead letters.
    let mut dead_values: HashSet<u64> = HashSet::new();
    let mut dead_listings: HashMap<u64, (u32, u32)> = HashMap::new(); // job → (listings, errors)
    for dead in &history.dead {
        dead_values.insert(dead.value);
        let entry = dead_listings.entry(dead.job_id).or_insert((0, dead.errors));
        entry.0 += 1;
        entry.1 = entry.1.min(dead.errors);
    }
    let mut dead_twice: Vec<u64> = Vec::new();
    for (job_id, (listings, errors)) in &dead_listings {
        let contradicted =
            jobs.get(job_id).is_some_and(|job| job.acked || job.deliveries > *errors || job.attempt_max > *errors);
        if *listings > 1 || contradicted {
            dead_twice.push(*job_id);
        }
    }

    // Values.
    let mut lost: Vec<u64> = enqueued_ok
        .iter()
        .filter(|value| !effect_count.contains_key(value) && !dead_values.contains(value))
        .copied()
        .collect();
    let taken =
        delivered_count.keys().chain(effect_count.keys()).chain(dead_values.iter()).copied().collect::<HashSet<u64>>();
    let mut unexpected = Vec::new();
    let mut recovered = 0u64;
    for value in &taken {
        if !carried.contains(value) {
            unexpected.push(*value);
        } else if !enqueued_ok.contains(value) {
            recovered += 1;
        }
    }
    let enqueue_unknown = maybe_enqueued.difference(&enqueued_ok).count() as u64;
    let (duplicate_deliveries, mut duplicate_delivery_values) = beyond_first(&delivered_count);
    let (duplicate_effects, mut duplicate_effect_values) = beyond_first(&effect_count);

    let mut report = Report {
        mode: history.mode,
        enqueued: enqueued_ok.len() as u64,
        enqueue_unknown,
        processed: effect_count.len() as u64,
        lost: lost.len() as u64,
        duplicate_deliveries,
        duplicate_effects,
        unexpected: unexpected.len() as u64,
        stale_acks_accepted: stale_acks.len() as u64,
        overlapping_leases,
        dead: dead_values.len() as u64,
        dead_more_than_once: dead_twice.len() as u64,
        drain_ms: history.last_fault_at_ms.map(|fault| history.drained_at_ms.saturating_sub(fault)),
        violations: Vec::new(),
        delivered: delivered_count.len() as u64,
        recovered,
        stale_nacks_accepted: stale_nacks.len() as u64,
        stale_extends_accepted: stale_extends.len() as u64,
        order_violations: ordered.as_ref().map_or(0, |o| o.violations.len() as u64),
        concurrent_key_deliveries: ordered.as_ref().map_or(0, |o| o.concurrent_pairs),
    };
    let (mut order_jobs, mut concurrent_keys) = ordered.map(|o| (o.violations, o.concurrent_keys)).unwrap_or_default();

    // The broken promises, in the order of the figures.
    let mode = history.mode.as_str();
    let mut violations = Vec::new();
    for figure in Figure::ALL {
        if !figure.breaks_promise(&report) {
            continue;
        }
        let sentence = match figure {
            Figure::Lost => format!(
                "{mode} promises no loss: {} never processed ({})",
                counted(report.lost, "acknowledged enqueue was", "acknowledged enqueues were"),
                examples("value", std::mem::take(&mut lost)),
            ),
            Figure::DuplicateDeliveries => format!(
                "{mode} promises no duplicate delivery: {} beyond the first ({})",
                counted(report.duplicate_deliveries, "delivery", "deliveries"),
                examples("value", std::mem::take(&mut duplicate_delivery_values)),
            ),
            Figure::DuplicateEffects => format!(
                "{mode} promises no duplicate effect: {} beyond the first ({})",
                counted(report.duplicate_effects, "effect", "effects"),
                examples("value", std::mem::take(&mut duplicate_effect_values)),
            ),
            Figure::Unexpected => format!(
                "every mode delivers only what was enqueued: {} delivered, processed or \
                 dead-lettered that no enqueue carried ({})",
                counted(report.unexpected, "value was", "values were"),
                examples("value", std::mem::take(&mut unexpected)),
            ),
            Figure::StaleAcksAccepted => format!(
                "every mode fences acks (Invariant 3): {} accepted for a lease no longer live ({})",
                counted(report.stale_acks_accepted, "ack was", "acks were"),
                examples("job", std::mem::take(&mut stale_acks)),
            ),
            Figure::StaleNacksAccepted => format!(
                "every mode fences nacks, releases and fails (Invariant 3): {} accepted for a \
                 lease no longer live ({})",
                counted(report.stale_nacks_accepted, "nack, release or fail was", "nacks, releases or fails were"),
                examples("job", std::mem::take(&mut stale_nacks)),
            ),
            Figure::StaleExtendsAccepted => format!(
                "every mode fences extends (Invariant 3): {} accepted for a lease no longer live ({})",
                counted(report.stale_extends_accepted, "extend was", "extends were"),
                examples("job", std::mem::take(&mut stale_extends)),
            ),
            Figure::OverlappingLeases => format!(
                "every mode holds at most one live lease per job (Invariant 2): {} live at once \
                 ({})",
                counted(report.overlapping_leases, "pair of leases of one job was", "pairs of leases of one job were"),
                examples("job", std::mem::take(&mut overlap_jobs)),
            ),
            Figure::DeadMoreThanOnce => format!(
                "every mode dead-letters a job exactly once (Invariants 4 and 5): {} listed \
                 twice, acked, or handed out beyond the attempt errors on record ({})",
                counted(report.dead_more_than_once, "dead job was", "dead jobs were"),
                examples("job", std::mem::take(&mut dead_twice)),
            ),
            Figure::OrderViolations => format!(
                "an ordered queue runs each key's jobs in enqueue order (Invariant 9): {} handed \
                 out before an earlier job of its key had left ({})",
                counted(report.order_violations, "delivery was", "deliveries were"),
                examples("job", std::mem::take(&mut order_jobs)),
            ),
            Figure::ConcurrentKeyDeliveries => format!(
                "an ordered queue leases one job of a key at a time (Invariant 9): {} live at \
                 once ({})",
                counted(
                    report.concurrent_key_deliveries,
                    "pair of leases of different jobs of one key was",
                    "pairs of leases of different jobs of one key were"
                ),
                examples("key", std::mem::take(&mut concurrent_keys)),
            ),
            Figure::Enqueued
            | Figure::EnqueueUnknown
            | Figure::Recovered
            | Figure::Delivered
            | Figure::Processed
            | Figure::Dead
            | Figure::DrainMs => continue,
        };
        violations.push(sentence);
    }
    if !untraceable.is_empty() {
        violations.push(format!(
            "{} accepted for a lease that no recorded lease handed out ({}): the history is \
             incomplete or the target accepted a token it never issued",
            counted(untraceable.len() as u64, "settle or extend was", "settles or extends were"),
            examples("job", untraceable),
        ));
    }
    if let Err(error) = history.validate() {
        violations.push(format!("{error}; the figures above cannot be trusted"));
    }
    report.violations = violations;
    report
}

/// One operation of the history: its invoke and, if any, its completion.
struct Operation<'h> {
    /// Index of its (first) invoke in `History::events`.
    invoke_index: usize,
    invoked_at_ms: i64,
    request: &'h Request,
    completion: Option<Completion<'h>>,
}

#[derive(Clone, Copy)]
struct Completion<'h> {
    at_ms: i64,
    outcome: Outcome,
    response: &'h Response,
}

/// Pairs every op number with its first invoke and its first completion after it.
fn index_operations(events: &[Event]) -> HashMap<u64, Operation<'_>> {
    let mut ops: HashMap<u64, Operation<'_>> = HashMap::with_capacity(events.len() / 2 + 1);
    for (index, event) in events.iter().enumerate() {
        match event {
            Event::Invoke { op, at_ms, request, .. } => {
                ops.entry(*op).or_insert(Operation {
                    invoke_index: index,
                    invoked_at_ms: *at_ms,
                    request,
                    completion: None,
                });
            }
            Event::Complete { op, at_ms, outcome, response } => {
                if let Some(operation) = ops.get_mut(op) {
                    if operation.completion.is_none() {
                        operation.completion = Some(Completion { at_ms: *at_ms, outcome: *outcome, response });
                    }
                }
            }
        }
    }
    ops
}

/// One job handed out by a lease completed ok.
struct Delivery<'h> {
    job_id: u64,
    value: u64,
    token: &'h str,
    attempt: u32,
    /// Target clock.
    expires_at_ms: i64,
    /// The lease's invoke: the earliest moment the store can have handed it out.
    invoked_at_ms: i64,
    /// The lease's completion: the latest moment the store can have handed it out.
    completed_at_ms: i64,
    /// The earliest invoke of a settle of this lease that may have taken effect (ok, unknown,
    /// never completed); `i64::MAX` when none.
    settle_from_ms: i64,
    /// The earliest completion of a settle of this lease with outcome ok; `i64::MAX` when none.
    settled_ok_by_ms: i64,
    /// The latest expiry the target returned for it (the lease's, or an ok extend's).
    known_expiry_ms: i64,
    /// Extends that may have taken effect: (invoke, the latest expiry it may have set).
    raises: Vec<(i64, i64)>,
    /// A release of it may have taken effect (its attempt then did not count).
    maybe_released: bool,
}

impl Delivery<'_> {
    /// Until when (verify clock, exclusive) the lease was definitely live, given that it was.
    fn live_until_ms(&self) -> i64 {
        self.known_expiry_ms.saturating_sub(CLOCK_MARGIN_MS).min(self.settle_from_ms)
    }

    /// The latest expiry the lease may have had at `at_ms` (see the module docs).
    fn possible_expiry_at(&self, at_ms: i64) -> i64 {
        self.raises.iter().filter(|(invoked, _)| *invoked < at_ms).map(|(_, to)| *to).fold(self.expires_at_ms, i64::max)
    }

    /// Whether `self` is definitely a later delivery of the same job than `other`.
    fn is_later_than(&self, other: &Delivery<'_>) -> bool {
        self.attempt > other.attempt || (self.attempt == other.attempt && self.invoked_at_ms > other.completed_at_ms)
    }
}

/// What a settle or extend does to its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettleKind {
    /// Ends it; the job is gone.
    Ack,
    /// Ends it (a nack or a fail).
    Nack,
    /// Ends it without counting the attempt.
    Release,
    /// Moves its expiry; it does not end it.
    Extend {
        /// The visibility timeout asked for.
        visibility_timeout_ms: u64,
    },
}

struct Settle<'h> {
    kind: SettleKind,
    job_id: u64,
    token: &'h str,
    invoked_at_ms: i64,
    /// `None` when the settle never completed.
    outcome: Option<Outcome>,
    completed_at_ms: Option<i64>,
    /// The expiry an ok extend returned.
    extended_to_ms: Option<i64>,
}

/// What the dead-letter rule needs to know of one job's deliveries.
struct JobSummary {
    deliveries: u32,
    attempt_max: u32,
    /// A settle with outcome ok, not stale, acked one of its leases.
    acked: bool,
}

/// Counts the pairs of `run`'s deliveries (all of one job) definitely live at one moment: sorted
/// by completion, each delivery overlaps the earlier ones still live at its completion, provided
/// it is itself live then. A min-heap of the earlier ones' ends keeps this O(n log n).
fn overlapping_pairs(deliveries: &[Delivery<'_>], run: &[usize]) -> u64 {
    if run.len() < 2 {
        return 0;
    }
    let mut order: Vec<usize> = run.to_vec();
    order.sort_unstable_by_key(|&i| deliveries[i].completed_at_ms);
    let mut live_ends: BinaryHeap<Reverse<i64>> = BinaryHeap::new();
    let mut pairs = 0u64;
    for &i in &order {
        let delivery = &deliveries[i];
        let at_ms = delivery.completed_at_ms;
        while live_ends.peek().is_some_and(|Reverse(end)| *end <= at_ms) {
            live_ends.pop();
        }
        let end = delivery.live_until_ms();
        if at_ms < end {
            pairs += live_ends.len() as u64;
            live_ends.push(Reverse(end));
        }
    }
    pairs
}

/// What the ordering rules found.
#[derive(Default)]
struct OrderFigures {
    /// Job ids of the deliveries handed out before an earlier job of their key had left.
    violations: Vec<u64>,
    /// Pairs of deliveries of different jobs of one key live at once.
    concurrent_pairs: u64,
    /// The keys (`value mod keys`) of those pairs.
    concurrent_keys: Vec<u64>,
}

/// The job ids in the dead letters.
fn dead_jobs(history: &History) -> HashSet<u64> {
    history.dead.iter().map(|d| d.job_id).collect()
}

/// The ordering rules of the module docs, over the run's deliveries and settles.
fn order_figures(
    mode: DeliveryMode,
    keys: u64,
    deliveries: &[Delivery<'_>],
    settles: &[Settle<'_>],
    settle_lease: &[Option<usize>],
    dead: &HashSet<u64>,
    ops: &HashMap<u64, Operation<'_>>,
) -> OrderFigures {
    let keys = keys.max(1);
    // Every job the history knows, with its value: from deliveries and from ok enqueues.
    let mut value_of: HashMap<u64, u64> = HashMap::new();
    for delivery in deliveries {
        value_of.insert(delivery.job_id, delivery.value);
    }
    for operation in ops.values() {
        if let (Request::Enqueue { value, .. }, Some(done)) = (operation.request, operation.completion) {
            if let (Outcome::Ok, Response::Enqueued { job_id, .. }) = (done.outcome, done.response) {
                value_of.entry(*job_id).or_insert(*value);
            }
        }
    }
    // The earliest moment each job may have left its key (`i64::MAX`: never).
    let mut left_from: HashMap<u64, i64> = value_of.keys().map(|job| (*job, i64::MAX)).collect();
    if mode == DeliveryMode::AtMostOnce {
        for delivery in deliveries {
            let at = left_from.entry(delivery.job_id).or_insert(i64::MAX);
            *at = (*at).min(delivery.invoked_at_ms);
        }
    } else {
        for (settle, lease) in settles.iter().zip(settle_lease) {
            if settle.kind != SettleKind::Ack || settle.outcome == Some(Outcome::Fail) || lease.is_none() {
                continue;
            }
            let at = left_from.entry(settle.job_id).or_insert(i64::MAX);
            *at = (*at).min(settle.invoked_at_ms);
        }
    }
    // Per key, jobs in id order: a delivery must complete after every earlier job may have left.
    let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for (job, value) in &value_of {
        by_key.entry(value % keys).or_default().push(*job);
    }
    let mut must_follow: HashMap<u64, i64> = HashMap::new(); // job -> latest "left" of earlier jobs
    for jobs in by_key.values_mut() {
        jobs.sort_unstable();
        let mut latest = i64::MIN;
        for job in jobs.iter() {
            must_follow.insert(*job, latest);
            if !dead.contains(job) {
                latest = latest.max(left_from.get(job).copied().unwrap_or(i64::MAX));
            }
        }
    }
    let violations: Vec<u64> = deliveries
        .iter()
        .filter(|d| must_follow.get(&d.job_id).is_some_and(|after| d.completed_at_ms < *after))
        .map(|d| d.job_id)
        .collect();

    // Deliveries of different jobs of one key live at once (not a question in at_most_once).
    let mut key_runs: HashMap<u64, Vec<usize>> = HashMap::new();
    if mode != DeliveryMode::AtMostOnce {
        for (i, delivery) in deliveries.iter().enumerate() {
            key_runs.entry(delivery.value % keys).or_default().push(i);
        }
    }
    let mut concurrent_pairs = 0;
    let mut concurrent_keys = Vec::new();
    for (key, run) in &key_runs {
        let mut per_job: HashMap<u64, Vec<usize>> = HashMap::new();
        for &i in run {
            per_job.entry(deliveries[i].job_id).or_default().push(i);
        }
        let within_jobs: u64 = per_job.values().map(|job_run| overlapping_pairs(deliveries, job_run)).sum();
        let pairs = overlapping_pairs(deliveries, run).saturating_sub(within_jobs);
        if pairs > 0 {
            concurrent_pairs += pairs;
            concurrent_keys.push(*key);
        }
    }
    OrderFigures { violations, concurrent_pairs, concurrent_keys }
}

/// Sums the counts beyond the first, and lists the keys counted more than once.
fn beyond_first(counts: &HashMap<u64, u64>) -> (u64, Vec<u64>) {
    let mut total = 0;
    let mut keys = Vec::new();
    for (key, count) in counts {
        if *count > 1 {
            total += count - 1;
            keys.push(*key);
        }
    }
    (total, keys)
}

/// "1 ack was" / "3 acks were": `count` and the words that agree with it.
fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// "values 3, 17, 204" (the smallest few, then "...").
fn examples(noun: &str, mut keys: Vec<u64>) -> String {
    keys.sort_unstable();
    keys.dedup();
    let shown: Vec<String> = keys.iter().take(EXAMPLES_MAX).map(u64::to_string).collect();
    let more = if keys.len() > EXAMPLES_MAX { ", ..." } else { "" };
    let plural = if keys.len() == 1 { "" } else { "s" };
    let noun = match noun {
        "job" => "job id",
        "key" => "key number",
        other => other,
    };
    format!("{noun}{plural} {}{more}", shown.join(", "))
}
