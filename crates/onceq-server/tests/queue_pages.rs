//! `GET /v1/queues` answers a page at a time (issue 25): at most `limit` queues (default 100, at
//! most 1000) after `after`, by name, with `next` to read on from; with auth on, a page holds only
//! the queues the token may read, and is full whenever more of those remain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{Server, TokenSpec};
use serde_json::{json, Value};

fn names(page: &Value) -> Vec<String> {
    page["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_list_is_paged_by_name() {
    const ADMIN: TokenSpec =
        TokenSpec { name: "admin", secret: "admin-secret", produce: &[], consume: &[], admin: &["*"] };
    const BILLING: TokenSpec =
        TokenSpec { name: "billing", secret: "billing-secret", produce: &["billing.*"], consume: &[], admin: &[] };
    let server = Server::start_with_tokens(&[ADMIN, BILLING]).await;
    let admin = server.api_with_token(ADMIN.secret);
    let mut all = Vec::new();
    for n in 0..150 {
        let name = if n % 3 == 0 { format!("billing.q{n:03}") } else { format!("other.q{n:03}") };
        admin.put(&format!("/v1/queues/{name}"), json!({})).await.ok(200);
        all.push(name);
    }
    all.sort();

    // The default page is 100; `next` reads on; the last page has `next: null`.
    let first = admin.get("/v1/queues").await.ok(200);
    assert_eq!(names(&first), all[..100]);
    assert_eq!(first["next"], json!(all[99]));
    let second = admin.get(&format!("/v1/queues?after={}", all[99])).await.ok(200);
    assert_eq!(names(&second), all[100..]);
    assert_eq!(second["next"], Value::Null);
    let small = admin.get("/v1/queues?limit=7").await.ok(200);
    assert_eq!(names(&small), all[..7]);

    // A token that reads only billing.*: full pages of those alone, however many others lie between.
    let billing = server.api_with_token(BILLING.secret);
    let mine: Vec<String> = all.iter().filter(|n| n.starts_with("billing.")).cloned().collect();
    assert_eq!(mine.len(), 50);
    let mut walked = Vec::new();
    let mut path = "/v1/queues?limit=20".to_owned();
    loop {
        let page = billing.get(&path).await.ok(200);
        let got = names(&page);
        assert!(got.len() == 20 || page["next"].is_null(), "a page short of its limit before the end: {page}");
        walked.extend(got);
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/queues?limit=20&after={next}"),
            None => break,
        }
    }
    assert_eq!(walked, mine);

    // Out of range, or not a queue name.
    for query in ["limit=0", "limit=1001", "after=a%20b"] {
        admin.get(&format!("/v1/queues?{query}")).await.err(400, "invalid_request");
    }
}
