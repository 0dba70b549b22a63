//! Flow limits (docs/semantics.md, "Flow limits"; Invariant 15): a queue's rate limit and
//! in-flight limit, enforced at lease time for every consumer together, and its depth limit,
//! enforced at enqueue and commit. The invariant checks record every lease with the store's
//! clock reading and check the limits over every window.

use std::time::{Duration, Instant};

use onceq_core::commit::{Commit, CommitEnqueue};
use onceq_core::flow::{KeyBy, RateLimit};
use onceq_core::limits::{IN_FLIGHT_MAX, MAX_DEPTH_RETRY_AFTER_MS, QUEUE_DEPTH_MAX, RATE_BURST_MAX};

use super::*;

/// A patch setting a rate limit.
fn rate(per_second: f64, burst: u32) -> QueueConfigPatch {
    QueueConfigPatch { rate_limit: Some(Some(RateLimit { per_second, burst })), ..QueueConfigPatch::default() }
}

/// A patch setting an in-flight limit and a visibility timeout.
fn in_flight(max: u32, visibility_timeout_ms: u64) -> QueueConfigPatch {
    QueueConfigPatch {
        max_in_flight: Some(Some(max)),
        visibility_timeout_ms: Some(visibility_timeout_ms),
        ..QueueConfigPatch::default()
    }
}

/// `n` jobs.
fn jobs(n: usize) -> Vec<NewJob> {
    (0..n).map(|i| NewJob::new(format!("{i}"))).collect()
}

/// A small deterministic sequence (xorshift), so that a failure replays.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Asserts Invariant 15's rate half over every window of `leases` (store time in ms, jobs):
/// the jobs leased from `t0` to `t1`, both included, are at most `burst + per_second × (t1 - t0)`.
fn assert_rate_held(leases: &[(i64, usize)], per_second: f64, burst: u32) {
    for (i, &(t0, _)) in leases.iter().enumerate() {
        let mut count = 0;
        for &(t1, n) in &leases[i..] {
            count += n;
            let bound = f64::from(burst) + per_second * (t1 - t0) as f64 / 1000.0;
            assert!(
                count as f64 <= bound + 1e-9,
                "{count} jobs leased from {t0} ms to {t1} ms; the limit is {bound} ({per_second}/s, burst {burst})"
            );
        }
    }
}

/// Config fields and their limits: each value is kept as given, `null` removes it, and a value
/// outside its range is refused with an error naming the field.
pub async fn flow_limits_are_validated_and_cleared<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("limited");
    let patch = QueueConfigPatch {
        rate_limit: Some(Some(RateLimit { per_second: 0.5, burst: RATE_BURST_MAX })),
        max_in_flight: Some(Some(IN_FLIGHT_MAX)),
        max_depth: Some(Some(QUEUE_DEPTH_MAX)),
        ..QueueConfigPatch::default()
    };
    let config = f.upsert(&q, patch).await;
    assert_eq!(config.rate_limit, Some(RateLimit { per_second: 0.5, burst: RATE_BURST_MAX }));
    assert_eq!((config.max_in_flight, config.max_depth), (Some(IN_FLIGHT_MAX), Some(QUEUE_DEPTH_MAX)));
    assert_eq!(f.store.queue_get(&q).await.unwrap().config, config);
    for (patch, field) in [
        (rate(0.0, 1), "per_second"),
        (rate(2e6, 1), "per_second"),
        (rate(1.0, 0), "burst"),
        (rate(1.0, RATE_BURST_MAX + 1), "burst"),
        (QueueConfigPatch { max_in_flight: Some(Some(0)), ..QueueConfigPatch::default() }, "max_in_flight"),
        (QueueConfigPatch { max_depth: Some(Some(QUEUE_DEPTH_MAX + 1)), ..QueueConfigPatch::default() }, "max_depth"),
    ] {
        match f.store.queue_upsert(&q, patch).await {
            Err(Error::InvalidRequest(message)) => assert!(message.contains(field), "{field}: {message}"),
            other => panic!("{field}: expected InvalidRequest, got {other:?}"),
        }
    }
    assert_eq!(f.store.queue_get(&q).await.unwrap().config, config, "a refused patch changed the config");
    let clear = QueueConfigPatch {
        rate_limit: Some(None),
        max_in_flight: Some(None),
        max_depth: Some(None),
        ..QueueConfigPatch::default()
    };
    assert_eq!(f.upsert(&q, clear).await, defaults());
}

