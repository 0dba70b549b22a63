//! What an operator meets on day one, on the real binary: `onceq config check`, shell
//! completions and man pages generated from the command line's definitions, the operator flags
//! before the command, and a server URL given with the API's `/v1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{Server, ONCEQ, ONCEQ_ENV};
use serde_json::Value;

/// Runs `onceq` with `args` in `dir`, with none of the caller's ONCEQ_* variables but `env`.
fn onceq_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(ONCEQ);
    command.current_dir(dir).args(args).env("RUST_LOG", "error");
    for variable in ONCEQ_ENV.iter().chain(&["ONCEQ_SERVER", "ONCEQ_TOKEN", "ONCEQ_PG_POOL_SIZE"]) {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_prints_what_serve_would_run_with_and_refuses_what_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let hash = onceq_server::hash_token("s3cret");
    let good = format!(
        "listen = \"127.0.0.1:7701\"\ndurability = \"relaxed\"\n\n[[tokens]]\nname = \"ci\"\nsha256 = \"{hash}\"\nproduce = [\"emails*\"]\n"
    );
    let files = [
        ("good.toml", good.as_str()),
        ("typo.toml", "lisen = \"127.0.0.1:7700\"\n"),
        ("open.toml", "listen = \"0.0.0.0:7700\"\n"),
        ("pg.toml", "store = \"postgres://app:hunter2@db:5432/jobs\"\npg_pool_size = 5000\n"),
        ("pg-ok.toml", "store = \"postgres://app:hunter2@db:5432/jobs\"\n"),
    ];
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }

    let out = onceq_in(dir.path(), &["config", "check", "good.toml"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for expected in ["store            embedded", "durability       relaxed", "listen           127.0.0.1:7701"] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("token            ci (produce emails*; consume -; admin -)"), "{stdout}");
    assert!(!stdout.contains(&hash), "a token's hash is never printed:\n{stdout}");

    // The environment is applied over the file as serve applies it, and named.
    let out = onceq_in(dir.path(), &["config", "check", "good.toml"], &[("ONCEQ_LISTEN", "127.0.0.1:9")]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("listen           127.0.0.1:9"), "{stdout}");
    assert!(stdout.contains("from the environment: ONCEQ_LISTEN (over listen)"), "{stdout}");

    // A PostgreSQL password is never printed.
    let out = onceq_in(dir.path(), &["config", "check", "pg-ok.toml"], &[]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("store            postgres://app:***@db:5432/jobs"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");

    // What serve refuses is refused here, with exit 2 and serve's words.
    for (file, says) in [
        ("typo.toml", "unknown field `lisen`"),
        ("open.toml", "refusing to listen on 0.0.0.0:7700 without auth"),
        ("pg.toml", "pg_pool_size: pool size is 5000; it must be between 1 and 1000"),
        ("missing.toml", "cannot read config file missing.toml"),
    ] {
        let out = onceq_in(dir.path(), &["config", "check", file], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(says), "{file}: {says:?} missing from {stderr:?}");
        assert!(!text(&out.stdout).contains("ok,"), "{file}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_itself() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = onceq_in(dir.path(), &["completions", shell], &[]);
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        // Every command and a flag deep inside one are known to the script.
        for word in ["dlq", "producer", "lease-token", "visibility-timeout-ms"] {
            assert!(script.contains(word), "{shell} completions lack {word:?}");
        }
    }
    let out = onceq_in(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");

    let out = onceq_in(dir.path(), &["man"], &[]);
    let page = text(&out.stdout);
    assert!(out.status.success() && page.contains(".TH onceq 1"), "{page}");
    let pages = dir.path().join("man");
    let out = onceq_in(dir.path(), &["man", "--dir", pages.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lease = std::fs::read_to_string(pages.join("onceq-lease.1")).unwrap();
    assert!(lease.contains("visibility\\-timeout\\-ms"), "{lease}");
    assert!(pages.join("onceq-queue-list.1").exists() && pages.join("onceq-config-check.1").exists());
}

#[tokio::test]
async fn operator_flags_work_before_the_command_and_a_v1_url_is_refused() {
    let server = Server::start().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<&str>| onceq_in(dir.path(), &args, &[]);
    let out = run(vec!["--server", &url, "queue", "set", "emails"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(vec!["--output", "json", "--server", &url, "stats"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats.to_string().contains("emails"), "{stats}");
    // After the command wins over before it: this one goes nowhere.
    let out = run(vec!["--server", &url, "stats", "--server", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    let v1 = format!("{url}/v1/");
    let out = run(vec!["--server", &v1, "stats"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("give the server's base URL: {url}")), "{stderr}");

    let out = run(vec!["--server", &url, "bench", "--quick"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("are for the operator commands"), "{}", text(&out.stderr));
}

/// A PostgreSQL that cannot be reached is reported at start within the connect timeout (3 s by
/// default, `--pg-connect-timeout-ms` / `--connect-timeout-ms`), exit 3, in serve, relay and bench
/// alike.
/// The "database" is a socket that is listening but never answers: the worst case, a host that
/// takes the connection and then says nothing.
#[test]
fn an_unreachable_database_is_reported_within_the_connect_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://postgres@{}/test", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        let out = onceq_in(dir.path(), args, &[]);
        (out, started.elapsed())
    };
    let serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--store", &url];
    let (out, took) = timed(&serve);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("timed out after 3s"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(8), "serve took {took:?} to give up");
    let (out, took) = timed(&[&serve[..], &["--pg-connect-timeout-ms", "700"]].concat());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(took < std::time::Duration::from_secs(3), "serve took {took:?} with a 700 ms timeout");
    let relay = ["relay", "--outbox", &url, "--sink", "http://127.0.0.1:1/hook", "--connect-timeout-ms", "700"];
    let (out, took) = timed(&relay);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("connect timeout 700ms"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(3), "relay took {took:?} with a 700 ms timeout");
    for kind in ["--store", "--outbox"] {
        let (out, took) = timed(&["bench", kind, &url, "--quick"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "bench {kind}: {stderr}");
        assert!(stderr.contains("connect timeout of 3000 ms"), "bench {kind}: {stderr}");
        assert!(took < std::time::Duration::from_secs(8), "bench {kind} took {took:?} to give up");
        let (out, took) = timed(&["bench", kind, &url, "--quick", "--pg-connect-timeout-ms", "700"]);
        assert_eq!(out.status.code(), Some(3), "bench {kind}: {}", text(&out.stderr));
        assert!(took < std::time::Duration::from_secs(3), "bench {kind} took {took:?} with a 700 ms timeout");
    }
    drop(silent);
}
