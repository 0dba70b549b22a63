//! README.md walked as a new user would (issue 27): every command block runs, in the README's
//! order, against a fresh `onceq serve` started in a fresh temporary directory, and its output is
//! checked against what the README shows or says (a comment beside the command, or the sentence
//! around it).
//!
//! How it runs:
//! - [`BLOCKS`] is the exhaustive table of README.md's fenced blocks, in order, each command with a
//!   stable prefix: a README edit that adds, removes or reorders a block or a command, or changes
//!   a command's prefix, fails this test before anything runs, with a message saying to update the
//!   walk; a command changed after its prefix runs as the README now says, and fails where its
//!   output or a substitution no longer fits. Every command is either run (taken with
//!   [`Walk::take`], and the end checks that each was) or listed with the one-line reason it
//!   cannot run here.
//! - Commands run with `bash -c`, the built binary's directory first on PATH (so `onceq` is the
//!   binary under test), a fresh temporary directory as the working directory and as HOME, and no
//!   `ONCEQ_*` variable of the caller's. The README's text runs as written but for what must be
//!   substituted (the port, a lease token taken from an earlier reply, a PostgreSQL schema of the
//!   test's own, smaller sizes for verify and bench), each substitution in one visible place per
//!   block, through [`swap`], which fails when the text it replaces is no longer in the README.
//! - The blocks that touch the walk's server run one after the other, in order. The blocks that
//!   bring their own store (two servers on PostgreSQL and the relay; `onceq verify` and
//!   `onceq verify-groups` but for `--server`; `onceq bench` but for `--server`) share nothing
//!   with it and run beside the walk from its start, each on its own thread, to keep the test
//!   within a minute; each checks its own output.
//! - Every process runs in a process group of its own, killed when the walk ends, also when it
//!   fails ([`Procs`]). PostgreSQL schemas are the test's own and dropped at the end.
//!
//! The `rust` blocks are compiled and run as doc tests of the `onceq` crate
//! (`#[doc = include_str!("../../../README.md")]` in crates/onceq/src/lib.rs, `cargo test -p onceq
//! --doc`); the `rust,ignore` blocks are fragments of a user's program (handlers, a pool, a
//! shutdown signal of their own) that are not compiled. The `text` blocks are outputs (checked
//! against the run of the command that prints them) or the crate layout (checked against
//! `crates/`).
//!
//! Needs `curl`, `jq`, `man` and `pgbench` on PATH, and the services of `scripts/test`
//! (PostgreSQL; `ONCEQ_TEST_DATABASE_URL` points the PostgreSQL commands elsewhere).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection as _;

use common::{ONCEQ, ONCEQ_ENV};

/// What the walk does with one command (or one non-shell block).
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Run by the walk; taken with [`Walk::take`].
    Run,
    /// Not run here, for this reason.
    Skip(&'static str),
    /// A non-shell block: what the walk does with it.
    Block(&'static str),
}

/// One expected fenced block: its language and, per command (shell) or for the block (others),
/// a stable prefix and what the walk does with it.
struct Expected {
    lang: &'static str,
    items: &'static [(&'static str, Role)],
}

use Role::{Block, Run, Skip};

/// README.md's fenced blocks, in order. Shell blocks: one entry per command (a logical line:
/// `\` continuations and quoted text spanning lines joined; comment lines are not commands, but
/// `# or: CMD` is CMD). Other blocks: the prefix of their first line.
const BLOCKS: &[Expected] = &[
    Expected {
        lang: "sh",
        items: &[
            ("cargo run --release -p onceq-cli -- serve", Run),
            ("./scripts/test", Skip("the whole suite, which this test is part of")),
        ],
    },
    Expected {
        lang: "sh",
        items: &[
            ("curl -s -X PUT localhost:7700/v1/queues/emails ", Run),
            ("curl -s -X POST localhost:7700/v1/queues/emails/jobs ", Run),
            ("curl -s -X POST localhost:7700/v1/queues/emails/leases ", Run),
            ("curl -s -i -X POST localhost:7700/v1/jobs/1/ack ", Run),
            ("curl -s localhost:7700/v1/queues/emails ", Run),
            ("curl -s localhost:7700/metrics ", Run),
            ("curl -s localhost:7700/openapi.json ", Run),
        ],
    },
    Expected {
        lang: "toml",
        items: &[(
            "listen = \"0.0.0.0:7700\"",
            Block("the config file: written as onceq.toml with the hash `onceq token new` printed, then checked and served"),
        )],
    },
    Expected {
        lang: "sh",
        items: &[
            ("onceq queue set emails --max-attempts 5", Run),
            ("onceq enqueue emails '{\"to\": \"ada@example.com\"}' --dedup-id signup-42", Run),
            ("onceq queue set orders --ordering per_key", Run),
            ("onceq enqueue orders '{\"step\": \"paid\"}' --ordering-key order-7", Run),
            ("jq -c '.[]' users.json | onceq enqueue emails", Run),
            ("onceq stats --watch", Run),
            ("onceq lease emails --max-jobs 10", Run),
            ("onceq job get 7", Run),
            ("onceq ack 7 --lease-token <lease token>", Run),
            ("onceq job cancel 6", Run),
            ("onceq dlq list emails", Run),
            ("onceq dlq redrive emails --error-contains timeout --rate 50", Run),
            ("onceq queue pause emails", Run),
            ("onceq producer get ingest:orders", Run),
            ("onceq enqueue reports '{\"day\": \"2026-12-07\"}' --unique-by payload --unique-while pending", Run),
        ],
    },
    Expected {
        lang: "sh",
        items: &[
            ("onceq config check onceq.toml", Run),
            ("mkdir -p ~/.local/share/bash-completion/completions", Run),
            ("onceq completions bash > ~/.local/share/bash-completion/completions/onceq", Run),
            ("onceq man --dir ./man && man -l ./man/onceq-lease.1", Run),
        ],
    },
    Expected { lang: "rust", items: &[("use onceq::{LeaseOptions", Block("a doc test of the onceq crate"))] },
    Expected { lang: "rust,ignore", items: &[("let worker = Worker::builder(store.clone())", Block("a fragment, not compiled"))] },
    Expected { lang: "rust,ignore", items: &[("let worker = Worker::builder(store)", Block("a fragment, not compiled"))] },
    Expected {
        lang: "sh",
        items: &[
            ("curl -s -X PUT localhost:7700/v1/queues/sms ", Run),
            ("onceq queue set sms --rate-limit 50/10 --max-in-flight 20 --max-depth 100000", Run),
        ],
    },
    Expected {
        lang: "sh",
        items: &[
            ("curl -s -X PUT localhost:7700/v1/schedules/nightly-report ", Run),
            ("onceq schedule get nightly-report", Run),
        ],
    },
    Expected {
        lang: "sh",
        items: &[
            ("curl -s -X PUT localhost:7700/v1/queues/orders ", Run),
            ("curl -s -X POST localhost:7700/v1/queues/orders/jobs ", Run),
            ("onceq queue set orders --ordering per_key ", Run),
            ("onceq enqueue orders '{\"order\": 7, \"step\": \"shipped\"}' --ordering-key order-7", Run),
        ],
    },
    Expected { lang: "rust", items: &[("use onceq::{NewJob, Ordering", Block("a doc test of the onceq crate"))] },
    Expected {
        lang: "sh",
        items: &[("onceq group list orders", Run), ("onceq group describe orders billing", Run)],
    },
    Expected { lang: "rust,ignore", items: &[("use onceq::worker::{GroupOptions", Block("a fragment, not compiled"))] },
    Expected {
        lang: "sh",
        items: &[
            ("cargo run --release -p onceq-cli -- serve --store postgres://postgres@127.0.0.1:5432/test --listen 127.0.0.1:7701 &", Run),
            ("cargo run --release -p onceq-cli -- serve --store postgres://postgres@127.0.0.1:5432/test --listen 127.0.0.1:7702 &", Run),
            ("curl -s -X POST localhost:7701/v1/queues/emails/jobs ", Run),
            ("curl -s -X POST localhost:7702/v1/queues/emails/leases ", Run),
        ],
    },
    Expected { lang: "rust,ignore", items: &[("use onceq_outbox::{Message, PgOutbox};", Block("a fragment, not compiled"))] },
    Expected {
        lang: "sh",
        items: &[(
            "onceq relay --outbox postgres://app@db/shop --outbox-schema shop_outbox --sink onceq --store postgres://app@db/shop",
            Run,
        )],
    },
    Expected {
        lang: "sh",
        items: &[
            ("onceq verify --all-faults ", Run),
            ("onceq verify --managed-server --all-faults ", Run),
            ("onceq verify --server http://127.0.0.1:7700 --token \"$T\" --all-faults", Run),
            ("onceq verify --store postgres://postgres@127.0.0.1:5432/test --all-faults --json", Run),
            ("onceq verify --modes effectively_once --fault crash-before-complete=0.05 ", Run),
            ("onceq verify --ordered --all-faults ", Run),
            ("onceq verify --pipeline --all-faults ", Run),
        ],
    },
    Expected {
        lang: "text",
        items: &[("stage             inputs  settled", Block("the output of onceq verify --pipeline: its columns and rows"))],
    },
    Expected {
        lang: "text",
        items: &[("figure  ", Block("the output of onceq verify: its columns and figures"))],
    },
    Expected {
        lang: "sh",
        items: &[
            ("onceq verify-groups ", Run),
            ("onceq verify-groups --store postgres://postgres@127.0.0.1:5432/test --servers 2", Run),
            ("onceq verify-groups --steps join:1,kill:1 --partitions 16 --keys 500 --log-dir drill", Run),
        ],
    },
    Expected {
        lang: "sh",
        items: &[
            (
                "cargo build --release -p onceq-cli",
                Skip("cargo built the binary under test already (a debug build): the walk runs that one"),
            ),
            ("./target/release/onceq bench ", Run),
            ("./target/release/onceq bench --store postgres://127.0.0.1/test ", Run),
            ("./target/release/onceq bench --outbox postgres://127.0.0.1/test ", Run),
            ("./target/release/onceq bench --server http://127.0.0.1:7700 ", Run),
        ],
    },
    Expected { lang: "sh", items: &[("onceq queue set analytics --durability relaxed", Run)] },
    Expected {
        lang: "sh",
        items: &[
            ("onceq backup --to onceq-backup.db", Run),
            ("onceq restore --from onceq-backup.db --data-dir ./restored", Run),
            ("onceq doctor ./restored", Run),
        ],
    },
    Expected { lang: "text", items: &[("crates/", Block("the crate layout: checked against crates/"))] },
];

