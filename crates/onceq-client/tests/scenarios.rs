//! Proves that the Rust client gives, against a real server over TCP, the results the shared
//! scenarios state (`clients/scenarios/*.json`, format in its README.md): the same files the
//! Python and Node clients run, so the three clients behave alike. Each scenario gets a fresh
//! queue; each result is the API body the client's typed value stands for (the server's own
//! wire views), and each error its API code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use onceq_client::Client;
use onceq_core::api::{
    error_code, format_time, BeginResponse, EnqueueJob, ExtendItem, FailItem, JobView, LeaseReleaseItem, LeasedJobView,
    NackItem, SettleResult,
};
use onceq_core::{
    Begin, Complete, DeadPage, Extend, Fail, IdempotencyStore, JobId, LeaseOptions, LeaseRef, Nack, QueueConfigPatch,
    QueueName, Redrive, Release, Store, StoreExt,
};
use onceq_server::Api;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// A step's outcome: the API body, or the API's error code.
type Outcome = Result<Value, String>;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/scenarios")
}

fn arg<T: DeserializeOwned>(args: &Value, name: &str) -> T {
    let value = args.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("argument {name} = {value}: {e}"))
}

fn opt<T: DeserializeOwned>(args: &Value, name: &str) -> Option<T> {
    args.get(name).filter(|v| !v.is_null()).map(|_| arg(args, name))
}

fn parse<T: DeserializeOwned>(value: &Value, what: &str) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what} = {value}: {e}"))
}

fn wire<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| panic!("cannot write a result as JSON: {e}"))
}

fn code(error: &onceq_core::Error) -> String {
    error_code(error.kind()).to_owned()
}

fn results<T>(items: Vec<onceq_core::Result<T>>, ids: &[JobId], ok: impl Fn(JobId, T) -> SettleResult) -> Value {
    let out: Vec<SettleResult> = items
        .into_iter()
        .zip(ids)
        .map(|(item, &id)| match item {
            Ok(value) => ok(id, value),
            Err(e) => SettleResult::failed(id, &e),
        })
        .collect();
    json!({ "results": wire(&out) })
}

