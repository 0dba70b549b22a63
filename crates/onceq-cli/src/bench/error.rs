//! Why a bench run stops.

/// Why a bench run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The store under test failed.
    #[error("store: {0}")]
    Store(#[from] onceq_core::Error),
    /// The raw SQLite floor failed.
    #[error("raw SQLite floor: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system or the runtime failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A scenario did not do the work it was meant to (a lost job, a failed ack): its figure
    /// would be meaningless, so the run stops.
    #[error("check failed: {0}")]
    Check(String),
    /// The pgbench floor could not run or its output could not be read.
    #[error("pgbench floor: {0}")]
    Floor(String),
    /// The options make no sense.
    #[error("invalid options: {0}")]
    Options(String),
}
