//! Commits: one call that settles leased jobs and enqueues new ones, all or nothing, so that a
//! stage turning job A into jobs B and C cannot duplicate or lose B and C when it crashes between
//! the two (docs/design.md, "Next: commits").
//!
//! - A [`Commit`] lists settles (ack, nack, fail, release, each by lease token) and enqueues
//!   into any queues. If any lease is not current, nothing applies and the error lists the
//!   stale jobs ([`Error::LeasesLost`]).
//! - A [`CommitId`] makes a retry safe: the same id with the same content returns the first
//!   outcome, marked `replayed`; with other content it is a `Conflict`. [`Commit::digest`] is
//!   what "the same content" means, computed alike by every store.
//! - A [`Fence`] (a producer id and epoch) refuses a commit from an instance of a producer that
//!   a newer registration replaced ([`Error::Fenced`]); a commit may carry a producer's
//!   `checkpoint`, saved with it.
//!
//! This module holds the types; `store::validate::commit` holds the checks every store applies
//! before it touches storage, and the seam's `Store::commit` runs one.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::{COMMIT_ID_LEN_MAX, PRODUCER_ID_LEN_MAX};
use crate::settle::{Fail, Nack, Release};
use crate::{Enqueued, Error, JobId, LeaseRef, NewJob, QueueName, Result, Schedule};

/// Names a commit so that a retry of it is recognised: 1 to [`COMMIT_ID_LEN_MAX`] bytes of
/// visible ASCII (no spaces or control characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CommitId(String);

impl CommitId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > COMMIT_ID_LEN_MAX {
            return Err(Error::invalid(format!(
                "commit_id is {} bytes; it must be 1 to {COMMIT_ID_LEN_MAX}",
                id.len()
            )));
        }
        if let Some(bad) = id.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(Error::invalid(format!(
                "commit_id {id:?} contains {bad:?}; only visible ASCII (no spaces) is allowed"
            )));
        }
        Ok(CommitId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for CommitId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CommitId::new(String::deserialize(deserializer)?).map_err(|e| serde::de::Error::custom(e.detail()))
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A producer's stable name (its `transactional.id`): 1 to [`PRODUCER_ID_LEN_MAX`] bytes of
/// `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProducerId(String);

impl ProducerId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() || id.len() > PRODUCER_ID_LEN_MAX {
            return Err(Error::invalid(format!(
                "producer id is {} bytes; it must be 1 to {PRODUCER_ID_LEN_MAX}",
                id.len()
            )));
        }
        if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
            return Err(Error::invalid(format!(
                "producer id {id:?} contains {bad:?}; only [A-Za-z0-9._:-] is allowed"
            )));
        }
        Ok(ProducerId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ProducerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ProducerId::new(String::deserialize(deserializer)?).map_err(|e| serde::de::Error::custom(e.detail()))
    }
}

impl std::str::FromStr for ProducerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ProducerId::new(s)
    }
}

impl fmt::Display for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The producer instance a commit or enqueue comes from: refused once a newer epoch of the
/// same producer registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Fence {
    /// The producer.
    #[serde(rename = "id")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub producer: ProducerId,
    /// The epoch its registration returned (from 1).
    pub epoch: u64,
}

/// What a producer's registration returns: its new epoch, and the checkpoint of its last
/// commit (if any carried one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registration {
    /// The producer.
    #[serde(rename = "id")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub producer: ProducerId,
    /// The new epoch: every commit or enqueue with an older one is refused from now on.
    pub epoch: u64,
    /// The checkpoint saved by the producer's last commit that carried one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub checkpoint: Option<serde_json::Value>,
}

/// Jobs a commit enqueues into one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitEnqueue {
    /// The queue (created with the defaults if it does not exist, as an enqueue does).
    pub queue: QueueName,
    /// The jobs, in order.
    pub jobs: Vec<NewJob>,
}

