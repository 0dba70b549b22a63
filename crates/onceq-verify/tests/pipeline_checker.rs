//! Proves that the pipeline checker (`onceq_verify::pipeline::check`) judges each input right on
//! hand-built stage histories: an input settled with one output missing, one whose B was made
//! twice (a violation in the committed stage, the expected contrast in enqueue-then-ack), and one
//! whose output job was delivered twice (a redelivery, not a duplicate). Also: an input lost, an
//! input the drain shows settled though its ack's reply was lost, dead inputs skipped, outputs of
//! no input, replayed commits counted, and both stages in one table and one JSON document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use onceq_core::DeliveryMode;
use onceq_verify::history::{DeadLetter, Event, History, Lease, Outcome, Request, Response};
use onceq_verify::pipeline::{check, OutputDelivery, OutputKind, Stage, StageHistory, StageReport};
use onceq_verify::report::{render_pipeline_json, render_pipeline_table, stages_kept};

/// Builds a stage's history op by op. Input job ids equal their values.
struct Builder {
    history: StageHistory,
    next_op: u64,
    at_ms: i64,
    next_output: u64,
}

impl Builder {
    /// A drained run's history (every queue empty at the end); see [`Builder::undrained`].
    fn new(stage: Stage) -> Self {
        Builder {
            history: StageHistory {
                stage,
                inputs: History {
                    mode: DeliveryMode::AtLeastOnce,
                    events: Vec::new(),
                    effects: Vec::new(),
                    dead: Vec::new(),
                    last_fault_at_ms: None,
                    drained_at_ms: 0,
                    ordered_keys: None,
                },
                outputs: Vec::new(),
                drained: true,
            },
            next_op: 1,
            at_ms: 1_000,
            next_output: 1_000,
        }
    }

    fn op(&mut self, request: Request, outcome: Outcome, response: Response) {
        let op = self.next_op;
        self.next_op += 1;
        self.at_ms += 2;
        let events = &mut self.history.inputs.events;
        events.push(Event::Invoke { op, process: 0, at_ms: self.at_ms, request });
        events.push(Event::Complete { op, at_ms: self.at_ms + 1, outcome, response });
    }

    /// Input `job` enqueued (ok).
    fn enqueue(&mut self, job: u64) -> &mut Self {
        self.op(
            Request::Enqueue { value: job, dedup_id: None },
            Outcome::Ok,
            Response::Enqueued { job_id: job, duplicate: false },
        );
        self
    }

    /// Input `job` leased with `token`.
    fn lease(&mut self, job: u64, token: &str) -> &mut Self {
        let lease = Lease {
            job_id: job,
            value: job,
            lease_token: token.into(),
            attempt: 1,
            lease_expires_at_ms: self.at_ms + 10_000,
        };
        self.op(
            Request::Lease { max: 1, visibility_timeout_ms: 10_000 },
            Outcome::Ok,
            Response::Leased { jobs: vec![lease] },
        );
        self
    }

    /// A commit of `job`'s lease `token` with this outcome (ok: applied, or replayed).
    fn commit(&mut self, job: u64, token: &str, outcome: Outcome, replayed: bool) -> &mut Self {
        let response = if outcome == Outcome::Ok { Response::Committed { replayed } } else { Response::None };
        self.op(Request::Commit { job_id: job, lease_token: token.into() }, outcome, response);
        self
    }

    /// An ack of `job`'s lease `token` with this outcome.
    fn ack(&mut self, job: u64, token: &str, outcome: Outcome) -> &mut Self {
        self.op(Request::Ack { job_id: job, lease_token: token.into() }, outcome, Response::None);
        self
    }

    /// A new output job of `input`, delivered once; returns its job id.
    fn output(&mut self, input: u64, kind: OutputKind) -> u64 {
        let job_id = self.next_output;
        self.next_output += 1;
        self.deliver(job_id, input, kind);
        job_id
    }

    /// A delivery downstream of output job `job_id`.
    fn deliver(&mut self, job_id: u64, input: u64, kind: OutputKind) -> &mut Self {
        self.at_ms += 1;
        self.history.outputs.push(OutputDelivery { kind, job_id, input, value: input, at_ms: self.at_ms });
        self
    }

