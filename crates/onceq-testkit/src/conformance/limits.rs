//! Limits: every limit of `onceq_core::limits` the seam takes accepts its maximum, and
//! rejects a request past it with a typed error that changes nothing (Invariant 8).

use std::time::Instant;

use onceq_core::limits::{
    ATTEMPTS_MAX, BACKOFF_MULTIPLIER_MAX, DEAD_PAGE_MAX, DEDUP_ID_LEN_MAX, DEDUP_WINDOW_MS_MAX, DELAY_MS_MAX,
    ENQUEUE_BATCH_MAX, HEADERS_COUNT_MAX, HEADER_NAME_LEN_MAX, HEADER_VALUE_LEN_MAX, LEASE_BATCH_MAX,
    LEASE_REPLY_BYTES_MAX, PAYLOAD_BYTES_MAX, PRIORITY_MAX, PRIORITY_MIN, QUEUE_NAME_LEN_MAX, REDRIVE_IDS_MAX,
    SETTLE_BATCH_MAX, VISIBILITY_TIMEOUT_MS_MAX, WAIT_MS_MAX,
};
use onceq_core::store::validate;
use onceq_core::{
    Backoff, DeadList, DeadPage, DeliveryMode, Error, ErrorKind, Extend, Fail, Jitter, JobId, LeaseOptions, LeaseRef,
    LeaseToken, LeasedJob, Nack, NewJob, QueueConfig, QueueConfigPatch, QueueName, QueueStats, Redrive, Store,
    StoreExt,
};

use super::{assert_increasing, defaults, fresh, ids_of, open_manual, queue, within, PROMPTLY, UNKNOWN_ID};
use crate::Backend;

/// A lease stops adding jobs once their payloads reach `LEASE_REPLY_BYTES_MAX`: it hands out
/// fewer than asked, in lease order, and the rest stay ready for the next lease. Never a failure.
pub async fn a_lease_of_big_jobs_stops_at_its_reply_bytes<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("big-payloads");
    let per_reply = LEASE_REPLY_BYTES_MAX / PAYLOAD_BYTES_MAX;
    let total = per_reply + 4;
    let mut ids = Vec::new();
    for chunk in 0..total.div_ceil(4) {
        let jobs = (0..4.min(total - chunk * 4)).map(|k| NewJob::new(vec![k as u8; PAYLOAD_BYTES_MAX])).collect();
        ids.extend(f.enqueue(&q, jobs).await);
    }
    let first = f.lease(&q, total as u32, None).await;
    assert_eq!(ids_of(&first), ids[..per_reply], "the first lease: the jobs within the reply's bytes");
    assert!(first.iter().all(|j| j.payload.len() == PAYLOAD_BYTES_MAX));
    let second = f.lease(&q, total as u32, None).await;
    assert_eq!(ids_of(&second), ids[per_reply..], "the second lease: the rest");
}