/// A rate-limited lease returns what the bucket allows: a whole burst after a quiet spell, then
/// one job per interval, fewer than asked and possibly none.
pub async fn a_rate_limited_lease_returns_what_the_bucket_allows<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("paced");
    f.upsert(&q, rate(10.0, 3)).await;
    f.enqueue(&q, jobs(30)).await;
    assert_eq!(f.lease(&q, 10, None).await.len(), 3, "a full bucket grants its burst");
    assert_eq!(f.lease(&q, 10, None).await.len(), 0, "an empty bucket grants nothing");
    clock.advance(99);
    assert_eq!(f.lease(&q, 10, None).await.len(), 0, "the next token is due 100 ms after the burst");
    clock.advance(1);
    assert_eq!(f.lease(&q, 10, None).await.len(), 1);
    clock.advance(250);
    assert_eq!(f.lease(&q, 10, None).await.len(), 2, "250 ms bring two tokens");
    clock.advance(60_000);
    assert_eq!(f.lease(&q, 10, None).await.len(), 3, "a quiet minute refills the burst, no more");
    // A queue without limits beside it is not held back.
    let free = queue("free");
    f.enqueue(&free, jobs(10)).await;
    assert_eq!(f.lease(&free, 10, None).await.len(), 10);
    assert_eq!(f.lease(&q, 10, None).await.len(), 0, "the refilled burst is spent");
}

/// Invariant 15, rate: several consumers lease concurrently, at uneven times and batch sizes,
/// for 20 s of store time; over every window of length T the jobs leased are at most
/// burst + rate × T, and the consumers together get close to the rate.
pub async fn invariant_15_rate_holds_over_every_window<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("paced");
    let (per_second, burst) = (50.0, 10);
    f.upsert(&q, rate(per_second, burst)).await;
    for _ in 0..2 {
        f.enqueue(&q, jobs(1000)).await;
    }
    let mut steps = Steps(0x9e37_79b9_7f4a_7c15);
    let mut leases: Vec<(i64, usize)> = Vec::new();
    let started = f.now();
    while f.now().ms_since(started) < 20_000 {
        clock.advance(steps.next(60));
        let at = f.now().as_millis();
        let max_jobs = 1 + u32::try_from(steps.next(8)).unwrap();
        let options = LeaseOptions { max_jobs, visibility_timeout_ms: None, wait_ms: 0 };
        let got = lease_concurrently(&f.store, &q, 3, options).await;
        if !got.is_empty() {
            leases.push((at, got.len()));
        }
        let acks: Vec<_> = got.iter().map(LeasedJob::lease).collect();
        if !acks.is_empty() {
            assert!(f.store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
        }
    }
    assert_rate_held(&leases, per_second, burst);
    let total: usize = leases.iter().map(|l| l.1).sum();
    let allowed = f64::from(burst) + per_second * f.now().ms_since(started) as f64 / 1000.0;
    assert!(total as f64 >= 0.9 * allowed, "{total} jobs leased where {allowed} were allowed: the limit starves");
}

