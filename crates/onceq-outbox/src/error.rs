//! The outbox's error type.

/// What went wrong while staging, migrating or relaying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The message breaks a rule or a limit ([`crate::limits`]); nothing was written.
    #[error("invalid outbox message: {0}")]
    InvalidMessage(String),
    /// A relay option, a schema name or an outbox name is not valid.
    #[error("invalid outbox options: {0}")]
    InvalidOptions(String),
    /// The database cannot be reached or cannot serve now; retrying later may succeed.
    #[error("outbox database unavailable: {0}")]
    Unavailable(String),
    /// The database failed, or holds tables the outbox cannot use (not the outbox's, or written
    /// by a newer version), or the outbox tables are missing (run the migration first).
    #[error("outbox storage error: {0}")]
    Storage(String),
    /// Another relay already serves this SQLite outbox (there is one relay per SQLite file).
    #[error("outbox busy: {0}")]
    Busy(String),
}

/// Result of an outbox operation.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// Maps a sqlx error met while `context` onto [`OutboxError`].
#[cfg(feature = "postgres")]
pub(crate) fn from_sqlx(context: &str, error: sqlx::Error) -> OutboxError {
    match error {
        sqlx::Error::PoolTimedOut => {
            OutboxError::Unavailable(format!("{context}: no PostgreSQL connection could be had in time"))
        }
        sqlx::Error::PoolClosed => OutboxError::Unavailable(format!("{context}: the connection pool is closed")),
        sqlx::Error::Io(e) => OutboxError::Unavailable(format!(
            "{context}: the connection to PostgreSQL failed ({e}); is the server running and reachable?"
        )),
        sqlx::Error::Tls(e) => OutboxError::Unavailable(format!("{context}: TLS with PostgreSQL failed ({e})")),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let unavailable = code.starts_with("08")
                || code.starts_with("53")
                || matches!(code.as_str(), "57P01" | "57P02" | "57P03");
            if unavailable {
                OutboxError::Unavailable(format!(
                    "{context}: PostgreSQL cannot serve now ({}, SQLSTATE {code})",
                    db.message()
                ))
            } else if code == "42P01" {
                OutboxError::Storage(format!(
                    "{context}: {} (SQLSTATE 42P01): the outbox tables are missing; run the outbox migration \
                     (PgOutbox::migrate) or start a relay on this schema first",
                    db.message()
                ))
            } else {
                OutboxError::Storage(format!("{context}: PostgreSQL error {code}: {}", db.message()))
            }
        }
        other => OutboxError::Storage(format!("{context}: {other}")),
    }
}

/// Maps a rusqlite error met while `context` onto [`OutboxError`].
#[cfg(feature = "sqlite")]
pub(crate) fn from_sqlite(context: &str, error: rusqlite::Error) -> OutboxError {
    use rusqlite::ErrorCode;
    match &error {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            OutboxError::Unavailable(format!("{context}: the SQLite database is busy ({error})"))
        }
        rusqlite::Error::SqliteFailure(_, Some(message)) if message.starts_with("no such table: onceq_outbox") => {
            OutboxError::Storage(format!(
                "{context}: {message}: the outbox tables are missing; run onceq_outbox::sqlite::migrate on this \
                 database first"
            ))
        }
        _ => OutboxError::Storage(format!("{context}: {error}")),
    }
}

/// `text` cut to [`crate::limits::ERROR_TEXT_BYTES_MAX`] at a character boundary.
pub(crate) fn truncate_error_text(text: &str) -> String {
    onceq_core::truncate_error_text(text)
}