/// Every limit accepts its maximum: a full enqueue batch, lease batch and ack batch; a job with
/// the largest payload, most headers, longest names and values, dedup id, delay, priority and
/// attempts; a config at every maximum; a full dead page and redrive id list; the longest wait.
pub async fn limits_accept_their_maximum<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue(&"q".repeat(QUEUE_NAME_LEN_MAX));
    let t0 = f.now();
    let ids = f.enqueue(&q, (0..ENQUEUE_BATCH_MAX).map(|i| NewJob::new(i.to_string())).collect()).await;
    assert_eq!(ids.len(), ENQUEUE_BATCH_MAX);
    assert_increasing(&ids);
    let leased = f.lease(&q, LEASE_BATCH_MAX, Some(VISIBILITY_TIMEOUT_MS_MAX)).await;
    assert_eq!(ids_of(&leased), ids);
    assert!(leased.iter().all(|j| j.lease_expires_at == t0.plus_ms(VISIBILITY_TIMEOUT_MS_MAX)));
    let acks: Vec<LeaseRef> = leased.iter().map(LeasedJob::lease).collect();
    assert_eq!(f.store.job_ack(&acks).await, Ok(vec![Ok(()); acks.len()]));
    assert_eq!(f.stats(&q).await, QueueStats::default());

    let mut big = NewJob::new(vec![0xAB; PAYLOAD_BYTES_MAX])
        .priority(PRIORITY_MAX)
        .max_attempts(ATTEMPTS_MAX)
        .dedup_id("d".repeat(DEDUP_ID_LEN_MAX))
        .delay_ms(DELAY_MS_MAX);
    for i in 0..HEADERS_COUNT_MAX {
        let name = format!("{i:0>width$}", width = HEADER_NAME_LEN_MAX);
        big = big.header(name, "v".repeat(HEADER_VALUE_LEN_MAX));
    }
    let low = NewJob::new("low").priority(PRIORITY_MIN);
    let big_ids = f.enqueue(&q, vec![big.clone(), low.clone()]).await;
    assert_eq!(f.get(big_ids[0]).await, fresh(big_ids[0], &q, &big, t0, t0.plus_ms(DELAY_MS_MAX), ATTEMPTS_MAX));
    assert_eq!(f.get(big_ids[1]).await, fresh(big_ids[1], &q, &low, t0, t0, defaults().max_attempts));

    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: WAIT_MS_MAX };
    let started = Instant::now();
    let got = within("a lease with a ready job", f.store.job_lease(&q, options)).await.unwrap();
    assert_eq!(ids_of(&got), vec![big_ids[1]]);
    assert!(started.elapsed() < PROMPTLY, "a lease with a job ready must not wait");

    let at_max = QueueConfig {
        delivery: DeliveryMode::AtLeastOnce,
        visibility_timeout_ms: VISIBILITY_TIMEOUT_MS_MAX,
        max_attempts: ATTEMPTS_MAX,
        backoff: Backoff {
            initial_ms: DELAY_MS_MAX,
            max_ms: DELAY_MS_MAX,
            multiplier: BACKOFF_MULTIPLIER_MAX,
            jitter: Jitter::None,
        },
        dedup_window_ms: DEDUP_WINDOW_MS_MAX,
        ..QueueConfig::default()
    };
    let patch = QueueConfigPatch {
        delivery: Some(at_max.delivery),
        visibility_timeout_ms: Some(at_max.visibility_timeout_ms),
        max_attempts: Some(at_max.max_attempts),
        backoff: Some(at_max.backoff.clone().into()),
        dedup_window_ms: Some(at_max.dedup_window_ms),
        ..QueueConfigPatch::default()
    };
    assert_eq!(f.store.queue_upsert(&q, patch).await, Ok(at_max));
    let page = DeadPage { after: None, limit: DEAD_PAGE_MAX };
    assert_eq!(f.store.dead_list(&q, page).await, Ok(DeadList { jobs: vec![], next: None }));
    let all_ids = Some((1..=REDRIVE_IDS_MAX as u64).map(JobId::new).collect());
    assert_eq!(
        f.store.dead_redrive(&q, Redrive { ids: all_ids, limit: None, ..Default::default() }).await.map(|r| r.redriven),
        Ok(0)
    );
}

/// The enqueue batches that every limit rejects, each with what it breaks.
fn invalid_batches() -> Vec<(&'static str, Vec<NewJob>)> {
    let mut too_many_headers = NewJob::new("headers");
    for i in 0..=HEADERS_COUNT_MAX {
        too_many_headers = too_many_headers.header(format!("h{i}"), "v");
    }
    vec![
        ("empty batch", vec![]),
        ("batch over ENQUEUE_BATCH_MAX", vec![NewJob::new("x"); ENQUEUE_BATCH_MAX + 1]),
        ("payload over PAYLOAD_BYTES_MAX", vec![NewJob::new("ok"), NewJob::new(vec![0u8; PAYLOAD_BYTES_MAX + 1])]),
        ("headers over HEADERS_COUNT_MAX", vec![too_many_headers]),
        (
            "header name over HEADER_NAME_LEN_MAX",
            vec![NewJob::new("x").header("n".repeat(HEADER_NAME_LEN_MAX + 1), "v")],
        ),
        ("empty header name", vec![NewJob::new("x").header("", "v")]),
        (
            "header value over HEADER_VALUE_LEN_MAX",
            vec![NewJob::new("x").header("n", "v".repeat(HEADER_VALUE_LEN_MAX + 1))],
        ),
        ("priority over PRIORITY_MAX", vec![NewJob::new("x").priority(PRIORITY_MAX + 1)]),
        ("priority under PRIORITY_MIN", vec![NewJob::new("x").priority(PRIORITY_MIN - 1)]),
        ("delay over DELAY_MS_MAX", vec![NewJob::new("x").delay_ms(DELAY_MS_MAX + 1)]),
        ("max_attempts 0", vec![NewJob::new("x").max_attempts(0)]),
        ("max_attempts over ATTEMPTS_MAX", vec![NewJob::new("x").max_attempts(ATTEMPTS_MAX + 1)]),
        ("dedup id over DEDUP_ID_LEN_MAX", vec![NewJob::new("x").dedup_id("d".repeat(DEDUP_ID_LEN_MAX + 1))]),
        ("empty dedup id", vec![NewJob::new("x").dedup_id("")]),
    ]
}