/// Invariant 15, in flight: live leases never exceed `max_in_flight`, through batches, acks,
/// nacks, expiries (an expired lease stops counting when it expires) and redeliveries (a
/// redelivered job counts again).
pub async fn invariant_15_in_flight_holds_with_expiry_and_redelivery<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("bounded");
    f.upsert(&q, in_flight(3, 1_000)).await;
    f.enqueue(&q, jobs(20)).await;
    // Every live lease as the test knows it: (job, its expiry).
    let mut live: Vec<(LeasedJob, Timestamp)> = Vec::new();
    let check = |live: &mut Vec<(LeasedJob, Timestamp)>, now: Timestamp| {
        live.retain(|(_, expires_at)| *expires_at > now);
        assert!(live.len() <= 3, "{} live leases; max_in_flight is 3", live.len());
    };
    let first = f.lease(&q, 10, None).await;
    assert_eq!(first.len(), 3, "a lease takes what the limit allows");
    live.extend(first.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());
    assert_eq!(f.lease(&q, 10, None).await, Vec::<LeasedJob>::new(), "no slot is free");
    assert_eq!(f.stats(&q).await.leased, 3);

    f.store.ack(first[0].lease()).await.unwrap();
    live.retain(|(j, _)| j.id != first[0].id);
    let second = f.lease(&q, 10, None).await;
    assert_eq!(second.len(), 1, "an ack frees one slot");
    live.extend(second.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());

    f.store.nack(first[1].lease(), Some(0), Some("again")).await.unwrap();
    live.retain(|(j, _)| j.id != first[1].id);
    let third = f.lease(&q, 10, None).await;
    assert_eq!(third.len(), 1, "a nack frees one slot");
    live.extend(third.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());

    // Every lease expires: the jobs are redelivered and count again, still at most three.
    clock.advance(1_000);
    check(&mut live, f.now());
    assert!(live.is_empty());
    let redelivered = f.lease(&q, 10, None).await;
    assert_eq!(redelivered.len(), 3, "expired leases stopped counting");
    live.extend(redelivered.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());
    assert_eq!(f.lease(&q, 10, None).await, Vec::<LeasedJob>::new(), "redeliveries count again");

    // Uneven steps: leases with short and long visibility, extends, acks and expiries.
    let mut steps = Steps(0x2545_f491_4f6c_dd1d);
    for _ in 0..60 {
        clock.advance(steps.next(400));
        check(&mut live, f.now());
        match steps.next(3) {
            0 if !live.is_empty() => {
                let (job, _) = live.remove(usize::try_from(steps.next(live.len() as u64)).unwrap());
                // The lease may have expired between the check and now: then the ack is refused.
                let _ = f.store.ack(job.lease()).await;
            }
            1 if !live.is_empty() => {
                let (job, expires_at) = &mut live[0];
                if let Ok(at) = f.store.extend(job.lease(), 700).await {
                    *expires_at = at;
                }
            }
            _ => {
                let visibility = 200 + steps.next(1_200);
                let got = f.lease(&q, 1 + u32::try_from(steps.next(4)).unwrap(), Some(visibility)).await;
                live.extend(got.iter().map(|j| (j.clone(), j.lease_expires_at)));
            }
        }
        check(&mut live, f.now());
        assert!(f.stats(&q).await.leased <= 3);
    }
    if f.stats(&q).await.ready == 0 {
        f.enqueue(&q, jobs(1)).await;
    }
    clock.advance(2_000);
    assert!(!f.lease(&q, 10, None).await.is_empty(), "once every lease expired, the queue leases again");
}

/// A long poll held back by a limit sleeps until the limit lets it go: a freed in-flight slot
/// wakes it, and a rate-limited one returns when the next token is due, not at once and not at
/// the end of its wait.
pub async fn a_held_back_long_poll_waits_for_the_limit<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("bounded");
    f.upsert(&q, in_flight(1, 60_000)).await;
    f.enqueue(&q, jobs(3)).await;
    let held = f.lease_one(&q, None).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    f.store.ack(held.lease()).await.unwrap();
    let (got, elapsed) = within("the waiting lease", waiting).await.unwrap();
    assert_eq!(got.len(), 1, "the freed slot's lease got a job");
    assert!(elapsed >= Duration::from_millis(200) && elapsed < PROMPTLY, "woke after {elapsed:?}");

    let paced = queue("paced");
    f.upsert(&paced, rate(1.0, 1)).await;
    f.enqueue(&paced, jobs(3)).await;
    assert_eq!(f.lease(&paced, 5, None).await.len(), 1);
    let started = Instant::now();
    let options = LeaseOptions { max_jobs: 5, visibility_timeout_ms: None, wait_ms: LONG_WAIT_MS };
    let got = within("the paced lease", f.store.job_lease(&paced, options)).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(got.len(), 1, "the next token brings one job");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < PROMPTLY,
        "the lease returned after {elapsed:?}; the next token was due after about a second"
    );
}