/// Settles and enqueues that apply together or not at all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Commit {
    /// Makes a retry return the first outcome instead of failing on leases it already settled.
    pub commit_id: Option<CommitId>,
    /// The producer instance, fenced by its epoch.
    pub producer: Option<Fence>,
    /// Leases to ack.
    pub ack: Vec<LeaseRef>,
    /// Leases to nack.
    pub nack: Vec<Nack>,
    /// Leases to fail (dead now).
    pub fail: Vec<Fail>,
    /// Leases to release.
    pub release: Vec<Release>,
    /// Jobs to enqueue, per queue.
    pub enqueue: Vec<CommitEnqueue>,
    /// Saved with the commit as the producer's checkpoint (needs `producer`).
    pub checkpoint: Option<serde_json::Value>,
}

/// The jobs a commit enqueued into one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitEnqueued {
    /// The queue.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub queue: QueueName,
    /// Each job's id, and whether it was a duplicate (its dedup id seen within the window).
    pub jobs: Vec<Enqueued>,
}

/// What a commit did (`POST /v1/commits`' reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitOutcome {
    /// The jobs enqueued, in the order of the commit's `enqueue`.
    pub enqueued: Vec<CommitEnqueued>,
    /// True when this is a retry of a commit already applied: nothing applied now, and this is
    /// the first outcome.
    pub replayed: bool,
}

impl Commit {
    /// Every settle's lease, in the order ack, nack, fail, release.
    pub fn leases(&self) -> impl Iterator<Item = LeaseRef> + '_ {
        let ack = self.ack.iter().copied();
        let nack = self.nack.iter().map(|n| LeaseRef { id: n.id, lease_token: n.lease_token });
        let fail = self.fail.iter().map(|f| LeaseRef { id: f.id, lease_token: f.lease_token });
        let release = self.release.iter().map(|r| LeaseRef { id: r.id, lease_token: r.lease_token });
        ack.chain(nack).chain(fail).chain(release)
    }

    /// A digest of everything the commit does (not its id), the same in every store and
    /// version: a retry with the same `commit_id` must carry the same digest, or it is a
    /// conflict. SHA-256 over a length-prefixed encoding of each field, hex.
    pub fn digest(&self) -> String {
        let mut h = Encoder(Sha256::new());
        h.tag(b"onceq-commit-v1");
        match &self.producer {
            Some(fence) => {
                h.u64(1);
                h.bytes(fence.producer.as_str().as_bytes());
                h.u64(fence.epoch);
            }
            None => h.u64(0),
        }
        h.u64(self.ack.len() as u64);
        for a in &self.ack {
            h.lease(a.id, a.lease_token.as_bytes());
        }
        h.u64(self.nack.len() as u64);
        for n in &self.nack {
            h.lease(n.id, n.lease_token.as_bytes());
            h.opt_u64(n.delay_ms);
            h.opt_bytes(n.error.as_deref().map(str::as_bytes));
        }
        h.u64(self.fail.len() as u64);
        for f in &self.fail {
            h.lease(f.id, f.lease_token.as_bytes());
            h.bytes(f.error.as_bytes());
        }
        h.u64(self.release.len() as u64);
        for r in &self.release {
            h.lease(r.id, r.lease_token.as_bytes());
            h.opt_u64(r.delay_ms);
        }
        h.u64(self.enqueue.len() as u64);
        for batch in &self.enqueue {
            h.bytes(batch.queue.as_str().as_bytes());
            h.u64(batch.jobs.len() as u64);
            for job in &batch.jobs {
                h.job(job);
            }
        }
        match &self.checkpoint {
            Some(value) => h.bytes(&serde_json::to_vec(value).unwrap_or_default()),
            None => h.u64(u64::MAX),
        }
        h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Feeds fields into a hash, each with its length, so that no two commits encode alike.
struct Encoder(Sha256);

impl Encoder {
    fn tag(&mut self, tag: &[u8]) {
        self.0.update(tag);
    }
    fn u64(&mut self, n: u64) {
        self.0.update(n.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn opt_u64(&mut self, n: Option<u64>) {
        match n {
            Some(n) => {
                self.u64(1);
                self.u64(n);
            }
            None => self.u64(0),
        }
    }
    fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.u64(1);
                self.bytes(b);
            }
            None => self.u64(0),
        }
    }
    fn lease(&mut self, id: JobId, token: &[u8; 16]) {
        self.u64(id.get());
        self.0.update(token);
    }
    fn job(&mut self, job: &NewJob) {
        self.bytes(&job.payload);
        self.u64(job.headers.len() as u64);
        for (name, value) in &job.headers {
            self.bytes(name.as_bytes());
            self.bytes(value.as_bytes());
        }
        self.u64(u64::from(job.priority as u32));
        match job.schedule {
            Schedule::Now => self.u64(0),
            Schedule::Delay { delay_ms } => {
                self.u64(1);
                self.u64(delay_ms);
            }
            Schedule::At(at) => {
                self.u64(2);
                self.u64(at.as_millis() as u64);
            }
        }
        self.opt_u64(job.max_attempts.map(u64::from));
        self.opt_bytes(job.dedup_id.as_deref().map(str::as_bytes));
        self.opt_bytes(job.ordering_key.as_deref().map(str::as_bytes));
        match &job.unique {
            None => self.u64(0),
            Some(unique) => {
                self.u64(1 + u64::from(unique.by == crate::UniqueBy::Payload));
                self.u64(unique.held_while.code() as u64);
                self.opt_u64(unique.window_ms);
            }
        }
    }
}