/// The queue config patches that every limit rejects, each with what it breaks.
fn invalid_patches() -> Vec<(&'static str, QueueConfigPatch)> {
    let patch = QueueConfigPatch::default;
    vec![
        ("visibility timeout 0", QueueConfigPatch { visibility_timeout_ms: Some(0), ..patch() }),
        (
            "visibility timeout over VISIBILITY_TIMEOUT_MS_MAX",
            QueueConfigPatch { visibility_timeout_ms: Some(VISIBILITY_TIMEOUT_MS_MAX + 1), ..patch() },
        ),
        ("max_attempts 0", QueueConfigPatch { max_attempts: Some(0), ..patch() }),
        ("max_attempts over ATTEMPTS_MAX", QueueConfigPatch { max_attempts: Some(ATTEMPTS_MAX + 1), ..patch() }),
        (
            "dedup window over DEDUP_WINDOW_MS_MAX",
            QueueConfigPatch { dedup_window_ms: Some(DEDUP_WINDOW_MS_MAX + 1), ..patch() },
        ),
        (
            "backoff delay over DELAY_MS_MAX",
            QueueConfigPatch {
                backoff: Some(Backoff { max_ms: DELAY_MS_MAX + 1, ..Backoff::default() }.into()),
                ..patch()
            },
        ),
        (
            "backoff multiplier over BACKOFF_MULTIPLIER_MAX",
            QueueConfigPatch {
                backoff: Some(Backoff { multiplier: BACKOFF_MULTIPLIER_MAX * 2.0, ..Backoff::default() }.into()),
                ..patch()
            },
        ),
    ]
}

