//! Proves, against the router in-process, consumer groups over HTTP (docs/api.md "Consumer
//! groups"): join (201, the member's view and its `Location`), heartbeat, leave (204), the group's
//! view and the queue's list of groups, and group leases through `POST /v1/queues/{q}/leases`
//! with `group` and `member_id`: a member leases only from the partitions it owns, a partition
//! whose old owner holds a live lease is listed as `revoking` and moves once that lease is acked,
//! and a member whose session expired is 409 `not_member` everywhere. Every refusal has its code:
//! an unknown queue 404, an unordered queue, a bad group name, member id, member name, session
//! timeout, unknown field, or `group` without `member_id` (and the reverse) 400, a second group
//! with members 409 `conflict`, an unknown member 409 `not_member`. The auth matrix of the new
//! routes: join, heartbeat, leave and group leases need `consume`; the group's view and the list
//! need any permission; no token is 401. The OpenAPI document lists the routes and the new lease
//! fields, and `/metrics` shows each group's members.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::BTreeMap;

use in_process::{id_of, token_of, Api, Server, TokenSpec};
use onceq_core::ordering::partition_of;
use onceq_core::{Clock, JobId, ManualClock};
use serde_json::{json, Value};

/// A well-formed member id that no member has.
const STRANGER: &str = "0123456789abcdef0123456789abcdef";

/// Makes `queue` a `per_key` queue of `partitions` partitions and enqueues one job into each
/// partition (keys found by the documented hash); returns each partition's job id.
async fn one_job_per_partition(api: &Api, queue: &str, partitions: u32) -> BTreeMap<u32, String> {
    api.put(&format!("/v1/queues/{queue}"), json!({"ordering": "per_key", "partitions": partitions})).await.ok(200);
    let mut keys: BTreeMap<u32, String> = BTreeMap::new();
    for i in 0u64.. {
        if keys.len() == partitions as usize {
            break;
        }
        let key = format!("key-{i}");
        keys.entry(partition_of(Some(&key), JobId::new(1), partitions)).or_insert(key);
    }
    let jobs: Vec<Value> = keys.values().map(|k| json!({"payload": k, "ordering_key": k})).collect();
    let body = api.post(&format!("/v1/queues/{queue}/jobs"), json!({ "jobs": jobs })).await.ok(200);
    keys.keys().copied().zip(body["jobs"].as_array().unwrap().iter().map(id_of)).collect()
}

/// Joins `group` of `queue`; asserts 201 and the view's shape; returns the view.
async fn join(api: &Api, queue: &str, group: &str, body: Value) -> Value {
    let view = api.post(&format!("/v1/queues/{queue}/groups/{group}/members"), body).await.ok(201);
    let keys: Vec<&str> = view.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["generation", "heartbeat_interval_ms", "member_id", "partitions", "revoking"], "{view}");
    let id = member(&view);
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{view}");
    view
}

/// The member id of a view.
fn member(view: &Value) -> String {
    view["member_id"].as_str().unwrap().to_owned()
}

/// The path of a member.
fn member_path(queue: &str, group: &str, member: &str) -> String {
    format!("/v1/queues/{queue}/groups/{group}/members/{member}")
}

/// A heartbeat that must succeed.
async fn beat(api: &Api, queue: &str, group: &str, id: &str) -> Value {
    let view = api.post_empty(&format!("{}/heartbeat", member_path(queue, group, id))).await.ok(200);
    assert_eq!(view["member_id"], json!(id), "{view}");
    view
}

/// A group lease of up to 10 jobs.
async fn group_lease(api: &Api, queue: &str, group: &str, id: &str) -> in_process::Reply {
    let body = json!({"max_jobs": 10, "visibility_timeout_ms": 60_000, "group": group, "member_id": id});
    api.post(&format!("/v1/queues/{queue}/leases"), body).await
}