/// A retry of commit `id`, recorded with `stored_digest` and `stored_outcome` (its JSON): the
/// first outcome, `replayed`, when `digest` (the retry's) is the same; `Conflict` when not.
/// Every store judges a live commit id by this.
pub fn replay(id: &CommitId, digest: &str, stored_digest: &str, stored_outcome: &str) -> Result<CommitOutcome> {
    if stored_digest != digest {
        return Err(Error::Conflict(format!(
            "commit_id {id} was used for a different commit (its settles, enqueues or checkpoint differ)"
        )));
    }
    let mut outcome = CommitOutcome::from_stored(stored_outcome)
        .map_err(|e| Error::Storage(format!("the stored outcome of commit {id} cannot be read: {e}")))?;
    outcome.replayed = true;
    Ok(outcome)
}

/// One queue's part of a stored outcome: its name and its jobs as runs.
type StoredBatch = (String, Vec<StoredRun>);
/// `(first id, count, duplicate)`: `count` jobs with consecutive ids from `first`, all new or
/// all duplicates.
type StoredRun = (u64, u64, bool);

impl CommitOutcome {
    /// The form a store keeps for replay: JSON `[[queue, [[first_id, count, duplicate], ...]], ...]`,
    /// each run covering jobs with consecutive ids. A commit's new jobs have consecutive ids, so
    /// a commit of 100 jobs keeps a few bytes instead of 100 objects (a row that fits its page,
    /// where the plain JSON needed overflow pages on the embedded store).
    pub fn to_stored(&self) -> String {
        let batches: Vec<StoredBatch> = self
            .enqueued
            .iter()
            .map(|batch| {
                let mut runs: Vec<StoredRun> = Vec::new();
                for job in &batch.jobs {
                    match runs.last_mut() {
                        Some((first, count, duplicate))
                            if *duplicate == job.duplicate && first.checked_add(*count) == Some(job.id.get()) =>
                        {
                            *count += 1;
                        }
                        _ => runs.push((job.id.get(), 1, job.duplicate)),
                    }
                }
                (batch.queue.as_str().to_owned(), runs)
            })
            .collect();
        serde_json::to_string(&batches).unwrap_or_default()
    }

