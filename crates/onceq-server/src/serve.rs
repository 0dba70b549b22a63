//! The listener: timeouts so slow clients cannot pin connections, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::api::Api;
use crate::body::BodyDeadline;
use crate::error::ApiError;
use crate::parse_errors::{ApiParseErrors, HEADERS_MAX, HEAD_BYTES_MAX};

/// How `serve` runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Allow a non-loopback address without tokens.
    pub insecure_no_auth: bool,
    /// A client must send its request headers within this (slowloris guard).
    pub header_read_timeout: Duration,
    /// A client must send its request body in full within this of the request's start (its
    /// headers read), however it trickles: 408 `request_timeout` past it.
    pub body_read_timeout: Duration,
    /// A request (long polls included, which wait at most 20 s) must finish within this.
    pub request_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            insecure_no_auth: false,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// No tokens and a non-loopback address.
    #[error(
        "refusing to listen on {0} without auth: configure tokens in the config file, listen on a loopback \
         address, or pass --insecure-no-auth"
    )]
    NoAuthOnPublicAddress(SocketAddr),
    /// The listener failed.
    #[error("the listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Refuses an address other machines can reach when no token is configured, unless the options
/// say `insecure_no_auth`. Call it before binding to fail before anything is announced.
pub fn check_exposure(api: &Api, address: SocketAddr, options: &ServeOptions) -> Result<(), ServeError> {
    check_auth_exposure(api.auth_enabled(), address, options)
}

/// [`check_exposure`] before there is an [`Api`]: whether tokens are configured (`auth_enabled`)
/// is all it needs, so a server can refuse before it opens (and creates) its store.
pub fn check_auth_exposure(auth_enabled: bool, address: SocketAddr, options: &ServeOptions) -> Result<(), ServeError> {
    if !auth_enabled && !address.ip().is_loopback() && !options.insecure_no_auth {
        return Err(ServeError::NoAuthOnPublicAddress(address));
    }
    Ok(())
}

/// Serves the API on `listener` until `signal` completes, then shuts down gracefully: stops
/// accepting, ends long polls, lets in-flight requests finish (up to the grace period). The
/// caller closes the store afterwards, so everything acknowledged is on disk.
pub async fn serve(
    api: Api,
    listener: TcpListener,
    options: ServeOptions,
    signal: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    check_exposure(&api, local, &options)?;
    if !api.auth_enabled() {
        tracing::warn!(%local, "auth is off: no tokens are configured");
    }
    let (stopping, stopping_rx) = watch::channel(false);
    let limits = Limits { request: options.request_timeout, body: options.body_read_timeout };
    let app = api.router_with(stopping_rx).layer(axum::middleware::from_fn_with_state(limits, within));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        .max_headers(HEADERS_MAX)
        .max_buf_size(HEAD_BYTES_MAX);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                    app.clone().oneshot(request)
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(ApiParseErrors::new(stream)), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            () = &mut signal => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stopping.send(true);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every connection is closed"),
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace = ?options.shutdown_grace, "requests still running after the grace period were cut");
        }
    }
    Ok(())
}

/// How long a request, and its body, may take.
#[derive(Clone, Copy)]
struct Limits {
    request: Duration,
    body: Duration,
}

/// Runs the request, or answers 408 `request_timeout` in the API's format once it has run for
/// the request limit; its body must have arrived within the body limit (see `body`).
async fn within(State(limits): State<Limits>, mut request: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    request.extensions_mut().insert(BodyDeadline { at: started + limits.body, limit: limits.body });
    match tokio::time::timeout_at(started + limits.request, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(limits.request).into_response(),
    }
}
