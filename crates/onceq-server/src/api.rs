//! [`Api`]: the API over a store, before it is served.

use std::sync::Arc;

use axum::Router;
use onceq_core::{IdempotencyStore, Inspect, Store};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::body::{BodyBudget, BODY_MEMORY_BYTES_DEFAULT};
use crate::state::{AppState, REQUEST_BODY_BYTES_MAX};
use crate::{metrics, preauth, routes};

/// The API over a store: what to serve, before it is served.
#[derive(Clone)]
pub struct Api {
    store: Arc<dyn Store>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// The store's bounded reads, for the dashboard's job lists.
    inspect: Option<Arc<dyn Inspect>>,
    auth: Auth,
    body_memory: usize,
}

impl Api {
    /// The API over `store`, with auth off and no idempotency store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Api { store, idempotency: None, inspect: None, auth: Auth::disabled(), body_memory: BODY_MEMORY_BYTES_DEFAULT }
    }

    /// Serves the idempotency endpoints from `idempotency`.
    pub fn idempotency(mut self, idempotency: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// Lets the dashboard list jobs by state and find them by dedup id through `inspect` (the
    /// same store as [`Api::new`]'s, seen through its [`Inspect`] capability).
    pub fn inspect(mut self, inspect: Arc<dyn Inspect>) -> Self {
        self.inspect = Some(inspect);
        self
    }

    /// Requires these tokens.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Lets request bodies being read take at most `bytes` of memory at once (default
    /// [`BODY_MEMORY_BYTES_DEFAULT`]): a body that finds too little left is answered 503
    /// `unavailable`. Each body holds its declared `Content-Length`, or the largest body size
    /// when it declares none, from before it is read until it is parsed.
    pub fn body_memory(mut self, bytes: usize) -> Self {
        self.body_memory = bytes.max(1);
        self
    }

    /// Whether tokens are configured.
    pub fn auth_enabled(&self) -> bool {
        self.auth.enabled()
    }

    /// The router of every endpoint, with a body limit. Serve it with `axum::serve` (tests,
    /// embedding) or [`serve`] (timeouts and graceful shutdown).
    pub fn router(self) -> Router {
        let (_, shutdown) = watch::channel(false);
        self.router_with(shutdown)
    }

    pub(crate) fn router_with(self, shutdown: watch::Receiver<bool>) -> Router {
        let state = AppState {
            store: self.store,
            idempotency: self.idempotency,
            auth: self.auth,
            metrics: metrics::handle(),
            shutdown,
        };
        let ui = crate::ui::routes(state.clone(), self.inspect);
        let routes = routes::routes()
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), preauth::before_the_body))
            .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
            .layer(axum::Extension(BodyBudget::new(self.body_memory)));
        // Debug builds (tests among them) hold every response to the OpenAPI document.
        #[cfg(debug_assertions)]
        let routes = routes.layer(axum::middleware::from_fn(crate::contract::check));
        // The dashboard is HTML outside the OpenAPI document: merged after the document's check.
        routes.with_state(state).merge(ui)
    }
}
