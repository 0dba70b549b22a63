//! The idempotency layer: a tower middleware that runs each HTTP request at most once per
//! idempotency key and replays its response to retries (docs/design.md, "Effectively-once").
//!
//! # Layout
//!
//! - `layer`: [`IdempotencyLayer`] and its builder methods.
//! - `config`: what the layer is configured with, and which requests it guards.
//! - `service`: [`IdempotencyService`], one request through the store.
//! - `request`: the key, the buffered request body, the fingerprint.
//! - `record`: the stored response and its JSON encoding.
//! - `body`: [`ResponseBody`], the body of every response the layer returns.
//! - [`error`]: [`Rejection`], the answers the layer gives itself, as JSON error responses.
//! - [`limits`]: every bound, as named constants.
//!
//! # Behaviour
//!
//! Which requests: a request whose method is in `required_for_methods` (default POST and
//! PATCH) on a path `required_for_paths` accepts (default every path) must carry the key
//! header (default `Idempotency-Key`): without it, **400** `idempotency_key_missing`. Other
//! requests with an unsafe method (PUT, DELETE, ...) are guarded when they carry a key. Requests
//! that are not guarded pass through untouched, their bodies unread. A key is 1 to
//! [`limits::KEY_LEN_MAX`] bytes of printable ASCII (a quoted form `"..."` is unquoted); a bad
//! one gets **400** `idempotency_key_invalid`.
//!
//! A guarded request:
//! 1. Its body is buffered up to `request_body_bytes_max` (**413** `payload_too_large` beyond),
//!    and the request is fingerprinted: SHA-256 of method, path with query, and body.
//! 2. `begin(namespace + key, a fresh random owner, in_progress_ttl, fingerprint)`:
//!    - *acquired*: the handler runs. Its response is stored (`complete`, kept for `retention`)
//!      before it is returned, so a retry that follows it finds it.
//!    - *completed*: the stored response is **replayed** — same status, headers and body — with
//!      `Idempotent-Replayed: true`. The handler does not run.
//!    - *in progress* (another request holds the key): **409** `idempotency_key_in_progress`
//!      with `Retry-After` (seconds until that claim ends).
//!    - the key was used with another fingerprint: **422** `idempotency_key_reused`.
//!    - the store is unreachable (`Unavailable`, `Storage`): **503** `unavailable` with
//!      `Retry-After`, and nothing runs (fail-closed, the default). With `fail_open(true)` the
//!      request runs without idempotency and a warning is logged.
//!
//! Decisions, and why:
//! - **Failures release the key.** When the inner service returns an error, or a response whose
//!   status [`retryable_status`] accepts (5xx, 408, 429; see `release_on`), the key is
//!   released and nothing is stored: these answers tell the client to retry, and a retry that
//!   replayed the failure would never succeed. A handler that fails *after* its effect must
//!   make that effect idempotent itself, or answer with a status that is stored.
//! - **Oversized responses are sent, not stored, and not re-run.** A response whose body is over
//!   `response_body_bytes_max` (or whose headers are over their limits) goes to the client in
//!   full; its key is completed with a record that says it was not stored. A retry gets
//!   **500** `response_not_stored` (marked as a replay) rather than running the handler a
//!   second time: the effect happened once, and releasing the key would let a retry repeat
//!   it — the one thing this layer exists to prevent.
//! - **A response body that fails mid-stream releases the key**: there is no whole response to
//!   replay. The client gets what was read, then the error.
//! - **Stored headers** leave out hop-by-hop headers, `Content-Length` (the replay's comes from
//!   the stored body) and `Set-Cookie` (a replay must not hand the first caller's cookies to
//!   whoever else holds the key). Trailers are passed to the first caller, never stored.
//! - **A claim lasts `in_progress_ttl`** (default 60 s) and is not extended while the handler
//!   runs. Keep it longer than the slowest handler (a tower timeout inside the layer makes that
//!   a guarantee): if it expires first, a retry may run the handler again, and the first
//!   response is then not stored (logged). A request that never finishes — its process dies,
//!   or its connection drops and the server cancels it mid-handler — is not released (its
//!   effect may be half done); it blocks retries of its key for at most this long.
//! - **The response is stored before it is returned**, and a failure to store it is logged,
//!   not turned into an error: the effect happened, so the client gets its response.
//!
//! Keys are shared by everyone who can reach the route: a replay goes to any client that sends
//! the same key with the same request. Use unguessable keys (UUIDs), as the IETF
//! `Idempotency-Key` draft asks.

mod body;
mod config;
pub mod error;
mod layer;
pub mod limits;
mod record;
mod request;
mod service;

pub use body::{BoxError, ResponseBody};
pub use error::Rejection;
pub use layer::{retryable_status, IdempotencyLayer};
pub use service::{IdempotencyService, ResponseFuture};

#[cfg(test)]
mod tests;
