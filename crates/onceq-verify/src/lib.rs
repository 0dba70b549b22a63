//! onceq-verify: the engine of `onceq verify`.
//!
//! A run drives a workload against a target (the embedded store in-process, a server, or
//! PostgreSQL) with the shipped worker (`onceq_worker::Worker`, and `PgWorker` for
//! transactional effects on PostgreSQL), injects faults, and records every operation it makes in a [`history::History`]:
//! when each was invoked, when it completed, and with what outcome (ok, fail, or unknown, when
//! the caller cannot tell whether it took effect). Workers record each effect they apply in a
//! ledger, apart from the queue. The [`checker`] then reads the history and the ledger and counts,
//! per delivery mode, what docs/design.md's service-tier matrix promises about: lost jobs, duplicate
//! deliveries, duplicate effects, jobs processed that were never enqueued, stale acks accepted,
//! overlapping live leases, and dead letters.
//!
//! # Layout
//!
//! - [`history`]: what a run records (operations, effects, dead letters), its JSON-lines form,
//!   and what a recorder must guarantee.
//! - [`checker`]: the rules, per mode, turning a history into a [`checker::Report`].
//! - [`report`]: the table and JSON of a run's reports.
//! - [`workload`]: producers, the shipped workers with verify's handler and fault middleware,
//!   the recorder and the drain; `recorded`: the store and idempotency-store wrappers the
//!   workers run on (recording every call, dropping what a fault cut off); [`faults`]: the injected
//!   faults, their rates and seeded schedule; [`target`]: the embedded store, a server (given or
//!   managed) or PostgreSQL; [`ledger`]: where workers record effects (SQLite, or a table in the
//!   target PostgreSQL, written in the job's transaction).
//! - [`external`]: `--worker-cmd`: worker processes of another language (the Python and Node
//!   clients), each on a recording API verify serves, applying effects through verify, which
//!   tells them when to crash; the same faults and checker (docs/verify.md is their protocol).
//! - [`pipeline`]: pipeline mode (`--pipeline`): a consume → produce stage committed with its
//!   ack beside the same stage written as enqueue-then-ack, what their runs record, and the
//!   checker counting outputs missing and duplicated per input (the workload runs them).
//! - [`rebalance`]: the record of `onceq verify-groups` (a consumer group of member processes
//!   through joins, kills and leaves) and its checks: per-key order, overlapping runs of a key,
//!   partitions moved against the minimum, stalls.

pub mod checker;
pub mod external;
pub mod faults;
pub mod history;
pub mod ledger;
pub mod pipeline;
pub mod rebalance;
mod recorded;
pub mod report;
pub mod target;
pub mod workload;
