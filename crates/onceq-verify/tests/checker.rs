//! Proves that the checker finds exactly what a history holds: hand-built histories with one
//! known loss, duplicate effect, stale ack (each form), overlapping lease, unexpected value or
//! broken dead letter are reported with exactly those figures and violations, and the benign
//! cases (redelivery after expiry, an unknown enqueue that took effect, a late ack the target
//! refused, the duplicates a mode permits) are not; extends move a lease's expiry (and an accepted
//! stale one is reported) and releases give their attempt back. A property test then runs a simulated
//! correct queue under random faults: its histories never fail, and one injected fault fails
//! them in exactly one way. Also: JSON-lines round trips, validation, and the rendered table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};

use onceq_core::DeliveryMode;
use onceq_verify::checker::{check, Figure, Report};
use onceq_verify::history::{
    DeadLetter, Effect, Event, History, HistoryError, Lease, Outcome, Request, Response, CLOCK_MARGIN_MS,
};
use onceq_verify::report::{promises_kept, render_json, render_table};
use proptest::prelude::*;

const ALO: DeliveryMode = DeliveryMode::AtLeastOnce;
const AMO: DeliveryMode = DeliveryMode::AtMostOnce;
const EO: DeliveryMode = DeliveryMode::EffectivelyOnce;

/// Builds histories op by op.
struct Builder {
    history: History,
    next_op: u64,
}

impl Builder {
    fn new(mode: DeliveryMode) -> Self {
        Builder {
            history: History {
                mode,
                events: Vec::new(),
                effects: Vec::new(),
                dead: Vec::new(),
                last_fault_at_ms: None,
                drained_at_ms: 0,
                ordered_keys: None,
            },
            next_op: 1,
        }
    }

    /// An ordered run over `keys` keys (a job's key is its value mod `keys`).
    fn ordered(mut self, keys: u64) -> Self {
        self.history.ordered_keys = Some(keys);
        self
    }

    /// One operation: invoked at `invoke_at`, completed at `complete` (time, outcome, response)
    /// or never.
    fn op(&mut self, invoke_at: i64, request: Request, complete: Option<(i64, Outcome, Response)>) {
        let op = self.next_op;
        self.next_op += 1;
        self.history.events.push(Event::Invoke { op, process: 0, at_ms: invoke_at, request });
        if let Some((at_ms, outcome, response)) = complete {
            self.history.events.push(Event::Complete { op, at_ms, outcome, response });
        }
    }

    fn enqueue(&mut self, value: u64, at_ms: i64, outcome: Outcome) {
        let response = if outcome == Outcome::Ok {
            Response::Enqueued { job_id: value, duplicate: false }
        } else {
            Response::None
        };
        self.op(
            at_ms,
            Request::Enqueue { value, dedup_id: Some(value.to_string()) },
            Some((at_ms + 1, outcome, response)),
        );
    }

    fn enqueue_uncompleted(&mut self, value: u64, at_ms: i64) {
        self.op(at_ms, Request::Enqueue { value, dedup_id: None }, None);
    }

    /// A lease invoked at `invoke_at`, completed ok at `complete_at` with `jobs`.
    fn lease(&mut self, invoke_at: i64, complete_at: i64, jobs: Vec<Lease>) {
        self.op(
            invoke_at,
            Request::Lease { max: 10, visibility_timeout_ms: 1000 },
            Some((complete_at, Outcome::Ok, Response::Leased { jobs })),
        );
    }

    fn ack(&mut self, lease: &Lease, invoke_at: i64, complete: Option<(i64, Outcome)>) {
        self.op(
            invoke_at,
            Request::Ack { job_id: lease.job_id, lease_token: lease.lease_token.clone() },
            complete.map(|(at, outcome)| (at, outcome, Response::None)),
        );
    }

    fn nack(&mut self, lease: &Lease, invoke_at: i64, complete: Option<(i64, Outcome)>) {
        self.op(
            invoke_at,
            Request::Nack { job_id: lease.job_id, lease_token: lease.lease_token.clone() },
            complete.map(|(at, outcome)| (at, outcome, Response::None)),
        );
    }

    fn release(&mut self, lease: &Lease, invoke_at: i64, complete: Option<(i64, Outcome)>) {
        self.op(
            invoke_at,
            Request::Release { job_id: lease.job_id, lease_token: lease.lease_token.clone() },
            complete.map(|(at, outcome)| (at, outcome, Response::None)),
        );
    }

    /// An extend asking for `visibility_timeout_ms`; an ok one returns `extended_to`.
    fn extend(
        &mut self,
        lease: &Lease,
        invoke_at: i64,
        visibility_timeout_ms: u64,
        complete: Option<(i64, Outcome)>,
        extended_to: i64,
    ) {
        let request =
            Request::Extend { job_id: lease.job_id, lease_token: lease.lease_token.clone(), visibility_timeout_ms };
        let complete = complete.map(|(at, outcome)| {
            let response = match outcome {
                Outcome::Ok => Response::Extended { lease_expires_at_ms: extended_to },
                _ => Response::None,
            };
            (at, outcome, response)
        });
        self.op(invoke_at, request, complete);
    }

    fn effect(&mut self, lease: &Lease, at_ms: i64) {
        self.history.effects.push(Effect {
            value: lease.value,
            job_id: lease.job_id,
            lease_token: lease.lease_token.clone(),
            at_ms,
        });
    }

    /// Lease, effect, ack: the happy path of one delivery, from `at_ms` on.
    fn process(&mut self, lease: &Lease, at_ms: i64) {
        self.lease(at_ms, at_ms + 1, vec![lease.clone()]);
        self.effect(lease, at_ms + 2);
        self.ack(lease, at_ms + 3, Some((at_ms + 4, Outcome::Ok)));
    }

    fn dead(&mut self, job_id: u64, value: u64, errors: u32) {
        self.history.dead.push(DeadLetter { job_id, value, errors });
    }

    fn done(self) -> History {
        self.history
    }
}

/// A lease of job `job_id` (whose value is `job_id + 1000`), attempt `attempt`, expiring at
/// `expires_at_ms`; its token names both.
fn lease(job_id: u64, attempt: u32, expires_at_ms: i64) -> Lease {
    Lease {
        job_id,
        value: job_id + 1000,
        lease_token: format!("t{job_id}a{attempt}"),
        attempt,
        lease_expires_at_ms: expires_at_ms,
    }
}

/// The report of a history in which nothing happened.
fn empty(mode: DeliveryMode) -> Report {
    Report {
        mode,
        enqueued: 0,
        enqueue_unknown: 0,
        processed: 0,
        lost: 0,
        duplicate_deliveries: 0,
        duplicate_effects: 0,
        unexpected: 0,
        stale_acks_accepted: 0,
        overlapping_leases: 0,
        dead: 0,
        dead_more_than_once: 0,
        drain_ms: None,
        violations: Vec::new(),
        delivered: 0,
        recovered: 0,
        stale_nacks_accepted: 0,
        stale_extends_accepted: 0,
        order_violations: 0,
        concurrent_key_deliveries: 0,
    }
}

/// Jobs 1..=n enqueued ok (value = job id + 1000) and processed once each, 100 ms apart.
fn processed_jobs(builder: &mut Builder, n: u64) {
    for job in 1..=n {
        let at = job as i64 * 100;
        builder.enqueue(job + 1000, at, Outcome::Ok);
        builder.process(&lease(job, 1, at + 1000), at + 10);
    }
}