/// Reasons kept beside the table for commands the README shows only as alternatives in a
/// comment (not commands of their own): the relay's other sinks.
const RELAY_OTHER_SINKS_NOT_RUN: &str =
    "nats://, amqp:// and https:// sinks: tests/relay_nats.rs, tests/relay_rabbitmq.rs \
     and onceq-outbox's webhook tests publish through them; hooks.example.com is a placeholder";

#[test]
fn the_readme_walked_as_a_new_user_would() {
    let started = Instant::now();
    preflight();
    let walk = Walk::load();
    let procs = Procs::default();
    let root = tempfile::Builder::new().prefix("onceq-readme-walk").tempdir().unwrap();
    let shell = Shell::new(root.path(), &procs);
    let database = Database::new();
    {
        // Kills every process group still running when the walk ends, also on a panic.
        let _kill_all = KillAll(&procs);
        std::thread::scope(|scope| {
            let beside = [
                scope.spawn(|| lane(&procs, || postgres_servers_and_relay(&walk, &shell, &database))),
                scope.spawn(|| lane(&procs, || verify_groups(&walk, &shell, &database))),
                scope.spawn(|| lane(&procs, || bench_own_stores(&walk, &shell, &database))),
            ];
            let verify = scope.spawn(|| lane(&procs, || verify_own_stores(&walk, &shell, &database)));
            lane(&procs, || walk_the_server(&walk, &shell));
            verify.join().expect("the onceq verify block failed");
            for lane in beside {
                lane.join().expect("a block run beside the walk failed");
            }
        });
    }
    layout_matches_crates(&walk);
    walk.finish();
    eprintln!("README walked in {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// The walk of the server of the first block, in the README's order

/// The blocks that run against the server of the first command block, one after the other.
fn walk_the_server(walk: &Walk, shell: &Shell) {
    // First block: `cargo run ... -- serve` is the built binary, on a free port, in the walk's
    // fresh directory (so its data lands in ./onceq-data, as the README says).
    let serve = swap(
        &walk.take("cargo run --release -p onceq-cli -- serve"),
        "cargo run --release -p onceq-cli -- serve",
        "exec onceq serve --listen 127.0.0.1:0",
    );
    let server = shell.spawn(&serve, &[]);
    let (addr, line) = server.listening();
    assert!(line.contains("(data dir ./onceq-data"), "the data lands in ./onceq-data: {line}");
    assert!(shell.cwd.join("onceq-data").is_dir(), "no ./onceq-data after serve started");
    let url = format!("http://{addr}");
    let at = |text: &str| text.replace("localhost:7700", &addr).replace("127.0.0.1:7700", &addr);

    http_quick_start(walk, shell, &at);
    let hash = auth_config(walk, shell);
    let cli = shell.with_env(&[("ONCEQ_SERVER", &url)]);
    cli_block(walk, &cli);
    config_completions_man(walk, &cli, &hash);
    rate_limits(walk, &cli, &at);
    schedules(walk, &cli, &at);
    ordering(walk, &cli, &at);
    groups(walk, &cli, &addr);

    // `onceq verify --server URL --token "$T"`: this server, small sizes, and T unset, as for a
    // new user (the README never sets it): an empty token is no token, and this server has no auth.
    let text = swap(&walk.take("onceq verify --server"), "http://127.0.0.1:7700", &url);
    let out = cli.run(&append(&text, VERIFY_SMALL), LONG);
    out.success();
    for mode in ["at_most_once", "at_least_once", "effectively_once"] {
        assert!(out.stdout.contains(&format!("PASS {mode}")), "verify --server: {mode}:\n{out}");
    }

    data_directory(walk, &cli);

    // `onceq bench --server URL`: this server, a quick run.
    let text = swap(&walk.take("./target/release/onceq bench --server"), "./target/release/onceq", "onceq");
    let out = cli.run(&append(&at(&text), BENCH_SMALL), LONG);
    out.success();
    assert!(out.stdout.contains("targets (HTTP API"), "bench --server:\n{out}");
    server.stop();
}

/// "Data directory": a backup of the walk's store while it serves, restored into a new directory
/// and checked there.
fn data_directory(walk: &Walk, cli: &Shell) {
    let out = cli.ok(&walk.take("onceq backup --to onceq-backup.db"));
    assert!(out.starts_with("backed up ./onceq-data to onceq-backup.db ("), "{out}");
    let out = cli.ok(&walk.take("onceq restore --from onceq-backup.db --data-dir ./restored"));
    assert!(out.contains("integrity ok"), "{out}");
    let out = cli.ok(&walk.take("onceq doctor ./restored"));
    assert!(out.contains("integrity       ok"), "{out}");
}

/// "HTTP quick-start": create a queue, enqueue with an Idempotency-Key (twice), lease, ack with
/// the lease token (a stale one first), read the queue, the metrics and the OpenAPI document.
fn http_quick_start(walk: &Walk, shell: &Shell, at: &dyn Fn(&str) -> String) {
    let config = shell.json(&at(&walk.take("curl -s -X PUT localhost:7700/v1/queues/emails ")));
    assert_eq!((&config["max_attempts"], &config["visibility_timeout_ms"]), (&json!(5), &json!(30000)), "{config}");

    // "Retrying with the same Idempotency-Key returns the same id and creates nothing."
    let enqueue = at(&walk.take("curl -s -X POST localhost:7700/v1/queues/emails/jobs "));
    assert_eq!(shell.json(&enqueue), json!({"jobs": [{"id": "1", "duplicate": false}]}));
    assert_eq!(shell.json(&enqueue), json!({"jobs": [{"id": "1", "duplicate": true}]}));

    let leased = shell.json(&at(&walk.take("curl -s -X POST localhost:7700/v1/queues/emails/leases ")));
    let job = &leased["jobs"][0];
    assert_eq!((leased["jobs"].as_array().map(Vec::len), &job["id"]), (Some(1), &json!("1")), "{leased}");
    let lease_token = job["lease_token"].as_str().unwrap().to_owned();
    assert!(is_hex(&lease_token, 32), "{leased}");

    // The ack of job 1: the README's id is the one a fresh server gives; the token is the reply's.
    let ack = at(&walk.take("curl -s -i -X POST localhost:7700/v1/jobs/1/ack "));
    // "A stale token gets 409 lease_lost and changes nothing": a token that is not the lease's.
    let stale: String = lease_token.chars().rev().collect();
    let out = shell.run(&swap(&ack, "<lease_token from the lease reply>", &stale), SHORT);
    assert!(out.stdout.starts_with("HTTP/1.1 409") && out.stdout.contains("\"lease_lost\""), "{out}");
    let ack = swap(&ack, "<lease_token from the lease reply>", &lease_token);
    let out = shell.run(&ack, SHORT);
    assert!(out.stdout.starts_with("HTTP/1.1 204"), "the ack with the lease's token is 204:\n{out}");
    // "A settle of a job that is gone (acked, ...) is not_found, not lease_lost."
    let out = shell.run(&ack, SHORT);
    assert!(out.stdout.starts_with("HTTP/1.1 404") && out.stdout.contains("\"not_found\""), "{out}");

    let queue = shell.json(&at(&walk.take("curl -s localhost:7700/v1/queues/emails ")));
    assert_eq!((&queue["name"], &queue["config"]["max_attempts"]), (&json!("emails"), &json!(5)), "{queue}");
    assert_eq!((&queue["stats"]["ready"], &queue["stats"]["leased"]), (&json!(0), &json!(0)), "{queue}");
    let out = shell.run(&at(&walk.take("curl -s localhost:7700/metrics ")), SHORT);
    assert!(out.stdout.contains("onceq_acks_total{queue=\"emails\"} 1"), "metrics:\n{out}");
    let openapi = shell.json(&at(&walk.take("curl -s localhost:7700/openapi.json ")));
    assert!(openapi["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{openapi:.300}");
    assert!(openapi["paths"]["/v1/queues/{queue}/leases"].is_object(), "the lease endpoint is documented");
}

/// "Auth": `onceq token new --name billing` (in the sentence before the block), then the toml
/// block as onceq.toml with the printed hash; a server started on it lets the token produce to
/// `billing.*` only. Returns the token's hash.
fn auth_config(walk: &Walk, shell: &Shell) -> String {
    let out = shell.run("onceq token new --name billing", SHORT);
    out.success();
    let token = out.stdout.lines().next().and_then(|l| l.rsplit(' ').next()).unwrap().to_owned();
    assert!(is_hex(&token, 64), "the first line ends with the token:\n{out}");
    let hash =
        out.stdout.lines().find_map(|l| l.strip_prefix("sha256 = \"")).and_then(|l| l.strip_suffix('"')).unwrap();
    let hash = hash.to_owned();
    assert_eq!(hash, onceq_server::hash_token(&token), "the entry holds the token's hash:\n{out}");
    assert!(out.stdout.contains("[[tokens]]\nname = \"billing\"\n"), "{out}");

    let config = swap(&walk.block("listen = \"0.0.0.0:7700\""), "<64 hex digits printed by onceq token new>", &hash);
    fs::write(shell.cwd.join("onceq.toml"), &config).unwrap();
    // The same without tokens: what serve refuses (0.0.0.0 without auth), for `config check`.
    let open = config.split("[[tokens]]").next().unwrap();
    fs::write(shell.cwd.join("onceq-open.toml"), open).unwrap();

    // "A second server on the same data directory is refused (the directory is locked)."
    let out = shell.run("onceq serve --config onceq.toml --listen 127.0.0.1:0", SHORT);
    assert_ne!(out.code, Some(0), "a second server on ./onceq-data:\n{out}");
    assert!(out.stderr.contains("lock"), "the refusal says the directory is locked:\n{out}");

    // Served with that file (the flags win over its `listen`): the token produces to billing.*
    // and nowhere else, and nothing is allowed without it.
    let served = shell.spawn("exec onceq serve --config onceq.toml --listen 127.0.0.1:0 --data-dir auth-data", &[]);
    let url = format!("http://{}", served.listening().0);
    let as_billing = shell.with_env(&[("ONCEQ_SERVER", &url), ("ONCEQ_TOKEN", &token)]);
    as_billing.run("onceq enqueue billing.invoices '{\"total_cents\": 4200}'", SHORT).success();
    let out = as_billing.run("onceq enqueue emails '{}'", SHORT);
    assert_eq!(out.code, Some(1), "billing's token on emails is refused:\n{out}");
    let out = shell.with_env(&[("ONCEQ_SERVER", &url)]).run("onceq stats", SHORT);
    assert_eq!(out.code, Some(1), "no token, no stats:\n{out}");
    served.stop();
    hash
}

/// "CLI": the operator's commands, against the walk's server through ONCEQ_SERVER.
fn cli_block(walk: &Walk, cli: &Shell) {
    let out = cli.ok(&walk.take("onceq queue set emails --max-attempts 5"));
    assert!(out.contains("max_attempts           5\n") && out.contains("backoff                500ms"), "{out}");
    // The quick-start's Idempotency-Key was this dedup id: the same job, not a new one.
    let out = cli.ok(&walk.take("onceq enqueue emails '{\"to\": \"ada@example.com\"}' --dedup-id signup-42"));
    assert_eq!(rows(&out), vec![vec!["ID", "DUPLICATE"], vec!["1", "yes"]], "{out}");
    let out = cli.ok(&walk.take("onceq queue set orders --ordering per_key"));
    assert!(out.contains("ordering               per_key\n"), "{out}");
    let out = cli.ok(&walk.take("onceq enqueue orders '{\"step\": \"paid\"}' --ordering-key order-7"));
    assert_eq!(rows(&out), vec![vec!["ID", "DUPLICATE"], vec!["2", "no"]], "{out}");

    // users.json: what `jq -c '.[]'` implies, an array of lines, each a payload or an object
    // with "payload" and job fields. Five users, so that job 7 of the commands below exists.
    let users = json!([
        {"to": "grace@example.com"},
        {"to": "alan@example.com"},
        {"to": "edsger@example.com"},
        {"payload": {"to": "barbara@example.com"}, "priority": 10},
        {"to": "donald@example.com"},
    ]);
    fs::write(cli.cwd.join("users.json"), users.to_string()).unwrap();
    let out = cli.run(&walk.take("jq -c '.[]' users.json | onceq enqueue emails"), SHORT);
    out.success();
    assert!(
        out.stdout.contains("enqueued 5 jobs to emails: 5 new, 0 duplicates (ids 3 to 7)"),
        "one line per run, with the ids:\n{out}"
    );

    // `stats --watch` redraws until Ctrl-C: read its first screen, then stop it.
    let watch = cli.spawn(&format!("exec {}", walk.take("onceq stats --watch")), &[]);
    let screen = watch.wait_for_stdout("\norders ", "a stats screen listing orders");
    watch.stop();
    let table: Vec<Vec<String>> = rows(&screen).into_iter().filter(|r| r.len() == 8).collect();
    assert_eq!(table[0], ["QUEUE", "READY", "SCHEDULED", "LEASED", "BLOCKED", "DEAD", "OLDEST_READY", "PAUSED"]);
    let emails = table.iter().find(|r| r[0] == "emails").unwrap_or_else(|| panic!("{screen}"));
    assert_eq!((&emails[1], &emails[3], &emails[7]), (&"5".to_owned(), &"0".to_owned(), &"no".to_owned()), "{screen}");

    let out = cli.ok(&walk.take("onceq lease emails --max-jobs 10"));
    let leased = rows(&out);
    assert_eq!(leased[0][..3], ["ID", "ATTEMPT", "LEASE_TOKEN"], "{out}");
    let ids: BTreeSet<&str> = leased[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["3", "4", "5", "6", "7"]), "{out}");
    assert_eq!(leased[1][0], "6", "priority 10 first:\n{out}");
    let token = leased.iter().find(|r| r[0] == "7").map(|r| r[2].clone()).unwrap();
    assert!(is_hex(&token, 32), "{out}");

    let out = cli.ok(&walk.take("onceq job get 7"));
    for field in [
        "state             leased\n",
        "attempt           1 of 5\n",
        "payload           {\"to\":\"donald@example.com\"}",
    ] {
        assert!(out.contains(field), "{field:?} missing:\n{out}");
    }
    let out = cli.ok(&swap(&walk.take("onceq ack 7 --lease-token"), "<lease token>", &token));
    assert_eq!(out, "job 7 acked: done for good\n");
    // Job 6 is leased: the cancel marks it, and the end of its lease will cancel it.
    let out = cli.ok(&walk.take("onceq job cancel 6"));
    assert!(out.starts_with("job 6 is leased: cancel requested"), "{out}");
    let out = cli.ok("onceq job get 6");
    assert!(out.contains("state             leased\n") && !out.contains("cancelled_at      -"), "{out}");
    let out = cli.ok(&walk.take("onceq dlq list emails"));
    assert_eq!(
        rows(&out),
        vec![vec!["ID", "ATTEMPTS", "ENQUEUED_AT", "LAST_ERROR", "PAYLOAD"]],
        "no dead jobs:\n{out}"
    );
    let out = cli.ok(&walk.take("onceq dlq redrive emails --error-contains timeout --rate 50"));
    assert!(out.starts_with("paced redrive 1 started: 0 matching dead jobs of emails, 50 per second"), "{out}");
    let out = cli.ok("onceq dlq stop 1");
    assert!(out.starts_with("paced redrive 1 is "), "{out}");
    let out = cli.ok(&walk.take("onceq queue pause emails"));
    assert!(out.starts_with("queue emails paused"), "{out}");
    let out = cli.ok(&walk.take("onceq producer get ingest:orders"));
    assert_eq!(out, "producer ingest:orders: never registered\n");
    // "register fences old instances": each registration is a new epoch.
    cli.ok("onceq producer register ingest:orders");
    let out = cli.ok("onceq producer register ingest:orders");
    assert!(out.contains("epoch       2   (commits with an older epoch are refused as fenced)"), "{out}");
    assert_eq!(cli.json("onceq producer get ingest:orders --output json")["epoch"], json!(2));
    // A unique job: "sent again while it waits", the same job.
    let unique =
        walk.take("onceq enqueue reports '{\"day\": \"2026-12-07\"}' --unique-by payload --unique-while pending");
    assert_eq!(rows(&cli.ok(&unique)), vec![vec!["ID", "DUPLICATE"], vec!["8", "no"]]);
    assert_eq!(rows(&cli.ok(&unique)), vec![vec!["ID", "DUPLICATE"], vec!["8", "yes"]]);
}

/// `config check`, completions and man pages.
fn config_completions_man(walk: &Walk, cli: &Shell, hash: &str) {
    let check = walk.take("onceq config check onceq.toml");
    let out = cli.ok(&check);
    assert!(out.starts_with("config file onceq.toml: ok, `onceq serve --config onceq.toml` would run with:"), "{out}");
    assert!(out.contains("listen           0.0.0.0:7700\n"), "{out}");
    assert!(out.contains("token            billing (produce billing.*; consume billing.*; admin -)"), "{out}");
    assert!(!out.contains(hash), "a token's hash is never printed:\n{out}");
    // "exit 2 if serve would refuse it": the same file without its token.
    let out = cli.run(&swap(&check, "onceq config check onceq.toml", "onceq config check onceq-open.toml"), SHORT);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("refusing to listen on 0.0.0.0:7700 without auth"), "{out}");

    cli.ok(&walk.take("mkdir -p ~/.local/share/bash-completion/completions"));
    cli.ok(&walk.take("onceq completions bash > ~/.local/share/bash-completion/completions/onceq"));
    let script = fs::read_to_string(cli.home.join(".local/share/bash-completion/completions/onceq")).unwrap();
    assert!(script.starts_with("_onceq()") && script.contains("complete -F _onceq"), "a bash script:\n{script:.300}");
    for word in ["verify-groups", "lease-token", "visibility-timeout-ms"] {
        assert!(script.contains(word), "the completions lack {word}");
    }

    let out = cli.ok(&walk.take("onceq man --dir ./man && man -l ./man/onceq-lease.1"));
    assert!(out.contains("onceq-lease") && out.contains("SYNOPSIS"), "the page of lease, rendered:\n{out:.500}");
    assert!(out.contains("visibility"), "the page of lease lists its flags:\n{out:.800}");
    let page = cli.ok("onceq man");
    assert!(page.contains(".TH onceq 1"), "onceq man prints roff:\n{page:.300}");
}

/// "Rate limits, concurrency limits and backpressure".
fn rate_limits(walk: &Walk, cli: &Shell, at: &dyn Fn(&str) -> String) {
    let config = cli.json(&at(&walk.take("curl -s -X PUT localhost:7700/v1/queues/sms ")));
    assert_eq!(config["rate_limit"], json!({"per_second": 50.0, "burst": 10}), "{config}");
    assert_eq!((&config["max_in_flight"], &config["max_depth"]), (&json!(20), &json!(100000)), "{config}");
    let out = cli.ok(&walk.take("onceq queue set sms --rate-limit 50/10"));
    for line in
        ["rate_limit             50/s, burst 10\n", "max_in_flight          20\n", "max_depth              100000\n"]
    {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    // "Guarantees": a relaxed queue beside the others.
    let out = cli.ok(&walk.take("onceq queue set analytics --durability relaxed"));
    assert!(out.contains("durability             relaxed\n"), "{out}");
}

/// "Schedules": weekdays at 06:00 in Berlin, read back with its next ticks.
fn schedules(walk: &Walk, cli: &Shell, at: &dyn Fn(&str) -> String) {
    let schedule = cli.json(&at(&walk.take("curl -s -X PUT localhost:7700/v1/schedules/nightly-report ")));
    assert_eq!((&schedule["queue"], &schedule["catch_up"]), (&json!("reports"), &json!("one")), "{schedule}");
    let ticks: Vec<&str> = schedule["next_ticks"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(ticks.len(), 5, "{schedule}");
    for tick in &ticks {
        // 06:00 in Berlin is 05:00 UTC in winter, 04:00 in summer; Monday to Friday.
        assert!(tick.ends_with(":00:00.000Z") && (tick[11..13] == *"05" || tick[11..13] == *"04"), "{tick}");
        let weekday = weekday(tick);
        assert!((1..=5).contains(&weekday), "{tick} is a weekend day");
    }
    let out = cli.ok(&walk.take("onceq schedule get nightly-report"));
    for line in ["cron         0 6 * * 1-5\n", "timezone     Europe/Berlin\n", "last_tick    -\n", "last_job_id  -\n"] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(out.contains(&format!("next_ticks   {}", ticks.join(", "))), "{out}");
}

/// "Ordering per key": the jobs behind a key's head are blocked, counted apart.
fn ordering(walk: &Walk, cli: &Shell, at: &dyn Fn(&str) -> String) {
    let config = cli.json(&at(&walk.take("curl -s -X PUT localhost:7700/v1/queues/orders ")));
    assert_eq!(config["ordering"], json!("per_key"), "{config}");
    let enqueued = cli.json(&at(&walk.take("curl -s -X POST localhost:7700/v1/queues/orders/jobs ")));
    assert_eq!(enqueued, json!({"jobs": [{"id": "9", "duplicate": false}, {"id": "10", "duplicate": false}]}));
    let out = cli.ok(&walk.take("onceq queue set orders --ordering per_key "));
    assert!(out.contains("ordering               per_key\n"), "{out}");
    let out = cli.ok(&walk.take("onceq enqueue orders '{\"order\": 7, \"step\": \"shipped\"}'"));
    assert_eq!(rows(&out), vec![vec!["ID", "DUPLICATE"], vec!["11", "no"]], "{out}");
    // "Only the key's oldest job ... can be leased; the jobs behind it are blocked".
    let stats = cli.json("onceq stats orders --output json");
    let orders = stats.to_string();
    assert!(
        orders.contains("\"blocked\":3") && orders.contains("\"ready\":1"),
        "order-7's head and 3 behind it: {stats}"
    );
}

/// Consumer groups: a worker joins group billing (as docs/api.md's example does), then the
/// README's two commands list and describe it.
fn groups(walk: &Walk, cli: &Shell, addr: &str) {
    let member = cli.json(&format!(
        "curl -s -X POST {addr}/v1/queues/orders/groups/billing/members -H 'content-type: application/json' \
         -d '{{\"name\": \"worker-a\", \"session_timeout_ms\": 30000}}'"
    ));
    assert_eq!(member["partitions"].as_array().map(Vec::len), Some(16), "the only member owns all 16: {member}");
    let out = cli.ok(&walk.take("onceq group list orders"));
    let table = rows(&out);
    assert_eq!(table[0], ["GROUP", "GENERATION", "MEMBERS", "PARTITIONS", "OWNED", "MOVING", "LAG"], "{out}");
    assert_eq!((table[1][0].as_str(), table[1][2].as_str(), table[1][6].as_str()), ("billing", "1", "4"), "{out}");
    let out = cli.ok(&walk.take("onceq group describe orders billing"));
    assert!(
        out.contains("group       billing\n") && out.contains("members     1\n") && out.contains("worker-a"),
        "{out}"
    );
    assert!(out.contains("PARTITION  OWNER"), "each partition's owner:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// The blocks that bring their own store, run beside the walk

/// Size of the `onceq verify` runs. Their leases and claims keep their default lengths: a claim
/// shorter than the longest stall of a loaded machine would let a duplicate effect through.
const VERIFY_SMALL: &str = " --jobs 200 --quiet";

/// Sizes of the `onceq bench` runs.
const BENCH_SMALL: &str = " --quick --jobs 200";

/// Sizes of the `onceq verify-groups` drills: short waits between steps, fewer jobs a second.
/// Sessions keep their default length, so that a loaded machine does not expire a live member.
const GROUPS_SMALL: &str = " --warmup-s 1 --hold-s 1 --rate 200 --quiet";

/// "Scale-out on PostgreSQL" (two servers on one schema, a job enqueued on one and leased on the
/// other), then "Transactional outbox": the relay publishes a staged message into that store,
/// and through a server (the `--sink onceq --server` of its comment).
fn postgres_servers_and_relay(walk: &Walk, shell: &Shell, database: &Database) {
    let store_guard = database.fresh_schema("rw_store");
    let schema = store_guard.schema();
    let first = walk.take("cargo run --release -p onceq-cli -- serve --store postgres://postgres@127.0.0.1:5432/test --listen 127.0.0.1:7701 &");
    let second = walk.take("cargo run --release -p onceq-cli -- serve --store postgres://postgres@127.0.0.1:5432/test --listen 127.0.0.1:7702 &");
    let own = |text: &str, port: &str| {
        let text = swap(text, "cargo run --release -p onceq-cli -- serve", "exec onceq serve");
        let text =
            swap(&text, &format!("--listen 127.0.0.1:{port} &"), &format!("--pg-schema {schema} --listen 127.0.0.1:0"));
        database.url_for(&text)
    };
    let (first, second) = (shell.spawn(&own(&first, "7701"), &[]), shell.spawn(&own(&second, "7702"), &[]));
    let (first_addr, second_addr) = (first.listening().0, second.listening().0);
    // A schema that held no store gets a new one, and one of the two servers says so.
    let said = format!("onceq: schema {schema} held no onceq store; created an empty one");
    assert!(first.stderr().contains(&said) || second.stderr().contains(&said), "{said:?} on neither stderr");
    let at = |text: &str| text.replace("localhost:7701", &first_addr).replace("localhost:7702", &second_addr);
    let enqueued = shell.json(&at(&walk.take("curl -s -X POST localhost:7701/v1/queues/emails/jobs ")));
    assert_eq!(enqueued, json!({"jobs": [{"id": "1", "duplicate": false}]}));
    let leased = shell.json(&at(&walk.take("curl -s -X POST localhost:7702/v1/queues/emails/leases ")));
    assert_eq!(
        (&leased["jobs"][0]["id"], &leased["jobs"][0]["payload"]),
        (&json!("1"), &json!({"to": "ada@example.com"}))
    );

    // The relay: the README's application database is the test database; its outbox and the
    // store it enqueues into are the test's schemas. One message is staged first, as the Rust
    // block before it does.
    let outbox_guard = database.fresh_schema("rw_outbox");
    let outbox = outbox_guard.schema();
    let relay = walk.take("onceq relay --outbox postgres://app@db/shop");
    let block = walk.block_containing(&relay);
    assert!(block.contains("# other sinks: --sink onceq --server http://127.0.0.1:7700 |"), "{block}");
    let relay = swap(
        &relay,
        "postgres://app@db/shop --outbox-schema shop_outbox",
        &format!("{} --outbox-schema {outbox}", database.url()),
    );
    let relay =
        swap(&relay, "--store postgres://app@db/shop", &format!("--store {} --store-schema {schema}", database.url()));
    let relay = swap(&relay, "onceq relay", "exec onceq relay");
    database.stage(outbox, 1);
    let running = shell.spawn(&relay, &[]);
    let job = lease_published(shell, &first_addr, &format!("{outbox}-1"));
    running.terminate_expecting(0);
    assert_eq!(job["payload"], json!({"order": 1, "customer": "ada"}), "{job}");
    assert_eq!(job["headers"]["content-type"], json!("application/json"), "the message's headers travel: {job}");

    // The comment's `--sink onceq --server http://127.0.0.1:7700`: through the first server.
    let through_server = swap(
        &relay,
        &format!("--store {} --store-schema {schema}", database.url()),
        &format!("--server http://{first_addr}"),
    );
    database.stage(outbox, 2);
    let running = shell.spawn(&through_server, &[]);
    let job = lease_published(shell, &second_addr, &format!("{outbox}-2"));
    running.terminate_expecting(0);
    assert_eq!(job["payload"], json!({"order": 2, "customer": "ada"}), "{job}");
    first.stop();
    second.stop();
}

/// Leases from `order-placed` through `addr` until the job with `dedup_id` comes (the relay
/// publishes it), at most 20 s.
fn lease_published(shell: &Shell, addr: &str, dedup_id: &str) -> Value {
    let lease = format!(
        "curl -s -X POST {addr}/v1/queues/order-placed/leases -H 'content-type: application/json' -d '{{\"wait_ms\": 1000}}'"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leased = shell.json(&lease);
        if let Some(job) = leased["jobs"].as_array().and_then(|jobs| jobs.iter().find(|j| j["dedup_id"] == dedup_id)) {
            return job.clone();
        }
        assert!(Instant::now() < deadline, "the relay published no job with dedup id {dedup_id} in 20 s: {leased}");
    }
}

/// "Proving the guarantees": the `onceq verify` commands with their own store, side by side,
/// and the two `text` blocks of their output.
fn verify_own_stores(walk: &Walk, shell: &Shell, database: &Database) {
    let commands = [
        walk.take("onceq verify --all-faults "),
        walk.take("onceq verify --managed-server --all-faults "),
        database.url_for(&walk.take("onceq verify --store postgres://")),
        walk.take("onceq verify --modes effectively_once --fault crash-before-complete=0.05 "),
        walk.take("onceq verify --ordered --all-faults "),
        walk.take("onceq verify --pipeline --all-faults "),
    ];
    let outs: Vec<Out> = std::thread::scope(|scope| {
        let runs: Vec<_> =
            commands.iter().map(|text| scope.spawn(move || shell.run(&append(text, VERIFY_SMALL), LONG))).collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let [all, managed, postgres, broken, ordered, pipeline] = &outs[..] else { unreachable!() };
    let modes = ["at_most_once", "at_least_once", "effectively_once"];
    for (name, out) in [("embedded", all), ("--managed-server", managed), ("--ordered", ordered)] {
        out.success();
        for mode in modes {
            assert!(out.stdout.contains(&format!("PASS {mode}")), "verify {name}: {mode}\n{out}");
        }
    }
    // The table's columns and figures are the README's (its text block of a real run).
    let readme_table = walk.block("figure  ");
    assert_eq!(first_column(&all.stdout, "drain_ms"), first_column(&readme_table, "drain_ms"), "verify's figures");
    let header = |text: &str| text.lines().find(|l| l.starts_with("figure ")).map(|l| words(l).join(" "));
    assert_eq!(header(&all.stdout), header(&readme_table), "verify's columns");
    let ordered_row = ordered.stdout.lines().find(|l| l.starts_with("order_violations ")).map(words);
    assert_eq!(ordered_row, Some(vec!["order_violations", "0", "0", "0", "0"]), "{ordered}");

    postgres.success();
    let report: Value = serde_json::from_str(&postgres.stdout).unwrap_or_else(|e| panic!("--json: {e}\n{postgres}"));
    assert_eq!(report["promises_kept"], json!(true), "{report}");
    assert_eq!(report["reports"].as_array().map(Vec::len), Some(3), "{report}");

    // "see it catch duplicate effects": exit 1, naming the broken promise.
    assert_eq!(broken.code, Some(1), "{broken}");
    assert!(broken.stdout.contains("FAIL effectively_once: effectively_once promises no duplicate effect"), "{broken}");

    pipeline.success();
    let readme_table = walk.block("stage             inputs");
    let header = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("stage "))
            .unwrap_or_default()
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(|c| c.trim().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(header(&pipeline.stdout), header(&readme_table), "the pipeline table's columns:\n{pipeline}");
    let committed = pipeline.stdout.lines().find(|l| l.starts_with("committed ")).map(words).unwrap();
    assert_eq!(
        (committed[4], committed[5], committed[6]),
        ("0", "0", "0"),
        "committed: 0 lost, missing, duplicated\n{pipeline}"
    );
    assert!(
        pipeline.stdout.contains("PASS committed") && pipeline.stdout.contains("PASS enqueue-then-ack"),
        "{pipeline}"
    );
}

/// `onceq verify-groups`: the three drills, each with short waits.
fn verify_groups(walk: &Walk, shell: &Shell, database: &Database) {
    let runs = [
        append(&walk.take("onceq verify-groups "), &format!(" --partitions 16 --keys 500{GROUPS_SMALL}")),
        append(
            &database.url_for(&walk.take("onceq verify-groups --store")),
            &format!(" --partitions 16 --keys 500{GROUPS_SMALL}"),
        ),
        append(&walk.take("onceq verify-groups --steps"), GROUPS_SMALL),
    ];
    for text in runs {
        let out = shell.run(&text, LONG);
        out.success();
        assert!(out.stdout.contains(" 0 lost;") && out.stdout.contains("per-key order violations 0"), "{text}:\n{out}");
    }
    // `--log-dir drill` keeps the drill's record.
    assert!(shell.cwd.join("drill/drill.json").is_file(), "no drill/drill.json");
}

/// "Benchmarks", but for `--server`: the embedded store, PostgreSQL and the outbox, quick runs,
/// side by side (the outbox's stage-cost rounds take the longest, whatever --jobs says).
fn bench_own_stores(walk: &Walk, shell: &Shell, database: &Database) {
    let local = |text: String| database.url_for(&swap(&text, "./target/release/onceq", "onceq"));
    let outbox = local(walk.take("./target/release/onceq bench --outbox"));
    let outbox = std::thread::scope(|scope| {
        let outbox = scope.spawn(|| shell.run(&append(&outbox, BENCH_SMALL), LONG));
        bench_embedded_and_store(walk, shell, database, &local);
        outbox.join().unwrap()
    });
    outbox.success();
    // "measures stage against the same business transaction without it, and against a floor".
    for part in ["stage cost: business transaction", "floor", "published to onceq"] {
        assert!(outbox.stdout.contains(part), "{part:?} missing:\n{outbox}");
    }
}

/// `onceq bench` on the embedded store, then `--store`.
fn bench_embedded_and_store(walk: &Walk, shell: &Shell, database: &Database, local: &dyn Fn(String) -> String) {
    let embedded = local(walk.take("./target/release/onceq bench "));
    let out = shell.run(&append(&embedded, BENCH_SMALL), LONG);
    out.success();
    assert!(
        out.stdout.contains("targets (fsync)") && out.stdout.contains("targets (relaxed)"),
        "fsync and relaxed:\n{out}"
    );

    let store = local(walk.take("./target/release/onceq bench --store"));
    let out = shell.run(&append(&store, &format!("{BENCH_SMALL} --only enqueue-batched,lease-ack-batched")), LONG);
    out.success();
    assert!(out.stdout.contains("pgbench") && out.stdout.contains("lease+ack 100/call"), "{out}");
    // "makes two fresh schemas and drops them at the end".
    let schemas = out.stdout.split("schemas ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_owned();
    assert!(schemas.starts_with("onceq_bench_"), "{out}");
    assert_eq!(database.schemas_like(&format!("{schemas}%")), Vec::<String>::new(), "bench --store left its schemas");
}

/// The `text` block of the layout names every crate of `crates/`, and only those.
fn layout_matches_crates(walk: &Walk) {
    let layout = walk.block("crates/");
    let listed: BTreeSet<String> =
        layout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let present: BTreeSet<String> = fs::read_dir(crates)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present, "README.md's layout and crates/ differ");
}

// ---------------------------------------------------------------------------------------------
// The README, its blocks and commands

/// One fenced block of README.md.
struct Fenced {
    /// 1-based line of its opening fence.
    line: usize,
    lang: String,
    text: String,
}

/// README.md's blocks, checked against [`BLOCKS`], and which of its commands were run.
struct Walk {
    blocks: Vec<Fenced>,
    /// Per block, its commands (shell) or its first line (others).
    items: Vec<Vec<String>>,
    /// (block, item) of the commands taken so far.
    taken: Mutex<HashSet<(usize, usize)>>,
}

impl Walk {
    /// Reads README.md and checks that its blocks are the ones [`BLOCKS`] expects.
    fn load() -> Walk {
        let readme = include_str!("../../../README.md");
        let blocks = fenced_blocks(readme);
        let items: Vec<Vec<String>> =
            blocks
                .iter()
                .map(|b| {
                    if b.lang == "sh" {
                        commands(&b.text)
                    } else {
                        vec![b.text.lines().next().unwrap_or("").to_owned()]
                    }
                })
                .collect();
        let update =
            "README.md changed: update the walk in crates/onceq-cli/tests/readme_walk.rs (its table BLOCKS, and the \
                      step that runs the block) so that every command of the README is run or listed with why not";
        for (index, expected) in BLOCKS.iter().enumerate() {
            let Some(block) = blocks.get(index) else {
                panic!("{update}: block {} ({} {:?}) is gone", index + 1, expected.lang, expected.items[0].0);
            };
            assert_eq!(block.lang, expected.lang, "{update}: the block at line {} is {:?}", block.line, block.lang);
            let found = &items[index];
            let prefixes: Vec<&str> = expected.items.iter().map(|(prefix, _)| *prefix).collect();
            let matches = found.len() == prefixes.len() && found.iter().zip(&prefixes).all(|(c, p)| c.starts_with(p));
            assert!(
                matches,
                "{update}: the block at line {} holds\n{found:#?}\nbut the walk expects\n{prefixes:#?}",
                block.line
            );
        }
        if let Some(extra) = blocks.get(BLOCKS.len()) {
            panic!("{update}: a new {} block at line {}", extra.lang, extra.line);
        }
        let all: Vec<&str> = BLOCKS.iter().flat_map(|e| e.items.iter().map(|(p, _)| *p)).collect();
        let unique: HashSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "the prefixes of BLOCKS are not unique");
        Walk { blocks, items, taken: Mutex::new(HashSet::new()) }
    }

    /// The README text of the command that the entry `prefix` of [`BLOCKS`] names, marked run.
    fn take(&self, prefix: &str) -> String {
        let (block, item) = self.find(prefix);
        assert!(matches!(BLOCKS[block].items[item].1, Run), "{prefix:?} is not a command the walk runs");
        assert!(self.taken.lock().unwrap().insert((block, item)), "{prefix:?} taken twice");
        self.items[block][item].clone()
    }

    /// The text of the non-shell block whose entry is `prefix`.
    fn block(&self, prefix: &str) -> String {
        let (block, _) = self.find(prefix);
        self.blocks[block].text.clone()
    }

    /// The text of the block holding the command `command`.
    fn block_containing(&self, command: &str) -> String {
        let index = self.items.iter().position(|items| items.iter().any(|c| c == command)).unwrap();
        self.blocks[index].text.clone()
    }

    /// The entry of [`BLOCKS`] that is `key`, or else the one entry that starts with it.
    fn find(&self, key: &str) -> (usize, usize) {
        let entries = || {
            BLOCKS.iter().enumerate().flat_map(|(b, e)| e.items.iter().enumerate().map(move |(i, (p, _))| ((b, i), *p)))
        };
        if let Some((at, _)) = entries().find(|(_, p)| *p == key) {
            return at;
        }
        let found: Vec<(usize, usize)> = entries().filter(|(_, p)| p.starts_with(key)).map(|(at, _)| at).collect();
        assert_eq!(found.len(), 1, "{key:?} names {} entries of BLOCKS, not one", found.len());
        found[0]
    }

    /// Every command the table says is run was run.
    fn finish(&self) {
        let taken = self.taken.lock().unwrap();
        let mut skipped = Vec::new();
        for (block, expected) in BLOCKS.iter().enumerate() {
            for (item, (prefix, role)) in expected.items.iter().enumerate() {
                match role {
                    Run => assert!(
                        taken.contains(&(block, item)),
                        "the command {prefix:?} (block at line {}) was never run",
                        self.blocks[block].line
                    ),
                    Skip(why) => skipped.push(format!("{prefix}: {why}")),
                    Block(what) => {
                        skipped.push(format!("{} block at line {}: {what}", expected.lang, self.blocks[block].line))
                    }
                }
            }
        }
        skipped.push(format!("the relay's other sinks, in a comment: {RELAY_OTHER_SINKS_NOT_RUN}"));
        eprintln!("not run as commands:\n  {}", skipped.join("\n  "));
    }
}

/// The fenced blocks of a Markdown text, in order.
fn fenced_blocks(markdown: &str) -> Vec<Fenced> {
    let mut blocks = Vec::new();
    let mut open: Option<Fenced> = None;
    for (number, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Fenced { line: number + 1, lang: lang.trim().to_owned(), text: String::new() })
            }
            (Some(_), Some("")) => blocks.push(open.take().unwrap()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md has a fenced block that is never closed");
    blocks
}

/// `command` without its trailing comment, then `args`: what the walk adds to a README command.
fn append(command: &str, args: &str) -> String {
    format!("{}{args}", strip_comment(command).trim_end())
}

/// `command` up to its trailing comment (a `#` after whitespace, outside quotes).
fn strip_comment(command: &str) -> &str {
    let (mut single, mut double, mut previous) = (false, false, ' ');
    for (at, c) in command.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return &command[..at],
            _ => {}
        }
        previous = c;
    }
    command
}

/// The commands of a shell block: logical lines (joined across `\` newlines and quotes that
/// span lines), without comment-only lines, but for `# or: CMD`, which is CMD.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut single, mut double) = (false, false);
    for line in text.lines() {
        let trimmed = line.trim_start();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            if let Some(command) = trimmed.strip_prefix("# or: ") {
                out.push(command.to_owned());
            }
            continue;
        }
        let mut previous = ' ';
        for c in line.chars() {
            match c {
                '\'' if !double => single = !single,
                '"' if !single => double = !double,
                // A comment runs to the end of the line: its quotes do not count.
                '#' if !single && !double && previous.is_whitespace() => break,
                _ => {}
            }
            previous = c;
        }
        current.push_str(line);
        if single || double || line.ends_with('\\') {
            current.push('\n');
        } else {
            out.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "a shell block ends inside a command: {current}");
    out
}

/// `text` with `from` replaced by `to`, where `from` must occur: the README still says what the
/// substitution replaces.
#[track_caller]
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "README.md changed: {from:?} is no longer in {text:?}; update the walk");
    text.replacen(from, to, 1)
}

// ---------------------------------------------------------------------------------------------
// Running commands

/// Longest run of a short command.
const SHORT: Duration = Duration::from_secs(30);
/// Longest run of a verify, verify-groups or bench command.
const LONG: Duration = Duration::from_secs(120);

/// The process groups started by the walk: each command runs in one of its own.
#[derive(Default, Clone)]
struct Procs(Arc<Mutex<HashSet<u32>>>);

impl Procs {
    fn add(&self, group: u32) {
        self.0.lock().unwrap().insert(group);
    }

    fn remove(&self, group: u32) {
        self.0.lock().unwrap().remove(&group);
    }

    fn kill_all(&self) {
        for group in self.0.lock().unwrap().drain() {
            kill_group(group, "KILL");
        }
    }
}

/// Kills every process group of a [`Procs`] when dropped.
struct KillAll<'a>(&'a Procs);

