//! Flow limits (docs/semantics.md, "Flow limits"; Invariant 15): a queue's rate limit and
//! in-flight limit, enforced at lease time for every consumer together, and its depth limit,
//! enforced at enqueue and commit. The invariant checks record every lease with the store's
//! clock reading and check the limits over every window.

use std::time::{Duration, Instant};

use onceq_core::commit::{Commit, CommitEnqueue};
use onceq_core::flow::RateLimit;
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
