//! Mapping PostgreSQL and sqlx failures onto the seam's portable [`Error`] kinds, and the one
//! retry the store does on its own (a statement rolled back by a deadlock or a serialization
//! failure, which changed nothing and may simply run again).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::Error;

/// How many times a statement that PostgreSQL rolled back (deadlock, serialization failure)
/// is run before the failure is reported.
const ROLLED_BACK_TRIES_MAX: u32 = 4;

/// How long after a connection failed every pooled connection is pinged before use, however
/// briefly it was idle: the failure may have been a restart or failover that cut them all.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// Where the store connects, for messages (host, port and database, never the password), and
/// when a connection to it last failed.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    /// Until when pooled connections are suspect (see [`SUSPECT_FOR`]); `None` if none failed.
    suspect_until: Arc<Mutex<Option<Instant>>>,
}

impl Target {
    pub(crate) fn of(options: &sqlx::postgres::PgConnectOptions) -> Self {
        let database = options.get_database().unwrap_or("(default database)");
        Target {
            name: format!("{}:{}/{database}", options.get_host(), options.get_port()),
            suspect_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether a connection failed within the last [`SUSPECT_FOR`].
    pub(crate) fn suspect(&self) -> bool {
        let until = *self.suspect_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Notes that a connection to the database failed: its connections are suspect from now.
    pub(crate) fn connection_failed(&self) {
        *self.suspect_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + SUSPECT_FOR);
    }
}

/// SQLSTATE classes and codes that mean "the server cannot serve now": connection exceptions
/// (08), operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
/// now), too many connections (53300), and a server running out of resources (53).
pub(crate) fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Marks the message of an error from a transaction PostgreSQL rolled back (deadlock,
/// serialization failure), for [`rolled_back_error`].
const ROLLED_BACK_MARK: &str = "rolled back: SQLSTATE";

/// Whether `error` came from a transaction PostgreSQL rolled back for a deadlock or a
/// serialization failure ([`map`] wrote it): nothing of it applied, and running the whole
/// transaction again may succeed.
pub(crate) fn rolled_back_error(error: &Error) -> bool {
    matches!(error, Error::Unavailable(m) if m.contains(ROLLED_BACK_MARK))
}

/// Whether PostgreSQL rolled the statement back in a way that running it again may cure.
fn rolled_back(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// Maps a sqlx error met while `context` onto the seam's kinds.
pub(crate) fn map(target: &Target, context: &str, error: sqlx::Error) -> Error {
    let connection_lost = match &error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    };
    if connection_lost {
        target.connection_failed();
    }
    let target = &target.name;
    match error {
        sqlx::Error::PoolTimedOut => Error::Unavailable(format!(
            "{context}: no PostgreSQL connection could be had in time from {target}; the server may be down, \
             unreachable or overloaded (check that it is running and accepting connections, or raise the pool size)"
        )),
        sqlx::Error::PoolClosed => Error::Unavailable(format!("{context}: the store is closed")),
        sqlx::Error::Io(e) => Error::Unavailable(format!(
            "{context}: the connection to PostgreSQL at {target} failed ({e}); check that the server is running \
             and reachable. The request may or may not have been applied"
        )),
        sqlx::Error::Tls(e) => Error::Unavailable(format!("{context}: TLS with PostgreSQL at {target} failed ({e})")),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if unavailable_code(&code) {
                Error::Unavailable(format!(
                    "{context}: PostgreSQL at {target} cannot serve now ({}, SQLSTATE {code}); retry later",
                    db.message()
                ))
            } else if code == "40P01" || code == "40001" {
                Error::Unavailable(format!(
                    "{context}: PostgreSQL rolled the transaction back ({}, {ROLLED_BACK_MARK} {code}); nothing of it \
                     applied, retry",
                    db.message()
                ))
            } else if code == "XX001" || code == "XX002" {
                Error::Corrupt(format!(
                    "{context}: PostgreSQL at {target} reports damaged data ({}, SQLSTATE {code}); restore the \
                     table or index from a backup, or REINDEX a damaged index",
                    db.message()
                ))
            } else if code == "22021" || code == "22P05" {
                Error::invalid(format!(
                    "{context}: a text contains a character PostgreSQL cannot store ({})",
                    db.message()
                ))
            } else {
                Error::Storage(format!("{context}: PostgreSQL error {code}: {}", db.message()))
            }
        }
        other => Error::Storage(format!("{context}: {other}")),
    }
}

/// Runs `attempt` again while PostgreSQL rolls it back for a deadlock or a serialization failure
/// (each attempt must be one statement, or a whole transaction, so that a rolled-back attempt
/// left nothing behind); maps the final failure.
pub(crate) async fn retrying<T, F, Fut>(target: &Target, context: &str, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if rolled_back(&error) && tries < ROLLED_BACK_TRIES_MAX => {
                tracing::debug!(%error, context, tries, "statement rolled back by PostgreSQL; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(tries) * 5)).await;
            }
            Err(error) => return Err(map(target, context, error)),
        }
    }
}
