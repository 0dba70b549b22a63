//! The faults a run injects, their rates, and the record of when each fired.
//!
//! What each fault simulates, and how (the names are the `--fault NAME=RATE` names):
//!
//! | fault | simulates | how | rate is |
//! |---|---|---|---|
//! | `crash-after-effect` | a worker process dying after it applied a job's effect, before its ack | verify's middleware around the worker's handler cuts the delivery off after the handler returns: nothing more of it reaches the target (no ack, nack, release, extend); the lease expires and the job is redelivered. In `effectively_once` the gate's `complete` still goes out (the crash comes after it); on PostgreSQL the job's transaction rolls back instead of committing, as when a process dies | per delivery |
//! | `crash-mid-handler` | a worker dying in the middle of the handler, before the effect | the same cut, before the handler runs (after the gate's claim in `effectively_once`, so the redelivery meets an in-progress claim until it expires) | per delivery |
//! | `crash-before-complete` | a worker dying between the effect and the idempotency record, with a ledger that is not in the idempotency store's database | the same cut, after the handler and before the gate's `complete`. No separate idempotency store can close this window, so it is off under `--all-faults` except on PostgreSQL (where the effect and the record are one commit): turn it on to watch the checker catch duplicate effects | per delivery |
//! | `stall` | a worker that stops (GC pause, swap, network partition) longer than its lease, then settles late | after the handler, the delivery sleeps until 600 ms past its lease's expiry (target clock = this machine's) with its heartbeats dropped, then the worker settles it as usual; the ack must be refused (`lease_lost`), while the job was redelivered meanwhile. On PostgreSQL `effectively_once` the stall comes before the job's transaction, which then finds its lease lost and rolls back | per delivery |
//! | `drop-ack` | the ack's response lost on the way back | the ack reaches the target and its reply is dropped: the outcome is recorded as unknown, and the worker sees the ack fail | per delivery |
//! | `duplicate-enqueue` | a producer retrying an enqueue that had succeeded | the enqueue is sent a second time with the same values (and the same dedup ids where the mode has them): an at_least_once queue without dedup ids gets a second job | per job |
//! | `server-kill` | the server process dying | `kill -9` of the managed `onceq serve`, then a restart on the same port and data directory about 300 ms later; every call in flight ends with an unknown outcome | per second of the production phase (only with `--managed-server`) |
//! | `pg-drop` | PostgreSQL connections dropped (a failover, a proxy restart) | `pg_terminate_backend` of every connection of this run (they carry an `application_name` of their own, so no other client is touched) | per second of the production phase (only with the PostgreSQL target) |
//!
//! In a pipeline run (`--pipeline`) the same faults act on the two stages as
//! [`crate::workload::run_pipeline`] says; `crash-before-complete` does not apply there.
//!
//! Per-delivery faults are decided by a hash of (seed, mode, value, attempt, fault), so a seed
//! repeats the same schedule however the tasks interleave. At most one crash or stall fault
//! applies to a delivery (checked in the table's order).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use onceq_core::{DeliveryMode, Error, Result};
use serde::{Deserialize, Serialize};

/// A fault verify can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// A worker crash after the effect, before the ack.
    CrashAfterEffect,
    /// A worker crash in the handler, before the effect.
    CrashMidHandler,
    /// A worker crash between the effect and the idempotency record.
    CrashBeforeComplete,
    /// A worker stall past its lease, then a late ack.
    Stall,
    /// An ack whose response is lost.
    DropAck,
    /// An enqueue sent twice.
    DuplicateEnqueue,
    /// `kill -9` of the managed server, then a restart.
    ServerKill,
    /// PostgreSQL connections terminated.
    PgDrop,
}

/// Every fault, in the order they are checked for a delivery.
pub const ALL: [Fault; 8] = [
    Fault::CrashAfterEffect,
    Fault::CrashMidHandler,
    Fault::CrashBeforeComplete,
    Fault::Stall,
    Fault::DropAck,
    Fault::DuplicateEnqueue,
    Fault::ServerKill,
    Fault::PgDrop,
];

