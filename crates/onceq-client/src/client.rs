//! [`Client`] and [`ClientBuilder`]: where the server is, how to authenticate, how long to wait,
//! and the exchange of one request with it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{Error, QueueName, Result};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{self, Missing};

/// How long a call may take, end to end, unless [`ClientBuilder::timeout`] says otherwise.
/// A lease call gets its `wait_ms` on top.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the server may take, unless [`ClientBuilder::connect_timeout`] says
/// otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times an enqueue or commit refused by a queue's limit (`429 rate_limited`) is sent
/// in all, unless [`ClientBuilder::rate_limited_tries`] says otherwise: the first try and three
/// more, each after the server's `Retry-After`, doubled per refusal, with jitter
/// (`onceq_core::flow::retry_delay`).
pub const DEFAULT_RATE_LIMITED_TRIES: u32 = 4;
/// How long an unused pooled connection is kept open.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keep-alive probes, so a connection whose peer vanished during a long poll is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Configures a [`Client`]; made by [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    /// The server's URL as given, e.g. `http://127.0.0.1:7700`; parsed by [`build`](Self::build).
    base_url: String,
    /// Sent as `Authorization: Bearer <token>` on every call when set.
    token: Option<String>,
    /// End-to-end limit of one call (a lease call adds its `wait_ms`).
    timeout: Duration,
    /// Limit on establishing a connection.
    connect_timeout: Duration,
    /// Tries of an enqueue or commit refused by a queue's limit, the first included.
    rate_limited_tries: u32,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("rate_limited_tries", &self.rate_limited_tries)
            .finish()
    }
}

impl ClientBuilder {
    /// The bearer token to present on every call (`None`: a server without auth).
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The end-to-end limit of one call, from connecting to the last byte of the reply
    /// (default [`DEFAULT_TIMEOUT`]). A lease call that waits gets its `wait_ms` on top, so a
    /// long poll is never cut short by this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times an enqueue or commit refused by a queue's limit (`Error::RateLimited`,
    /// `429`) is sent in all before the refusal is returned (default
    /// [`DEFAULT_RATE_LIMITED_TRIES`]; 1 returns the first refusal). Sending it again is safe: a
    /// refused request applied nothing.
    pub fn rate_limited_tries(mut self, tries: u32) -> Self {
        self.rate_limited_tries = tries;
        self
    }