impl Drop for KillAll<'_> {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

/// Runs one lane of the walk; a failure in it kills every command of the walk at once, so that
/// the other lanes end quickly instead of running to their end.
fn lane(procs: &Procs, run: impl FnOnce()) {
    let _kill_on_failure = KillOnPanic(procs);
    run();
}

/// Kills every process group of a [`Procs`] when dropped during a panic.
struct KillOnPanic<'a>(&'a Procs);

impl Drop for KillOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.kill_all();
        }
    }
}

fn kill_group(group: u32, signal: &str) {
    let _ =
        Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{group}")]).stderr(Stdio::null()).status();
}

/// How commands run: bash, in the walk's directory, with the built binary first on PATH.
#[derive(Clone)]
struct Shell {
    cwd: PathBuf,
    home: PathBuf,
    path: String,
    env: Vec<(String, String)>,
    procs: Procs,
    /// Names the output files of each command.
    counter: Arc<Mutex<u32>>,
    /// When the walk started, for the timing of each command in the log.
    started: Instant,
}

/// A finished command.
struct Out {
    script: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "$ {}\nexit {:?}\n--- stdout\n{}--- stderr\n{}", self.script, self.code, self.stdout, self.stderr)
    }
}

impl Out {
    #[track_caller]
    fn success(&self) {
        assert_eq!(self.code, Some(0), "failed:\n{self}");
    }
}