/// `max_depth` refuses an enqueue that would pass it, whole (nothing enqueued), with
/// `RateLimited` and a retry-after; dead jobs do not count; acks make room; a commit that would
/// pass it changes nothing.
pub async fn max_depth_refuses_a_batch_whole_and_accepts_again_after_acks<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("bounded");
    f.upsert(&q, QueueConfigPatch { max_depth: Some(Some(5)), ..QueueConfigPatch::default() }).await;
    f.enqueue(&q, jobs(3)).await;
    let refused = |depth: u64, adding: usize| Error::RateLimited {
        message: format!(
            "queue bounded holds {depth} jobs and max_depth is 5: these {adding} jobs would pass it, so none was \
             enqueued; retry after the consumers catch up"
        ),
        retry_after_ms: MAX_DEPTH_RETRY_AFTER_MS,
    };
    assert_eq!(f.store.job_enqueue(&q, jobs(3)).await, Err(refused(3, 3)));
    assert_eq!(f.stats(&q).await.ready, 3, "a refused batch enqueued nothing");
    f.enqueue(&q, jobs(2)).await;
    assert_eq!(f.store.enqueue(&q, NewJob::new("one more")).await, Err(refused(5, 1)));

    // Leased jobs count; acked and dead ones do not.
    let leased = f.lease(&q, 3, None).await;
    assert_eq!(f.store.job_enqueue(&q, jobs(1)).await, Err(refused(5, 1)), "leased jobs count");
    f.store.ack(leased[0].lease()).await.unwrap();
    f.store.fail(leased[1].lease(), "bad").await.unwrap();
    f.enqueue(&q, jobs(2)).await;
    assert_eq!(f.stats(&q).await.dead, 1);

    // A commit's enqueues are judged after its own acks and fails: one that would still pass
    // the limit applies nothing, its settles and its other queues included.
    let other = queue("other");
    let commit = |n: usize| Commit {
        ack: vec![leased[2].lease()],
        enqueue: vec![
            CommitEnqueue { queue: other.clone(), jobs: jobs(1) },
            CommitEnqueue { queue: q.clone(), jobs: jobs(n) },
        ],
        ..Commit::default()
    };
    assert_eq!(f.store.commit(commit(2)).await, Err(refused(4, 2)));
    assert_eq!(f.stats(&q).await.leased, 1, "the refused commit's ack was not applied");
    match f.store.queue_get(&other).await {
        Err(Error::QueueNotFound(_)) => {}
        other_queue => {
            assert_eq!(other_queue.unwrap().stats.ready, 0, "the refused commit enqueued into another queue")
        }
    }
    f.store.commit(commit(1)).await.unwrap();
    assert_eq!((f.stats(&q).await.ready, f.stats(&q).await.leased), (5, 0));

    // Removing the limit accepts again.
    f.upsert(&q, QueueConfigPatch { max_depth: Some(None), ..QueueConfigPatch::default() }).await;
    f.enqueue(&q, jobs(10)).await;
}

/// A consumer group's member leases under the same limits as everyone: its leases and plain
/// leases of the queue share one bucket and one in-flight count.
pub async fn group_leases_pass_the_same_limits<B: Backend>(backend: &B) {
    use onceq_core::group::{GroupName, JoinOptions};
    use onceq_core::Ordering;

    let (f, clock) = open_manual(backend).await;
    let q = queue("keyed");
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(4),
        max_in_flight: Some(Some(3)),
        rate_limit: Some(Some(RateLimit { per_second: 10.0, burst: 2 })),
        ..QueueConfigPatch::default()
    };
    f.upsert(&q, patch).await;
    let keyed: Vec<NewJob> = (0..20).map(|i| NewJob::new(format!("{i}")).ordering_key(format!("k{i}"))).collect();
    f.enqueue(&q, keyed).await;
    let g = GroupName::new("workers").unwrap();
    let member = f.store.group_join(&q, &g, JoinOptions::default()).await.unwrap().member_id;
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    assert_eq!(f.store.group_lease(&q, &g, &member, options).await.unwrap().len(), 2, "the burst");
    assert_eq!(f.lease(&q, 10, None).await.len(), 0, "the group lease spent the bucket");
    clock.advance(100);
    assert_eq!(f.lease(&q, 10, None).await.len(), 1, "one token after 100 ms, taken by a plain lease");
    clock.advance(1_000);
    let got = f.store.group_lease(&q, &g, &member, options).await.unwrap();
    assert_eq!(got.len(), 0, "three leases are live: no in-flight slot is free for the member");
}

