//! Proves parking: a message whose publish keeps failing transiently is parked in the outbox
//! dead letters after `max_attempts` attempts with its error, one refused for good (4xx) is
//! parked at once, none is dropped silently; a failing head blocks only its own key while other
//! keys and keyless messages go on; and a redriven message is published with its original
//! dedup id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use onceq_outbox::{Message, Relay, RelayOptions, WebhookSink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_are_parked_and_block_only_their_key() {
    let world = World::new("park").await;
    let endpoint = Endpoint::start(200).await;
    endpoint.answer_path("/hooks/flaky", 503);
    endpoint.answer_path("/hooks/refused", 400);
    let stage = |destination: &'static str, key: Option<&'static str>, body: &'static str| {
        let (pool, outbox) = (world.pool.clone(), world.outbox.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let mut message = Message::new(destination, body).header("x-trace", "t1");
            if let Some(key) = key {
                message = message.ordering_key(key);
            }
            let id = onceq_outbox::postgres::stage(&mut tx, &outbox, &message).await.unwrap();
            tx.commit().await.unwrap();
            id
        }
    };
    let flaky = stage("flaky", Some("k"), "k1").await;
    stage("ok", Some("k"), "k2").await;
    stage("ok", Some("k"), "k3").await;
    stage("ok", Some("other"), "o1").await;
    let refused = stage("refused", None, "r1").await;
    stage("ok", None, "free").await;

    let sink = WebhookSink::new(&endpoint.url(), Duration::from_secs(5)).unwrap();
    let options = RelayOptions {
        max_attempts: 3,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(100),
        ..RelayOptions::default()
    };
    let relay = Relay::postgres(&database_url(), world.outbox.clone(), Arc::new(sink), options).await.unwrap();
    // First round: every head goes; the refused one is parked at once, the flaky one retried.
    let first = relay.run_round().await.unwrap();
    assert_eq!((first.claimed, first.sent, first.retried, first.parked), (4, 2, 1, 1), "{first:?}");
    let bodies = |status: u16| {
        endpoint.requests().into_iter().filter(|r| r.status == status).map(|r| r.body).collect::<Vec<_>>()
    };
    // One batch's messages are of distinct keys and published concurrently: in any order.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(bodies(200)), vec!["free", "o1"], "other keys and keyless messages are not blocked");
    assert!(bodies(200).iter().all(|b| !b.starts_with('k')), "k2 waits behind its failing head");
    let confirmed = endpoint.requests().into_iter().find(|r| r.status == 200).unwrap();
    assert_eq!(confirmed.headers.get("x-trace").map(String::as_str), Some("t1"), "headers are forwarded");

    // The flaky head is retried until its third attempt fails, then parked; its key goes on.
    let mut conn = world.pool.acquire().await.unwrap();
    eventually(Duration::from_secs(20), "the flaky head parked and its key drained", || async {
        relay.run_round().await.unwrap();
        bodies(200).len() == 4
    })
    .await;
    assert_eq!(bodies(200)[2..], ["k2", "k3"], "k2 and k3 in order, after their head was parked");
    assert_eq!(bodies(503), vec!["k1", "k1", "k1"], "three attempts");
    let parked = world.outbox.dead_list(&mut conn, None, 100).await.unwrap();
    assert_eq!(parked.iter().map(|p| (p.id, p.attempts)).collect::<Vec<_>>(), vec![(flaky, 3), (refused, 1)]);
    assert!(
        parked[0].error.contains("attempts exhausted (3)") && parked[0].error.contains("503"),
        "{}",
        parked[0].error
    );
    assert!(parked[1].error.contains("permanent") && parked[1].error.contains("400"), "{}", parked[1].error);
    assert_eq!(parked[0].payload, b"k1".to_vec());
    assert_eq!(parked[0].ordering_key.as_deref(), Some("k"));
    let backlog = relay.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.parked), (0, 2));

    // Redriven once the endpoint is fixed: published with its original dedup id.
    endpoint.answer_path("/hooks/flaky", 200);
    assert_eq!(world.outbox.dead_redrive(&mut conn, &[flaky, 999_999]).await.unwrap(), 1);
    relay.run_until_idle().await.unwrap();
    let last = endpoint.requests().pop().unwrap();
    assert_eq!((last.body.as_str(), last.status), ("k1", 200));
    assert_eq!(last.idempotency_key, Some(format!("{}-{flaky}", world.outbox.schema())));
    assert_eq!(relay.backlog().await.unwrap().parked, 1);
}