impl Shell {
    fn new(root: &Path, procs: &Procs) -> Shell {
        let bin = Path::new(ONCEQ).parent().unwrap();
        let home = root.join("home");
        fs::create_dir_all(&home).unwrap();
        fs::create_dir_all(root.join(".walk")).unwrap();
        Shell {
            cwd: root.to_owned(),
            home,
            path: format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()),
            env: Vec::new(),
            procs: procs.clone(),
            counter: Arc::new(Mutex::new(0)),
            started: Instant::now(),
        }
    }

    /// The same shell with these variables set.
    fn with_env(&self, env: &[(&str, &str)]) -> Shell {
        let mut shell = self.clone();
        shell.env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        shell
    }

    /// Starts `script` in a process group of its own, its output in files.
    fn start(&self, script: &str) -> Running {
        let number = {
            let mut counter = self.counter.lock().unwrap();
            *counter += 1;
            *counter
        };
        let dir = self.cwd.join(".walk");
        let (stdout, stderr) = (dir.join(format!("{number}.out")), dir.join(format!("{number}.err")));
        let mut command = Command::new("bash");
        command.arg("-c").arg(script).current_dir(&self.cwd).env("PATH", &self.path).env("HOME", &self.home);
        // `T` is the README's token variable, which it never sets.
        for variable in ONCEQ_ENV.iter().chain(&["ONCEQ_SERVER", "ONCEQ_TOKEN", "ONCEQ_PG_POOL_SIZE", "RUST_LOG", "T"])
        {
            command.env_remove(variable);
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("ONCEQ_RELAY_") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("run bash");
        self.procs.add(child.id());
        Running { script: script.to_owned(), child: Mutex::new(child), stdout, stderr, procs: self.procs.clone() }
    }

    /// Runs `script` to its end, at most `timeout`.
    fn run(&self, script: &str, timeout: Duration) -> Out {
        let began = Instant::now();
        let running = self.start(script);
        let code = running.wait(timeout);
        let (at, took) = (began.duration_since(self.started).as_secs_f64(), began.elapsed().as_secs_f64());
        eprintln!("{at:5.1} s +{took:4.1} s  exit {code:?}  {}", script.lines().next().unwrap_or(""));
        running.out(code)
    }

    /// Runs `script`, which must succeed; its stdout.
    #[track_caller]
    fn ok(&self, script: &str) -> String {
        let out = self.run(script, SHORT);
        out.success();
        out.stdout
    }

    /// Runs `script`, which must succeed and print one JSON document.
    #[track_caller]
    fn json(&self, script: &str) -> Value {
        let out = self.run(script, SHORT);
        out.success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }

    /// Starts a long-running `script` (a server, a relay, a watch); stopped when dropped.
    fn spawn(&self, script: &str, env: &[(&str, &str)]) -> Running {
        self.with_env(env).start(script)
    }
}