/// A patch setting a rate limit with one bucket per key.
fn rate_by(per_second: f64, burst: u32, by: KeyBy) -> QueueConfigPatch {
    QueueConfigPatch { rate_limit_by: Some(Some(by)), ..rate(per_second, burst) }
}

/// A job with header `account`, or none.
fn account_job(i: usize, account: Option<&str>) -> NewJob {
    let job = NewJob::new(format!("{i}"));
    match account {
        Some(a) => job.header("account", a),
        None => job,
    }
}

/// The `account` header of a leased job.
fn account_of(job: &LeasedJob) -> Option<&str> {
    job.headers.get("account").map(String::as_str)
}

/// How many of `got` each account has (`None`: without the header).
fn per_account(got: &[LeasedJob]) -> std::collections::BTreeMap<Option<String>, usize> {
    let mut out = std::collections::BTreeMap::new();
    for job in got {
        *out.entry(account_of(job).map(str::to_string)).or_insert(0) += 1;
    }
    out
}

/// Per-key fields: kept as given, shown by `queue_get`, `null` clears them; a `rate_limit_by`
/// without a `rate_limit` and a `max_in_flight_per_key` outside its range are refused naming the
/// field.
pub async fn per_key_limits_are_validated_and_cleared<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("keyed");
    let patch = QueueConfigPatch {
        max_in_flight_per_key: Some(Some(IN_FLIGHT_MAX)),
        ..rate_by(2.0, 3, KeyBy::Header("account".into()))
    };
    let config = f.upsert(&q, patch).await;
    assert_eq!(config.rate_limit_by, Some(KeyBy::Header("account".into())));
    assert_eq!(config.max_in_flight_per_key, Some(IN_FLIGHT_MAX));
    assert_eq!(f.store.queue_get(&q).await.unwrap().config, config);
    let other = queue("other");
    for (patch, field) in [
        (
            QueueConfigPatch { rate_limit_by: Some(Some(KeyBy::OrderingKey)), ..QueueConfigPatch::default() },
            "rate_limit_by",
        ),
        (
            QueueConfigPatch { max_in_flight_per_key: Some(Some(0)), ..QueueConfigPatch::default() },
            "max_in_flight_per_key",
        ),
        (
            QueueConfigPatch { max_in_flight_per_key: Some(Some(IN_FLIGHT_MAX + 1)), ..QueueConfigPatch::default() },
            "max_in_flight_per_key",
        ),
    ] {
        match f.store.queue_upsert(&other, patch).await {
            Err(Error::InvalidRequest(message)) => assert!(message.contains(field), "{field}: {message}"),
            got => panic!("{field}: expected InvalidRequest, got {got:?}"),
        }
    }
    // Removing the rate limit and leaving its keying is refused; both together are not.
    match f.store.queue_upsert(&q, QueueConfigPatch { rate_limit: Some(None), ..QueueConfigPatch::default() }).await {
        Err(Error::InvalidRequest(message)) => assert!(message.contains("rate_limit_by"), "{message}"),
        got => panic!("expected InvalidRequest, got {got:?}"),
    }
    assert_eq!(f.store.queue_get(&q).await.unwrap().config, config, "a refused patch changed the config");
    let clear = QueueConfigPatch {
        rate_limit: Some(None),
        rate_limit_by: Some(None),
        max_in_flight_per_key: Some(None),
        ..QueueConfigPatch::default()
    };
    assert_eq!(f.upsert(&q, clear).await, defaults());
}

