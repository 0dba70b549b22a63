//! The store's kept connections: checked out of the sqlx pool once, used for statement after
//! statement while the store is busy.
//!
//! sqlx's pool tests every connection that comes back to it: dropping a `PoolConnection` spawns
//! a task that sends `Sync` and waits for `ReadyForQuery` before the connection is free again
//! (`PoolConnection::return_to_pool`, sqlx 0.8; no option turns it off). Every statement run
//! with the pool as its executor therefore costs one more round trip, one more wake-up of a
//! PostgreSQL backend and one more tokio task. Where the client and the database share few
//! CPUs, that is CPU taken from the database on every call: on a 2-CPU machine, two runs each
//! of `onceq bench --store` put the batched enqueue at 79% and 88% of its pgbench floor with
//! it, 97% and 111% without, and the per-job enqueue at 87% and 82%, then 106% and 100%.
//!
//! So the store's own autocommit statements run on connections it keeps out of the pool
//! between them, in a short last-in-first-out list, and a connection goes back to sqlx, which
//! tests it, when:
//! - a statement on it failed other than with a database error or a missing row, failed with
//!   a database error that ends the session (an administrator's terminate, a shutdown), or was
//!   dropped half-way (a cancelled call): it may be broken or mid-message, and sqlx's test
//!   closes it if so;
//! - it sat unused for [`KEEP_IDLE`]: a background timer, armed only while connections are
//!   kept, hands them back, so that a caller of [`PgStore::pool`] waits on a connection idle
//!   here for that long at most, and sqlx's idle timeout and `before_acquire` ping apply again;
//! - keeping it would leave the pool with no connection free (idle, or room to open one);
//! - the store opens a transaction ([`PgStore::transaction`], deleting a queue): every kept
//!   connection goes back first, so that a transaction never waits on one (the transactional
//!   worker opens as many transactions as the pool holds, less one);
//! - it has been out of the pool for [`KEEP_FOR`]: sqlx then applies its lifetime limit;
//! - a connection to the database failed lately (when the pool's `before_acquire` pings);
//! - the store closes, or someone closed its pool itself.
//!
//! At most as many connections are kept as the store's statements used at once, and never more
//! than the pool holds: this list is only where checked-out connections wait between
//! statements, not a second pool.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::error::Target;

/// How long a connection stays out of sqlx's pool before it goes back at its next release, so
/// that the pool's lifetime limit still applies to it.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(60);

/// How long a kept connection may sit unused before it goes back to sqlx's pool. A busy
/// store's statements follow each other within milliseconds; this bounds what a quiet one
/// keeps from other callers of its pool.
pub(crate) const KEEP_IDLE: Duration = Duration::from_millis(50);

/// The connections kept between statements (see the module docs).
pub(crate) struct Conns {
    state: Mutex<State>,
    /// The store's pool (a handle on it), where connections come from and go back to.
    pool: PgPool,
    /// The store's database, to know whether its connections are suspect.
    target: Target,
}

struct State {
    /// In order of release (the longest unused first). `None` once the store closed: nothing
    /// is kept from then on.
    kept: Option<Vec<Kept>>,
    /// Whether the timer that hands back unused connections is running.
    timer: bool,
}

impl Conns {
    /// Keeps connections of `pool`, which connects to `target`.
    pub(crate) fn new(pool: PgPool, target: Target) -> Self {
        Conns { state: Mutex::new(State { kept: Some(Vec::new()), timer: false }), pool, target }
    }
}

struct Kept {
    conn: PoolConnection<Postgres>,
    /// When it left sqlx's pool.
    out_since: Instant,
    /// When its last statement ended.
    idle_since: Instant,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives every kept connection back to sqlx's pool.
    fn give_back(&self) {
        let kept = self.lock().kept.as_mut().map(std::mem::take);
        drop(kept);
    }

    /// Gives every kept connection back to sqlx's pool, and keeps none from now on (the store
    /// is closing: its pool waits for every connection to come back).
    pub(crate) fn close(&self) {
        let kept = self.lock().kept.take();
        drop(kept);
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        let kept = self.lock().kept.take().unwrap_or_default();
        // Giving a connection back spawns a task on the current tokio runtime; without one (a
        // store dropped after its runtime) each is detached from the pool and its socket
        // dropped here instead.
        if tokio::runtime::Handle::try_current().is_err() {
            for kept in kept {
                drop(kept.conn.detach());
            }
        }
    }
}

/// Hands back each kept connection once it has sat unused for [`KEEP_IDLE`]; ends when none is
/// kept (the next one kept starts it again) or the store is gone.
async fn hand_back_idle(conns: Weak<Conns>) {
    /// Marks the timer stopped if the task ends other than by finding nothing kept (which
    /// marks it under the lock): dropped with its runtime, say. The next connection kept then
    /// starts a new one.
    struct Stopped {
        conns: Weak<Conns>,
        marked: bool,
    }
    impl Drop for Stopped {
        fn drop(&mut self) {
            if let (false, Some(conns)) = (self.marked, self.conns.upgrade()) {
                conns.lock().timer = false;
            }
        }
    }
    let mut stopped = Stopped { conns: conns.clone(), marked: false };
    let mut wake = tokio::time::Instant::now() + KEEP_IDLE;
    loop {
        tokio::time::sleep_until(wake).await;
        let Some(conns) = conns.upgrade() else { return };
        let mut state = conns.lock();
        let Some(kept) = state.kept.as_mut() else { return };
        // In order of release: the longest unused are at the front.
        let idle = kept.iter().take_while(|k| k.idle_since.elapsed() >= KEEP_IDLE).count();
        let idle: Vec<Kept> = kept.drain(..idle).collect();
        let next = kept.first().map(|k| k.idle_since + KEEP_IDLE);
        if next.is_none() {
            // Under the lock, so that a connection kept from now on starts a new timer.
            state.timer = false;
            stopped.marked = true;
        }
        drop(state);
        // Back to sqlx outside the lock (each spawns a task there).
        drop(idle);
        match next {
            Some(next) => wake = next.into(),
            None => return,
        }
    }
}