    /// The limit on establishing a connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Checks the settings and makes the client. Nothing is sent: a server that is down shows
    /// as [`Error::Unavailable`] on the first call.
    ///
    /// Fails with [`Error::InvalidRequest`] for a base URL that is not `http://` or `https://`
    /// (the latter needs the crate feature `rustls`), that has a query or fragment, or for a
    /// token that is empty or cannot be sent in an HTTP header.
    pub fn build(self) -> Result<Client> {
        let base = parse_base_url(&self.base_url)?;
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::invalid("timeouts must be longer than zero"));
        }
        if self.rate_limited_tries == 0 {
            return Err(Error::invalid("rate_limited_tries must be at least 1 (the first try)"));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(token) = &self.token {
            headers.insert(AUTHORIZATION, bearer(token)?);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("onceq-client/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE)
            .tcp_nodelay(true)
            // An onceq server never redirects; following one would replay a POST as a GET and
            // could carry the token elsewhere. A 3xx is reported with its target instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::invalid(format!("cannot make an HTTP client: {}", error::causes(&e))))?;
        let prefix = base.path().trim_end_matches('/').to_owned();
        let rate_limited_tries = self.rate_limited_tries;
        Ok(Client { inner: Arc::new(Inner { http, base, prefix, timeout: self.timeout, rate_limited_tries }) })
    }
}

/// Parses and checks the server's base URL.
fn parse_base_url(text: &str) -> Result<Url> {
    let example = "e.g. http://127.0.0.1:7700";
    let url =
        Url::parse(text).map_err(|e| Error::invalid(format!("server URL {text:?} is not a URL ({e}); {example}")))?;
    match url.scheme() {
        "http" => {}
        "https" if cfg!(feature = "rustls") => {}
        "https" => {
            return Err(Error::invalid(format!(
                "server URL {text:?} is https, but onceq-client was built without TLS; enable its `rustls` feature"
            )))
        }
        other => {
            return Err(Error::invalid(format!(
                "server URL {text:?} has scheme {other:?}; use http or https, {example}"
            )))
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::invalid(format!(
            "server URL {text:?} has a query or fragment; give only scheme, host, port and path"
        )));
    }
    // The API's paths begin with /v1, which every call adds: a base that ends with it would ask
    // for /v1/v1/... and meet only 404s.
    let path = url.path().trim_end_matches('/');
    if path == "/v1" || path.ends_with("/v1") {
        let mut root = url.clone();
        root.set_path(&path[..path.len() - "/v1".len()]);
        let root = root.as_str().trim_end_matches('/').to_owned();
        return Err(Error::invalid(format!(
            "server URL {text:?} ends with /v1, which the client adds to every call; give the server's base URL: {root}"
        )));
    }
    Ok(url)
}

/// The `Authorization` header for `token`, marked sensitive so it is never logged.
fn bearer(token: &str) -> Result<HeaderValue> {
    if token.trim().is_empty() {
        return Err(Error::invalid("the token is empty; pass None for a server without auth"));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::invalid("the token contains characters that cannot be sent in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// An HTTP client of one `onceq serve`, implementing [`onceq_core::Store`].
///
/// Cheap to clone: clones share one pool of keep-alive connections. Every call is one HTTP
/// request; batch calls are one request per batch.
#[derive(Clone)]
pub struct Client {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// What every clone of a [`Client`] shares.
struct Inner {
    /// The pooled HTTP client (keep-alive, default headers with the token).
    http: reqwest::Client,
    /// The server's base URL.
    base: Url,
    /// The base URL's path without its trailing `/`; endpoint paths are appended to it, so a
    /// server behind a path prefix (`http://host/onceq/`) works.
    prefix: String,
    /// End-to-end limit of one call.
    timeout: Duration,
    /// Tries of an enqueue or commit refused by a queue's limit, the first included.
    rate_limited_tries: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base_url", &self.base_url()).field("timeout", &self.timeout()).finish()
    }
}

impl Client {
    /// Starts configuring a client of the server at `base_url`, e.g. `http://127.0.0.1:7700`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            rate_limited_tries: DEFAULT_RATE_LIMITED_TRIES,
        }
    }

    /// A client of the server at `base_url` with no token and the default timeouts.
    pub fn new(base_url: impl Into<String>) -> Result<Client> {
        Client::builder(base_url).build()
    }

    /// Sends a request again while a queue's limit refuses it ([`Error::RateLimited`]), up to
    /// [`ClientBuilder::rate_limited_tries`] tries, pausing as the server asks, with backoff and
    /// jitter.
    pub(crate) async fn patiently<T, F, Fut>(&self, mut send: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match send().await {
                Err(Error::RateLimited { retry_after_ms, .. }) if attempt < self.inner.rate_limited_tries => {
                    let pause = onceq_core::flow::retry_delay(retry_after_ms, attempt, &mut rand::thread_rng());
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// The end-to-end limit of one call (a lease call adds its `wait_ms`).
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether the server is up and its store answers (`GET /readyz`): `Ok`, or
    /// [`Error::Unavailable`] when the server cannot be reached or its store is down. No token
    /// needed. For a startup check; the calls themselves fail the same way.
    pub async fn ready(&self) -> Result<()> {
        self.call(Method::GET, "/readyz").send().await
    }

    /// The server's metrics (`GET /metrics`): Prometheus text, as docs/api.md lists them. No
    /// token needed.
    pub async fn metrics(&self) -> Result<String> {
        let body = self.call(Method::GET, "/metrics").exchange().await?;
        String::from_utf8(body).map_err(|e| self.unreadable("metrics", e))
    }

    /// Starts a call of the endpoint at `path` (which starts with `/v1/`, or is `/readyz` or
    /// `/metrics`).
    pub(crate) fn call(&self, method: Method, path: &str) -> Call<'_> {
        let mut url = self.inner.base.clone();
        url.set_path(&format!("{}{path}", self.inner.prefix));
        Call { client: self, method, url, body: None, timeout: self.inner.timeout, missing: Missing::Nothing }
    }

    /// The error for a response from this server that cannot be read as what was expected.
    pub(crate) fn unreadable(&self, what: &str, cause: impl fmt::Display) -> Error {
        Error::Storage(format!(
            "the server at {} sent {what} that cannot be read ({cause}); is it an onceq server of a compatible version?",
            self.inner.base
        ))
    }
}

/// The URL path segment of a queue. Queue names are URL-safe (`[A-Za-z0-9._-]`, and never only
/// dots, which HTTP would resolve as relative segments), so the name is the segment.
pub(crate) fn queue_segment(queue: &QueueName) -> Result<&str> {
    Ok(queue.as_str())
}

/// One request being prepared; [`fetch`](Call::fetch) or [`send`](Call::send) runs it.
pub(crate) struct Call<'c> {
    /// The client whose pool and settings the call uses.
    client: &'c Client,
    /// HTTP method.
    method: Method,
    /// Full URL, with query.
    url: Url,
    /// The JSON body, or why it could not be made.
    body: Option<Result<Vec<u8>>>,
    /// End-to-end limit of this call.
    timeout: Duration,
    /// What a 404 means here.
    missing: Missing,
}

impl Call<'_> {
    /// Sends `body` as JSON.
    pub(crate) fn json(mut self, body: &impl Serialize) -> Self {
        let encoded = serde_json::to_vec(body).map_err(|e| Error::Storage(format!("cannot encode the request: {e}")));
        self.body = Some(encoded);
        self
    }

    /// Adds a query parameter.
    pub(crate) fn query(mut self, key: &str, value: &str) -> Self {
        self.url.query_pairs_mut().append_pair(key, value);
        self
    }

    /// Lets the call take `wait` longer than the client's timeout: a long poll's wait.
    pub(crate) fn waiting(mut self, wait: Duration) -> Self {
        self.timeout = self.timeout.saturating_add(wait);
        self
    }

    /// Says what a 404 from this endpoint stands for.
    pub(crate) fn missing(mut self, missing: Missing) -> Self {
        self.missing = missing;
        self
    }

    /// Runs the call and decodes a successful reply's JSON body as `T`.
    pub(crate) async fn fetch<T: DeserializeOwned>(self) -> Result<T> {
        let client = self.client;
        let endpoint = format!("{} {}", self.method, self.url);
        let body = self.exchange().await?;
        serde_json::from_slice(&body).map_err(|e| client.unreadable(&format!("a reply to {endpoint}"), e))
    }

    /// Runs the call, for an endpoint whose success has no body worth reading (204).
    pub(crate) async fn send(self) -> Result<()> {
        self.exchange().await.map(drop)
    }

    /// Sends the request and returns the body of a 2xx reply; anything else becomes the seam
    /// error it stands for.
    async fn exchange(self) -> Result<Vec<u8>> {
        let Call { client, method, url, body, timeout, missing } = self;
        let endpoint = format!("{method} {url}");
        let mut request = client.inner.http.request(method, url).timeout(timeout);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body?);
        }
        let base = &client.inner.base;
        let response = request.send().await.map_err(|e| error::transport(&e, &endpoint, base, timeout))?;
        let status = response.status();
        let header = |name| response.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
        let (retry_after, location) = (header(RETRY_AFTER), header(LOCATION));
        let bytes = response.bytes().await.map_err(|e| error::transport(&e, &endpoint, base, timeout))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let reply = error::Reply { status, retry_after, location, body: &bytes };
        Err(error::from_reply(&reply, &missing, &endpoint, base))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:7700").is_ok());
        assert!(Client::new("http://localhost:7700/").is_ok());
        for bad in
            ["127.0.0.1:7700", "ftp://host", "http://host/?a=1", "http://host/#top", "not a url", "http://h:1/v1"]
        {
            let err = Client::new(bad).unwrap_err();
            assert_eq!(err.kind(), onceq_core::ErrorKind::InvalidRequest, "{bad}: {err}");
        }
        // A base ending with the API's /v1 is refused with the URL to give instead.
        for (given, root) in [
            ("http://h:7700/v1", "http://h:7700"),
            ("http://h:7700/v1/", "http://h:7700"),
            ("http://h/onceq/v1", "http://h/onceq"),
        ] {
            let err = Client::new(given).unwrap_err().to_string();
            assert!(err.ends_with(&format!("give the server's base URL: {root}")), "{given}: {err}");
        }
        assert!(Client::new("http://h/onceq/").is_ok(), "a path prefix (a proxy's) is kept");
        let https = Client::new("https://queue.example");
        assert_eq!(https.is_ok(), cfg!(feature = "rustls"), "{https:?}");
    }

    #[test]
    fn tokens_and_timeouts_are_checked() {
        let token = |t: &str| Client::builder("http://127.0.0.1:7700").token(Some(t.to_owned())).build();
        assert!(token("s3cret-token").is_ok());
        assert!(matches!(token(""), Err(Error::InvalidRequest(_))));
        assert!(matches!(token("line\nbreak"), Err(Error::InvalidRequest(_))));
        let zero = Client::builder("http://127.0.0.1:7700").timeout(Duration::ZERO).build();
        assert!(matches!(zero, Err(Error::InvalidRequest(_))));
        let debug = format!("{:?}", Client::builder("http://h").token(Some("s3cret".into())));
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let root = Client::new("http://127.0.0.1:7700").unwrap();
        assert_eq!(root.call(Method::GET, "/v1/queues").url.as_str(), "http://127.0.0.1:7700/v1/queues");
        let prefixed = Client::new("http://proxy.local/onceq/").unwrap();
        let call = prefixed.call(Method::GET, "/v1/queues/q/dead").query("limit", "5").query("after", "7");
        assert_eq!(call.url.as_str(), "http://proxy.local/onceq/v1/queues/q/dead?limit=5&after=7");
    }

    #[test]
    fn queue_names_are_their_own_path_segment() {
        for name in [".a", "a.b", "_-.", "x"] {
            assert_eq!(queue_segment(&QueueName::new(name).unwrap()), Ok(name));
        }
        for name in [".", "..", "..."] {
            assert!(matches!(QueueName::new(name), Err(Error::InvalidRequest(_))), "{name}");
        }
    }

    #[test]
    fn a_lease_call_waits_longer_than_the_timeout() {
        let client = Client::builder("http://h").timeout(Duration::from_secs(5)).build().unwrap();
        let call = client.call(Method::POST, "/v1/queues/q/leases").waiting(Duration::from_millis(20_000));
        assert_eq!(call.timeout, Duration::from_secs(25));
    }
}
