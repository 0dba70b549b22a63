//! The dashboard on the PostgreSQL store: a real `onceq serve --store postgres://...` in a schema
//! of its own serves the overview, a queue's jobs by state and schedules, a lookup by dedup id, a dead job's
//! errors, a redrive from the dead letters (after its confirmation) and an idempotency key, all
//! read through the PostgreSQL store. (The browser test covers the embedded store, and the pages'
//! behaviour in a browser.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg_common;

use common::{id_of, token_of};
use serde_json::json;

/// A session's client: the dashboard's cookie and a form's CSRF token, no redirects followed.
struct Page {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Page {
    async fn open(base: &str) -> Page {
        let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let login = http.get(format!("{base}/ui/login")).send().await.unwrap();
        assert_eq!(login.status(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        Page { http, base: base.to_owned(), cookie }
    }

    async fn get(&self, path: &str) -> (u16, String, Option<String>) {
        let response =
            self.http.get(format!("{}{path}", self.base)).header("cookie", &self.cookie).send().await.unwrap();
        let status = response.status().as_u16();
        let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        (status, response.text().await.unwrap(), location)
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_the_postgres_store() {
    let schema = pg_common::Schema::fresh("dashboard").await;
    let server = pg_common::start_server(&schema).await;
    let api = server.api();
    api.put("/v1/queues/mail", json!({"max_attempts": 1})).await.ok(200);
    let ids = api.enqueue("mail", &[json!({"n": 1}), json!({"n": 2})]).await;
    let keyed =
        api.post("/v1/queues/mail/jobs", json!({"jobs": [{"payload": {"n": 3}, "dedup_id": "order-3"}]})).await.ok(200);
    let keyed = id_of(&keyed["jobs"][0]);
    let leased = api.lease("mail", 1, 60_000).await;
    let dead = id_of(&leased[0]);
    assert_eq!(dead, ids[0]);
    let nack = json!({"lease_token": token_of(&leased[0]), "error": "smtp 550 <no such user>"});
    api.post(&format!("/v1/jobs/{dead}/nack"), nack).await.no_content();

    api.put("/v1/schedules/nightly-digest", json!({"queue": "mail", "cron": "0 3 * * *"})).await.ok(200);

    let page = Page::open(&server.url()).await;
    let (status, html, _) = page.get("/ui").await;
    assert_eq!(status, 200);
    assert!(html.contains("<tr data-queue=\"mail\">"), "{html}");
    assert!(html.contains("<td data-field=\"ready\">2</td>"), "{html}");
    let (_, html, _) = page.get("/ui/queues/mail?state=ready").await;
    assert!(html.contains(&format!("<a href=\"/ui/jobs/{}\">", ids[1])), "{html}");
    assert!(html.contains(&format!("<a href=\"/ui/jobs/{keyed}\">")), "{html}");
    assert!(!html.contains(&format!("<a href=\"/ui/jobs/{dead}\">")), "a dead job is not ready: {html}");
    let schedules = html.split("id=\"schedules\"").nth(1).expect("the queue's schedules");
    assert!(schedules.contains("<td>nightly-digest</td><td><code>0 3 * * *</code></td><td>UTC</td>"), "{html}");
    let (status, _, location) = page.get("/ui/queues/mail/find?by=dedup&value=order-3").await;
    assert_eq!((status, location), (303, Some(format!("/ui/jobs/{keyed}"))));
    let (_, html, _) = page.get(&format!("/ui/jobs/{dead}")).await;
    assert!(html.contains("smtp 550 &lt;no such user&gt;"), "the error, escaped: {html}");

    let (_, html, _) = page.get("/ui/queues/mail/dead?error=SMTP").await;
    assert!(html.contains(&format!("name=\"id\" value=\"{dead}\"")), "{html}");
    let csrf = csrf_of(&html);
    let (status, html) = page.post("/ui/queues/mail/dead/redrive", &[("csrf", &csrf), ("id", &dead)]).await;
    assert_eq!(status, 200);
    assert!(html.contains("Redrive 1 dead job of queue mail?"), "{html}");
    let confirm = [("csrf", csrf.as_str()), ("id", dead.as_str()), ("confirm", "yes")];
    let (_, html) = page.post("/ui/queues/mail/dead/redrive", &confirm).await;
    assert!(html.contains("1 dead job of queue mail redriven."), "{html}");
    assert_eq!(api.get(&format!("/v1/jobs/{dead}")).await.ok(200)["state"], "ready");

    api.post("/v1/idempotency/charge-1/begin", json!({"owner": "worker-a", "ttl_ms": 30_000})).await.ok(200);
    let (_, html, _) = page.get("/ui/idempotency?key=charge-1").await;
    assert!(html.contains("<dd id=\"key-state\">in progress</dd>") && html.contains("worker-a"), "{html}");
}
