//! Bearer-token auth of `onceq serve` that needs the real process: without tokens the server
//! refuses a non-loopback address (non-zero exit, a message naming `--insecure-no-auth`), and
//! starts there with `--insecure-no-auth` or with tokens. What each token may do on each queue is
//! proved against the router in-process, in onceq-server's tests (auth_matrix.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{run_onceq, tokens_config, Server, TokenSpec};
use serde_json::json;

const TOKEN_A: &str = "secret-of-a";
const TOKEN_B: &str = "secret-of-b";
/// Only `produce` on `a.*`.
const TOKEN_PRODUCER: &str = "secret-of-a-producer";

fn config() -> String {
    tokens_config(&[
        TokenSpec { name: "a", secret: TOKEN_A, produce: &["a.*"], consume: &["a.*"], admin: &["a.*"] },
        TokenSpec { name: "b", secret: TOKEN_B, produce: &["b.*"], consume: &["b.*"], admin: &["b.*"] },
        TokenSpec { name: "a-producer", secret: TOKEN_PRODUCER, produce: &["a.*"], consume: &[], admin: &[] },
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_on_a_public_address_needs_insecure_no_auth() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let output = run_onceq(&["serve", "--data-dir", data_dir, "--listen", "0.0.0.0:0"], Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused to start: {:?}; stderr: {stderr}", output.status);
    assert!(stderr.contains("--insecure-no-auth"), "the message names the way out: {stderr}");
    assert!(!std::path::Path::new(data_dir).exists(), "a refused start created its data directory");

    // With the flag it starts, and serves without tokens.
    let server = Server::start_with(&["--listen", "0.0.0.0:0", "--insecure-no-auth"], None).await;
    assert_eq!(server.api().get("/v1/queues").await.ok(200), json!({"queues": [], "next": null}));
    // With tokens, a public address needs no flag, and auth is on.
    let server = Server::start_with(&["--listen", "0.0.0.0:0"], Some(&config())).await;
    server.api().get("/v1/queues").await.err(401, "unauthorized");
    assert_eq!(server.api_with_token(TOKEN_A).get("/v1/queues").await.ok(200), json!({"queues": [], "next": null}));

    // The refused server must not have announced itself: scripts wait for that line to know the
    // server is up.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening"), "a server that refused to start printed its listening line: {stdout}");
}
