//! [`CliError`]: a command's failure, and the exit code it maps to.

use std::process::ExitCode;

/// A command's failure, and the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed (exit code 1).
    #[error("{0}")]
    Failed(String),
    /// The server could not be reached, or said it cannot serve now (exit code 3): unlike a
    /// failure, trying again later may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
            CliError::Unavailable(_) => ExitCode::from(3),
        }
    }
}