impl Fault {
    /// The `--fault` name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::CrashAfterEffect => "crash-after-effect",
            Fault::CrashMidHandler => "crash-mid-handler",
            Fault::CrashBeforeComplete => "crash-before-complete",
            Fault::Stall => "stall",
            Fault::DropAck => "drop-ack",
            Fault::DuplicateEnqueue => "duplicate-enqueue",
            Fault::ServerKill => "server-kill",
            Fault::PgDrop => "pg-drop",
        }
    }

    /// The rate `--all-faults` gives it.
    pub fn default_rate(self) -> f64 {
        match self {
            Fault::CrashAfterEffect => 0.02,
            Fault::CrashMidHandler => 0.02,
            Fault::CrashBeforeComplete => 0.01,
            Fault::Stall => 0.005,
            Fault::DropAck => 0.02,
            Fault::DuplicateEnqueue => 0.02,
            Fault::ServerKill => 0.1,
            Fault::PgDrop => 0.2,
        }
    }

    /// Whether the fault is per second of the production phase (else per delivery or per job).
    pub fn is_periodic(self) -> bool {
        matches!(self, Fault::ServerKill | Fault::PgDrop)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
            Error::invalid(format!("unknown fault {s:?}; the faults are {}", names.join(", ")))
        })
    }
}

/// What kind of target a run drives, as far as faults care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The embedded store, in-process.
    Embedded,
    /// A server verify does not manage.
    Server,
    /// A server verify started and may kill.
    ManagedServer,
    /// PostgreSQL, directly.
    Postgres,
}

/// Whether `fault` means anything for this target and mode. Faults that do not apply are not
/// injected (and `--fault` naming one for the target is an error; for a mode it is skipped).
pub fn applies(fault: Fault, target: TargetKind, mode: DeliveryMode) -> bool {
    let acks = mode != DeliveryMode::AtMostOnce;
    match fault {
        // at_most_once: the lease removed the job; there is no ack to crash before.
        Fault::CrashAfterEffect | Fault::Stall | Fault::DropAck => acks,
        Fault::CrashMidHandler | Fault::DuplicateEnqueue => true,
        Fault::CrashBeforeComplete => mode == DeliveryMode::EffectivelyOnce,
        Fault::ServerKill => target == TargetKind::ManagedServer,
        Fault::PgDrop => target == TargetKind::Postgres,
    }
}

/// Whether `--all-faults` turns `fault` on for this target: every fault that can apply, except
/// `crash-before-complete` where the ledger is not in the idempotency store's database.
pub fn in_all_faults(fault: Fault, target: TargetKind) -> bool {
    match fault {
        Fault::CrashBeforeComplete => target == TargetKind::Postgres,
        Fault::ServerKill => target == TargetKind::ManagedServer,
        Fault::PgDrop => target == TargetKind::Postgres,
        _ => true,
    }
}

/// The faults of a run and their rates (probabilities, 0 to 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Rate of each fault turned on.
    pub rates: BTreeMap<Fault, f64>,
}

impl FaultPlan {
    /// Every fault `--all-faults` turns on for `target`, at its default rate.
    pub fn all(target: TargetKind) -> Self {
        let rates = ALL.into_iter().filter(|f| in_all_faults(*f, target)).map(|f| (f, f.default_rate())).collect();
        FaultPlan { rates }
    }

    /// Parses `NAME=RATE` (or `NAME`, at its default rate) and sets it.
    pub fn set(&mut self, spec: &str) -> Result<()> {
        let (name, rate) = match spec.split_once('=') {
            Some((name, rate)) => (name.trim(), Some(rate.trim())),
            None => (spec.trim(), None),
        };
        let fault: Fault = name.parse()?;
        let rate = match rate {
            None => fault.default_rate(),
            Some(text) => text.parse::<f64>().map_err(|_| {
                Error::invalid(format!(
                    "--fault {spec:?}: {text:?} is not a rate; use a number from 0 to 1, e.g. {name}=0.02"
                ))
            })?,
        };
        if !(0.0..=1.0).contains(&rate) || rate.is_nan() {
            return Err(Error::invalid(format!("--fault {spec:?}: the rate must be from 0 to 1")));
        }
        self.rates.insert(fault, rate);
        Ok(())
    }

    /// Refuses faults that cannot apply to the target at all.
    pub fn check_target(&self, target: TargetKind) -> Result<()> {
        for fault in self.rates.keys() {
            let ok = [DeliveryMode::AtMostOnce, DeliveryMode::AtLeastOnce, DeliveryMode::EffectivelyOnce]
                .into_iter()
                .any(|mode| applies(*fault, target, mode));
            if !ok {
                let needs = match fault {
                    Fault::ServerKill => "--managed-server (verify must own the server process to kill it)",
                    Fault::PgDrop => "the PostgreSQL target (--store postgres://...)",
                    _ => "another target",
                };
                return Err(Error::invalid(format!("fault {fault} needs {needs}")));
            }
        }
        Ok(())
    }

