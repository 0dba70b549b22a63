//! The operator CLI against a real `onceq serve`: proves that every command does what it says,
//! end to end, in both output formats, and exits with the documented codes.
//!
//! The test starts the `onceq` binary as a server on an ephemeral port with a temporary data
//! directory, then runs the same binary as the CLI, one process per command, the way an operator
//! would: `queue set`, `enqueue` (argument and JSON lines on stdin), `stats` (table and JSON),
//! `lease`, `ack`, `extend`, `nack` (retry, then dead), `fail`, `dlq list|redrive|purge`, `job get`,
//! `queue pause|resume|list|delete`. The JSON output is checked field by field against what the
//! commands did; the tables by their rows. Then the failures: an unknown queue and a lost lease
//! exit 1 with a message, bad flags and input exit 2, and a server that is not there exits 3.
//! And ordering per key: the queue flags, the enqueue key, and what the views show of both; and
//! consumer groups: `group list` and `group describe` of members joined over HTTP, and their
//! failures (an unknown queue, an unordered one, a bad group name).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

/// A running `onceq serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_onceq"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join("data"))
            .env_remove("ONCEQ_CONFIG")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "onceq listening on http://127.0.0.1:PORT (data dir ..., durability ...)"
        let url = line
            .strip_prefix("onceq listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line from onceq serve: {line:?}"))
            .to_owned();
        Server { child, url, _data: data }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one CLI process did.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `onceq ARGS --server URL`, with `stdin` as its standard input (none: empty).
fn onceq(server: &str, args: &[&str], stdin: Option<&str>) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_onceq"))
        .args(args)
        .args(["--server", server])
        .env_remove("ONCEQ_SERVER")
        .env_remove("ONCEQ_TOKEN")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs a command that must succeed, and returns its stdout.
fn ok(server: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = onceq(server, args, stdin);
    assert_eq!(out.code, 0, "onceq {args:?} failed: {out:?}");
    assert_eq!(out.stderr, "", "onceq {args:?} wrote to stderr");
    out.stdout
}

/// Runs a command with `--output json` that must succeed, and parses its one JSON document.
fn json(server: &str, args: &[&str], stdin: Option<&str>) -> Value {
    let mut with_json = args.to_vec();
    with_json.extend(["--output", "json"]);
    let stdout = ok(server, &with_json, stdin);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("onceq {args:?} printed no JSON ({e}): {stdout}"))
}

/// The one job of a JSON lease reply: (id, lease token, the whole job).
fn leased_one(server: &str, queue: &str) -> (String, String, Value) {
    let reply = json(server, &["lease", queue], None);
    let jobs = reply["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{reply}");
    let job = jobs[0].clone();
    (job["id"].as_str().unwrap().to_owned(), job["lease_token"].as_str().unwrap().to_owned(), job)
}