/// Runs one op through the client. `Err` is the API error code of a failed call.
async fn run_op(client: &Client, queue: &QueueName, op: &str, a: &Value) -> Outcome {
    let key = |a: &Value| format!("{queue}.{}", arg::<String>(a, "key"));
    let empty = |r: onceq_core::Result<()>| r.map(|()| json!({})).map_err(|e| code(&e));
    match op {
        "queue_get" => client.queue_get(queue).await.map(|q| wire(&q)).map_err(|e| code(&e)),
        "enqueue" => {
            let jobs: Vec<EnqueueJob> = arg(a, "jobs");
            let jobs = jobs
                .into_iter()
                .enumerate()
                .map(|(i, j)| j.into_new_job(i))
                .collect::<onceq_core::Result<Vec<_>>>()
                .map_err(|e| code(&e))?;
            client.job_enqueue(queue, jobs).await.map(|jobs| json!({ "jobs": wire(&jobs) })).map_err(|e| code(&e))
        }
        "lease" => {
            let options = LeaseOptions {
                max_jobs: opt(a, "max_jobs").unwrap_or(1),
                visibility_timeout_ms: opt(a, "visibility_timeout_ms"),
                wait_ms: opt(a, "wait_ms").unwrap_or(0),
            };
            let jobs = client.job_lease(queue, options).await.map_err(|e| code(&e))?;
            let views: Vec<LeasedJobView> = jobs.iter().map(LeasedJobView::from_leased).collect();
            Ok(json!({ "jobs": wire(&views) }))
        }
        "job_get" => client.job_get(arg(a, "id")).await.map(|j| wire(&JobView::from_job(&j))).map_err(|e| code(&e)),
        "ack" => empty(client.ack(parse(a, "ack")).await),
        "nack" => {
            let n: NackItem = parse(a, "nack");
            let lease = LeaseRef { id: n.id, lease_token: n.lease_token };
            client.nack(lease, n.delay_ms, n.error.as_deref()).await.map(|_| json!({})).map_err(|e| code(&e))
        }
        "extend" => {
            let x: ExtendItem = parse(a, "extend");
            let lease = LeaseRef { id: x.id, lease_token: x.lease_token };
            let at = client.extend(lease, x.visibility_timeout_ms).await.map_err(|e| code(&e))?;
            Ok(json!({ "lease_expires_at": format_time(at) }))
        }
        "fail" => {
            let f: FailItem = parse(a, "fail");
            empty(client.fail(LeaseRef { id: f.id, lease_token: f.lease_token }, &f.error).await)
        }
        "release" => {
            let r: LeaseReleaseItem = parse(a, "release");
            empty(client.release(LeaseRef { id: r.id, lease_token: r.lease_token }, r.delay_ms).await)
        }
        "acks" => {
            let items: Vec<LeaseRef> = arg(a, "acks");
            let ids: Vec<JobId> = items.iter().map(|i| i.id).collect();
            let out = client.job_ack(&items).await.map_err(|e| code(&e))?;
            Ok(results(out, &ids, |id, ()| SettleResult::ok(id)))
        }
        "nacks" => {
            let items: Vec<NackItem> = arg(a, "nacks");
            let ids: Vec<JobId> = items.iter().map(|i| i.id).collect();
            let nacks: Vec<Nack> = items
                .into_iter()
                .map(|n| Nack { id: n.id, lease_token: n.lease_token, delay_ms: n.delay_ms, error: n.error })
                .collect();
            let out = client.job_nack(&nacks).await.map_err(|e| code(&e))?;
            Ok(results(out, &ids, SettleResult::nacked))
        }
        "extends" => {
            let items: Vec<ExtendItem> = arg(a, "extends");
            let ids: Vec<JobId> = items.iter().map(|i| i.id).collect();
            let extends: Vec<Extend> = items
                .into_iter()
                .map(|x| Extend {
                    id: x.id,
                    lease_token: x.lease_token,
                    visibility_timeout_ms: x.visibility_timeout_ms,
                })
                .collect();
            let out = client.job_extend(&extends).await.map_err(|e| code(&e))?;
            Ok(results(out, &ids, |id, at| SettleResult {
                lease_expires_at: Some(format_time(at)),
                ..SettleResult::ok(id)
            }))
        }
        "fails" => {
            let items: Vec<FailItem> = arg(a, "fails");
            let ids: Vec<JobId> = items.iter().map(|i| i.id).collect();
            let fails: Vec<Fail> =
                items.into_iter().map(|f| Fail { id: f.id, lease_token: f.lease_token, error: f.error }).collect();
            let out = client.job_fail(&fails).await.map_err(|e| code(&e))?;
            Ok(results(out, &ids, |id, ()| SettleResult::ok(id)))
        }
        "releases" => {
            let items: Vec<LeaseReleaseItem> = arg(a, "releases");
            let ids: Vec<JobId> = items.iter().map(|i| i.id).collect();
            let releases: Vec<Release> = items
                .into_iter()
                .map(|r| Release { id: r.id, lease_token: r.lease_token, delay_ms: r.delay_ms })
                .collect();
            let out = client.job_release(&releases).await.map_err(|e| code(&e))?;
            Ok(results(out, &ids, |id, ()| SettleResult::ok(id)))
        }
        "dead_list" => {
            let page = DeadPage { after: opt(a, "after"), limit: opt(a, "limit").unwrap_or(100) };
            let list = client.dead_list(queue, page).await.map_err(|e| code(&e))?;
            let jobs: Vec<JobView> = list.jobs.iter().map(JobView::from_job).collect();
            Ok(json!({ "jobs": wire(&jobs), "next": wire(&list.next) }))
        }
        "dead_redrive" => {
            let redrive = Redrive { ids: opt(a, "ids"), limit: opt(a, "limit"), ..Redrive::default() };
            client
                .dead_redrive(queue, redrive)
                .await
                .map(|r| json!({ "matched": r.matched, "redriven": r.redriven, "last": r.last }))
                .map_err(|e| code(&e))
        }
        "dead_purge" => client.dead_purge(queue).await.map(|n| json!({ "purged": n })).map_err(|e| code(&e)),
        "idempotency_begin" => {
            let begin = Begin {
                key: key(a),
                owner: arg(a, "owner"),
                ttl_ms: arg(a, "ttl_ms"),
                fingerprint: opt(a, "fingerprint"),
            };
            let outcome = client.idempotency_begin(begin).await.map_err(|e| code(&e))?;
            Ok(wire(&BeginResponse::from_outcome(outcome)))
        }
        "idempotency_complete" => {
            let result = a.get("result").cloned().unwrap_or(Value::Null).to_string().into_bytes();
            let complete =
                Complete { key: key(a), owner: arg(a, "owner"), result, retention_ms: arg(a, "retention_ms") };
            empty(client.idempotency_complete(complete).await)
        }
        "idempotency_release" => empty(client.idempotency_release(&key(a), &arg::<String>(a, "owner")).await),
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(arg(a, "ms"))).await;
            Ok(json!({}))
        }
        other => panic!("unknown op {other:?}: clients/scenarios/README.md lists the ops"),
    }
}

/// `$queue` and `$<saved>.<path>` references in `value`, replaced (README, "References").
fn resolve(value: &Value, saved: &Map<String, Value>, queue: &QueueName) -> Value {
    match value {
        Value::String(s) if s == "$queue" => Value::String(queue.to_string()),
        Value::String(s) if s.starts_with('$') => {
            let mut parts = s[1..].split('.');
            let mut current: Option<&Value> = None;
            for (n, part) in parts.by_ref().enumerate() {
                let (name, rest) = part.split_once('[').map_or((part, ""), |(a, b)| (a, b));
                current = Some(if n == 0 {
                    saved.get(name).unwrap_or_else(|| panic!("reference {s}: no result saved as {name:?}"))
                } else {
                    current.and_then(|c| c.get(name)).unwrap_or_else(|| panic!("reference {s}: no field {name:?}"))
                });
                for index in rest.split('[').filter(|i| !i.is_empty()) {
                    let i: usize = index.trim_end_matches(']').parse().unwrap_or_else(|e| panic!("reference {s}: {e}"));
                    current = current.and_then(|c| c.get(i));
                    assert!(current.is_some(), "reference {s}: no item {i}");
                }
            }
            current.cloned().unwrap_or(Value::Null)
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), resolve(v, saved, queue))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, saved, queue)).collect()),
        other => other.clone(),
    }
}