    /// Reads what [`CommitOutcome::to_stored`] wrote, or an outcome kept as plain JSON (by
    /// builds before the compact form). `replayed` is false.
    pub fn from_stored(text: &str) -> std::result::Result<CommitOutcome, String> {
        if let Ok(outcome) = serde_json::from_str::<CommitOutcome>(text) {
            return Ok(outcome);
        }
        let batches: Vec<StoredBatch> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut enqueued = Vec::with_capacity(batches.len());
        for (queue, runs) in batches {
            let queue = QueueName::new(queue).map_err(|e| e.to_string())?;
            let mut jobs = Vec::new();
            for (first, count, duplicate) in runs {
                let end = first.checked_add(count).ok_or_else(|| format!("run {first}+{count} overflows"))?;
                jobs.extend((first..end).map(|id| Enqueued { id: JobId::new(id), duplicate }));
            }
            enqueued.push(CommitEnqueued { queue, jobs });
        }
        Ok(CommitOutcome { enqueued, replayed: false })
    }
}

/// Judges `fence` against its producer's `current` epoch as stored (`None`: never registered):
/// `Fenced` when a newer one registered, invalid when this one was never issued.
pub fn check_fence(fence: &Fence, current: Option<i64>) -> Result<()> {
    match current.map(|e| e.max(0) as u64) {
        Some(current) if current > fence.epoch => Err(fenced(fence, current)),
        Some(current) if current == fence.epoch => Ok(()),
        _ => Err(Error::invalid(format!(
            "producer {} epoch {} was never issued: register the producer first",
            fence.producer, fence.epoch
        ))),
    }
}

impl Registration {
    /// A registration as a store keeps it: the epoch (0 when never registered) and the
    /// checkpoint's JSON text.
    pub fn from_stored(producer: &ProducerId, epoch: i64, checkpoint: Option<&str>) -> Result<Registration> {
        let checkpoint = checkpoint
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Storage(format!("the checkpoint of producer {producer} cannot be read: {e}")))?;
        Ok(Registration { producer: producer.clone(), epoch: epoch.max(0) as u64, checkpoint })
    }
}

/// Counts a commit's result in the metrics (`onceq_commits_total` by outcome, and
/// `onceq_producer_fenced_total` for a fenced producer). Every store calls it once per commit.
pub fn record(fence: Option<&Fence>, result: &Result<CommitOutcome>) {
    use crate::metrics as names;
    let outcome = match result {
        Ok(outcome) if outcome.replayed => "replayed",
        Ok(_) => "applied",
        Err(Error::LeasesLost(_) | Error::LeaseLost(_) | Error::JobNotFound(_)) => "lease_lost",
        Err(Error::Fenced(_)) => "fenced",
        Err(Error::Conflict(_)) => "conflict",
        Err(Error::InvalidRequest(_) | Error::PayloadTooLarge(_) | Error::QueueNotFound(_)) => "invalid",
        Err(_) => "error",
    };
    metrics::counter!(names::COMMITS, "outcome" => outcome).increment(1);
    if let (Some(fence), Err(Error::Fenced(_))) = (fence, result) {
        metrics::counter!(names::PRODUCER_FENCED, "producer" => fence.producer.as_str().to_owned()).increment(1);
    }
}

/// Counts a producer's registration (`onceq_producer_registrations_total`).
pub fn record_registration(producer: &ProducerId) {
    metrics::counter!(crate::metrics::PRODUCER_REGISTRATIONS, "producer" => producer.as_str().to_owned()).increment(1);
}

/// The error of a commit whose leases `stale` are not current: nothing of it applied.
pub fn leases_lost(mut stale: Vec<JobId>) -> Error {
    stale.sort_unstable();
    stale.dedup();
    Error::LeasesLost(stale)
}