#[test]
fn a_clean_history_keeps_every_promise() {
    for mode in [AMO, ALO, EO] {
        let mut builder = Builder::new(mode);
        processed_jobs(&mut builder, 3);
        let report = check(&builder.done());
        assert_eq!(report, Report { enqueued: 3, processed: 3, delivered: 3, ..empty(mode) });
        assert!(report.promise_kept());
    }
}

#[test]
fn a_known_loss_breaks_at_least_once_and_effectively_once_only() {
    for mode in [AMO, ALO, EO] {
        let mut builder = Builder::new(mode);
        processed_jobs(&mut builder, 2);
        builder.enqueue(1017, 1000, Outcome::Ok); // never delivered
        let report = check(&builder.done());
        let violations = if mode == AMO {
            vec![]
        } else {
            vec![format!("{} promises no loss: 1 acknowledged enqueue was never processed (value 1017)", mode.as_str())]
        };
        assert_eq!(report, Report { enqueued: 3, processed: 2, delivered: 2, lost: 1, violations, ..empty(mode) });
    }
}

#[test]
fn a_delivered_but_unprocessed_job_is_lost_and_a_dead_one_is_not() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    builder.enqueue(1002, 0, Outcome::Ok);
    // Job 1: delivered, the worker crashed, the store lost it.
    builder.lease(10, 11, vec![lease(1, 1, 1011)]);
    // Job 2: delivered three times, each lease expired; dead with three errors.
    builder.lease(20, 21, vec![lease(2, 1, 1021)]);
    builder.lease(1021, 1022, vec![lease(2, 2, 2022)]);
    builder.lease(2022, 2023, vec![lease(2, 3, 3023)]);
    builder.dead(2, 1002, 3);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 2,
            delivered: 2,
            duplicate_deliveries: 2,
            lost: 1,
            dead: 1,
            violations: vec!["at_least_once promises no loss: 1 acknowledged enqueue was never processed \
                 (value 1001)"
                .to_owned()],
            ..empty(ALO)
        }
    );
}

/// Job 1 is delivered, its effect applied, the worker crashes before the ack; the lease expires
/// and the redelivery applies the effect again and acks.
fn duplicate_effect_history(mode: DeliveryMode) -> History {
    let mut builder = Builder::new(mode);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    builder.process(&lease(1, 2, 2100), 1100);
    builder.done()
}

#[test]
fn a_known_duplicate_effect_breaks_effectively_once() {
    let report = check(&duplicate_effect_history(EO));
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            duplicate_deliveries: 1,
            duplicate_effects: 1,
            violations: vec!["effectively_once promises no duplicate effect: 1 effect beyond the first \
                 (value 1001)"
                .to_owned()],
            ..empty(EO)
        }
    );
}

#[test]
fn at_least_once_reports_duplicate_effects_without_a_violation() {
    let report = check(&duplicate_effect_history(ALO));
    assert_eq!(
        report,
        Report { enqueued: 1, processed: 1, delivered: 1, duplicate_deliveries: 1, duplicate_effects: 1, ..empty(ALO) }
    );
    assert!(report.promise_kept());
}

#[test]
fn at_most_once_breaks_its_promise_on_a_duplicate_delivery() {
    // The store handed job 1 out twice although leasing deletes it in at_most_once.
    let mut builder = Builder::new(AMO);
    builder.enqueue(1001, 0, Outcome::Ok);
    builder.process(&lease(1, 1, 1010), 10);
    builder.lease(2000, 2001, vec![lease(1, 2, 3001)]);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            duplicate_deliveries: 1,
            violations: vec!["at_most_once promises no duplicate delivery: 1 delivery beyond the first \
                 (value 1001)"
                .to_owned()],
            ..empty(AMO)
        }
    );
}

#[test]
fn a_redelivery_after_expiry_is_clean() {
    // Job 1's first worker stalled; its lease expired at 1010; the redelivery at 1300 is
    // processed; the stalled worker's late ack (1500, after the margin) was refused.
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.process(&lease(1, 2, 2300), 1300);
    builder.ack(&first, 1500, Some((1501, Outcome::Fail)));
    // Job 2: a crashed lease, then a nack, then the third delivery acked.
    builder.enqueue(1002, 0, Outcome::Ok);
    builder.lease(20, 21, vec![lease(2, 1, 1021)]);
    let second = lease(2, 2, 2030);
    builder.lease(1029, 1030, vec![second.clone()]);
    builder.nack(&second, 1040, Some((1041, Outcome::Ok)));
    builder.process(&lease(2, 3, 2050), 1045);
    builder.history.last_fault_at_ms = Some(1500);
    builder.history.drained_at_ms = 2000;
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report { enqueued: 2, processed: 2, delivered: 2, duplicate_deliveries: 3, drain_ms: Some(500), ..empty(ALO) }
    );
}

#[test]
fn unknown_enqueues_that_took_effect_are_recovered_not_unexpected() {
    let mut builder = Builder::new(EO);
    builder.enqueue(1001, 0, Outcome::Unknown); // took effect
    builder.process(&lease(1, 1, 1010), 10);
    builder.enqueue_uncompleted(1002, 0); // took effect, the producer crashed
    builder.process(&lease(2, 1, 1020), 20);
    builder.enqueue(1003, 0, Outcome::Unknown); // did not take effect: not lost
    builder.enqueue(1004, 0, Outcome::Unknown); // retried, and the retry was acknowledged
    builder.enqueue(1004, 5, Outcome::Ok);
    builder.process(&lease(4, 1, 1030), 30);
    builder.enqueue(1005, 0, Outcome::Fail); // refused: in no figure
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report { enqueued: 1, enqueue_unknown: 3, recovered: 2, processed: 3, delivered: 3, ..empty(EO) }
    );
}

#[test]
fn an_unexpected_value_breaks_every_mode() {
    for mode in [AMO, ALO, EO] {
        let mut builder = Builder::new(mode);
        processed_jobs(&mut builder, 1);
        builder.effect(&lease(99, 1, 0), 500); // value 1099: never enqueued
        let report = check(&builder.done());
        assert_eq!(
            report,
            Report {
                enqueued: 1,
                processed: 2,
                delivered: 1,
                unexpected: 1,
                violations: vec!["every mode delivers only what was enqueued: 1 value was delivered, \
                     processed or dead-lettered that no enqueue carried (value 1099)"
                    .to_owned()],
                ..empty(mode)
            }
        );
    }
}

const ONE_STALE_ACK: &str =
    "every mode fences acks (Invariant 3): 1 ack was accepted for a lease no longer live (job id 1)";