/// Invariant 8: every limit of `onceq_core::limits` the seam takes rejects a request past it with
/// a typed error (the shared validation's, compared whole) and changes nothing; unknown jobs are
/// `JobNotFound`, unknown queues `QueueNotFound`.
pub async fn invariant_8_bounded_everything<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;

    // Queue names are checked where they are made, before any store sees them.
    assert_eq!(QueueName::new("").map_err(|e| e.kind()), Err(ErrorKind::InvalidRequest));
    assert_eq!(
        QueueName::new("q".repeat(QUEUE_NAME_LEN_MAX + 1)).map_err(|e| e.kind()),
        Err(ErrorKind::InvalidRequest)
    );
    assert_eq!(QueueName::new("a b").map_err(|e| e.kind()), Err(ErrorKind::InvalidRequest));

    // On an empty store: nothing may be created.
    let q = queue("bounded");
    let empty = Ok(vec![]);
    for (what, batch) in invalid_batches() {
        let expected = validate::enqueue(&batch).unwrap_err();
        assert_eq!(f.store.job_enqueue(&q, batch).await, Err(expected), "{what}");
        assert_eq!(f.store.queue_list().await, empty, "{what} created the queue");
    }
    let too_large = vec![NewJob::new(vec![0u8; PAYLOAD_BYTES_MAX + 1])];
    assert_eq!(f.store.job_enqueue(&q, too_large).await.map_err(|e| e.kind()), Err(ErrorKind::PayloadTooLarge));
    for (what, patch) in invalid_patches() {
        let expected = defaults().patched(&patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch).await, Err(expected), "{what}");
        assert_eq!(f.store.queue_list().await, empty, "{what} created the queue");
    }
    let not_found = Error::QueueNotFound(q.clone());
    assert_eq!(f.store.queue_get(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_pause(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Err(not_found));
    for id in [UNKNOWN_ID, JobId::new(u64::MAX)] {
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
        f.assert_settles_rejected(LeaseRef { id, lease_token: LeaseToken::random() }, Error::JobNotFound(id)).await;
    }
    let no_items = validate::settle_batch(0).unwrap_err();
    assert_eq!(f.store.job_ack(&[]).await, Err(no_items.clone()));
    assert_eq!(f.store.job_nack(&[]).await, Err(no_items.clone()));
    assert_eq!(f.store.job_extend(&[]).await, Err(no_items.clone()));
    assert_eq!(f.store.job_fail(&[]).await, Err(no_items));
    assert_eq!(f.store.queue_list().await, empty);

    // On an existing queue with a leased and a ready job: nothing may change.
    let ids = f.enqueue(&q, vec![NewJob::new("held"), NewJob::new("waiting")]).await;
    let held = f.lease_one(&q, None).await;
    assert_eq!(held.id, ids[0]);
    let before = f.snapshot(&ids).await;

    for (what, batch) in invalid_batches() {
        let expected = validate::enqueue(&batch).unwrap_err();
        assert_eq!(f.store.job_enqueue(&q, batch).await, Err(expected), "{what}");
        assert_eq!(f.snapshot(&ids).await, before, "{what} changed the store");
    }
    let config = f.store.queue_get(&q).await.unwrap().config;
    for (what, patch) in invalid_patches() {
        let expected = config.patched(&patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch).await, Err(expected), "{what}");
        assert_eq!(f.snapshot(&ids).await, before, "{what} changed the store");
    }
    let options = LeaseOptions::default;
    let invalid_options = [
        ("max_jobs 0", LeaseOptions { max_jobs: 0, ..options() }),
        ("max_jobs over LEASE_BATCH_MAX", LeaseOptions { max_jobs: LEASE_BATCH_MAX + 1, ..options() }),
        ("visibility timeout 0", LeaseOptions { visibility_timeout_ms: Some(0), ..options() }),
        (
            "visibility timeout over VISIBILITY_TIMEOUT_MS_MAX",
            LeaseOptions { visibility_timeout_ms: Some(VISIBILITY_TIMEOUT_MS_MAX + 1), ..options() },
        ),
        ("wait over WAIT_MS_MAX", LeaseOptions { wait_ms: WAIT_MS_MAX + 1, ..options() }),
    ];
    for (what, options) in invalid_options {
        let started = Instant::now();
        assert_eq!(f.store.job_lease(&q, options).await, Err(options.validate().unwrap_err()), "{what}");
        assert!(started.elapsed() < PROMPTLY, "{what}: an invalid lease must not wait");
        assert_eq!(f.snapshot(&ids).await, before, "{what} changed the store");
    }

    let lease = held.lease();
    let nack = |delay_ms| Nack { id: lease.id, lease_token: lease.lease_token, delay_ms, error: None };
    let extend = |ms| Extend { id: lease.id, lease_token: lease.lease_token, visibility_timeout_ms: ms };
    let fail = Fail { id: lease.id, lease_token: lease.lease_token, error: "x".into() };
    let long_nack = [nack(Some(DELAY_MS_MAX + 1))];
    assert_eq!(f.store.job_nack(&long_nack).await, Err(validate::nacks(&long_nack).unwrap_err()));
    for ms in [0, VISIBILITY_TIMEOUT_MS_MAX + 1] {
        let extends = [extend(ms)];
        assert_eq!(f.store.job_extend(&extends).await, Err(validate::extends(&extends).unwrap_err()), "extend {ms}");
    }
    let too_many = validate::settle_batch(SETTLE_BATCH_MAX + 1).unwrap_err();
    assert_eq!(f.store.job_ack(&vec![lease; SETTLE_BATCH_MAX + 1]).await, Err(too_many.clone()));
    assert_eq!(f.store.job_nack(&vec![nack(Some(0)); SETTLE_BATCH_MAX + 1]).await, Err(too_many.clone()));
    assert_eq!(f.store.job_extend(&vec![extend(1_000); SETTLE_BATCH_MAX + 1]).await, Err(too_many.clone()));
    assert_eq!(f.store.job_fail(&vec![fail; SETTLE_BATCH_MAX + 1]).await, Err(too_many));
    assert_eq!(f.snapshot(&ids).await, before, "a rejected settle changed the store");

    for limit in [0, DEAD_PAGE_MAX + 1] {
        let page = DeadPage { after: None, limit };
        assert_eq!(f.store.dead_list(&q, page).await, Err(validate::dead_page(&page).unwrap_err()), "page {limit}");
    }
    let ids_over = Redrive {
        ids: Some((1..=REDRIVE_IDS_MAX as u64 + 1).map(JobId::new).collect()),
        limit: None,
        ..Default::default()
    };
    let limit_zero = Redrive { ids: None, limit: Some(0), ..Default::default() };
    for redrive in [ids_over, limit_zero] {
        let expected = validate::redrive(&redrive).unwrap_err();
        assert_eq!(f.store.dead_redrive(&q, redrive).await, Err(expected));
    }
    assert_eq!(f.snapshot(&ids).await, before, "a rejected call changed the store");
    assert_eq!(f.store.ack(lease).await, Ok(()), "the lease survived every rejected call");
}