/// Per-key buckets are independent: one key's spent bucket does not hold back another key's
/// jobs behind it, the jobs without the key share one bucket, and each key refills on its own.
pub async fn per_key_buckets_are_independent<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("accounts");
    f.upsert(&q, rate_by(10.0, 2, KeyBy::Header("account".into()))).await;
    // Ten jobs of "a" first, then "b", then jobs without the header.
    let mut batch: Vec<NewJob> = (0..10).map(|i| account_job(i, Some("a"))).collect();
    batch.extend((10..13).map(|i| account_job(i, Some("b"))));
    batch.extend((13..16).map(|i| account_job(i, None)));
    f.enqueue(&q, batch).await;
    let first = f.lease(&q, 10, None).await;
    let want: std::collections::BTreeMap<Option<String>, usize> =
        [(None, 2), (Some("a".into()), 2), (Some("b".into()), 2)].into_iter().collect();
    assert_eq!(per_account(&first), want, "each key's burst, past the spent key's jobs");
    assert_eq!(f.lease(&q, 10, None).await.len(), 0, "every bucket is spent");
    clock.advance(100);
    let got = f.lease(&q, 10, None).await;
    let want: std::collections::BTreeMap<Option<String>, usize> =
        [(None, 1), (Some("a".into()), 1), (Some("b".into()), 1)].into_iter().collect();
    assert_eq!(per_account(&got), want, "one token each after one interval");
    let acks: Vec<_> = got.iter().chain(&first).map(LeasedJob::lease).collect();
    assert!(f.store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
    clock.advance(60_000);
    let got = f.lease(&q, 10, None).await;
    let want: std::collections::BTreeMap<Option<String>, usize> = [(Some("a".into()), 2)].into_iter().collect();
    assert_eq!(per_account(&got), want, "a refilled bucket grants its burst, no more");

    // Keyed by the ordering key.
    let o = queue("ordered");
    f.upsert(&o, rate_by(1.0, 1, KeyBy::OrderingKey)).await;
    let mut batch: Vec<NewJob> = (0..5).map(|i| NewJob::new(format!("{i}")).ordering_key("x")).collect();
    batch.push(NewJob::new("y").ordering_key("y"));
    f.enqueue(&o, batch).await;
    let got = f.lease(&o, 10, None).await;
    let keys: Vec<_> = got.iter().map(|j| j.ordering_key.clone()).collect();
    assert_eq!(keys, vec![Some("x".to_string()), Some("y".to_string())]);
}

/// Invariant 15 per key: with `max_in_flight_per_key`, live leases of each key never exceed it,
/// through acks, expiries and redeliveries; jobs without a key are not limited per key.
pub async fn max_in_flight_per_key_holds_with_expiry<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("capped");
    let patch = QueueConfigPatch {
        max_in_flight_per_key: Some(Some(2)),
        visibility_timeout_ms: Some(1_000),
        ..QueueConfigPatch::default()
    };
    f.upsert(&q, patch).await;
    let mut batch: Vec<NewJob> = Vec::new();
    for i in 0..12 {
        batch.push(NewJob::new(format!("{i}")).ordering_key(if i % 2 == 0 { "k1" } else { "k2" }));
    }
    batch.extend((0..3).map(|i| NewJob::new(format!("free {i}"))));
    f.enqueue(&q, batch).await;
    let mut live: Vec<(LeasedJob, Timestamp)> = Vec::new();
    let check = |live: &mut Vec<(LeasedJob, Timestamp)>, now: Timestamp| {
        live.retain(|(_, expires_at)| *expires_at > now);
        for key in ["k1", "k2"] {
            let n = live.iter().filter(|(j, _)| j.ordering_key.as_deref() == Some(key)).count();
            assert!(n <= 2, "{n} live leases of {key}; max_in_flight_per_key is 2");
        }
    };
    let first = f.lease(&q, 10, None).await;
    assert_eq!(first.len(), 7, "two of each key and every job without one");
    live.extend(first.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());
    assert_eq!(f.lease(&q, 10, None).await, Vec::<LeasedJob>::new(), "both keys are at their cap");
    let k1 = first.iter().find(|j| j.ordering_key.as_deref() == Some("k1")).unwrap();
    f.store.ack(k1.lease()).await.unwrap();
    live.retain(|(j, _)| j.id != k1.id);
    let second = f.lease(&q, 10, None).await;
    assert_eq!(second.len(), 1, "an ack frees one slot of its key");
    assert_eq!(second[0].ordering_key.as_deref(), Some("k1"));
    live.extend(second.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());
    clock.advance(1_000);
    check(&mut live, f.now());
    let redelivered = f.lease(&q, 10, None).await;
    assert_eq!(redelivered.iter().filter(|j| j.ordering_key.is_some()).count(), 4, "expired leases stopped counting");
    live.extend(redelivered.iter().map(|j| (j.clone(), j.lease_expires_at)));
    check(&mut live, f.now());

    let mut steps = Steps(0x5851_f42d_4c95_7f2d);
    for _ in 0..60 {
        clock.advance(steps.next(400));
        check(&mut live, f.now());
        if steps.next(2) == 0 && !live.is_empty() {
            let (job, _) = live.remove(usize::try_from(steps.next(live.len() as u64)).unwrap());
            let _ = f.store.ack(job.lease()).await;
        } else {
            let visibility = 200 + steps.next(1_200);
            let got = f.lease(&q, 1 + u32::try_from(steps.next(5)).unwrap(), Some(visibility)).await;
            live.extend(got.iter().map(|j| (j.clone(), j.lease_expires_at)));
        }
        check(&mut live, f.now());
    }
}