/// A connection checked out for one statement: [`Checkout::settle`] keeps it for the next one;
/// dropped unsettled (a cancelled call), it goes back to sqlx's pool, which tests it.
pub(crate) struct Checkout<'a> {
    conns: &'a Arc<Conns>,
    conn: PoolConnection<Postgres>,
    out_since: Instant,
}

impl Checkout<'_> {
    /// The connection, to run the statement on.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Ends the statement with `result`: keeps the connection for the next statement unless it
    /// must go back to sqlx's pool (see the module docs), and returns `result`.
    pub(crate) fn settle<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let Checkout { conns, conn, out_since } = self;
        let healthy = match &result {
            Ok(_) | Err(sqlx::Error::RowNotFound) => true,
            // Not an error that ends the session (a terminated backend, a shutdown).
            Err(sqlx::Error::Database(db)) => !db.code().is_some_and(|code| crate::error::unavailable_code(&code)),
            Err(_) => false,
        };
        let pool = &conns.pool;
        let idle_in_pool = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        let free_in_pool =
            idle_in_pool.saturating_add(pool.options().get_max_connections().saturating_sub(pool.size()));
        let keep = healthy
            && free_in_pool > 0
            && out_since.elapsed() < KEEP_FOR
            && !pool.is_closed()
            && !conns.target.suspect();
        if keep {
            let mut state = conns.lock();
            if let Some(kept) = state.kept.as_mut() {
                kept.push(Kept { conn, out_since, idle_since: Instant::now() });
                if !state.timer {
                    state.timer = true;
                    tokio::spawn(hand_back_idle(Arc::downgrade(conns)));
                }
                return result;
            }
        }
        // Otherwise `conn` goes back to sqlx's pool here, which tests it.
        result
    }
}

/// How long a request waits for a connection from sqlx's pool while the database is suspect (a
/// connection to it failed within the last few seconds, `error::Target::suspect`): with the
/// database down, requests fail with `Unavailable` (503) in about this long, not after the pool's
/// whole acquire timeout, which stays for a healthy database whose connections are all busy.
pub(crate) const SUSPECT_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(750);

impl Conns {
    /// A connection of sqlx's pool for a transaction (the kept ones go back first), waiting at
    /// most [`SUSPECT_ACQUIRE_TIMEOUT`] while the database is suspect.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        self.give_back();
        self.acquire_from_pool().await
    }

    /// `pool.acquire()`, bounded by [`SUSPECT_ACQUIRE_TIMEOUT`] while the database is suspect.
    async fn acquire_from_pool(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        if self.target.suspect() {
            tokio::time::timeout(SUSPECT_ACQUIRE_TIMEOUT, self.pool.acquire())
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        } else {
            let acquired = self.pool.acquire().await;
            // The pool waits out its whole acquire timeout both when every connection is busy and
            // when no new one can be opened (it retries a refused connection until then). Short of
            // its size, it was the latter: the database is unreachable.
            if matches!(acquired, Err(sqlx::Error::PoolTimedOut))
                && self.pool.size() < self.pool.options().get_max_connections()
            {
                self.target.connection_failed();
            }
            acquired
        }
    }

    /// A connection for one autocommit statement: the one kept last, or one from sqlx's pool.
    pub(crate) async fn checkout(self: &Arc<Self>) -> Result<Checkout<'_>, sqlx::Error> {
        let reuse = {
            let mut state = self.lock();
            let Some(kept) = state.kept.as_mut() else { return Err(sqlx::Error::PoolClosed) };
            if self.target.suspect() || self.pool.is_closed() {
                // Back to sqlx, whose `before_acquire` pings while the database is suspect (and
                // which refuses the acquire below if someone closed the pool itself).
                let suspect = std::mem::take(kept);
                drop(state);
                drop(suspect);
                None
            } else {
                kept.pop()
            }
        };
        if let Some(Kept { conn, out_since, .. }) = reuse {
            return Ok(Checkout { conns: self, conn, out_since });
        }
        let conn = self.acquire_from_pool().await?;
        Ok(Checkout { conns: self, conn, out_since: Instant::now() })
    }
}

/// Runs a sqlx query on one of the store's kept connections (see [`crate::conns`]):
/// `pooled!(store, query, fetch_all)` is `query.fetch_all(&pool)` without the round trip that
/// sqlx's pool adds to test the connection afterwards.
macro_rules! pooled {
    ($store:expr, $query:expr, $method:ident) => {{
        let (store, query) = ($store, $query);
        async move {
            let mut checkout = store.checkout().await?;
            let result = query.$method(checkout.conn()).await;
            checkout.settle(result)
        }
    }};
}
pub(crate) use pooled;