    /// The rate of `fault` for this target and mode (0 when off or not applicable).
    pub fn rate(&self, fault: Fault, target: TargetKind, mode: DeliveryMode) -> f64 {
        if !applies(fault, target, mode) {
            return 0.0;
        }
        self.rates.get(&fault).copied().unwrap_or(0.0)
    }

    /// `name=rate, ...` for the report.
    pub fn describe(&self) -> String {
        if self.rates.is_empty() {
            return "none".into();
        }
        self.rates.iter().map(|(f, r)| format!("{f}={r}")).collect::<Vec<_>>().join(", ")
    }
}

/// A 64-bit mix (SplitMix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) fixed by its inputs: the same seed gives the same schedule.
pub fn roll(seed: u64, mode: DeliveryMode, value: u64, attempt: u32, fault: Fault) -> f64 {
    let mut h = mix(seed ^ 0x6f6e_6365_7120_7631);
    h = mix(h ^ mode as u64);
    h = mix(h ^ value);
    h = mix(h ^ u64::from(attempt));
    h = mix(h ^ (fault as u64).wrapping_mul(0x1000_0000_01b3));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// When faults fired and how often, for one mode's run.
#[derive(Debug, Default)]
pub struct FaultLog {
    counts: [AtomicU64; ALL.len()],
    /// Verify clock (Unix ms) of the last fault; `i64::MIN` for none.
    last_at_ms: AtomicI64,
}

impl FaultLog {
    /// An empty log.
    pub fn new() -> Self {
        FaultLog { counts: Default::default(), last_at_ms: AtomicI64::new(i64::MIN) }
    }

    /// Records that `fault` fired at `at_ms`.
    pub fn fired(&self, fault: Fault, at_ms: i64) {
        if let Some(count) = self.counts.get(fault as usize) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.last_at_ms.fetch_max(at_ms, Ordering::SeqCst);
    }

    /// When the last fault fired, if any did.
    pub fn last_at_ms(&self) -> Option<i64> {
        Some(self.last_at_ms.load(Ordering::SeqCst)).filter(|&t| t != i64::MIN)
    }

    /// How many times each fault fired (faults that never fired are left out).
    pub fn counts(&self) -> BTreeMap<Fault, u64> {
        ALL.into_iter()
            .zip(self.counts.iter())
            .map(|(f, c)| (f, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        let mut plan = FaultPlan::default();
        plan.set("stall=0.5").unwrap();
        plan.set("drop-ack").unwrap();
        assert_eq!(plan.rates.get(&Fault::Stall), Some(&0.5));
        assert_eq!(plan.rates.get(&Fault::DropAck), Some(&Fault::DropAck.default_rate()));
        for bad in ["nope=0.1", "stall=2", "stall=-0.1", "stall=x", "stall=NaN"] {
            assert!(plan.set(bad).is_err(), "{bad}");
        }
        let mut kill = FaultPlan::default();
        kill.set("server-kill=0.1").unwrap();
        assert!(kill.check_target(TargetKind::Embedded).is_err());
        assert!(kill.check_target(TargetKind::ManagedServer).is_ok());
    }

    #[test]
    fn rolls_are_repeatable_and_uniform_enough() {
        let a = roll(7, DeliveryMode::AtLeastOnce, 42, 1, Fault::Stall);
        assert_eq!(a, roll(7, DeliveryMode::AtLeastOnce, 42, 1, Fault::Stall));
        assert_ne!(a, roll(8, DeliveryMode::AtLeastOnce, 42, 1, Fault::Stall));
        let hits =
            (0..100_000).filter(|v| roll(1, DeliveryMode::EffectivelyOnce, *v, 1, Fault::DropAck) < 0.02).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
    }

    #[test]
    fn all_faults_leave_out_what_cannot_apply() {
        let embedded = FaultPlan::all(TargetKind::Embedded);
        assert!(!embedded.rates.contains_key(&Fault::ServerKill));
        assert!(!embedded.rates.contains_key(&Fault::PgDrop));
        assert!(!embedded.rates.contains_key(&Fault::CrashBeforeComplete));
        let pg = FaultPlan::all(TargetKind::Postgres);
        assert!(pg.rates.contains_key(&Fault::PgDrop) && pg.rates.contains_key(&Fault::CrashBeforeComplete));
        assert_eq!(embedded.rate(Fault::Stall, TargetKind::Embedded, DeliveryMode::AtMostOnce), 0.0);
    }
}