/// The mismatches of `actual` against `expect` (README, "Matching").
fn mismatches(expect: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (expect, actual) {
        (Value::String(s), _) if s == "<any>" => {}
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                match (v, a.get(k)) {
                    (Value::String(s), Some(got)) if s == "<absent>" => {
                        out.push(format!("{path}.{k}: expected absent, got {got}"))
                    }
                    (Value::String(s), None) if s == "<absent>" => {}
                    (_, None) => out.push(format!("{path}.{k}: missing")),
                    (v, Some(got)) => mismatches(v, got, &format!("{path}.{k}"), out),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                mismatches(e, a, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if e.as_f64() != a.as_f64() {
                out.push(format!("{path}: expected {e}, got {a}"));
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{path}: expected {e}, got {a}")),
    }
}

async fn run_scenario(client: &Client, path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let scenario: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let name = scenario["name"].as_str().unwrap_or_else(|| panic!("{file}: no name"));
    assert_eq!(Some(name), path.file_stem().and_then(|s| s.to_str()), "{file}: its name must be its file's stem");
    let queue: QueueName = parse(&json!(format!("scn-{name}-{:08x}", rand::random::<u32>())), "queue name");
    let patch: QueueConfigPatch = parse(&scenario["queue"], "queue config");
    client.queue_upsert(&queue, patch).await.unwrap_or_else(|e| panic!("{file}: putting the queue: {e}"));
    let steps = scenario["steps"].as_array().unwrap_or_else(|| panic!("{file}: no steps"));
    let mut saved = Map::new();
    for (index, step) in steps.iter().enumerate() {
        let op = step["op"].as_str().unwrap_or_else(|| panic!("{file} step {index}: no op"));
        let args = resolve(step.get("args").unwrap_or(&json!({})), &saved, &queue);
        let outcome = run_op(client, &queue, op, &args).await;
        let result = match &outcome {
            Ok(body) => body.clone(),
            Err(code) => json!({ "error": code }),
        };
        match step.get("expect").map(|e| resolve(e, &saved, &queue)) {
            None => assert!(outcome.is_ok(), "{file} step {index} ({op}): failed with {result}, expected success"),
            Some(expect) => {
                assert_eq!(
                    expect.get("error").is_some(),
                    outcome.is_err(),
                    "{file} step {index} ({op}): expected {expect}, got {result}"
                );
                let mut problems = Vec::new();
                mismatches(&expect, &result, "", &mut problems);
                assert!(
                    problems.is_empty(),
                    "{file} step {index} ({op}): expected {expect}, got {result}: {problems:?}"
                );
            }
        }
        if let Some(name) = step.get("save").and_then(Value::as_str) {
            saved.insert(name.to_owned(), result);
        }
    }
    steps.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_gives_the_results_its_file_states() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
    let store = Arc::new(
        SqliteStore::open(SqliteOptions::new(dir.path())).unwrap_or_else(|e| panic!("cannot open the store: {e}")),
    );
    let router = Api::new(Arc::clone(&store) as Arc<dyn Store>)
        .idempotency(Arc::clone(&store) as Arc<dyn IdempotencyStore>)
        .router();
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("cannot listen on loopback: {e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}"));
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            panic!("the server stopped: {e}");
        }
    });
    let client = Client::new(format!("http://{address}")).unwrap_or_else(|e| panic!("cannot make the client: {e}"));

    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", scenarios_dir().display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let names: Vec<String> =
        files.iter().filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
    for required in ["enqueue_dedup", "lease_ack", "stale_lease", "nack_to_dead", "redrive", "idempotency"] {
        assert!(names.iter().any(|n| n == required), "scenario {required} is missing from {names:?}");
    }
    for path in &files {
        let steps = run_scenario(&client, path).await;
        assert!(steps > 0, "{}: no steps", path.display());
    }
    server.abort();
}

#[test]
fn the_matcher_refuses_what_differs() {
    let check = |e: Value, a: Value| {
        let mut out = Vec::new();
        mismatches(&e, &a, "", &mut out);
        out
    };
    assert!(check(json!({"a": 1}), json!({"a": 1.0, "b": 2})).is_empty());
    assert!(!check(json!({"a": 1}), json!({"a": 2})).is_empty());
    assert!(!check(json!({"a": [1]}), json!({"a": [1, 2]})).is_empty());
    assert!(!check(json!({"a": "<absent>"}), json!({"a": null})).is_empty());
    assert!(check(json!({"a": "<any>"}), json!({"a": null})).is_empty());
    assert!(!check(json!({"a": null}), json!({"a": false})).is_empty());
}