/// The whitespace-separated cells of the table row whose first cell is `first`.
fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[test]
fn the_cli_drives_jobs_through_their_whole_lifecycle() {
    let server = Server::start();
    let url = server.url.as_str();

    // queue set: every flag lands in the config; one backoff flag keeps the others.
    let config = json(
        url,
        &[
            "queue",
            "set",
            "emails",
            "--max-attempts",
            "3",
            "--visibility-timeout-ms",
            "30000",
            "--backoff-initial-ms",
            "5",
            "--backoff-max-ms",
            "50",
            "--backoff-multiplier",
            "1.5",
            "--backoff-jitter",
            "none",
            "--dedup-window-ms",
            "60000",
        ],
        None,
    );
    let expected = json!({"delivery": "at_least_once", "visibility_timeout_ms": 30000, "max_attempts": 3,
        "backoff": {"initial_ms": 5, "max_ms": 50, "multiplier": 1.5, "jitter": "none"}, "dedup_window_ms": 60000,
        "ordering": "none", "partitions": 16, "dead_blocks_key": false});
    assert_eq!(config, expected);
    let config = json(url, &["queue", "set", "emails", "--backoff-max-ms", "80"], None);
    assert_eq!(config["backoff"], json!({"initial_ms": 5, "max_ms": 80, "multiplier": 1.5, "jitter": "none"}));

    // enqueue with a payload argument and every job flag.
    let first = json(url, &["enqueue", "emails", r#"{"to":"ada"}"#, "--priority", "5", "--header", "trace=abc"], None);
    let ada = first["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(first, json!({"jobs": [{"id": ada, "duplicate": false}]}));

    // A dedup id: the second enqueue is a duplicate with the first one's id (table output).
    let bob1 = ok(url, &["enqueue", "emails", r#"{"to":"bob"}"#, "--dedup-id", "signup-bob"], None);
    let bob2 = ok(url, &["enqueue", "emails", r#"{"to":"bob"}"#, "--dedup-id", "signup-bob"], None);
    assert_eq!(row(&bob1, "ID"), ["ID", "DUPLICATE"]);
    let bob_id = bob1.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert_eq!(row(&bob1, &bob_id), vec![bob_id.clone(), "no".into()]);
    assert_eq!(row(&bob2, &bob_id), vec![bob_id.clone(), "yes".into()]);

    // enqueue from JSON lines on stdin: payloads and job objects; blank lines are skipped.
    let lines = "{\"n\":1}\n2\n\n{\"payload\":{\"n\":3},\"priority\":1,\"headers\":{\"k\":\"v\"}}\n\"text\"\n";
    let bulk = json(url, &["enqueue", "emails"], Some(lines));
    let bulk_jobs = bulk["jobs"].as_array().unwrap();
    assert_eq!(bulk_jobs.len(), 4, "{bulk}");
    assert!(bulk_jobs.iter().all(|job| job["duplicate"] == json!(false)), "{bulk}");
    let n3 = bulk_jobs[2]["id"].as_str().unwrap().to_owned();
    let summary = ok(url, &["enqueue", "emails"], Some("{\"n\":4}\n{\"n\":5}\n"));
    assert!(summary.starts_with("enqueued 2 jobs to emails: 2 new, 0 duplicates (ids "), "{summary}");

    // stats: 1 + 1 + 4 + 2 jobs ready, in a table and in JSON.
    let table = ok(url, &["stats"], None);
    assert_eq!(
        row(&table, "QUEUE"),
        ["QUEUE", "READY", "SCHEDULED", "LEASED", "BLOCKED", "DEAD", "OLDEST_READY", "PAUSED"]
    );
    let emails = row(&table, "emails");
    assert_eq!(&emails[..6], ["emails", "8", "0", "0", "0", "0"]);
    assert_eq!(emails[7], "no");
    let stats = json(url, &["stats", "emails"], None);
    assert_eq!(stats["queues"][0]["name"], "emails");
    assert_eq!(stats["queues"][0]["paused"], false);
    let counts = &stats["queues"][0]["stats"];
    assert_eq!(
        (&counts["ready"], &counts["scheduled"], &counts["leased"], &counts["dead"]),
        (&json!(8), &json!(0), &json!(0), &json!(0))
    );

    // lease (highest priority first) and ack; the acked job is gone for good.
    let (id, token, job) = leased_one(url, "emails");
    assert_eq!(id, ada);
    assert_eq!(
        (&job["attempt"], &job["payload"], &job["headers"]),
        (&json!(1), &json!({"to": "ada"}), &json!({"trace": "abc"}))
    );
    assert_eq!(json(url, &["ack", &ada, "--lease-token", &token], None), json!({"id": ada, "ok": true}));
    let gone = onceq(url, &["job", "get", &ada], None);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert_eq!(gone.stderr, format!("onceq: job {ada} not found (acked, deleted, purged, or never existed)\n"));
    let again = onceq(url, &["ack", &ada, "--lease-token", &token], None);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.starts_with("onceq: "), "{again:?}");

    // lease in a table, then ack with the token read from it.
    let table = ok(url, &["lease", "emails"], None);
    let leased = row(&table, &n3);
    assert_eq!(leased[1], "1/3");
    let acked = ok(url, &["ack", &n3, "--lease-token", &leased[2]], None);
    assert_eq!(acked, format!("job {n3} acked: done for good\n"));

    // pause: no leases; resume: leases again; extend the new lease.
    assert_eq!(json(url, &["queue", "pause", "emails"], None), json!({"name": "emails", "paused": true}));
    assert_eq!(json(url, &["queue", "get", "emails"], None)["paused"], true);
    assert_eq!(json(url, &["lease", "emails"], None), json!({"jobs": []}));
    let paused = ok(url, &["stats"], None);
    assert_eq!(row(&paused, "emails")[7], "yes");
    assert_eq!(json(url, &["queue", "resume", "emails"], None), json!({"name": "emails", "paused": false}));
    let (id, token, _) = leased_one(url, "emails");
    let extended = json(url, &["extend", &id, "--lease-token", &token, "--visibility-timeout-ms", "60000"], None);
    assert!(extended["lease_expires_at"].as_str().unwrap().ends_with('Z'), "{extended}");
    assert_eq!(json(url, &["job", "get", &id], None)["state"], "leased");

    // nack twice on a 2-attempt queue: retrying, then dead.
    json(url, &["queue", "set", "retry", "--max-attempts", "2"], None);
    let r1 = json(url, &["enqueue", "retry", r#"{"job":"r1"}"#], None)["jobs"][0]["id"].as_str().unwrap().to_owned();
    let (id, token, _) = leased_one(url, "retry");
    assert_eq!(id, r1);
    let nacked = json(url, &["nack", &r1, "--lease-token", &token, "--delay-ms", "0", "--error", "boom"], None);
    assert_eq!((&nacked["id"], &nacked["ok"], &nacked["outcome"]), (&json!(r1), &json!(true), &json!("retrying")));
    let (id, token, job) = leased_one(url, "retry");
    assert_eq!((id.as_str(), &job["attempt"]), (r1.as_str(), &json!(2)));
    let nacked = ok(url, &["nack", &r1, "--lease-token", &token, "--error", "boom again"], None);
    assert_eq!(nacked, format!("job {r1} nacked: its attempts are exhausted, it is dead\n"));

    // fail: dead at once (after a release and a snooze, neither of which spends an attempt).
    let r2 = json(url, &["enqueue", "retry", r#"{"job":"r2"}"#], None)["jobs"][0]["id"].as_str().unwrap().to_owned();
    let (id, token, job) = leased_one(url, "retry");
    assert_eq!((id.as_str(), &job["attempt"]), (r2.as_str(), &json!(1)));
    let released = ok(url, &["release", &r2, "--lease-token", &token], None);
    assert_eq!(released, format!("job {r2} released: ready again now, without spending an attempt\n"));
    let (_, token, job) = leased_one(url, "retry");
    assert_eq!(job["attempt"], json!(1), "a release spent an attempt: {job}");
    assert_eq!(
        json(url, &["release", &r2, "--lease-token", &token, "--delay-ms", "60000"], None),
        json!({"id": r2, "ok": true})
    );
    assert_eq!(json(url, &["job", "get", &r2], None)["state"], "scheduled", "snoozed for a minute");
    let out = onceq(url, &["release", &r2, "--lease-token", &token], None);
    assert_eq!(out.code, 1, "a release with a stale token: {}", out.stderr);
    let scheduled = ok(url, &["stats", "retry"], None);
    assert_eq!(row(&scheduled, "retry")[2], "1", "{scheduled}");
    json(url, &["queue", "set", "retry", "--max-attempts", "2"], None);
    let r3 = json(url, &["enqueue", "retry", r#"{"job":"r2b"}"#], None)["jobs"][0]["id"].as_str().unwrap().to_owned();
    let (id, token, _) = leased_one(url, "retry");
    assert_eq!(id, r3);
    let r2 = r3;
    assert_eq!(
        json(url, &["fail", &r2, "--lease-token", &token, "--error", "bad input"], None),
        json!({"id": r2, "ok": true})
    );

    // job get: a dead job with the error of every attempt.
    let dead = json(url, &["job", "get", &r1], None);
    assert_eq!(
        (&dead["state"], &dead["attempt"], &dead["payload"]),
        (&json!("dead"), &json!(2), &json!({"job": "r1"}))
    );
    let errors: Vec<(Value, Value)> =
        dead["errors"].as_array().unwrap().iter().map(|e| (e["attempt"].clone(), e["error"].clone())).collect();
    assert_eq!(errors, vec![(json!(1), json!("boom")), (json!(2), json!("boom again"))]);

    // dlq list (JSON and table), redrive one, purge the rest.
    let listed = json(url, &["dlq", "list", "retry"], None);
    let ids: Vec<&str> = listed["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [r1.as_str(), r2.as_str()]);
    assert_eq!(listed["next"], Value::Null);
    let page = json(url, &["dlq", "list", "retry", "--limit", "1"], None);
    assert_eq!(page["next"], json!(r1));
    let table = ok(url, &["dlq", "list", "retry"], None);
    assert_eq!(row(&table, &r2)[1], "1/2");
    assert!(table.lines().any(|line| line.contains("  bad input  ")), "{table}");
    // Filters: r1 died of "boom again" after 2 attempts, r2 of "bad input" after 1.
    let dry = |filter: &[&str]| {
        let mut args = vec!["dlq", "redrive", "retry", "--dry-run"];
        args.extend_from_slice(filter);
        json(url, &args, None)
    };
    assert_eq!(dry(&["--error-contains", "boom"]), json!({"matched": 1, "redriven": 0, "last": null}));
    assert_eq!(dry(&["--min-attempts", "2"]), json!({"matched": 1, "redriven": 0, "last": null}));
    assert_eq!(dry(&["--dead-before", "2000-01-01T00:00:00Z"]), json!({"matched": 0, "redriven": 0, "last": null}));
    assert_eq!(dry(&[]), json!({"matched": 2, "redriven": 0, "last": null}));
    let bad_time = onceq(url, &["dlq", "redrive", "retry", "--dead-after", "yesterday"], None);
    assert!(bad_time.code == 2 && bad_time.stderr.contains("RFC 3339"), "{bad_time:?}");
    assert_eq!(
        json(url, &["dlq", "redrive", "retry", "--ids", &r1], None),
        json!({"matched": 1, "redriven": 1, "last": r1})
    );
    let redriven = json(url, &["job", "get", &r1], None);
    assert_eq!((&redriven["state"], &redriven["attempt"]), (&json!("ready"), &json!(0)));
    let unconfirmed = onceq(url, &["dlq", "purge", "retry"], None);
    assert_eq!(unconfirmed.code, 2, "{unconfirmed:?}");
    assert!(unconfirmed.stderr.contains("pass --yes"), "{unconfirmed:?}");
    assert_eq!(json(url, &["dlq", "purge", "retry", "--yes"], None), json!({"purged": 1}));
    assert_eq!(json(url, &["dlq", "list", "retry"], None), json!({"jobs": [], "next": null}));

    // queue list, then delete (confirmed) and the queue is gone.
    let list = json(url, &["queue", "list"], None);
    let names: Vec<&str> = list["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["emails", "retry"]);
    let table = ok(url, &["queue", "list"], None);
    assert_eq!(row(&table, "retry")[..4], ["retry", "at_least_once", "30.0s", "2"]);
    let unconfirmed = onceq(url, &["queue", "delete", "emails"], None);
    assert_eq!(unconfirmed.code, 2, "{unconfirmed:?}");
    assert_eq!(json(url, &["queue", "delete", "emails", "--yes"], None), json!({"name": "emails", "deleted": true}));
    let missing = onceq(url, &["queue", "get", "emails"], None);
    assert_eq!((missing.code, missing.stderr.as_str()), (1, "onceq: queue 'emails' not found\n"));
}

#[test]
fn failures_exit_with_their_documented_codes() {
    let mut server = Server::start();
    let url = server.url.clone();
    let url = url.as_str();

    // 1: an unknown queue, a lost lease.
    let unknown = onceq(url, &["queue", "get", "nosuch"], None);
    assert_eq!(
        (unknown.code, unknown.stderr.as_str(), unknown.stdout.as_str()),
        (1, "onceq: queue 'nosuch' not found\n", "")
    );
    let unknown = onceq(url, &["dlq", "list", "nosuch"], None);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    json(url, &["enqueue", "q", "1"], None);
    let (id, _, _) = leased_one(url, "q");
    let lost = onceq(url, &["ack", &id, "--lease-token", "000102030405060708090a0b0c0d0e0f"], None);
    assert_eq!(lost.code, 1, "{lost:?}");
    assert!(lost.stderr.starts_with(&format!("onceq: lease lost on job {id}")), "{lost:?}");

    // 2: bad flags, bad values, bad input.
    for args in [
        &["lease", "q", "--max-jobs", "0"][..],
        &["queue", "frobnicate"],
        &["ack", "1", "--lease-token", "not-a-token"],
        &["enqueue", "q", "--run-at", "tomorrow", "1"],
    ] {
        let bad = onceq(url, args, None);
        assert_eq!(bad.code, 2, "{args:?}: {bad:?}");
        assert!(bad.stderr.starts_with("error: "), "{args:?}: {bad:?}");
    }
    let not_json = onceq(url, &["enqueue", "q", "not json"], None);
    assert_eq!(not_json.code, 2, "{not_json:?}");
    assert!(not_json.stderr.starts_with("onceq: PAYLOAD is not JSON"), "{not_json:?}");
    let bad_line = onceq(url, &["enqueue", "q"], Some("1\n{oops\n"));
    assert_eq!(bad_line.code, 2, "{bad_line:?}");
    assert!(bad_line.stderr.starts_with("onceq: stdin line 2: not JSON"), "{bad_line:?}");
    assert!(bad_line.stderr.trim_end().ends_with("nothing was enqueued"), "{bad_line:?}");
    assert_eq!(json(url, &["stats", "q"], None)["queues"][0]["stats"]["ready"], 0);

    // 3: the server is not there.
    server.stop();
    let down = onceq(url, &["stats"], None);
    assert_eq!(down.code, 3, "{down:?}");
    assert!(down.stderr.starts_with("onceq: cannot connect to the onceq server at http://"), "{down:?}");
    assert!(down.stderr.contains("is `onceq serve` running"), "{down:?}");
    let down = onceq(url, &["enqueue", "q"], Some("1\n2\n"));
    assert_eq!(down.code, 3, "{down:?}");
    assert!(down.stderr.trim_end().ends_with("nothing was enqueued"), "{down:?}");
}

/// Ordering per key from the command line: `queue set --ordering per_key --partitions N
/// --dead-blocks-key true`, `enqueue --ordering-key K` (as an argument job's key and as every stdin
/// line's default), the key and partition in `job get` and `lease`, blocked jobs in `stats` and
/// `queue get`; a reorder of a queue that holds jobs exits 1 saying why; bad values exit 2.
#[test]
fn ordering_per_key_from_the_cli() {
    let server = Server::start();
    let url = server.url.as_str();

    let args = ["queue", "set", "orders", "--ordering", "per_key", "--partitions", "64", "--dead-blocks-key", "true"];
    let config = json(url, &args, None);
    assert_eq!(
        (&config["ordering"], &config["partitions"], &config["dead_blocks_key"]),
        (&json!("per_key"), &json!(64), &json!(true))
    );
    let record = ok(url, &["queue", "get", "orders"], None);
    assert_eq!(row(&record, "ordering"), ["ordering", "per_key"]);
    assert_eq!(row(&record, "partitions"), ["partitions", "64"]);
    assert_eq!(row(&record, "dead_blocks_key"), ["dead_blocks_key", "yes"]);
    let list = ok(url, &["queue", "list"], None);
    assert!(row(&list, "orders").join(" ").contains("per_key, 64 partitions, dead blocks key"), "{list}");

    let head = json(url, &["enqueue", "orders", r#"{"n":1}"#, "--ordering-key", "a"], None)["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lines = json(
        url,
        &["enqueue", "orders", "--ordering-key", "a"],
        Some("2\n{\"payload\": 3, \"ordering_key\": \"foobar\"}\n"),
    );
    let behind = lines["jobs"][0]["id"].as_str().unwrap().to_owned();
    let other = lines["jobs"][1]["id"].as_str().unwrap().to_owned();

    let job = json(url, &["job", "get", &behind], None);
    assert_eq!((&job["state"], &job["ordering_key"], &job["partition"]), (&json!("blocked"), &json!("a"), &json!(44)));
    let record = ok(url, &["job", "get", &other], None);
    assert_eq!(row(&record, "ordering_key"), ["ordering_key", "foobar"]);
    assert_eq!(row(&record, "partition"), ["partition", "40"]);
    let stats = json(url, &["stats", "orders"], None)["queues"][0]["stats"].clone();
    assert_eq!((&stats["ready"], &stats["blocked"]), (&json!(2), &json!(1)), "{stats}");
    let table = ok(url, &["stats", "orders"], None);
    assert_eq!(row(&table, "QUEUE")[4], "BLOCKED");
    assert_eq!(row(&table, "orders")[4], "1");
    assert_eq!(row(&ok(url, &["queue", "get", "orders"], None), "blocked"), ["blocked", "1"]);

    let leased = json(url, &["lease", "orders", "--max-jobs", "10"], None);
    let jobs = leased["jobs"].as_array().unwrap();
    let seen: Vec<(&str, &str)> =
        jobs.iter().map(|j| (j["id"].as_str().unwrap(), j["ordering_key"].as_str().unwrap())).collect();
    assert_eq!(seen, [(head.as_str(), "a"), (other.as_str(), "foobar")], "the blocked job waits: {leased}");

    let refused = onceq(url, &["queue", "set", "orders", "--ordering", "none"], None);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("holds 3 jobs"), "{refused:?}");
    assert_eq!(json(url, &["queue", "get", "orders"], None)["config"]["ordering"], "per_key", "nothing changed");

    let long = "k".repeat(257);
    for args in [
        &["queue", "set", "orders", "--ordering", "fifo"][..],
        &["queue", "set", "orders", "--partitions", "0"],
        &["queue", "set", "orders", "--partitions", "257"],
        &["queue", "set", "orders", "--dead-blocks-key", "maybe"],
        &["enqueue", "orders", "1", "--ordering-key", ""],
        &["enqueue", "orders", "1", "--ordering-key", &long],
    ] {
        let bad = onceq(url, args, None);
        assert_eq!(bad.code, 2, "{args:?}: {bad:?}");
        assert!(bad.stderr.starts_with("error: "), "{args:?}: {bad:?}");
    }
    let bad_line = onceq(url, &["enqueue", "orders"], Some("{\"payload\": 1, \"ordering_key\": \"\"}\n"));
    assert_eq!(bad_line.code, 2, "{bad_line:?}");
    assert!(bad_line.stderr.starts_with("onceq: stdin line 1: ordering key is 0 bytes"), "{bad_line:?}");
    assert_eq!(json(url, &["stats", "orders"], None)["queues"][0]["stats"]["blocked"], 1, "nothing more was enqueued");
}

/// `onceq token new | head -1`: standard output closed before the command writes. The command
/// ends quietly with status 0 instead of panicking (status 101) on the broken pipe.
#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // nobody reads: every write fails with EPIPE
    let child = Command::new(env!("CARGO_BIN_EXE_onceq"))
        .args(["token", "new", "--name", "x"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// One HTTP call to the server (what a worker does; the CLI only reads groups): the status, the
/// `Location` header and the JSON body (`null` when empty).
fn http(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Option<String>, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method, url);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        (status, location, body)
    })
}

/// Consumer groups from the command line: `group list` (a row per group: generation, members,
/// partitions owned and moving, total lag) and `group describe` (the members with their
/// partitions and those they are giving up, and each partition's owner, the member it moves to
/// and its load), in both output formats, for a group whose members joined and leased over HTTP;
/// an unknown queue and an unordered queue exit 1 saying why; a bad group name exits 2.
#[test]
fn consumer_groups_from_the_cli() {
    let server = Server::start();
    let url = server.url.as_str();
    ok(url, &["queue", "set", "orders", "--ordering", "per_key", "--partitions", "4"], None);
    assert_eq!(
        ok(url, &["group", "list", "orders"], None),
        "GROUP  GENERATION  MEMBERS  PARTITIONS  OWNED  MOVING  LAG\n"
    );
    assert_eq!(json(url, &["group", "list", "orders"], None), json!({"groups": []}));

    // One job in each partition (keys found by the documented hash).
    let mut keys = std::collections::BTreeMap::new();
    for i in 0u64.. {
        if keys.len() == 4 {
            break;
        }
        let key = format!("key-{i}");
        keys.entry(onceq_core::ordering::partition_of(Some(&key), onceq_core::JobId::new(1), 4)).or_insert(key);
    }
    let lines: String = keys.values().map(|k| format!("{{\"payload\": 1, \"ordering_key\": \"{k}\"}}\n")).collect();
    ok(url, &["enqueue", "orders"], Some(&lines));

    // A joins and leases a job in every partition; B joins and waits for A's leases.
    let members = format!("{url}/v1/queues/orders/groups/billing/members");
    let (status, location, a) =
        http(reqwest::Method::POST, &members, Some(json!({"name": "worker-a", "session_timeout_ms": 60_000})));
    assert_eq!(status, 201, "{a}");
    let a_id = a["member_id"].as_str().unwrap().to_owned();
    assert_eq!(location, Some(format!("/v1/queues/orders/groups/billing/members/{a_id}")));
    let lease = json!({"max_jobs": 10, "visibility_timeout_ms": 60_000, "group": "billing", "member_id": a_id});
    let (status, _, leased) = http(reqwest::Method::POST, &format!("{url}/v1/queues/orders/leases"), Some(lease));
    assert_eq!((status, leased["jobs"].as_array().unwrap().len()), (200, 4), "{leased}");
    let (status, _, b) = http(reqwest::Method::POST, &members, Some(json!({})));
    assert_eq!((status, &b["partitions"]), (201, &json!([])), "{b}");
    let b_id = b["member_id"].as_str().unwrap().to_owned();

    // list: the JSON is the API's; the table sums it up.
    let list = json(url, &["group", "list", "orders"], None);
    let groups = list["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{list}");
    let group = &groups[0];
    let generation = group["generation"].as_u64().unwrap();
    assert_eq!(group["members"].as_array().unwrap().len(), 2, "{list}");
    let (_, _, api) = http(reqwest::Method::GET, &format!("{url}/v1/queues/orders/groups"), None);
    assert_eq!(api["groups"][0]["members"], group["members"], "the CLI prints the API's shape");
    let table = ok(url, &["group", "list", "orders"], None);
    // Every partition is owned (by A); the two B is to get still hold A's leases, so they move.
    assert_eq!(row(&table, "billing"), ["billing", &generation.to_string(), "2", "4", "4", "2", "4"], "{table}");

    // describe: the record, the members, the partitions.
    let described = json(url, &["group", "describe", "orders", "billing"], None);
    assert_eq!((&described["group"], &described["generation"]), (&json!("billing"), &json!(generation)));
    assert_eq!(described["members"], group["members"]);
    let a_view = described["members"].as_array().unwrap().iter().find(|m| m["member_id"] == json!(a_id)).unwrap();
    let a_revoking: Vec<u64> = a_view["revoking"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    let a_partitions: Vec<u64> = a_view["partitions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!((a_partitions.len(), a_revoking.len()), (2, 2), "{described}");
    let text = ok(url, &["group", "describe", "orders", "billing"], None);
    assert_eq!(row(&text, "group"), ["group", "billing"]);
    assert_eq!(row(&text, "generation"), ["generation", &generation.to_string()]);
    assert_eq!(row(&text, "members"), ["members", "2"]);
    // Two partitions each, as ranges: `0-1`, or `0,2` when they are not adjacent.
    let ranges = |ps: &[u64]| match ps {
        [a, b] if a + 1 == *b => format!("{a}-{b}"),
        _ => ps.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
    };
    let a_row = row(&text, &a_id);
    assert_eq!(
        a_row[..5],
        [a_id.as_str(), "worker-a", &ranges(&a_partitions), &ranges(&a_revoking), "1m00s"],
        "{text}"
    );
    assert_eq!(row(&text, &b_id)[..5], [b_id.as_str(), "-", "-", "-", "10.0s"], "{text}");
    assert_eq!(row(&text, "PARTITION"), ["PARTITION", "OWNER", "MOVING_TO", "LAG", "READY", "OLDEST_READY"], "{text}");
    for p in 0..4u64 {
        let moving_to = if a_revoking.contains(&p) { &b_id[..8] } else { "-" };
        assert_eq!(row(&text, &p.to_string()), [&p.to_string(), &a_id[..8], moving_to, "1", "0", "-"], "{text}");
    }

    // Failures: an unknown queue, an unordered queue (1); a bad group name (2).
    let unknown = onceq(url, &["group", "list", "nosuch"], None);
    assert_eq!((unknown.code, unknown.stderr.as_str()), (1, "onceq: queue 'nosuch' not found\n"));
    let unknown = onceq(url, &["group", "describe", "nosuch", "billing"], None);
    assert_eq!((unknown.code, unknown.stderr.as_str()), (1, "onceq: queue 'nosuch' not found\n"));
    ok(url, &["queue", "set", "plain"], None);
    for args in [&["group", "list", "plain"][..], &["group", "describe", "plain", "billing"]] {
        let unordered = onceq(url, args, None);
        assert_eq!((unordered.code, unordered.stdout.as_str()), (1, ""), "{unordered:?}");
        assert!(
            unordered.stderr.starts_with("onceq: queue plain is not per_key, so it has no consumer groups"),
            "{unordered:?}"
        );
    }
    for args in [&["group", "describe", "orders", "bad name"][..], &["group", "list"], &["group", "frobnicate"]] {
        let bad = onceq(url, args, None);
        assert_eq!(bad.code, 2, "{args:?}: {bad:?}");
        assert!(bad.stderr.starts_with("error: "), "{args:?}: {bad:?}");
    }
    let bad = onceq(url, &["group", "describe", "orders", "bad name"], None);
    assert!(bad.stderr.contains("contains ' '; only [A-Za-z0-9._-] is allowed"), "{bad:?}");
}

/// `onceq producer get` and `register`: a producer never registered, a registration in JSON, a
/// second registration (with the checkpoint of the first epoch's commit) that fences the first
/// epoch, and a bad id that exits 2.
#[test]
fn producers_from_the_cli() {
    let server = Server::start();
    let url = server.url.as_str();
    assert_eq!(ok(url, &["producer", "get", "ingest:orders"], None), "producer ingest:orders: never registered\n");
    let first = json(url, &["producer", "register", "ingest:orders"], None);
    assert_eq!(first, json!({"id": "ingest:orders", "epoch": 1, "checkpoint": null}));
    // A commit of epoch 1 saves a checkpoint; registering again fences epoch 1.
    let commit = json!({"producer": {"id": "ingest:orders", "epoch": 1},
        "enqueue": [{"queue": "orders", "jobs": [{"payload": {"line": 1}}]}], "checkpoint": {"offset": 1}});
    let (status, _, body) = http(reqwest::Method::POST, &format!("{url}/v1/commits"), Some(commit.clone()));
    assert_eq!(status, 200, "{body}");
    let table = ok(url, &["producer", "register", "ingest:orders"], None);
    assert!(table.contains("epoch       2") && table.contains(r#"{"offset":1}"#), "{table}");
    let (status, _, body) = http(reqwest::Method::POST, &format!("{url}/v1/commits"), Some(commit));
    assert_eq!((status, &body["error"]["code"]), (409, &json!("fenced")), "{body}");
    assert_eq!(json(url, &["producer", "get", "ingest:orders"], None)["epoch"], json!(2));
    let bad = onceq(url, &["producer", "get", "no spaces"], None);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// Schedules from the CLI against a real server: `schedule put` an every-second schedule and the
/// server fires it by itself (one job per tick, with the tick's dedup id); `get`, `list`,
/// `pause`, `resume`, `delete`; a bad cron exits 1 naming the field, a bad name 2, an unknown
/// schedule 1.
#[test]
fn schedules_from_the_cli() {
    let server = Server::start();
    let url = server.url.as_str();
    let put = json(
        url,
        &["schedule", "put", "beat", "ticks", "* * * * * *", "--payload", r#"{"kind":"beat"}"#, "--catch-up", "all"],
        None,
    );
    assert_eq!(
        (&put["name"], &put["queue"], &put["cron"], &put["timezone"], &put["catch_up"], &put["paused"]),
        (&json!("beat"), &json!("ticks"), &json!("* * * * * *"), &json!("UTC"), &json!("all"), &json!(false))
    );
    assert_eq!(put["next_ticks"].as_array().unwrap().len(), 5, "{put}");
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let paused = ok(url, &["schedule", "pause", "beat"], None);
    assert_eq!(paused, "paused schedule beat\n");
    let got = json(url, &["schedule", "get", "beat"], None);
    assert_eq!((&got["paused"], &got["next_tick"]), (&json!(true), &json!(null)), "{got}");
    let leased = json(url, &["lease", "ticks", "--max-jobs", "100"], None);
    let jobs = leased["jobs"].as_array().unwrap();
    assert!(jobs.len() >= 2, "an every-second schedule fired {} jobs in 3.5 s: {leased}", jobs.len());
    let mut ticks: Vec<i64> = jobs
        .iter()
        .map(|job| {
            assert_eq!(job["payload"], json!({"kind": "beat"}));
            let dedup = job["dedup_id"].as_str().unwrap();
            dedup.strip_prefix("schedule:beat:").unwrap().parse().unwrap()
        })
        .collect();
    ticks.sort_unstable();
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 1000), "one job per tick, none skipped: {ticks:?}");
    assert_eq!(
        got["last_job_id"],
        jobs.iter().max_by_key(|j| j["dedup_id"].as_str().unwrap().to_owned()).unwrap()["id"]
    );
    let table = ok(url, &["schedule", "list"], None);
    assert_eq!(row(&table, "beat")[..2], ["beat".to_owned(), "ticks".to_owned()], "{table}");
    assert_eq!(ok(url, &["schedule", "resume", "beat"], None), "resumed schedule beat\n");
    assert_eq!(ok(url, &["schedule", "delete", "beat", "--yes"], None), "deleted schedule beat\n");
    let gone = onceq(url, &["schedule", "get", "beat"], None);
    assert_eq!((gone.code, gone.stderr.as_str()), (1, "onceq: schedule 'beat' not found\n"));
    let bad_cron = onceq(url, &["schedule", "put", "bad", "ticks", "61 * * * *"], None);
    assert_eq!(bad_cron.code, 1, "{bad_cron:?}");
    assert!(bad_cron.stderr.contains("cron: "), "{}", bad_cron.stderr);
    let bad_zone = onceq(url, &["schedule", "put", "bad", "ticks", "* * * * *", "--timezone", "Nowhere/Land"], None);
    assert!(bad_zone.code == 1 && bad_zone.stderr.contains("timezone: "), "{bad_zone:?}");
    let bad_name = onceq(url, &["schedule", "get", "no spaces"], None);
    assert_eq!(bad_name.code, 2, "{}", bad_name.stderr);
    assert_eq!(json(url, &["schedule", "list"], None), json!({"schedules": []}));
}