/// The partitions of leased jobs, in lease order.
fn partitions_of(jobs: &Value) -> Vec<u64> {
    jobs["jobs"].as_array().unwrap().iter().map(|j| j["partition"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_lease_hand_over_and_leave() {
    let clock = ManualClock::at_default_start();
    let server = Server::start_on(clock.clone()).await;
    let api = server.api();
    let jobs = one_job_per_partition(&api, "orders", 2).await;

    // A first member owns every partition at once.
    let a = join(&api, "orders", "billing", json!({"name": "worker-a", "session_timeout_ms": 9_000})).await;
    let a_id = member(&a);
    assert_eq!(
        (&a["partitions"], &a["revoking"], &a["heartbeat_interval_ms"]),
        (&json!([0, 1]), &json!([]), &json!(3_000))
    );
    let generation = a["generation"].as_u64().unwrap();
    assert!(generation >= 1, "{a}");

    // The group's view: generation, the member, every partition with its owner and load.
    let info = api.get("/v1/queues/orders/groups/billing").await.ok(200);
    assert_eq!((&info["group"], &info["generation"]), (&json!("billing"), &json!(generation)), "{info}");
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{info}");
    let m = &members[0];
    assert_eq!(
        (&m["member_id"], &m["name"], &m["partitions"], &m["revoking"], &m["session_timeout_ms"]),
        (&json!(a_id), &json!("worker-a"), &json!([0, 1]), &json!([]), &json!(9_000)),
        "{info}"
    );
    // Times are RFC 3339, as every time of the API.
    let joined = m["joined_at"].as_str().unwrap();
    assert_eq!(onceq_core::api::parse_time(joined).map(|t| t.as_millis()), Ok(clock.now().as_millis()), "{info}");
    assert_eq!(m["last_heartbeat_at"], m["joined_at"], "{info}");
    let partitions = info["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{info}");
    for (p, partition) in partitions.iter().enumerate() {
        assert_eq!(
            partition,
            &json!({"partition": p, "owner": a_id, "moving_to": null, "lag": 1, "ready": 1, "oldest_ready_age_ms": 0}),
            "{info}"
        );
    }
    assert_eq!(api.get("/v1/queues/orders/groups").await.ok(200), json!({"groups": [info]}));

    // A leases the job of each partition; B joins, and gets nothing while A's leases are live.
    let held = group_lease(&api, "orders", "billing", &a_id).await.ok(200);
    assert_eq!(partitions_of(&held), [0, 1], "{held}");
    let b = join(&api, "orders", "billing", json!({})).await;
    let b_id = member(&b);
    assert_eq!((&b["partitions"], &b["revoking"]), (&json!([]), &json!([])), "{b}");
    assert_eq!(b["heartbeat_interval_ms"], json!(10_000 / 3), "the default session timeout is 10 s: {b}");
    let a = beat(&api, "orders", "billing", &a_id).await;
    let moving = a["revoking"][0].as_u64().unwrap();
    assert_eq!((&a["partitions"], &a["revoking"]), (&json!([1 - moving]), &json!([moving])), "{a}");
    let info = api.get("/v1/queues/orders/groups/billing").await.ok(200);
    let partition = &info["partitions"][moving as usize];
    assert_eq!((&partition["owner"], &partition["moving_to"]), (&json!(a_id), &json!(b_id)), "{info}");
    assert_eq!((&partition["lag"], &partition["ready"]), (&json!(1), &json!(0)), "the leased job is lag, not ready");
    assert_eq!(group_lease(&api, "orders", "billing", &b_id).await.ok(200), json!({"jobs": []}));

    // A acks its job in the moving partition: the partition moves to B, which leases from it.
    let job = held["jobs"].as_array().unwrap().iter().find(|j| j["partition"] == json!(moving)).unwrap();
    assert_eq!(id_of(job), jobs[&(moving as u32)]);
    api.post(&format!("/v1/jobs/{}/ack", id_of(job)), json!({"lease_token": token_of(job)})).await.no_content();
    let b = beat(&api, "orders", "billing", &b_id).await;
    assert_eq!((&b["partitions"], &b["revoking"]), (&json!([moving]), &json!([])), "{b}");
    assert_eq!(beat(&api, "orders", "billing", &a_id).await["revoking"], json!([]));
    api.post("/v1/queues/orders/jobs", json!({"jobs": [{"payload": 9, "ordering_key": job["ordering_key"]}]}))
        .await
        .ok(200);
    let got = group_lease(&api, "orders", "billing", &b_id).await.ok(200);
    assert_eq!(partitions_of(&got), [moving], "{got}");

    // A leaves: 204, and then it is no member for anything.
    api.delete(&member_path("orders", "billing", &a_id)).await.no_content();
    api.delete(&member_path("orders", "billing", &a_id)).await.err(409, "not_member");
    let message =
        api.post_empty(&format!("{}/heartbeat", member_path("orders", "billing", &a_id))).await.err(409, "not_member");
    assert!(message.contains(&a_id) && message.contains("join again"), "{message}");
    group_lease(&api, "orders", "billing", &a_id).await.err(409, "not_member");
    group_lease(&api, "orders", "billing", STRANGER).await.err(409, "not_member");

    // B misses its session timeout (10 s): removed at the next operation on the group.
    clock.advance(10_000);
    api.post_empty(&format!("{}/heartbeat", member_path("orders", "billing", &b_id))).await.err(409, "not_member");
    let info = api.get("/v1/queues/orders/groups/billing").await.ok(200);
    assert_eq!(info["members"], json!([]), "{info}");
    // An empty group yields the queue to another group.
    join(&api, "orders", "shipping", json!({})).await;
    let names: Vec<Value> = api.get("/v1/queues/orders/groups").await.ok(200)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].clone())
        .collect();
    assert_eq!(names, [json!("billing"), json!("shipping")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_code_and_says_why() {
    let server = Server::start().await;
    let api = server.api();
    api.put("/v1/queues/orders", json!({"ordering": "per_key", "partitions": 4})).await.ok(200);
    api.put("/v1/queues/plain", json!({})).await.ok(200);

    // Unknown queue: 404 on every group route.
    let members = "/v1/queues/nowhere/groups/g/members";
    api.post(members, json!({})).await.err(404, "not_found");
    api.get("/v1/queues/nowhere/groups/g").await.err(404, "not_found");
    api.get("/v1/queues/nowhere/groups").await.err(404, "not_found");
    api.post_empty(&format!("{members}/{STRANGER}/heartbeat")).await.err(404, "not_found");
    api.delete(&format!("{members}/{STRANGER}")).await.err(404, "not_found");
    let body = json!({"group": "g", "member_id": STRANGER});
    api.post("/v1/queues/nowhere/leases", body).await.err(404, "not_found");

    // An unordered queue has no groups to join.
    let message = api.post("/v1/queues/plain/groups/g/members", json!({})).await.err(400, "invalid_request");
    assert!(message.contains("not per_key") && message.contains("\"ordering\": \"per_key\""), "{message}");

    // Bad group names, member ids, join options.
    let long = "g".repeat(129);
    for (path, names) in [
        ("/v1/queues/orders/groups/bad!name/members".to_owned(), "group name \"bad!name\" contains '!'"),
        (format!("/v1/queues/orders/groups/{long}/members"), "group name is 129 bytes; it must be 1 to 128"),
        ("/v1/queues/orders/groups/.../members".to_owned(), "only dots"),
    ] {
        let message = api.post(&path, json!({})).await.err(400, "invalid_request");
        assert!(message.contains(names), "{path}: {message}");
    }
    let message = api.get(&format!("/v1/queues/orders/groups/{long}")).await.err(400, "invalid_request");
    assert!(message.contains("group name is 129 bytes"), "{message}");
    for bad in ["xyz", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdef0"] {
        let message = api
            .post_empty(&format!("/v1/queues/orders/groups/g/members/{bad}/heartbeat"))
            .await
            .err(400, "invalid_request");
        assert!(message.contains("is not a member id (32 lowercase hex digits)"), "{bad}: {message}");
        api.delete(&format!("/v1/queues/orders/groups/g/members/{bad}")).await.err(400, "invalid_request");
    }
    for (body, names) in [
        (json!({"session_timeout_ms": 99}), "session_timeout_ms is 99; it must be between 100 and 300000"),
        (json!({"session_timeout_ms": 300_001}), "session_timeout_ms is 300001"),
        (json!({"session_timeout_ms": "10s"}), "expected u64"),
        (json!({"name": ""}), "member name is 0 bytes; it must be 1 to 128"),
        (json!({"name": "n".repeat(129)}), "member name is 129 bytes"),
        (json!({"group": "g"}), "unknown field `group`"),
    ] {
        let message = api.post("/v1/queues/orders/groups/g/members", body.clone()).await.err(400, "invalid_request");
        assert!(message.contains(names), "{body}: {message}");
    }

    // A group lease names both the group and the member, validly.
    for (body, names) in [
        (json!({"group": "g"}), "\"group\" needs \"member_id\""),
        (json!({"member_id": STRANGER}), "\"member_id\" needs \"group\""),
        (json!({"group": "g", "member_id": "xyz"}), "is not a member id"),
        (json!({"group": "a b", "member_id": STRANGER}), "group name \"a b\" contains ' '"),
        (json!({"group": "g", "member_id": STRANGER, "max_jobs": 0}), "max_jobs"),
    ] {
        let message = api.post("/v1/queues/orders/leases", body.clone()).await.err(400, "invalid_request");
        assert!(message.contains(names), "{body}: {message}");
    }
    // Against an unordered queue, a group lease is refused as a join is.
    let body = json!({"group": "g", "member_id": STRANGER});
    let message = api.post("/v1/queues/plain/leases", body).await.err(400, "invalid_request");
    assert!(message.contains("not per_key"), "{message}");

    // One group at a time has members on a queue; the others' members are unknown.
    let first = join(&api, "orders", "g", json!({})).await;
    let message = api.post("/v1/queues/orders/groups/other/members", json!({})).await.err(409, "conflict");
    assert!(message.contains("consumed by group g"), "{message}");
    let path = format!("/v1/queues/orders/groups/other/members/{}/heartbeat", member(&first));
    api.post_empty(&path).await.err(409, "not_member");
    // A group that never had members reads as empty, with every partition unowned.
    let never = api.get("/v1/queues/orders/groups/never").await.ok(200);
    assert_eq!((&never["group"], &never["members"]), (&json!("never"), &json!([])), "{never}");
    assert_eq!(never["partitions"].as_array().unwrap().len(), 4, "{never}");
    assert!(never["partitions"].as_array().unwrap().iter().all(|p| p["owner"].is_null()), "{never}");

    // A known path with the wrong method.
    api.get("/v1/queues/orders/groups/g/members").await.err(405, "invalid_request");
    api.post_empty("/v1/queues/orders/groups/g").await.err(405, "invalid_request");
}

const CONSUMER: &str = "secret-of-the-consumer";
const PRODUCER: &str = "secret-of-the-producer";
const ADMIN: &str = "secret-of-the-admin";
const OTHER: &str = "secret-of-another-team";

/// One permission each on `a.*`, and a token for `b.*` only.
const TOKENS: &[TokenSpec] = &[
    TokenSpec { name: "consumer", secret: CONSUMER, produce: &[], consume: &["a.*"], admin: &[] },
    TokenSpec { name: "producer", secret: PRODUCER, produce: &["a.*"], consume: &[], admin: &[] },
    TokenSpec { name: "admin", secret: ADMIN, produce: &[], consume: &[], admin: &["a.*"] },
    TokenSpec { name: "other", secret: OTHER, produce: &["b.*"], consume: &["b.*"], admin: &["b.*"] },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_need_consume_and_readers_any_permission() {
    let server = Server::start_with_tokens(TOKENS).await;
    let consumer = server.api_with_token(CONSUMER);
    let admin = server.api_with_token(ADMIN);
    admin.put("/v1/queues/a.orders", json!({"ordering": "per_key", "partitions": 2})).await.ok(200);
    let q = "/v1/queues/a.orders";

    // Join, heartbeat, leave and group leases: consume only.
    for api in [server.api_with_token(PRODUCER), admin.clone(), server.api_with_token(OTHER)] {
        api.post(&format!("{q}/groups/g/members"), json!({})).await.err(403, "forbidden");
    }
    let member = member(&join(&consumer, "a.orders", "g", json!({})).await);
    let path = member_path("a.orders", "g", &member);
    let lease = json!({"group": "g", "member_id": member});
    for api in [server.api_with_token(PRODUCER), admin.clone(), server.api_with_token(OTHER)] {
        api.post_empty(&format!("{path}/heartbeat")).await.err(403, "forbidden");
        api.post(&format!("{q}/leases"), lease.clone()).await.err(403, "forbidden");
        api.delete(&path).await.err(403, "forbidden");
    }
    consumer.post_empty(&format!("{path}/heartbeat")).await.ok(200);
    assert_eq!(consumer.post(&format!("{q}/leases"), lease).await.ok(200), json!({"jobs": []}));

    // The group's view and the list: any one permission on the queue.
    for api in [consumer.clone(), server.api_with_token(PRODUCER), admin.clone()] {
        assert_eq!(api.get(&format!("{q}/groups/g")).await.ok(200)["members"][0]["member_id"], json!(member));
        assert_eq!(api.get(&format!("{q}/groups")).await.ok(200)["groups"][0]["group"], json!("g"));
    }
    let other = server.api_with_token(OTHER);
    other.get(&format!("{q}/groups/g")).await.err(403, "forbidden");
    other.get(&format!("{q}/groups")).await.err(403, "forbidden");

    // No token, or an unknown one: 401 on every group route.
    for api in [server.api(), server.api_with_token("secret-of-nobody")] {
        api.post(&format!("{q}/groups/g/members"), json!({})).await.err(401, "unauthorized");
        api.post_empty(&format!("{path}/heartbeat")).await.err(401, "unauthorized");
        api.delete(&path).await.err(401, "unauthorized");
        api.get(&format!("{q}/groups/g")).await.err(401, "unauthorized");
        api.get(&format!("{q}/groups")).await.err(401, "unauthorized");
    }
    // None of the refused calls removed the member.
    consumer.delete(&path).await.no_content();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_metrics_show_groups() {
    let server = Server::start().await;
    let api = server.api();
    let doc = api.get("/openapi.json").await.ok(200);
    for (path, method) in [
        ("/v1/queues/{queue}/groups", "get"),
        ("/v1/queues/{queue}/groups/{group}", "get"),
        ("/v1/queues/{queue}/groups/{group}/members", "post"),
        ("/v1/queues/{queue}/groups/{group}/members/{member_id}", "delete"),
        ("/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat", "post"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not in /openapi.json");
    }
    let schemas = &doc["components"]["schemas"];
    let lease = &schemas["LeaseRequest"]["properties"];
    assert!(lease["group"].is_object() && lease["member_id"].is_object(), "{lease}");
    for schema in ["JoinOptions", "MemberView", "GroupInfo", "GroupList", "MemberInfo", "PartitionInfo"] {
        assert!(schemas[schema].is_object(), "schema {schema} is missing");
    }
    assert_eq!(schemas["MemberInfo"]["properties"]["joined_at"]["type"], json!("string"));

    api.put("/v1/queues/metered-groups", json!({"ordering": "per_key", "partitions": 2})).await.ok(200);
    join(&api, "metered-groups", "g", json!({})).await;
    join(&api, "metered-groups", "g", json!({})).await;
    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.text.lines().any(|line| line == "onceq_group_members{queue=\"metered-groups\",group=\"g\"} 2"),
        "{}",
        reply.text
    );
    for partition in ["0", "1"] {
        let gauge = format!(
            "onceq_partition_oldest_ready_age_seconds{{queue=\"metered-groups\",group=\"g\",partition=\"{partition}\"}} 0"
        );
        assert!(reply.text.lines().any(|line| line == gauge), "{gauge} missing:\n{}", reply.text);
    }
}