    /// Input `job` settled by a commit, with one B and one C.
    fn clean_committed(&mut self, job: u64) -> &mut Self {
        let token = format!("t{job}");
        self.enqueue(job).lease(job, &token).commit(job, &token, Outcome::Ok, false);
        self.output(job, OutputKind::B);
        self.output(job, OutputKind::C);
        self
    }

    fn report(&self) -> StageReport {
        self.history.inputs.validate().expect("a well-formed history");
        check(&self.history)
    }
}

#[test]
fn a_clean_committed_stage_keeps_its_promise() {
    let mut b = Builder::new(Stage::Committed);
    for job in 1..=3 {
        b.clean_committed(job);
    }
    let report = b.report();
    assert_eq!((report.inputs, report.settled, report.dead, report.lost), (3, 3, 0, 0));
    assert_eq!((report.outputs_missing, report.outputs_duplicated, report.output_redeliveries), (0, 0, 0));
    assert_eq!((report.unexpected, report.commits_replayed), (0, 0));
    assert!(report.promise_kept(), "{:?}", report.violations);
}

#[test]
fn an_input_settled_without_its_c_is_an_output_missing() {
    for stage in Stage::ALL {
        let mut b = Builder::new(stage);
        b.clean_committed(1);
        b.enqueue(2).lease(2, "t2").commit(2, "t2", Outcome::Ok, false);
        b.output(2, OutputKind::B);
        let report = b.report();
        assert_eq!(report.outputs_missing, 1, "{stage:?}");
        assert_eq!((report.outputs_duplicated, report.lost), (0, 0));
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("1 outputs missing") && report.violations[0].contains("input jobs 2"));
        assert!(!report.promise_kept());
    }
}

#[test]
fn a_second_b_job_for_one_input_is_a_duplicate_that_only_the_committed_stage_forbids() {
    let build = |stage| {
        let mut b = Builder::new(stage);
        b.clean_committed(1);
        b.clean_committed(2);
        // A second B job for input 2: the same input's outputs made twice.
        b.output(2, OutputKind::B);
        b.report()
    };
    let committed = build(Stage::Committed);
    assert_eq!((committed.outputs_duplicated, committed.output_redeliveries, committed.outputs_missing), (1, 0, 0));
    assert_eq!(committed.violations.len(), 1, "{:?}", committed.violations);
    assert!(committed.violations[0].contains("1 outputs duplicated"), "{:?}", committed.violations);
    let naive = build(Stage::EnqueueThenAck);
    assert_eq!(naive.outputs_duplicated, 1);
    assert!(naive.promise_kept(), "the contrast is no failure: {:?}", naive.violations);
    assert!(!stages_kept(&[committed, naive.clone()]));
    assert!(stages_kept(&[naive]));
}

#[test]
fn the_same_output_job_delivered_twice_is_a_redelivery_not_a_duplicate() {
    let mut b = Builder::new(Stage::Committed);
    b.enqueue(1).lease(1, "t1").commit(1, "t1", Outcome::Ok, false);
    let first_b = b.output(1, OutputKind::B);
    b.output(1, OutputKind::C);
    // Its ack was lost downstream: the same B job comes back.
    b.deliver(first_b, 1, OutputKind::B);
    let report = b.report();
    assert_eq!((report.outputs_duplicated, report.output_redeliveries, report.outputs_missing), (0, 1, 0));
    assert!(report.promise_kept(), "{:?}", report.violations);
}

#[test]
fn a_lost_commit_reply_replayed_is_one_application() {
    let mut b = Builder::new(Stage::Committed);
    b.enqueue(1).lease(1, "t1").commit(1, "t1", Outcome::Unknown, false).commit(1, "t1", Outcome::Ok, true);
    b.output(1, OutputKind::B);
    b.output(1, OutputKind::C);
    let report = b.report();
    assert_eq!((report.settled, report.commits_replayed, report.outputs_duplicated), (1, 1, 0));
    assert!(report.promise_kept(), "{:?}", report.violations);
}

