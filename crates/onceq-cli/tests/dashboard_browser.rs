//! The dashboard at `/ui` in a real browser: Debian's headless `chromium`, driven through
//! `chromedriver` (WebDriver), against a real `onceq serve` with tokens. It proves, in order:
//! an admin logs in and creates a queue; counts change on the overview without a reload; a job
//! failing three times shows its three errors, with times, on its timeline; it is redriven from
//! the dead letters (after a confirmation that says how many) and then acked; a queue is paused
//! and resumed; a payload `<img src=x onerror=...>` and an error holding `<script>` render as text
//! and no handler runs; a job is cancelled and then deleted from its page, another failed from its page with an error text and purged as a selected dead letter; an idempotency key's state, owner and result are shown; a forged POST without the CSRF token is refused and changes nothing; a
//! read-only token finds no action and its forged POSTs are refused. It writes the screenshots of
//! docs/ (overview, job timeline, dead letters) as it goes.
//!
//! Chromium and chromedriver must be installed (`apt-get install chromium chromium-driver`); the
//! test fails, saying so, when they are not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{id_of, token_of, tokens_config, Server, TokenSpec};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const ADMIN: TokenSpec =
    TokenSpec { name: "operator", secret: "admin-secret-1", produce: &["*"], consume: &["*"], admin: &["*"] };
const READER: TokenSpec =
    TokenSpec { name: "watcher", secret: "reader-secret-1", produce: &[], consume: &["*"], admin: &[] };

/// What the page's script would set if a payload or error ever ran as HTML.
const PAYLOAD: &str = "<img src=x onerror=\"window.__pwned='payload'\">";
const ERROR_TEXT: &str = "<script>window.__pwned='error'</script> refused by the mail server";

/// Longest wait for something the page shows (the overview polls every 1.5 s).
const SHOW_TIMEOUT: Duration = Duration::from_secs(15);

fn find_program(name: &str, candidates: &[&str]) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates.iter().map(PathBuf::from).chain(from_path).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: the dashboard's browser test drives Debian's chromium through chromedriver. \
             Install both: apt-get install chromium chromium-driver"
        )
    })
}