#[test]
fn an_ack_accepted_after_expiry_is_stale() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    builder.ack(&first, 1010 + CLOCK_MARGIN_MS + 1, Some((1300, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            stale_acks_accepted: 1,
            violations: vec![ONE_STALE_ACK.to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn an_ack_accepted_within_the_clock_margin_gets_the_benefit_of_the_doubt() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    builder.ack(&first, 1010 + CLOCK_MARGIN_MS, Some((1300, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(report.stale_acks_accepted, 0);
    assert_eq!(report.violations, Vec::<String>::new());
}

#[test]
fn an_ack_accepted_after_the_job_was_leased_again_is_stale() {
    // The store handed job 1 out again (attempt 2, completed at 1030) before the first worker's
    // ack was invoked (1040, still within the first lease's margin): its token was not current.
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    let second = lease(1, 2, 2030);
    builder.lease(1020, 1030, vec![second.clone()]);
    builder.ack(&first, 1040, Some((1041, Outcome::Ok)));
    builder.ack(&second, 1050, Some((1051, Outcome::Fail))); // the job is gone
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            duplicate_deliveries: 1,
            stale_acks_accepted: 1,
            violations: vec![ONE_STALE_ACK.to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn an_ack_invoked_while_the_next_lease_was_in_flight_is_not_stale() {
    // The second lease completed at 1041, after the ack's invoke (1040): the store may have
    // judged the ack first. Not definite, not counted.
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    builder.lease(1020, 1041, vec![lease(1, 2, 2030)]);
    builder.ack(&first, 1040, Some((1042, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(report.stale_acks_accepted, 0);
    assert!(report.promise_kept(), "{:?}", report.violations);
}

#[test]
fn an_ack_accepted_after_the_lease_was_settled_is_stale() {
    // The lease was nacked (ok) before the ack was invoked; then, on job 2, acked twice.
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 5000);
    builder.lease(9, 10, vec![first.clone()]);
    builder.nack(&first, 20, Some((21, Outcome::Ok)));
    builder.ack(&first, 30, Some((31, Outcome::Ok)));
    builder.process(&lease(1, 2, 5100), 100);
    builder.enqueue(1002, 0, Outcome::Ok);
    let other = lease(2, 1, 5000);
    builder.process(&other, 200);
    builder.ack(&other, 300, Some((301, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 2,
            processed: 2,
            delivered: 2,
            duplicate_deliveries: 1,
            stale_acks_accepted: 2,
            violations: vec!["every mode fences acks (Invariant 3): 2 acks were accepted for a lease no \
                 longer live (job ids 1, 2)"
                .to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn a_nack_accepted_after_expiry_is_stale() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.nack(&first, 2000, Some((2001, Outcome::Ok)));
    builder.process(&lease(1, 2, 3100), 2100);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            duplicate_deliveries: 1,
            stale_nacks_accepted: 1,
            stale_extends_accepted: 0,
            violations: vec!["every mode fences nacks, releases and fails (Invariant 3): 1 nack, release \
                 or fail was accepted for a lease no longer live (job id 1)"
                .to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn a_late_ack_refused_is_not_counted() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    builder.ack(&first, 5000, Some((5001, Outcome::Fail)));
    builder.ack(&first, 5100, Some((5101, Outcome::Unknown)));
    builder.ack(&first, 5200, None);
    builder.process(&lease(1, 2, 7000), 6000);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report { enqueued: 1, processed: 1, delivered: 1, duplicate_deliveries: 1, duplicate_effects: 1, ..empty(ALO) }
    );
}

#[test]
fn overlapping_live_leases_are_counted_in_pairs() {
    // Job 1 handed out three times, each while the others were live: three pairs.
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    builder.lease(9, 10, vec![lease(1, 1, 10_000)]);
    builder.lease(100, 200, vec![lease(1, 2, 10_200)]);
    builder.process(&lease(1, 3, 10_300), 299);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            duplicate_deliveries: 2,
            overlapping_leases: 3,
            violations: vec!["every mode holds at most one live lease per job (Invariant 2): 3 pairs of \
                 leases of one job were live at once (job id 1)"
                .to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn leases_that_may_have_ended_do_not_overlap() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    // Ended by an ack of unknown outcome invoked (150) before the next lease completed (200).
    let first = lease(1, 1, 10_000);
    builder.lease(9, 10, vec![first.clone()]);
    builder.ack(&first, 150, Some((160, Outcome::Unknown)));
    // Expires at 500 by the target's clock, which may be up to the margin ahead of or behind
    // the verify clock: a lease completed at 300 may have been handed out after it expired.
    builder.lease(199, 200, vec![lease(1, 2, 500)]);
    // A long poll: invoked (100) before the previous lease was even handed out, completed at 300.
    let third = lease(1, 3, 5000);
    builder.lease(100, 300, vec![third.clone()]);
    builder.effect(&third, 310);
    builder.ack(&third, 320, Some((321, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(report.overlapping_leases, 0);
    assert_eq!(report.stale_acks_accepted, 0);
    assert!(report.promise_kept(), "{:?}", report.violations);
}

#[test]
fn dead_letters_contradicting_one_death_are_counted() {
    let mut builder = Builder::new(ALO);
    for job in 1..=4 {
        builder.enqueue(job + 1000, 0, Outcome::Ok);
    }
    // Job 1: three leases, three errors: dead once. Clean.
    builder.lease(10, 11, vec![lease(1, 1, 1011)]);
    builder.lease(1011, 1012, vec![lease(1, 2, 2012)]);
    builder.lease(2012, 2013, vec![lease(1, 3, 3013)]);
    builder.dead(1, 1001, 3);
    // Job 2: handed out a fourth time after three errors killed it.
    builder.lease(20, 21, vec![lease(2, 1, 1021)]);
    builder.lease(1021, 1022, vec![lease(2, 2, 2022)]);
    builder.lease(2022, 2023, vec![lease(2, 3, 3023)]);
    builder.lease(3023, 3024, vec![lease(2, 4, 4024)]);
    builder.dead(2, 1002, 3);
    // Job 3: listed twice.
    builder.lease(30, 31, vec![lease(3, 1, 1031)]);
    builder.dead(3, 1003, 1);
    builder.dead(3, 1003, 1);
    // Job 4: acked, yet dead.
    let acked = lease(4, 1, 1040);
    builder.lease(39, 40, vec![acked.clone()]);
    builder.ack(&acked, 50, Some((51, Outcome::Ok)));
    builder.dead(4, 1004, 1);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 4,
            delivered: 4,
            duplicate_deliveries: 5,
            dead: 4,
            dead_more_than_once: 3,
            violations: vec!["every mode dead-letters a job exactly once (Invariants 4 and 5): 3 dead jobs \
                 were listed twice, acked, or handed out beyond the attempt errors on record \
                 (job ids 2, 3, 4)"
                .to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn an_accepted_ack_of_a_token_never_handed_out_fails_the_report() {
    let mut builder = Builder::new(ALO);
    processed_jobs(&mut builder, 1);
    builder.ack(&lease(1, 7, 0), 900, Some((901, Outcome::Ok)));
    builder.ack(&lease(1, 8, 0), 900, Some((901, Outcome::Fail))); // refused: fine
    let report = check(&builder.done());
    assert_eq!(
        report.violations,
        vec!["1 settle or extend was accepted for a lease that no recorded lease handed out (job id 1): \
             the history is incomplete or the target accepted a token it never issued"
            .to_owned()]
    );
}

#[test]
fn a_malformed_history_fails_validation_and_the_report() {
    let mut builder = Builder::new(ALO);
    processed_jobs(&mut builder, 1);
    let mut history = builder.done();
    // A completion with no invoke, a second completion, and an ok lease without jobs.
    history.events.push(Event::Complete { op: 77, at_ms: 5, outcome: Outcome::Ok, response: Response::None });
    history.events.push(history.events[1].clone());
    history.events.push(Event::Invoke {
        op: 78,
        process: 1,
        at_ms: 10,
        request: Request::Lease { max: 1, visibility_timeout_ms: 100 },
    });
    history.events.push(Event::Complete { op: 78, at_ms: 9, outcome: Outcome::Ok, response: Response::None });
    match history.validate() {
        Err(HistoryError::Malformed { count, problems }) => {
            assert_eq!(count, 4);
            assert_eq!(
                problems,
                vec![
                    "op 77 completes before (or without) its invoke".to_owned(),
                    "op 1 completes more than once".to_owned(),
                    "op 78 completes at 9 ms, before its invoke at 10 ms (record times from a \
                     monotonic clock)"
                        .to_owned(),
                    "op 78 completes Ok with a response that does not fit its request (None)".to_owned(),
                ]
            );
        }
        other => panic!("expected a malformed history, got {other:?}"),
    }
    let report = check(&history);
    assert_eq!(report.violations.len(), 1);
    assert!(
        report.violations[0].starts_with("the history is malformed: 4 problems, the first: op 77"),
        "{}",
        report.violations[0]
    );
}

#[test]
fn a_history_round_trips_through_json_lines() {
    let mut builder = Builder::new(EO);
    processed_jobs(&mut builder, 2);
    builder.enqueue_uncompleted(1005, 7);
    builder.dead(9, 1009, 3);
    builder.history.last_fault_at_ms = Some(123);
    builder.history.drained_at_ms = 456;
    let history = builder.done();
    let mut out = Vec::new();
    history.write_jsonl(&mut out).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(text.lines().count(), 1 + history.events.len() + history.effects.len() + history.dead.len());
    assert!(
        text.starts_with(r#"{"record":"header","mode":"effectively_once","last_fault_at_ms":123,"drained_at_ms":456}"#)
    );
    let read = History::read_jsonl(out.as_slice()).unwrap();
    assert_eq!(read, history);

    // The header may come last (a streaming recorder writes it at the end); one only.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.rotate_left(1);
    let moved = lines.join("\n");
    assert_eq!(History::read_jsonl(moved.as_bytes()).unwrap(), history);
    let doubled = format!("{text}{}\n", text.lines().next().unwrap());
    assert!(matches!(
        History::read_jsonl(doubled.as_bytes()),
        Err(HistoryError::HeaderRepeated { line }) if line == lines.len() + 1
    ));
    assert!(matches!(History::read_jsonl(&b"\n"[..]), Err(HistoryError::HeaderMissing)));
    assert!(matches!(History::read_jsonl(&b"{\"record\":\"nope\"}\n"[..]), Err(HistoryError::Json { line: 1, .. })));
}

#[test]
fn the_table_shows_every_figure_and_a_verdict_per_mode() {
    let mut clean = Builder::new(ALO);
    processed_jobs(&mut clean, 2);
    clean.history.last_fault_at_ms = Some(100);
    clean.history.drained_at_ms = 350;
    let mut lossy = Builder::new(EO);
    processed_jobs(&mut lossy, 1);
    lossy.enqueue(1017, 1000, Outcome::Ok);
    let reports = vec![check(&clean.done()), check(&lossy.done())];
    let table = render_table(&reports);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["figure", "at_least_once", "effectively_once", "total"]
    );
    for (row, figure) in Figure::ALL.iter().enumerate() {
        let cells: Vec<&str> = lines[row + 1].split_whitespace().collect();
        assert_eq!(cells[0], figure.name(), "row {row}: {}", lines[row + 1]);
    }
    let row = |name: &str| -> Vec<String> {
        lines
            .iter()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("enqueued"), ["2", "2", "4"]);
    assert_eq!(row("lost"), ["0", "1!", "1"]);
    assert_eq!(row("drain_ms"), ["250", "-", "250"]);
    assert!(table.contains("! breaks the mode's promise\n"));
    assert!(table.ends_with(
        "PASS at_least_once\nFAIL effectively_once: effectively_once promises no loss: 1 \
         acknowledged enqueue was never processed (value 1017)\n"
    ));
    assert!(!promises_kept(&reports));
    assert!(promises_kept(&reports[..1]));

    let json: serde_json::Value = serde_json::from_str(&render_json(&reports).unwrap()).unwrap();
    assert_eq!(json["promises_kept"], false);
    assert_eq!(json["reports"][1]["mode"], "effectively_once");
    assert_eq!(json["reports"][1]["lost"], 1);
    assert_eq!(json["reports"][0]["drain_ms"], 250);
    let back: Vec<Report> = serde_json::from_value(json["reports"].clone()).unwrap();
    assert_eq!(back, reports);
}

// ---------------------------------------------------------------------------------------------
// A simulated correct queue, for the property tests.

/// What a worker does with a delivery.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Ack,
    /// The ack's response is dropped: outcome unknown.
    AckDropped,
    Nack,
    /// The worker crashes in the handler: no effect, no ack.
    Crash,
    /// The worker crashes after the effect, before the ack.
    CrashAfterEffect,
    /// The worker stalls past the lease's expiry (and the margin), applies the effect, acks late.
    StallThenAck,
    /// The worker stalls past the lease's expiry, then nacks late.
    StallThenNack,
}

/// How an enqueue ends.
#[derive(Debug, Clone, Copy)]
enum EnqueueFate {
    Ok,
    UnknownApplied,
    UnknownNotApplied,
    UnknownAppliedRetried,
    UnknownNotAppliedRetried,
    UncompletedApplied,
    Fail,
}

#[derive(Debug, Clone)]
enum Step {
    Enqueue(EnqueueFate),
    Lease { max: usize, visibility_timeout_ms: i64, dropped: bool },
    Settle { pick: usize, fate: Fate },
    Wait { ms: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    let fate = prop_oneof![
        4 => Just(Fate::Ack),
        1 => Just(Fate::AckDropped),
        1 => Just(Fate::Nack),
        1 => Just(Fate::Crash),
        1 => Just(Fate::CrashAfterEffect),
        1 => Just(Fate::StallThenAck),
        1 => Just(Fate::StallThenNack),
    ];
    let enqueue = prop_oneof![
        6 => Just(EnqueueFate::Ok),
        1 => Just(EnqueueFate::UnknownApplied),
        1 => Just(EnqueueFate::UnknownNotApplied),
        1 => Just(EnqueueFate::UnknownAppliedRetried),
        1 => Just(EnqueueFate::UnknownNotAppliedRetried),
        1 => Just(EnqueueFate::UncompletedApplied),
        1 => Just(EnqueueFate::Fail),
    ];
    prop_oneof![
        3 => enqueue.prop_map(Step::Enqueue),
        3 => (1usize..4, 300i64..2000, prop::bool::weighted(0.1)).prop_map(
            |(max, visibility_timeout_ms, dropped)| Step::Lease { max, visibility_timeout_ms, dropped }
        ),
        4 => (any::<usize>(), fate).prop_map(|(pick, fate)| Step::Settle { pick, fate }),
        1 => (0i64..1500).prop_map(|ms| Step::Wait { ms }),
    ]
}

#[derive(Debug, Clone)]
enum JobState {
    Ready,
    Leased { token: String, expires_at_ms: i64 },
    Dead,
}

#[derive(Debug, Clone)]
struct SimJob {
    value: u64,
    attempt: u32,
    errors: u32,
    state: JobState,
}

/// A correct queue (the semantics of docs/semantics.md, one clock) and its workers, recording
/// the history a verify run would.
struct Sim {
    mode: DeliveryMode,
    now: i64,
    builder: Builder,
    jobs: BTreeMap<u64, SimJob>,
    next_job: u64,
    next_value: u64,
    next_token: u64,
    held: Vec<Lease>,
    effected: HashSet<u64>,
    last_fault_at_ms: Option<i64>,
}

const MAX_ATTEMPTS: u32 = 3;

impl Sim {
    fn new(mode: DeliveryMode) -> Self {
        Sim {
            mode,
            now: 1_000_000,
            builder: Builder::new(mode),
            jobs: BTreeMap::new(),
            next_job: 1,
            next_value: 10_000,
            next_token: 1,
            held: Vec::new(),
            effected: HashSet::new(),
            last_fault_at_ms: None,
        }
    }

    fn fault(&mut self) {
        self.last_fault_at_ms = Some(self.now);
    }

    /// Starts an operation; returns its invoke time. The target acts at `act()`.
    fn invoke(&mut self) -> i64 {
        let at = self.now;
        self.now += 1;
        at
    }

    /// The target's moment for the current operation: lease expiry is judged first.
    fn act(&mut self) -> i64 {
        let now = self.now;
        for job in self.jobs.values_mut() {
            if let JobState::Leased { expires_at_ms, .. } = job.state {
                if now >= expires_at_ms {
                    job.errors += 1;
                    job.state = if job.attempt >= MAX_ATTEMPTS { JobState::Dead } else { JobState::Ready };
                }
            }
        }
        now
    }

    /// Completes the current operation (at the target's moment); the next starts 1 ms later.
    fn complete(&mut self) -> i64 {
        let at = self.now;
        self.now += 1;
        at
    }

    fn create_job(&mut self, value: u64) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, SimJob { value, attempt: 0, errors: 0, state: JobState::Ready });
        id
    }

    fn enqueue_op(&mut self, value: u64, outcome: Option<(Outcome, Option<(u64, bool)>)>) {
        let invoke_at = self.invoke();
        self.act();
        let complete_at = self.complete();
        let request = Request::Enqueue { value, dedup_id: Some(format!("v{value}")) };
        let complete = outcome.map(|(outcome, created)| {
            let response = match created {
                Some((job_id, duplicate)) => Response::Enqueued { job_id, duplicate },
                None => Response::None,
            };
            (complete_at, outcome, response)
        });
        self.builder.op(invoke_at, request, complete);
    }

    fn enqueue(&mut self, fate: EnqueueFate) {
        let value = self.next_value;
        self.next_value += 1;
        match fate {
            EnqueueFate::Ok => {
                let job = self.create_job(value);
                self.enqueue_op(value, Some((Outcome::Ok, Some((job, false)))));
            }
            EnqueueFate::UnknownApplied => {
                self.fault();
                self.create_job(value);
                self.enqueue_op(value, Some((Outcome::Unknown, None)));
            }
            EnqueueFate::UnknownNotApplied => {
                self.fault();
                self.enqueue_op(value, Some((Outcome::Unknown, None)));
            }
            EnqueueFate::UnknownAppliedRetried => {
                self.fault();
                let job = self.create_job(value);
                self.enqueue_op(value, Some((Outcome::Unknown, None)));
                self.enqueue_op(value, Some((Outcome::Ok, Some((job, true)))));
            }
            EnqueueFate::UnknownNotAppliedRetried => {
                self.fault();
                self.enqueue_op(value, Some((Outcome::Unknown, None)));
                let job = self.create_job(value);
                self.enqueue_op(value, Some((Outcome::Ok, Some((job, false)))));
            }
            EnqueueFate::UncompletedApplied => {
                self.fault();
                self.create_job(value);
                self.enqueue_op(value, None);
            }
            EnqueueFate::Fail => {
                self.enqueue_op(value, Some((Outcome::Fail, None)));
            }
        }
    }

    fn lease(&mut self, max: usize, visibility_timeout_ms: i64, dropped: bool) {
        let invoke_at = self.invoke();
        let now = self.act();
        let ready: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, job)| matches!(job.state, JobState::Ready))
            .map(|(id, _)| *id)
            .take(max)
            .collect();
        let mut leased = Vec::new();
        for id in ready {
            let token = format!("tok{}", self.next_token);
            self.next_token += 1;
            let expires_at_ms = now + visibility_timeout_ms;
            let job = self.jobs.get_mut(&id).unwrap();
            job.attempt += 1;
            job.state = JobState::Leased { token: token.clone(), expires_at_ms };
            leased.push(Lease {
                job_id: id,
                value: job.value,
                lease_token: token,
                attempt: job.attempt,
                lease_expires_at_ms: expires_at_ms,
            });
            if self.mode == AMO {
                self.jobs.remove(&id);
            }
        }
        let complete_at = self.complete();
        let request = Request::Lease { max: max as u32, visibility_timeout_ms: visibility_timeout_ms as u64 };
        if dropped {
            self.fault();
            self.builder.op(invoke_at, request, Some((complete_at, Outcome::Unknown, Response::None)));
        } else {
            self.held.extend(leased.iter().cloned());
            self.builder.op(invoke_at, request, Some((complete_at, Outcome::Ok, Response::Leased { jobs: leased })));
        }
    }

    fn apply_effect(&mut self, lease: &Lease) {
        if self.mode == EO && self.effected.contains(&lease.value) {
            return; // the idempotency store says: done already
        }
        self.effected.insert(lease.value);
        let at = self.now;
        self.builder.effect(lease, at);
        self.now += 1;
    }

    /// Acks (or nacks) `lease`; the target judges by the current state.
    fn settle(&mut self, lease: &Lease, is_ack: bool, response_dropped: bool) {
        let invoke_at = self.invoke();
        let now = self.act();
        let live = match self.jobs.get(&lease.job_id) {
            Some(SimJob { state: JobState::Leased { token, expires_at_ms }, .. }) => {
                *token == lease.lease_token && now < *expires_at_ms
            }
            _ => false,
        };
        if live {
            if is_ack {
                self.jobs.remove(&lease.job_id);
            } else {
                let job = self.jobs.get_mut(&lease.job_id).unwrap();
                job.errors += 1;
                job.state = if job.attempt >= MAX_ATTEMPTS { JobState::Dead } else { JobState::Ready };
            }
        }
        let complete_at = self.complete();
        let outcome = if response_dropped {
            Outcome::Unknown
        } else if live {
            Outcome::Ok
        } else {
            Outcome::Fail
        };
        let complete = Some((complete_at, outcome));
        if is_ack {
            self.builder.ack(lease, invoke_at, complete);
        } else {
            self.builder.nack(lease, invoke_at, complete);
        }
    }

    fn stall_past(&mut self, lease: &Lease) {
        self.fault();
        self.now = self.now.max(lease.lease_expires_at_ms + CLOCK_MARGIN_MS + 1);
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            match step {
                Step::Enqueue(fate) => self.enqueue(*fate),
                Step::Lease { max, visibility_timeout_ms, dropped } => {
                    self.lease(*max, *visibility_timeout_ms, *dropped)
                }
                Step::Wait { ms } => self.now += ms,
                Step::Settle { pick, fate } => {
                    if self.held.is_empty() {
                        continue;
                    }
                    let lease = self.held.remove(pick % self.held.len());
                    match fate {
                        Fate::Ack => {
                            self.apply_effect(&lease);
                            self.settle(&lease, true, false);
                        }
                        Fate::AckDropped => {
                            self.fault();
                            self.apply_effect(&lease);
                            self.settle(&lease, true, true);
                        }
                        Fate::Nack => self.settle(&lease, false, false),
                        Fate::Crash => self.fault(),
                        Fate::CrashAfterEffect => {
                            self.fault();
                            self.apply_effect(&lease);
                        }
                        Fate::StallThenAck => {
                            self.stall_past(&lease);
                            self.apply_effect(&lease);
                            self.settle(&lease, true, false);
                        }
                        Fate::StallThenNack => {
                            self.stall_past(&lease);
                            self.settle(&lease, false, false);
                        }
                    }
                }
            }
        }
        // Drain: the held leases are abandoned (the workers stop); every job left is leased
        // after its lease expires, processed and acked, until none is ready or leased.
        self.held.clear();
        loop {
            let latest_expiry = self
                .jobs
                .values()
                .filter_map(|job| match job.state {
                    JobState::Leased { expires_at_ms, .. } => Some(expires_at_ms),
                    _ => None,
                })
                .max();
            if let Some(expiry) = latest_expiry {
                self.now = self.now.max(expiry);
            }
            self.act();
            if !self.jobs.values().any(|job| matches!(job.state, JobState::Ready)) {
                break;
            }
            self.lease(1000, 1000, false);
            for lease in std::mem::take(&mut self.held) {
                self.apply_effect(&lease);
                self.settle(&lease, true, false);
            }
        }
        for (id, job) in &self.jobs {
            if matches!(job.state, JobState::Dead) {
                self.builder.dead(*id, job.value, job.errors);
            }
        }
        self.builder.history.last_fault_at_ms = self.last_fault_at_ms;
        self.builder.history.drained_at_ms = self.now;
    }
}

fn simulate(mode: DeliveryMode, steps: &[Step]) -> History {
    let mut sim = Sim::new(mode);
    sim.run(steps);
    sim.builder.done()
}

fn mode() -> impl Strategy<Value = DeliveryMode> {
    prop_oneof![Just(AMO), Just(ALO), Just(EO)]
}

/// One fault injected into a clean history, and the one figure it must raise by one.
#[derive(Debug, Clone, Copy)]
enum Injection {
    /// Drop every effect of one processed, acknowledged, not dead value.
    Loss,
    /// Record one effect twice.
    DuplicateEffect,
    /// An effect of a value never enqueued.
    Unexpected,
    /// An ok ack of a delivery, invoked past its expiry and the margin.
    StaleAckExpired,
    /// An ok ack of a delivery, invoked after a later attempt of its job was handed out.
    StaleAckSuperseded,
    /// An ok nack of a delivery, invoked past its expiry and the margin.
    StaleNack,
    /// A second lease of a live job (same attempt), handed out with it.
    Overlap,
    /// A second delivery of an at_most_once job, after the first lease's expiry.
    DuplicateDelivery,
    /// A dead letter listed twice.
    DeadTwice,
}

const INJECTIONS: [Injection; 9] = [
    Injection::Loss,
    Injection::DuplicateEffect,
    Injection::Unexpected,
    Injection::StaleAckExpired,
    Injection::StaleAckSuperseded,
    Injection::StaleNack,
    Injection::Overlap,
    Injection::DuplicateDelivery,
    Injection::DeadTwice,
];

/// Every delivery of the history, with its lease's completion time.
fn deliveries(history: &History) -> Vec<(Lease, i64)> {
    let mut invoked = HashSet::new();
    let mut out = Vec::new();
    for event in &history.events {
        match event {
            Event::Invoke { op, request, .. } => {
                if matches!(request, Request::Lease { .. }) {
                    invoked.insert(*op);
                }
            }
            Event::Complete { op, at_ms, outcome: Outcome::Ok, response: Response::Leased { jobs } }
                if invoked.contains(op) =>
            {
                out.extend(jobs.iter().map(|lease| (lease.clone(), *at_ms)));
            }
            Event::Complete { .. } => {}
        }
    }
    out
}

/// Applies `injection` to `history` (choosing among candidates with `pick`); returns the figure
/// it raises by exactly one, or `None` when this history offers no place for it.
fn inject(history: &mut History, injection: Injection, pick: usize) -> Option<Figure> {
    let dead_jobs: HashSet<u64> = history.dead.iter().map(|dead| dead.job_id).collect();
    let dead_values: HashSet<u64> = history.dead.iter().map(|dead| dead.value).collect();
    let next_op = history
        .events
        .iter()
        .map(|event| match event {
            Event::Invoke { op, .. } | Event::Complete { op, .. } => *op,
        })
        .max()
        .unwrap_or(0)
        + 1;
    let push_op = |history: &mut History, at: (i64, i64), request: Request, response: Response| {
        history.events.push(Event::Invoke { op: next_op, process: 9, at_ms: at.0, request });
        history.events.push(Event::Complete { op: next_op, at_ms: at.1, outcome: Outcome::Ok, response });
    };
    let all = deliveries(history);
    let choose = |candidates: Vec<(Lease, i64)>| -> Option<(Lease, i64)> {
        if candidates.is_empty() {
            None
        } else {
            Some(candidates[pick % candidates.len()].clone())
        }
    };
    match injection {
        Injection::Loss => {
            let enqueued_ok: HashSet<u64> = history
                .events
                .iter()
                .filter_map(|event| match event {
                    Event::Complete { outcome: Outcome::Ok, response: Response::Enqueued { job_id, .. }, .. } => {
                        Some(*job_id)
                    }
                    _ => None,
                })
                .collect();
            let mut effects_per_value: BTreeMap<u64, usize> = BTreeMap::new();
            for effect in &history.effects {
                *effects_per_value.entry(effect.value).or_default() += 1;
            }
            // Values processed exactly once, so that no duplicate effect goes with them.
            let candidates: Vec<u64> = history
                .effects
                .iter()
                .filter(|effect| {
                    enqueued_ok.contains(&effect.job_id)
                        && !dead_values.contains(&effect.value)
                        && effects_per_value[&effect.value] == 1
                })
                .map(|effect| effect.value)
                .collect();
            if candidates.is_empty() {
                return None;
            }
            let value = candidates[pick % candidates.len()];
            history.effects.retain(|effect| effect.value != value);
            Some(Figure::Lost)
        }
        Injection::DuplicateEffect => {
            if history.effects.is_empty() {
                return None;
            }
            let effect = history.effects[pick % history.effects.len()].clone();
            history.effects.push(effect);
            Some(Figure::DuplicateEffects)
        }
        Injection::Unexpected => {
            let lease = Lease {
                job_id: 999_999,
                value: 999_999,
                lease_token: "forged".to_owned(),
                attempt: 1,
                lease_expires_at_ms: 0,
            };
            history.effects.push(Effect {
                value: lease.value,
                job_id: lease.job_id,
                lease_token: lease.lease_token,
                at_ms: 0,
            });
            Some(Figure::Unexpected)
        }
        Injection::StaleAckExpired | Injection::StaleNack => {
            let (lease, _) = choose(all)?;
            let at = lease.lease_expires_at_ms + CLOCK_MARGIN_MS + 1;
            let request = if matches!(injection, Injection::StaleNack) {
                Request::Nack { job_id: lease.job_id, lease_token: lease.lease_token }
            } else {
                Request::Ack { job_id: lease.job_id, lease_token: lease.lease_token }
            };
            push_op(history, (at, at + 1), request, Response::None);
            Some(if matches!(injection, Injection::StaleNack) {
                Figure::StaleNacksAccepted
            } else {
                Figure::StaleAcksAccepted
            })
        }
        Injection::StaleAckSuperseded => {
            // An earlier attempt of a job delivered more than once.
            let later: Vec<(Lease, i64)> = all.clone();
            let candidates: Vec<(Lease, i64)> = all
                .iter()
                .filter(|(lease, _)| {
                    later.iter().any(|(other, _)| other.job_id == lease.job_id && other.attempt > lease.attempt)
                })
                .cloned()
                .collect();
            let (lease, _) = choose(candidates)?;
            let superseded_at = later
                .iter()
                .filter(|(other, _)| other.job_id == lease.job_id && other.attempt > lease.attempt)
                .map(|(_, completed_at)| *completed_at)
                .min()?;
            push_op(
                history,
                (superseded_at + 1, superseded_at + 2),
                Request::Ack { job_id: lease.job_id, lease_token: lease.lease_token },
                Response::None,
            );
            Some(Figure::StaleAcksAccepted)
        }
        Injection::Overlap => {
            if history.mode == AMO {
                return None; // a second delivery is itself a violation there
            }
            let candidates: Vec<(Lease, i64)> =
                all.into_iter().filter(|(lease, _)| !dead_jobs.contains(&lease.job_id)).collect();
            let (lease, completed_at) = choose(candidates)?;
            let twin = Lease {
                lease_token: format!("{}-twin", lease.lease_token),
                lease_expires_at_ms: completed_at + CLOCK_MARGIN_MS + 1,
                ..lease
            };
            push_op(
                history,
                (completed_at, completed_at),
                Request::Lease { max: 1, visibility_timeout_ms: 1 },
                Response::Leased { jobs: vec![twin] },
            );
            Some(Figure::OverlappingLeases)
        }
        Injection::DuplicateDelivery => {
            if history.mode != AMO {
                return None;
            }
            let (lease, _) = choose(all)?;
            let at = lease.lease_expires_at_ms + CLOCK_MARGIN_MS + 1;
            let again = Lease {
                lease_token: format!("{}-again", lease.lease_token),
                attempt: lease.attempt + 1,
                lease_expires_at_ms: at + 1000,
                ..lease
            };
            push_op(
                history,
                (at, at),
                Request::Lease { max: 1, visibility_timeout_ms: 1000 },
                Response::Leased { jobs: vec![again] },
            );
            Some(Figure::DuplicateDeliveries)
        }
        Injection::DeadTwice => {
            if history.dead.is_empty() {
                return None;
            }
            let dead = history.dead[pick % history.dead.len()].clone();
            history.dead.push(dead);
            Some(Figure::DeadMoreThanOnce)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A correct queue under every fault the workload injects never fails a report, and the
    /// figures the simulation knows agree with the checker's.
    #[test]
    fn correct_queue_histories_keep_every_promise(
        mode in mode(),
        steps in prop::collection::vec(step(), 0..80),
    ) {
        let history = simulate(mode, &steps);
        prop_assert!(history.validate().is_ok(), "{:?}", history.validate());
        let report = check(&history);
        prop_assert_eq!(&report.violations, &Vec::<String>::new());
        prop_assert_eq!(report.stale_acks_accepted, 0);
        prop_assert_eq!(report.stale_nacks_accepted, 0);
        prop_assert_eq!(report.overlapping_leases, 0);
        prop_assert_eq!(report.unexpected, 0);
        prop_assert_eq!(report.dead_more_than_once, 0);
        prop_assert_eq!(report.dead, history.dead.len() as u64);
        if mode != AMO {
            prop_assert_eq!(report.lost, 0);
        }
        if mode != ALO {
            prop_assert_eq!(report.duplicate_effects, 0);
        }
        if mode == AMO {
            prop_assert_eq!(report.duplicate_deliveries, 0);
            prop_assert_eq!(report.dead, 0);
        }
    }

    /// One injected fault raises exactly its figure by one, and fails the report with exactly
    /// one violation when the mode forbids that figure (and with none when it permits it).
    #[test]
    fn one_injected_fault_is_found_exactly(
        mode in mode(),
        steps in prop::collection::vec(step(), 1..80),
        injection in prop::sample::select(INJECTIONS.to_vec()),
        pick in any::<usize>(),
    ) {
        let mut history = simulate(mode, &steps);
        let clean = check(&history);
        let figure = inject(&mut history, injection, pick);
        prop_assume!(figure.is_some());
        let Some(figure) = figure else { unreachable!() };
        let faulty = check(&history);
        for other in Figure::ALL {
            let (before, after) = (other.count(&clean), other.count(&faulty));
            match other {
                _ if other == figure => prop_assert_eq!(after, before.map(|n| n + 1), "{:?}", other),
                // What the fault changes besides, by construction.
                Figure::Processed | Figure::Delivered | Figure::DuplicateDeliveries
                | Figure::Recovered => {}
                _ => prop_assert_eq!(after, before, "{:?} changed", other),
            }
        }
        if figure.forbidden_in(mode) {
            prop_assert_eq!(faulty.violations.len(), 1, "{:?}", faulty.violations);
            let name_words = match figure {
                Figure::Lost => "no loss",
                Figure::DuplicateEffects => "no duplicate effect",
                Figure::DuplicateDeliveries => "no duplicate delivery",
                Figure::Unexpected => "only what was enqueued",
                Figure::StaleAcksAccepted => "fences acks",
                Figure::StaleNacksAccepted => "fences nacks",
                Figure::OverlappingLeases => "one live lease per job",
                Figure::DeadMoreThanOnce => "exactly once",
                _ => unreachable!(),
            };
            prop_assert!(faulty.violations[0].contains(name_words), "{}", faulty.violations[0]);
        } else {
            prop_assert_eq!(&faulty.violations, &Vec::<String>::new());
        }
    }
}

// Heartbeats and releases: the worker runtime extends leases while a handler runs and releases
// jobs it defers or cannot run now.

/// A lease with its own token, for a job leased again at the same attempt after a release.
fn lease_again(job_id: u64, attempt: u32, expires_at_ms: i64, tag: &str) -> Lease {
    Lease { lease_token: format!("t{job_id}a{attempt}{tag}"), ..lease(job_id, attempt, expires_at_ms) }
}

#[test]
fn an_ack_after_an_accepted_extend_is_not_stale() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.extend(&first, 500, 2_500, Some((510, Outcome::Ok)), 3_000);
    builder.effect(&first, 1_900);
    builder.ack(&first, 2_000, Some((2_010, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(report, Report { enqueued: 1, processed: 1, delivered: 1, ..empty(ALO) });
}

#[test]
fn an_extend_accepted_after_expiry_is_stale() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.effect(&first, 20);
    builder.ack(&first, 30, Some((40, Outcome::Unknown)));
    builder.extend(&first, 1010 + CLOCK_MARGIN_MS + 1, 1_000, Some((1_300, Outcome::Ok)), 2_300);
    let report = check(&builder.done());
    assert_eq!(
        report,
        Report {
            enqueued: 1,
            processed: 1,
            delivered: 1,
            stale_extends_accepted: 1,
            violations: vec!["every mode fences extends (Invariant 3): 1 extend was accepted for a lease no \
                 longer live (job id 1)"
                .to_owned()],
            ..empty(ALO)
        }
    );
}

#[test]
fn an_extend_of_unknown_outcome_may_have_moved_the_expiry_until_its_completion_plus_its_timeout() {
    let ack_at = |at: i64| {
        let mut builder = Builder::new(ALO);
        builder.enqueue(1001, 0, Outcome::Ok);
        let first = lease(1, 1, 1010);
        builder.lease(9, 10, vec![first.clone()]);
        builder.extend(&first, 500, 1_000, Some((600, Outcome::Unknown)), 0);
        builder.effect(&first, 700);
        builder.ack(&first, at, Some((at + 10, Outcome::Ok)));
        check(&builder.done()).stale_acks_accepted
    };
    // It may have moved the expiry to 600 + 1000 = 1600.
    assert_eq!(ack_at(1_600 + CLOCK_MARGIN_MS), 0);
    assert_eq!(ack_at(1_600 + CLOCK_MARGIN_MS + 1), 1);
}

#[test]
fn an_extended_lease_overlaps_a_later_delivery_handed_out_before_its_new_expiry() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    builder.extend(&first, 500, 5_000, Some((510, Outcome::Ok)), 5_500);
    let second = lease(1, 2, 4_000);
    builder.process(&second, 2_000);
    let report = check(&builder.done());
    assert_eq!(report.overlapping_leases, 1, "{report:#?}");
}

#[test]
fn a_release_gives_its_attempt_back_and_ends_the_lease() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 5_000);
    builder.lease(9, 10, vec![first.clone()]);
    builder.release(&first, 100, Some((110, Outcome::Ok)));
    // Leased again at the same attempt: a later delivery, not an overlapping one.
    let second = lease_again(1, 1, 6_000, "b");
    builder.lease(199, 200, vec![second.clone()]);
    builder.effect(&second, 210);
    builder.nack(&second, 220, Some((230, Outcome::Ok)));
    // A late ack of the released lease, accepted: superseded by the second delivery.
    builder.ack(&first, 300, Some((310, Outcome::Ok)));
    // The job went dead after its one counted attempt: the released delivery had no error.
    builder.dead(1, 1001, 1);
    let report = check(&builder.done());
    assert_eq!(report.overlapping_leases, 0, "{report:#?}");
    assert_eq!(report.stale_acks_accepted, 1, "{report:#?}");
    // Acked by a stale ack only: the dead letter stands, with one delivery counted.
    assert_eq!(report.dead_more_than_once, 0, "{report:#?}");
    assert_eq!(report.dead, 1);
}

#[test]
fn a_release_accepted_after_the_job_was_leased_again_is_stale() {
    let mut builder = Builder::new(ALO);
    builder.enqueue(1001, 0, Outcome::Ok);
    let first = lease(1, 1, 1010);
    builder.lease(9, 10, vec![first.clone()]);
    let second = lease(1, 2, 5_000);
    builder.process(&second, 2_000);
    builder.release(&first, 2_100, Some((2_110, Outcome::Ok)));
    let report = check(&builder.done());
    assert_eq!(report.stale_nacks_accepted, 1, "{report:#?}");
}

// ---------------------------------------------------------------------------------------------
// Ordered runs (Invariant 9). With two keys, jobs 1 and 3 share a key (their values, job id +
// 1000, are odd), and so do 2 and 4.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_ordered_history_in_order_keeps_every_promise() {
    for mode in [ALO, EO] {
        let mut b = Builder::new(mode).ordered(2);
        let (one, two, three, four) = (lease(1, 1, 5_000), lease(2, 1, 5_000), lease(3, 1, 5_000), lease(4, 1, 5_000));
        // Keys interleave freely; within a key, each job starts after the one before was acked.
        b.lease(0, 1, vec![one.clone(), two.clone()]);
        b.effect(&one, 2);
        b.ack(&one, 3, Some((4, Outcome::Ok)));
        b.lease(5, 6, vec![three.clone()]);
        b.effect(&two, 7);
        b.ack(&two, 8, Some((9, Outcome::Ok)));
        b.effect(&three, 10);
        b.ack(&three, 11, Some((12, Outcome::Ok)));
        b.process(&four, 13);
        let report = check(&b.done());
        assert_eq!((report.order_violations, report.concurrent_key_deliveries), (0, 0), "{mode:?}: {report:?}");
    }
}

#[test]
fn a_job_handed_out_before_an_earlier_job_of_its_key_left_is_an_order_violation() {
    let mut b = Builder::new(ALO).ordered(2);
    let (one, three) = (lease(1, 1, 5_000), lease(3, 1, 5_000));
    b.lease(0, 1, vec![one.clone()]);
    b.effect(&one, 2);
    // Job 3 comes out while job 1 is still leased, and is acked only after it.
    b.lease(3, 4, vec![three.clone()]);
    b.ack(&one, 20, Some((21, Outcome::Ok)));
    b.effect(&three, 22);
    b.ack(&three, 23, Some((24, Outcome::Ok)));
    let report = check(&b.done());
    assert_eq!(report.order_violations, 1);
    assert_eq!(report.concurrent_key_deliveries, 1);
    assert!(!report.promise_kept());
    assert!(
        report.violations.iter().any(|v| v.contains("enqueue order (Invariant 9)") && v.contains("job id 3")),
        "{:?}",
        report.violations
    );
    assert!(Figure::OrderViolations.breaks_promise(&report) && Figure::ConcurrentKeyDeliveries.breaks_promise(&report));
}

#[test]
fn an_ack_of_unknown_outcome_may_have_let_the_key_move_on() {
    let mut b = Builder::new(ALO).ordered(2);
    let (one, three) = (lease(1, 1, 5_000), lease(3, 1, 5_000));
    b.lease(0, 1, vec![one.clone()]);
    b.effect(&one, 2);
    // The ack's reply was lost: it may have taken effect at its invoke.
    b.ack(&one, 3, Some((4, Outcome::Unknown)));
    b.process(&three, 5);
    let report = check(&b.done());
    assert_eq!((report.order_violations, report.concurrent_key_deliveries), (0, 0), "{report:?}");
}

#[test]
fn a_dead_job_constrains_nothing_and_at_most_once_may_overlap_a_key() {
    // Job 1 went dead at some unknown moment: job 3 may follow at any time, but two live
    // leases of one key still count where the mode forbids them.
    let mut b = Builder::new(ALO).ordered(2);
    let (one, three) = (lease(1, 1, 5_000), lease(3, 1, 5_000));
    b.lease(0, 1, vec![one.clone()]);
    b.lease(2, 3, vec![three.clone()]);
    b.nack(&one, 10, Some((11, Outcome::Ok)));
    b.process(&three, 12);
    b.dead(1, one.value, 1);
    let report = check(&b.done());
    assert_eq!((report.order_violations, report.concurrent_key_deliveries), (0, 1), "{report:?}");

    // In at_most_once a leased job has left its key: the next may run beside it, and the
    // overlap is not counted.
    let mut b = Builder::new(AMO).ordered(2);
    b.lease(0, 1, vec![one.clone()]);
    b.lease(2, 3, vec![three.clone()]);
    b.effect(&one, 4);
    b.effect(&three, 5);
    let report = check(&b.done());
    assert_eq!((report.order_violations, report.concurrent_key_deliveries), (0, 0));
    assert!(!Figure::ConcurrentKeyDeliveries.forbidden_in(AMO));
    assert!(!report.violations.iter().any(|v| v.contains("Invariant 9")), "{:?}", report.violations);
}

#[test]
fn an_unordered_history_has_no_order_figures() {
    let mut b = Builder::new(ALO);
    let (one, three) = (lease(1, 1, 5_000), lease(3, 1, 5_000));
    b.lease(0, 1, vec![one.clone(), three.clone()]);
    b.effect(&one, 2);
    b.effect(&three, 2);
    b.ack(&three, 3, Some((4, Outcome::Ok)));
    b.ack(&one, 5, Some((6, Outcome::Ok)));
    let report = check(&b.done());
    assert_eq!((report.order_violations, report.concurrent_key_deliveries), (0, 0));
}

#[test]
fn an_ordered_history_round_trips_through_json_lines() {
    let mut b = Builder::new(EO).ordered(7);
    b.process(&lease(1, 1, 5_000), 0);
    let history = b.done();
    let mut out = Vec::new();
    history.write_jsonl(&mut out).unwrap();
    assert_eq!(History::read_jsonl(&out[..]).unwrap(), history);
}