/// The error of a commit or enqueue from `fence`, whose producer registered `current` since.
pub fn fenced(fence: &Fence, current: u64) -> Error {
    Error::Fenced(format!(
        "producer {} epoch {} was fenced: epoch {current} registered since; this instance must stop",
        fence.producer, fence.epoch
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::LeaseToken;

    fn lease(id: u64) -> LeaseRef {
        LeaseRef { id: JobId::new(id), lease_token: LeaseToken::from_bytes([id as u8; 16]) }
    }

    fn stage() -> Commit {
        Commit {
            commit_id: Some(CommitId::new("stage-1:job-9").unwrap()),
            ack: vec![lease(9)],
            enqueue: vec![
                CommitEnqueue { queue: QueueName::new("b").unwrap(), jobs: vec![NewJob::new("b-of-9")] },
                CommitEnqueue { queue: QueueName::new("c").unwrap(), jobs: vec![NewJob::new("c-of-9")] },
            ],
            ..Commit::default()
        }
    }

    #[test]
    fn a_stage_commit_is_valid_and_bad_ones_say_why() {
        assert_eq!(crate::store::validate::commit(&stage()), Ok(()));
        let bad = |c: Commit| crate::store::validate::commit(&c).unwrap_err().to_string();
        assert!(bad(Commit::default()).contains("empty"));
        let mut twice = stage();
        twice.release.push(Release { id: JobId::new(9), lease_token: lease(9).lease_token, delay_ms: None });
        assert!(bad(twice).contains("settled twice"));
        let mut same_queue = stage();
        same_queue.enqueue[1].queue = QueueName::new("b").unwrap();
        assert!(bad(same_queue).contains("appears twice"));
        let mut orphan = stage();
        orphan.checkpoint = Some(serde_json::json!({"offset": 7}));
        assert!(bad(orphan).contains("producer"));
        let mut big = stage();
        big.enqueue[0].jobs = vec![NewJob::new(vec![0u8; 1024 * 1024]); 17];
        assert!(matches!(crate::store::validate::commit(&big), Err(Error::PayloadTooLarge(_))));
        let mut empty_batch = stage();
        empty_batch.enqueue[0].jobs.clear();
        assert!(bad(empty_batch).contains("enqueue into b"));
        let mut epoch_zero = stage();
        epoch_zero.producer = Some(Fence { producer: ProducerId::new("ingest").unwrap(), epoch: 0 });
        assert!(bad(epoch_zero).contains("epoch 0"));
        assert!(CommitId::new("has space").is_err() && CommitId::new("").is_err());
        assert!(CommitId::new("x".repeat(COMMIT_ID_LEN_MAX + 1)).is_err());
        assert!(ProducerId::new("ingest/1").is_err() && ProducerId::new("ingest:eu-1.a_b").is_ok());
    }

    #[test]
    fn the_digest_covers_what_the_commit_does_and_not_its_id() {
        let a = stage();
        let mut renamed = stage();
        renamed.commit_id = Some(CommitId::new("other").unwrap());
        assert_eq!(a.digest(), renamed.digest());
        assert_eq!(a.digest().len(), 64);
        let changes: Vec<fn(&mut Commit)> = vec![
            |c| c.ack[0] = lease(10),
            |c| c.enqueue[0].jobs[0].payload = b"other".to_vec(),
            |c| c.enqueue[0].jobs[0].dedup_id = Some("d".into()),
            |c| c.enqueue[0].jobs[0].priority = -1,
            |c| c.enqueue.swap(0, 1),
            |c| c.checkpoint = Some(serde_json::json!(1)),
            |c| {
                let moved = c.ack.pop().unwrap();
                c.release.push(Release { id: moved.id, lease_token: moved.lease_token, delay_ms: None });
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = stage();
            change(&mut changed);
            assert_ne!(changed.digest(), a.digest(), "change {i}");
        }
    }

    #[test]
    fn a_stored_outcome_keeps_runs_of_ids_and_reads_back_whole() {
        let job = |id: u64, duplicate: bool| Enqueued { id: JobId::new(id), duplicate };
        let outcome = CommitOutcome {
            enqueued: vec![
                CommitEnqueued {
                    queue: QueueName::new("b").unwrap(),
                    jobs: (10..110)
                        .map(|id| job(id, false))
                        .chain([job(3, true), job(4, true), job(110, false)])
                        .collect(),
                },
                CommitEnqueued { queue: QueueName::new("c").unwrap(), jobs: vec![] },
            ],
            replayed: false,
        };
        let stored = outcome.to_stored();
        assert_eq!(stored, r#"[["b",[[10,100,false],[3,2,true],[110,1,false]]],["c",[]]]"#);
        assert_eq!(CommitOutcome::from_stored(&stored).unwrap(), outcome);
        // An outcome kept as plain JSON by an earlier build still reads.
        let plain = serde_json::to_string(&outcome).unwrap();
        assert_eq!(CommitOutcome::from_stored(&plain).unwrap(), outcome);
        assert!(CommitOutcome::from_stored(r#"[["b",[[18446744073709551615,2,false]]]]"#).is_err());
        assert!(CommitOutcome::from_stored("{").is_err());
    }

    #[test]
    fn stores_judge_replays_fences_and_stored_producers_alike() {
        let id = CommitId::new("c").unwrap();
        let outcome = r#"{"enqueued":[],"replayed":false}"#;
        assert!(replay(&id, "d1", "d1", outcome).unwrap().replayed);
        assert!(matches!(replay(&id, "d2", "d1", outcome), Err(Error::Conflict(_))));
        assert!(matches!(replay(&id, "d1", "d1", "not json"), Err(Error::Storage(_))));
        let fence = Fence { producer: ProducerId::new("p").unwrap(), epoch: 2 };
        assert_eq!(check_fence(&fence, Some(2)), Ok(()));
        assert!(matches!(check_fence(&fence, Some(3)), Err(Error::Fenced(_))));
        assert!(matches!(check_fence(&fence, Some(1)), Err(Error::InvalidRequest(_))));
        assert!(matches!(check_fence(&fence, None), Err(Error::InvalidRequest(_))));
        let p = ProducerId::new("p").unwrap();
        let stored = Registration::from_stored(&p, 4, Some(r#"{"offset":9}"#)).unwrap();
        assert_eq!((stored.epoch, stored.checkpoint), (4, Some(serde_json::json!({"offset": 9}))));
        assert!(matches!(Registration::from_stored(&p, 1, Some("{")), Err(Error::Storage(_))));
    }

    #[test]
    fn stale_leases_are_listed_once_in_order() {
        let e = leases_lost(vec![JobId::new(5), JobId::new(2), JobId::new(5)]);
        assert_eq!(e, Error::LeasesLost(vec![JobId::new(2), JobId::new(5)]));
        assert_eq!(e.kind(), crate::ErrorKind::LeaseLost);
        // Over HTTP: 409 `lease_lost` with the jobs, read back as the same error.
        let body = crate::api::ErrorBody::from_error(&e);
        assert_eq!(body.error.code, "lease_lost");
        let wire = serde_json::to_value(&body).unwrap();
        assert_eq!(wire["error"]["jobs"], serde_json::json!(["2", "5"]));
        let back: crate::api::ErrorBody = serde_json::from_value(wire).unwrap();
        assert_eq!(back.into_error(None), e);
        let fence = Fence { producer: ProducerId::new("ingest").unwrap(), epoch: 3 };
        let f = fenced(&fence, 4);
        assert_eq!(crate::api::error_code(f.kind()), "fenced");
        assert_eq!(crate::api::ErrorBody::from_error(&f).into_error(None), f);
        // A single lease lost keeps its old form.
        let one = crate::api::ErrorBody::from_error(&Error::LeaseLost(JobId::new(9)));
        assert!(serde_json::to_value(&one).unwrap()["error"].get("jobs").is_none());
    }
}