/// chromedriver on a free port, and a headless chromium session through it.
struct Browser {
    client: Client,
    _driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = find_program("chromium", &["/usr/bin/chromium"]);
        let chromedriver = find_program("chromedriver", &["/usr/bin/chromedriver"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not listen on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,860", "--no-proxy-server"]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot open a chromium session through chromedriver: {e}"));
        Browser { client, _driver: driver }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.text().await.unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks what submits a form or follows a link, and waits until the next page has loaded.
    async fn submit(&self, css: &str) {
        self.run("window.__old_page = true; return null").await;
        self.click(css).await;
        let started = Instant::now();
        loop {
            let loaded = self
                .client
                .execute("return window.__old_page === undefined && document.readyState === 'complete'", Vec::new());
            if let Ok(Value::Bool(true)) = loaded.await {
                return;
            }
            assert!(started.elapsed() < SHOW_TIMEOUT, "clicking {css} loaded no new page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    async fn run(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    async fn body(&self) -> String {
        self.text("body").await
    }

    /// Waits until `css`'s text is `want`, without reloading the page.
    async fn wait_text(&self, css: &str, want: &str) {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if text == want {
                return;
            }
            assert!(started.elapsed() < SHOW_TIMEOUT, "{css} shows {text:?}, not {want:?}, after {SHOW_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn login(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/ui/login")).await;
        self.fill("input[name=token]", token).await;
        self.submit("form button[type=submit]").await;
        assert_eq!(self.client.current_url().await.unwrap().path(), "/ui", "{}", self.body().await);
    }

    async fn logout(&self) {
        self.submit("form.logout button").await;
    }

    /// A `POST` from the page itself (same origin, with its session cookie): its status.
    async fn forged_post(&self, path: &str, form: &str) -> u64 {
        let script = format!(
            "return fetch({path:?}, {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, \
             body: {form:?}, redirect: 'manual', credentials: 'same-origin'}}).then(r => r.status)"
        );
        self.run(&script).await.as_u64().unwrap()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Whether anything a payload or error carried ran.
    async fn assert_nothing_ran(&self) {
        assert_eq!(self.run("return window.__pwned === undefined ? null : String(window.__pwned)").await, Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let server = Server::start_with_config(&tokens_config(&[ADMIN, READER])).await;
    let base = server.url();
    let api = server.api_with_token(ADMIN.secret);
    let browser = Browser::start().await;
    let b = &browser;

    // An admin logs in and creates a queue, then sets its attempts to 3 in the config editor.
    b.login(&base, ADMIN.secret).await;
    b.fill("form.create input[name=name]", "emails").await;
    b.submit("form.create button").await;
    assert_eq!(b.text("main h1").await, "Queue emails");
    b.fill("form.config textarea", "{\"max_attempts\": 3}").await;
    b.submit("form.config button").await;
    assert_eq!(api.get("/v1/queues/emails").await.ok(200)["config"]["max_attempts"], 3);
    b.fill("form.config textarea", "{\"max_attempts\": 0}").await;
    b.submit("form.config button").await;
    assert!(b.text("p.error").await.contains("max_attempts is 0"), "the API's check applies");

    // Counts change on the overview without a reload: a marker set on the page survives.
    b.goto(&format!("{base}/ui")).await;
    b.run("window.__marker = 'same page'; return null").await;
    let row = "tr[data-queue=emails]";
    b.wait_text(&format!("{row} [data-field=ready]"), "0").await;
    let ids = api.enqueue("emails", &[json!(PAYLOAD), json!({"to": "a@example.com"}), json!({"to": "b"})]).await;
    b.wait_text(&format!("{row} [data-field=ready]"), "3").await;
    let held = api.lease("emails", 1, 60_000).await;
    b.wait_text(&format!("{row} [data-field=leased]"), "1").await;
    b.wait_text(&format!("{row} [data-field=ready]"), "2").await;
    for job in &held {
        let body = json!({"lease_token": token_of(job)});
        api.post(&format!("/v1/jobs/{}/release", id_of(job)), body).await.no_content();
    }
    b.wait_text(&format!("{row} [data-field=ready]"), "3").await;
    assert_eq!(b.run("return window.__marker").await, json!("same page"), "the page was not reloaded");
    let chart = b.count(&format!("{row} [data-field=chart] svg polyline")).await;
    assert_eq!(chart, 2, "the row's chart has its enqueued and acked lines");

    // The first job (the one whose payload is an <img> tag) fails three times.
    let failing = &ids[0];
    for attempt in 1..=3 {
        let leased =
            api.post("/v1/queues/emails/leases", json!({"max_jobs": 3, "visibility_timeout_ms": 60_000})).await.ok(200);
        let job = leased["jobs"].as_array().unwrap().iter().find(|j| id_of(j) == *failing).cloned();
        let job = match job {
            Some(job) => job,
            None => panic!("attempt {attempt}: the failing job was not leased: {leased}"),
        };
        let error = format!("attempt {attempt}: {ERROR_TEXT}");
        let body = json!({"lease_token": token_of(&job), "delay_ms": 0, "error": error});
        api.post(&format!("/v1/jobs/{failing}/nack"), body).await.no_content();
        // The other leased jobs go back at once.
        for other in leased["jobs"].as_array().unwrap().iter().filter(|j| id_of(j) != *failing) {
            let body = json!({"lease_token": token_of(other)});
            api.post(&format!("/v1/jobs/{}/release", id_of(other)), body).await.no_content();
        }
    }
    b.goto(&format!("{base}/ui/jobs/{failing}")).await;
    assert_eq!(b.text("#job-state").await, "dead");
    let errors = b.client.find_all(Locator::Css("#timeline li.failed pre")).await.unwrap();
    let mut shown = Vec::new();
    for error in &errors {
        shown.push(error.text().await.unwrap());
    }
    assert_eq!(shown, (1..=3).map(|a| format!("attempt {a}: {ERROR_TEXT}")).collect::<Vec<_>>());
    let times = b.client.find_all(Locator::Css("#timeline li.failed span.at")).await.unwrap();
    assert_eq!(times.len(), 3, "each error has its time");
    // Payload and error text are text: no element was made of them, and nothing ran.
    assert_eq!(b.text("#payload").await, serde_json::to_string(PAYLOAD).unwrap());
    assert_eq!(b.count("main img").await, 0);
    assert_eq!(b.count("main script").await, 0);
    b.assert_nothing_ran().await;
    b.screenshot("dashboard-job.png").await;

    // The dead letters: filter by the error text, select the job, redrive it after a
    // confirmation that says how many, then it is leased and acked.
    b.goto(&format!("{base}/ui/queues/emails/dead?error=mail+server")).await;
    assert_eq!(b.count("#dead tbody tr").await, 1);
    b.assert_nothing_ran().await;
    b.screenshot("dashboard-dead.png").await;
    b.goto(&format!("{base}/ui/queues/emails/dead?error=no+such+text")).await;
    assert_eq!(b.count("#dead tbody tr").await, 0, "the filter leaves out what does not match");
    b.goto(&format!("{base}/ui/queues/emails/dead")).await;
    b.click(&format!("#dead input[name=id][value=\"{failing}\"]")).await;
    b.submit("button[data-action=redrive]").await;
    assert_eq!(
        b.text("#confirm-text").await,
        "Redrive 1 dead job of queue emails? They become ready again, attempts reset."
    );
    assert_eq!(
        api.get(&format!("/v1/jobs/{failing}")).await.ok(200)["state"],
        "dead",
        "nothing before the confirmation"
    );
    b.submit("button[data-action=confirm]").await;
    assert_eq!(b.text("#done-text").await, "1 dead job of queue emails redriven.");
    let mut acked = false;
    for _ in 0..3 {
        let leased = api.lease("emails", 10, 60_000).await;
        if let Some(job) = leased.iter().find(|j| id_of(j) == *failing) {
            api.post(&format!("/v1/jobs/{failing}/ack"), json!({"lease_token": token_of(job)})).await.no_content();
            acked = true;
            break;
        }
    }
    assert!(acked, "the redriven job was leased again");
    b.goto(&format!("{base}/ui/jobs/{failing}")).await;
    assert!(b.body().await.contains("not found"), "an acked job is gone: {}", b.body().await);
    let live = b.run("return fetch('/ui/overview.json').then(r => r.json())").await;
    let emails = live["queues"].as_array().unwrap().iter().find(|q| q["name"] == "emails").cloned().unwrap();
    assert_eq!((emails["dead"].as_u64(), emails["acked_total"].as_f64()), (Some(0), Some(1.0)), "{live}");

    // Cancel a job from its page: it ends cancelled, and is never leased.
    let later = api
        .post("/v1/queues/emails/jobs", json!({"jobs": [{"payload": {"to": "c"}, "delay_ms": 3_600_000}]}))
        .await
        .ok(200)["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.goto(&format!("{base}/ui/jobs/{later}")).await;
    assert_eq!(b.text("#job-state").await, "scheduled");
    b.submit("button[data-action=cancel]").await;
    assert_eq!(b.text("#job-state").await, "cancelled");
    assert!(b.text("#cancelled").await.starts_with("Cancelled "), "{}", b.body().await);
    assert_eq!(b.count("button[data-action=cancel]").await, 0, "a cancelled job offers no cancel");
    assert_eq!(api.get(&format!("/v1/jobs/{later}")).await.ok(200)["state"], "cancelled");
    // Delete it from its page, after a confirmation: it is gone.
    b.submit("button[data-action=delete]").await;
    assert!(b.text("#confirm-text").await.starts_with(&format!("Delete job {later} of queue emails (cancelled)?")));
    assert_eq!(
        api.get(&format!("/v1/jobs/{later}")).await.ok(200)["state"],
        "cancelled",
        "nothing before the confirmation"
    );
    b.submit("button[data-action=confirm]").await;
    assert_eq!(b.text("#done-text").await, format!("Job {later} of queue emails deleted."));
    assert_eq!(api.get(&format!("/v1/jobs/{later}")).await.status, 404);

    // Fail a waiting job from its page with an error text: it is dead, the error on its
    // timeline; then purge it from the dead letters as a selected job.
    let doomed = api
        .post("/v1/queues/emails/jobs", json!({"jobs": [{"payload": {"to": "d"}, "delay_ms": 3_600_000}]}))
        .await
        .ok(200)["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.goto(&format!("{base}/ui/jobs/{doomed}")).await;
    b.fill("form[action$='/kill'] input[name=error]", "operator: <b>bad</b> address").await;
    b.submit("button[data-action=kill]").await;
    assert_eq!(b.text("#job-state").await, "dead");
    assert!(b.text("#timeline").await.contains("operator: <b>bad</b> address"), "{}", b.body().await);
    assert_eq!(b.count("button[data-action=kill]").await, 0, "a dead job offers no fail");
    b.goto(&format!("{base}/ui/queues/emails/dead")).await;
    b.click(&format!("#dead input[name=id][value=\"{doomed}\"]")).await;
    b.submit("button[data-action=purge-selected]").await;
    assert_eq!(b.text("#confirm-text").await, "Purge 1 dead job of queue emails? They are deleted for good.");
    b.submit("button[data-action=confirm]").await;
    assert_eq!(b.text("#done-text").await, "1 dead job of queue emails purged.");
    assert_eq!(api.get(&format!("/v1/jobs/{doomed}")).await.status, 404);

    // Pause and resume from the overview.
    b.goto(&format!("{base}/ui")).await;
    b.submit(&format!("{row} button[data-action=pause]")).await;
    assert_eq!(b.text(&format!("{row} [data-field=paused]")).await, "paused");
    assert_eq!(api.get("/v1/queues/emails").await.ok(200)["paused"], true);
    b.submit(&format!("{row} button[data-action=resume]")).await;
    assert_eq!(b.text(&format!("{row} [data-field=paused]")).await, "running");
    assert_eq!(api.get("/v1/queues/emails").await.ok(200)["paused"], false);

    // A few seconds of traffic for the overview's charts, then its screenshot.
    for round in 0..16 {
        let payloads: Vec<Value> = (0..20 + round * 5).map(|i| json!({"round": round, "n": i})).collect();
        api.enqueue("emails", &payloads).await;
        for job in api.lease("emails", 15 + round as u32 * 4, 60_000).await {
            api.post(&format!("/v1/jobs/{}/ack", id_of(&job)), json!({"lease_token": token_of(&job)}))
                .await
                .no_content();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.wait_text(&format!("{row} [data-field=paused]"), "running").await;
    b.screenshot("dashboard-overview.png").await;

    // A forged POST (no CSRF token, or another) is refused and changes nothing.
    assert_eq!(b.forged_post("/ui/queues/emails/pause", "").await, 403);
    assert_eq!(b.forged_post("/ui/queues/emails/pause", "csrf=0123").await, 403);
    assert_eq!(b.forged_post("/ui/queues", "name=forged").await, 403);
    assert_eq!(api.get("/v1/queues/emails").await.ok(200)["paused"], false);
    api.get("/v1/queues/forged").await.err(404, "not_found");

    // An idempotency key: its state, owner, result and expiry.
    api.post("/v1/idempotency/charge-7/begin", json!({"owner": "worker-a", "ttl_ms": 30_000})).await.ok(200);
    b.goto(&format!("{base}/ui/idempotency?key=charge-7")).await;
    assert_eq!(b.text("#key-state").await, "in progress");
    let complete = json!({"owner": "worker-a", "result": {"charged": "<b>42</b>"}, "retention_ms": 60_000});
    api.post("/v1/idempotency/charge-7/complete", complete).await.no_content();
    b.goto(&format!("{base}/ui/idempotency?key=charge-7")).await;
    assert_eq!(b.text("#key-state").await, "completed");
    assert!(b.body().await.contains("worker-a"), "{}", b.body().await);
    assert_eq!(b.text("pre.payload").await, "{\n  \"charged\": \"<b>42</b>\"\n}");
    b.goto(&format!("{base}/ui/idempotency?key=never-seen")).await;
    assert!(b.text("#key-state").await.starts_with("No record of key never-seen"));

    // A read-only token finds no action anywhere, and its forged POSTs are refused.
    b.logout().await;
    b.login(&base, READER.secret).await;
    let second = &ids[1];
    let pages = [
        "/ui".to_owned(),
        "/ui/queues/emails".to_owned(),
        format!("/ui/jobs/{second}"),
        "/ui/idempotency?key=charge-7".to_owned(),
    ];
    for path in pages {
        b.goto(&format!("{base}{path}")).await;
        assert_eq!(b.count("main form[method=post]").await, 0, "{path} offers an action to a read-only token");
        assert_eq!(b.count("main textarea").await, 0, "{path} offers editing to a read-only token");
    }
    b.goto(&format!("{base}/ui/queues/emails/dead")).await;
    assert!(b.body().await.contains("no admin permission"), "{}", b.body().await);
    b.goto(&format!("{base}/ui")).await;
    let csrf = b.run("return document.querySelector('form.logout input[name=csrf]').value").await;
    let csrf = csrf.as_str().unwrap().to_owned();
    assert_eq!(b.forged_post("/ui/queues/emails/pause", &format!("csrf={csrf}")).await, 403);
    assert_eq!(b.forged_post("/ui/queues", &format!("csrf={csrf}&name=forged")).await, 403);
    assert_eq!(api.get("/v1/queues/emails").await.ok(200)["paused"], false);
    api.get("/v1/queues/forged").await.err(404, "not_found");

    // Security headers of the pages.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let page = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");

    browser.client.close().await.unwrap();
}