/// Invariant 15 per key: consumers lease concurrently from a queue whose jobs belong to three
/// accounts (and some to none) for 10 s of store time; over every window of length T each key's
/// jobs leased are at most burst + rate × T, and each key gets close to its rate.
pub async fn invariant_15_rate_holds_per_key_over_every_window<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("accounts");
    let (per_second, burst) = (20.0, 3);
    f.upsert(&q, rate_by(per_second, burst, KeyBy::Header("account".into()))).await;
    let accounts = [Some("a"), Some("b"), Some("c"), None];
    let batch: Vec<NewJob> = (0..1000).map(|i| account_job(i, accounts[i % accounts.len()])).collect();
    f.enqueue(&q, batch).await;
    let mut steps = Steps(0x9e37_79b9_7f4a_7c15);
    let mut leases: std::collections::BTreeMap<Option<String>, Vec<(i64, usize)>> = Default::default();
    let started = f.now();
    while f.now().ms_since(started) < 10_000 {
        clock.advance(steps.next(60));
        let at = f.now().as_millis();
        let max_jobs = 1 + u32::try_from(steps.next(8)).unwrap();
        let options = LeaseOptions { max_jobs, visibility_timeout_ms: None, wait_ms: 0 };
        let got = lease_concurrently(&f.store, &q, 3, options).await;
        for (account, n) in per_account(&got) {
            leases.entry(account).or_default().push((at, n));
        }
        let acks: Vec<_> = got.iter().map(LeasedJob::lease).collect();
        if !acks.is_empty() {
            assert!(f.store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
        }
    }
    let allowed = f64::from(burst) + per_second * f.now().ms_since(started) as f64 / 1000.0;
    assert_eq!(leases.len(), accounts.len(), "every key leased: {:?}", leases.keys().collect::<Vec<_>>());
    for (account, times) in &leases {
        assert_rate_held(times, per_second, burst);
        let total: usize = times.iter().map(|l| l.1).sum();
        assert!(total as f64 >= 0.9 * allowed, "{account:?}: {total} jobs leased where {allowed} were allowed");
    }
}