#[test]
fn inputs_with_nothing_settled_are_lost_and_the_drain_settles_what_was_handed_out() {
    // Not drained: input 1 enqueued and never handed out, input 2 leased and its commit refused,
    // input 4 committed with only its B seen so far (its C may wait in queue C): all lost, none
    // missing, since the run cannot show them done.
    let mut b = Builder::new(Stage::Committed);
    b.history.drained = false;
    b.clean_committed(3);
    b.enqueue(1);
    b.enqueue(2).lease(2, "t2").commit(2, "t2", Outcome::Unknown, false);
    b.enqueue(4).lease(4, "t4").commit(4, "t4", Outcome::Ok, false);
    b.output(4, OutputKind::B);
    let report = b.report();
    assert_eq!((report.lost, report.settled, report.outputs_missing), (3, 2, 0));
    assert!(
        report.violations.iter().any(|v| v.contains("3 inputs lost: the run did not drain")),
        "{:?}",
        report.violations
    );

    // Drained: input 2 was handed out and is not dead, so it was acked (its commit's reply was
    // lost) though it has no outputs: both missing. Input 4 lacks its C: missing. Input 1 was
    // never handed out: lost.
    b.history.drained = true;
    let report = b.report();
    assert_eq!((report.lost, report.settled, report.outputs_missing), (1, 3, 3));

    // An enqueue-then-ack input acked (ok) without its outputs is missing them too.
    let mut n = Builder::new(Stage::EnqueueThenAck);
    n.enqueue(4).lease(4, "t4").ack(4, "t4", Outcome::Ok);
    let report = n.report();
    assert_eq!((report.settled, report.outputs_missing), (1, 2));
}

#[test]
fn dead_inputs_are_not_judged_and_outputs_of_no_input_are_unexpected() {
    let mut b = Builder::new(Stage::Committed);
    b.enqueue(1).lease(1, "t1");
    b.output(1, OutputKind::B);
    b.history.inputs.dead.push(DeadLetter { job_id: 1, value: 1, errors: 1 });
    b.history.drained = true;
    let report = b.report();
    assert_eq!((report.dead, report.settled, report.outputs_missing, report.lost), (1, 0, 0, 0));
    assert!(report.promise_kept(), "{:?}", report.violations);

    b.output(99, OutputKind::C);
    let report = b.report();
    assert_eq!(report.unexpected, 1);
    assert!(report.violations.iter().any(|v| v.contains("name no input")), "{:?}", report.violations);
}

#[test]
fn both_stages_print_in_one_table_and_one_json_document() {
    let mut committed = Builder::new(Stage::Committed);
    committed.clean_committed(1);
    let mut naive = Builder::new(Stage::EnqueueThenAck);
    naive.clean_committed(1);
    naive.output(1, OutputKind::C);
    let reports = vec![committed.report(), naive.report()];

    let table = render_pipeline_table(&reports);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("stage")
            && lines[0].contains("outputs missing")
            && lines[0].contains("outputs duplicated")
    );
    let row = |name: &str| -> Vec<String> {
        let line = lines.iter().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} row:\n{table}"));
        line[name.len()..].split_whitespace().map(str::to_owned).collect()
    };
    // inputs, settled, dead, lost, missing, duplicated: committed 1 1 0 0 0 0; naive 1 1 0 0 0 1.
    assert_eq!(row("committed")[..6], ["1", "1", "0", "0", "0", "0"]);
    assert_eq!(row("enqueue-then-ack")[..6], ["1", "1", "0", "0", "0", "1"]);
    assert!(table.contains("PASS committed") && table.contains("PASS enqueue-then-ack"), "{table}");
    assert!(table.contains("expected contrast"), "{table}");

    let json: serde_json::Value = serde_json::from_str(&render_pipeline_json(&reports).unwrap()).unwrap();
    assert_eq!(json["promises_kept"], true);
    assert_eq!(json["stages"][0]["stage"], "committed");
    assert_eq!(json["stages"][1]["stage"], "enqueue-then-ack");
    assert_eq!(json["stages"][1]["outputs_duplicated"], 1);
    assert_eq!(json["stages"][0]["outputs_missing"], 0);
}