/// A running command, killed (its whole process group) when dropped.
struct Running {
    script: String,
    child: Mutex<std::process::Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    procs: Procs,
}

impl Running {
    /// Waits for the exit, at most `timeout` (then kills the group and fails).
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("{:?} did not end within {timeout:?}:\n{}", self.script, self.out(None));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn out(&self, code: Option<i32>) -> Out {
        Out { script: self.script.clone(), code, stdout: self.stdout_text(), stderr: self.stderr() }
    }

    fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn id(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Waits until stdout holds `needle`; the stdout then.
    fn wait_for_stdout(&self, needle: &str, what: &str) -> String {
        let deadline = Instant::now() + SHORT;
        loop {
            let stdout = self.stdout_text();
            if stdout.contains(needle) {
                return stdout;
            }
            if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
                panic!("{:?} ended ({status}) before {what}:\n{}", self.script, self.out(status.code()));
            }
            assert!(Instant::now() < deadline, "no {what} within {SHORT:?}:\n{}", self.out(None));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of `onceq listening on http://ADDR ...`, and that line.
    fn listening(&self) -> (String, String) {
        let stdout = self.wait_for_stdout("onceq listening on http://", "a listening line");
        let line = stdout.lines().find(|l| l.starts_with("onceq listening on http://")).unwrap().to_owned();
        let addr = line["onceq listening on http://".len()..].split_whitespace().next().unwrap().to_owned();
        (addr, line)
    }

    /// Kills the process group while its leader runs. Once the leader is reaped its id may be
    /// reused, so a group whose leader has exited is not signalled.
    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let id = child.id();
        if matches!(child.try_wait(), Ok(None)) {
            kill_group(id, "KILL");
            let _ = child.wait();
        }
        self.procs.remove(id);
    }

    /// Stops the command: dropping it kills its process group (SIGKILL).
    fn stop(self) {}

    /// SIGTERM, then waits for the exit, which must have this code.
    fn terminate_expecting(self, code: i32) {
        kill_group(self.id(), "TERM");
        assert_eq!(self.wait(SHORT), Some(code), "{:?} after SIGTERM:\n{}", self.script, self.out(None));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The test database, and the README's URLs of it.
struct Database {
    /// `ONCEQ_TEST_DATABASE_URL` when set: then it replaces the README's URLs.
    from_env: Option<String>,
}

impl Database {
    fn new() -> Database {
        let database = Database { from_env: std::env::var("ONCEQ_TEST_DATABASE_URL").ok() };
        database.runtime().block_on(async {
            if let Err(e) = sqlx::PgConnection::connect(&database.url()).await {
                panic!("cannot connect to PostgreSQL: {e}\n{}", onceq_testkit::postgres::how_to_get_postgres());
            }
        });
        database
    }

    fn runtime(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// The URL the walk's own statements use.
    fn url(&self) -> String {
        onceq_testkit::postgres::database_url()
    }

    /// `text` with the README's PostgreSQL URLs pointing at `ONCEQ_TEST_DATABASE_URL` when it is set.
    fn url_for(&self, text: &str) -> String {
        match &self.from_env {
            Some(url) => {
                text.replace("postgres://postgres@127.0.0.1:5432/test", url).replace("postgres://127.0.0.1/test", url)
            }
            None => text.to_owned(),
        }
    }

    /// A schema name of the test's own, dropped when the guard is.
    fn fresh_schema(&self, label: &str) -> onceq_testkit::postgres::SchemaGuard {
        onceq_testkit::postgres::SchemaGuard::of(&onceq_testkit::postgres::fresh_schema(label))
    }

    /// Stages message `number` for `order-placed` in the outbox in `schema`, as the README's Rust
    /// block does (migrating the outbox first, as it does at deploy).
    fn stage(&self, schema: &str, number: u32) {
        self.runtime().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
            let outbox = onceq_outbox::PgOutbox::new(schema).unwrap();
            outbox.migrate(&mut conn).await.unwrap();
            let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
            let event =
                onceq_outbox::Message::new("order-placed", json!({"order": number, "customer": "ada"}).to_string())
                    .header("content-type", "application/json")
                    .ordering_key("ada");
            outbox.stage(&mut tx, &event).await.unwrap();
            tx.commit().await.unwrap();
        });
    }

    /// The schemas whose names are LIKE `pattern`.
    fn schemas_like(&self, pattern: &str) -> Vec<String> {
        self.runtime().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
                .bind(pattern)
                .fetch_all(&mut conn)
                .await
                .unwrap()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The tools the README's commands use are here, or the test says how to get them.
fn preflight() {
    for (tool, package) in [("curl", "curl"), ("jq", "jq"), ("man", "man-db"), ("pgbench", "postgresql-client")] {
        let found = Command::new("bash").arg("-c").arg(format!("command -v {tool}")).output().unwrap();
        assert!(
            found.status.success(),
            "the README's commands use `{tool}`, which is not on PATH: install it (Debian: apt-get install {package})"
        );
    }
}

/// A table's rows, split on whitespace.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The first words of a table's lines, from its header to the row starting with `last`.
fn first_column(text: &str, last: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with("figure ")) {
        let name = line.split_whitespace().next().unwrap_or("").to_owned();
        let done = name == last;
        names.push(name);
        if done {
            break;
        }
    }
    names
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// Day of the week of an RFC 3339 UTC time (0 Sunday .. 6 Saturday).
fn weekday(time: &str) -> i64 {
    let (y, m, d): (i64, i64, i64) =
        (time[0..4].parse().unwrap(), time[5..7].parse().unwrap(), time[8..10].parse().unwrap());
    // Days since 1970-01-01 (a Thursday), by the civil-from-days inverse.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days + 4).rem_euclid(7)
}