/// A long poll held back by per-key limits sleeps until the earliest held key's bucket grants a
/// token: not at once, and not at the end of its wait.
pub async fn a_long_poll_held_by_a_key_waits_for_its_token<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("accounts");
    f.upsert(&q, rate_by(1.0, 1, KeyBy::Header("account".into()))).await;
    f.enqueue(&q, vec![account_job(0, Some("a")), account_job(1, Some("a"))]).await;
    assert_eq!(f.lease(&q, 5, None).await.len(), 1, "one token for \"a\"");
    let started = Instant::now();
    let options = LeaseOptions { max_jobs: 5, visibility_timeout_ms: None, wait_ms: LONG_WAIT_MS };
    let got = within("the held lease", f.store.job_lease(&q, options)).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(got.len(), 1, "the key's next token brings one job");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < PROMPTLY,
        "the lease returned after {elapsed:?}; the key's next token was due after about a second"
    );

    // Held by a key's cap: the settle that frees the key's slot wakes it.
    let capped = queue("capped");
    let patch = QueueConfigPatch { max_in_flight_per_key: Some(Some(1)), ..QueueConfigPatch::default() };
    f.upsert(&capped, patch).await;
    f.enqueue(&capped, (0..2).map(|i| NewJob::new(format!("{i}")).ordering_key("a")).collect()).await;
    let held = f.lease_one(&capped, None).await;
    let waiting = spawn_waiting_lease(&f.store, &capped);
    tokio::time::sleep(NUDGE).await;
    f.store.ack(held.lease()).await.unwrap();
    let (got, elapsed) = within("the capped lease", waiting).await.unwrap();
    assert_eq!(got.len(), 1, "the freed slot of \"a\" brought its next job");
    assert!(elapsed >= Duration::from_millis(200) && elapsed < PROMPTLY, "woke after {elapsed:?}");
}

/// A lease under per-key limits reads a bounded number of candidates
/// ([`onceq_core::flow::key_scan_rows`]): past them it returns what it found, here nothing, though
/// a job of another key waits further back; a larger lease reads further and finds it.
pub async fn a_per_key_lease_scans_a_bounded_number_of_candidates<B: Backend>(backend: &B) {
    use onceq_core::limits::{FLOW_KEY_SCAN_FACTOR, FLOW_KEY_SCAN_MIN};
    let (f, _clock) = open_manual(backend).await;
    let q = queue("ordered");
    f.upsert(&q, rate_by(1.0, 1, KeyBy::OrderingKey)).await;
    let ahead = FLOW_KEY_SCAN_MIN as usize + 1;
    let mut batch: Vec<NewJob> = (0..ahead).map(|i| NewJob::new(format!("{i}")).ordering_key("a")).collect();
    batch.push(NewJob::new("b").ordering_key("b"));
    f.enqueue(&q, batch).await;
    assert_eq!(f.lease(&q, 1, None).await[0].ordering_key.as_deref(), Some("a"));
    assert_eq!(f.lease(&q, 1, None).await.len(), 0, "the job of \"b\" is past the bound of a one-job lease");
    let wide = FLOW_KEY_SCAN_MIN.div_ceil(FLOW_KEY_SCAN_FACTOR) + 1;
    let got = f.lease(&q, wide, None).await;
    assert_eq!(got.iter().map(|j| j.ordering_key.as_deref()).collect::<Vec<_>>(), vec![Some("b")]);
}

/// A consumer group's member leases under the per-key limits too: one token per account, from
/// its partitions.
pub async fn group_leases_pass_per_key_limits<B: Backend>(backend: &B) {
    use onceq_core::group::{GroupName, JoinOptions};
    use onceq_core::Ordering;

    let (f, clock) = open_manual(backend).await;
    let q = queue("keyed");
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(4),
        max_in_flight_per_key: Some(Some(2)),
        ..rate_by(10.0, 2, KeyBy::Header("account".into()))
    };
    f.upsert(&q, patch).await;
    let jobs: Vec<NewJob> = (0..12)
        .map(|i| account_job(i, Some(if i % 2 == 0 { "x" } else { "y" })).ordering_key(format!("k{i}")))
        .collect();
    f.enqueue(&q, jobs).await;
    let g = GroupName::new("workers").unwrap();
    let member = f.store.group_join(&q, &g, JoinOptions::default()).await.unwrap().member_id;
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    let got = f.store.group_lease(&q, &g, &member, options).await.unwrap();
    let want: std::collections::BTreeMap<Option<String>, usize> =
        [(Some("x".into()), 2), (Some("y".into()), 2)].into_iter().collect();
    assert_eq!(per_account(&got), want, "each account's burst");
    clock.advance(1_000);
    let got = f.store.group_lease(&q, &g, &member, options).await.unwrap();
    assert_eq!(got.len(), 0, "each account holds two live leases: its cap");
}
