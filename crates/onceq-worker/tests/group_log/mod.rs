//! What the consumer-group tests record of a run (every handler run and every hook call) and
//! the checks they share: per-key order, no partition worked by two workers at once, and every
//! run inside an assignment of its partition to its worker.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use onceq_core::{JobId, QueueName};
use onceq_worker::PartitionHooks;

/// One handler run.
#[derive(Debug, Clone)]
pub struct Run {
    pub worker: usize,
    pub partition: u32,
    pub key: String,
    pub seq: usize,
    pub start: Instant,
    pub end: Instant,
}

/// One hook call.
#[derive(Debug, Clone)]
pub struct Hook {
    pub worker: usize,
    pub assigned: bool,
    pub partitions: Vec<u32>,
    pub at: Instant,
}

#[derive(Default)]
pub struct Log {
    pub runs: Vec<Run>,
    pub hooks: Vec<Hook>,
    /// Job ids run so far, to catch a second run.
    ran: BTreeSet<JobId>,
}

impl Log {
    /// Records a run of job `id`, failing on a second run of it; returns the runs so far.
    pub fn record(&mut self, id: JobId, run: Run) -> usize {
        assert!(self.ran.insert(id), "job {id} ran twice");
        self.runs.push(run);
        self.runs.len()
    }

    /// Each key's jobs ran in enqueue order, `0..jobs_per_key` by their payloads.
    pub fn assert_per_key_order(&self, jobs_per_key: usize) {
        let mut by_key: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        for run in &self.runs {
            by_key.entry(&run.key).or_default().push(run);
        }
        for (key, runs) in &mut by_key {
            runs.sort_by_key(|r| r.start);
            assert_eq!(runs.iter().map(|r| r.seq).collect::<Vec<_>>(), (0..jobs_per_key).collect::<Vec<_>>(), "{key}");
        }
    }

    /// No two workers ran jobs of one partition at the same time: by start, a run of one worker
    /// begins after every earlier run of the others in that partition ended. Returns how many
    /// (partition, worker) pairs ran jobs: more than the partitions when some moved.
    pub fn assert_partitions_never_shared(&self) -> usize {
        let mut by_partition: BTreeMap<u32, Vec<&Run>> = BTreeMap::new();
        for run in &self.runs {
            by_partition.entry(run.partition).or_default().push(run);
        }
        let mut owners_over_time = 0;
        for (partition, runs) in &mut by_partition {
            runs.sort_by_key(|r| r.start);
            let mut last_end: BTreeMap<usize, Instant> = BTreeMap::new();
            for run in runs.iter() {
                for (other, end) in &last_end {
                    assert!(
                        *other == run.worker || *end <= run.start,
                        "partition {partition}: worker {} started a job while worker {other} still ran one",
                        run.worker
                    );
                }
                let end = last_end.entry(run.worker).or_insert(run.end);
                *end = (*end).max(run.end);
            }
            owners_over_time += last_end.len();
        }
        owners_over_time
    }

    /// Every run of workers `0..workers` lies inside an assignment of its partition to its
    /// worker, from `on_assigned` to `on_revoked`; a worker is never assigned a partition twice
    /// without a revocation between, nor revoked one it does not have, no hook names no
    /// partition, and at the end every worker revoked all it had.
    pub fn assert_runs_inside_assignments(&self, workers: usize) {
        let mut spans: BTreeMap<(usize, u32), Vec<(Instant, Instant)>> = BTreeMap::new();
        for index in 0..workers {
            let mut open: BTreeMap<u32, Instant> = BTreeMap::new();
            for hook in self.hooks.iter().filter(|h| h.worker == index) {
                assert!(!hook.partitions.is_empty(), "worker {index}: a hook with no partition");
                for p in &hook.partitions {
                    if hook.assigned {
                        assert!(open.insert(*p, hook.at).is_none(), "worker {index} was assigned {p} twice");
                    } else {
                        let since =
                            open.remove(p).unwrap_or_else(|| panic!("worker {index} revoked {p} it did not have"));
                        spans.entry((index, *p)).or_default().push((since, hook.at));
                    }
                }
            }
            assert!(open.is_empty(), "worker {index} ended with partitions {open:?} not revoked");
        }
        for run in &self.runs {
            let inside = spans
                .get(&(run.worker, run.partition))
                .is_some_and(|s| s.iter().any(|(from, to)| *from <= run.start && run.end <= *to));
            assert!(inside, "worker {} ran a job of partition {} outside its assignment", run.worker, run.partition);
        }
    }

    /// The partitions in which `worker` ran jobs.
    pub fn partitions_run_by(&self, worker: usize) -> BTreeSet<u32> {
        self.runs.iter().filter(|r| r.worker == worker).map(|r| r.partition).collect()
    }
}

/// Hooks that record each call in the log, for queue `queue` only.
pub struct Recorder {
    pub worker: usize,
    pub queue: &'static str,
    pub log: Arc<Mutex<Log>>,
}

impl Recorder {
    fn push(&self, queue: &QueueName, assigned: bool, partitions: &[u32]) {
        assert_eq!(queue.as_str(), self.queue);
        let hook = Hook { worker: self.worker, assigned, partitions: partitions.to_vec(), at: Instant::now() };
        self.log.lock().unwrap().hooks.push(hook);
    }
}

#[async_trait]
impl PartitionHooks for Recorder {
    async fn on_assigned(&self, queue: &QueueName, partitions: &[u32]) {
        self.push(queue, true, partitions);
    }

    async fn on_revoked(&self, queue: &QueueName, partitions: &[u32]) {
        self.push(queue, false, partitions);
    }
}
