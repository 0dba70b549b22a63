//! `onceq doctor`, `onceq backup` and `onceq restore`: the embedded store's data directory, checked,
//! copied while it serves, and put back (`onceq_sqlite::maintenance`). They work on the directory
//! itself, on the server's machine: doctor and restore need the store stopped (they take its
//! lock), backup does not.

use std::path::PathBuf;

use onceq_core::Error;
use onceq_sqlite::maintenance;

use crate::error::CliError;

/// Options of `onceq doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The data directory of a stopped embedded store (`onceq serve --data-dir`).
    pub data_dir: PathBuf,
}

/// Options of `onceq backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The data directory of the embedded store, serving or not [default: ./onceq-data].
    #[arg(long, env = "ONCEQ_DATA_DIR", default_value = crate::serve::DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// The backup file to write; it must not exist.
    #[arg(long)]
    pub to: PathBuf,
}

/// Options of `onceq restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// A backup file written by `onceq backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into; its store must be stopped [default: ./onceq-data].
    #[arg(long, env = "ONCEQ_DATA_DIR", default_value = crate::serve::DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// Replace the store the directory holds (everything in it is lost).
    #[arg(long)]
    pub replace: bool,
}

/// A failure of the data file as the command's failure: bad arguments (2) or a failure (1).
fn failure(error: Error) -> CliError {
    match error {
        Error::InvalidRequest(message) => CliError::Usage(message),
        other => CliError::Failed(other.detail()),
    }
}

/// Checks a stopped store: exit 0 when sound, 1 with what is wrong.
pub fn doctor(args: &DoctorArgs) -> Result<(), CliError> {
    let report = maintenance::check(&args.data_dir).map_err(failure)?;
    outln!("file            {}", report.path.display());
    outln!("schema version  {}", report.schema_version);
    outln!("size            {} bytes", report.bytes);
    outln!("queues          {}", report.queues);
    outln!("jobs            {}", report.jobs);
    if report.sound() {
        outln!("integrity       ok");
        return Ok(());
    }
    outln!("integrity       DAMAGED ({} problem(s) found):", report.problems.len());
    for problem in &report.problems {
        outln!("  {problem}");
    }
    Err(CliError::Failed(format!(
        "{} is damaged: restore it from a backup (onceq restore --from FILE --data-dir {} --replace)",
        report.path.display(),
        args.data_dir.display()
    )))
}

/// Copies the store to a new file, while it may be serving.
pub fn backup(args: &BackupArgs) -> Result<(), CliError> {
    let report = maintenance::backup(&args.data_dir, &args.to).map_err(failure)?;
    outln!(
        "backed up {} to {} ({} bytes, {} jobs)",
        args.data_dir.display(),
        report.path.display(),
        report.bytes,
        report.jobs
    );
    Ok(())
}

/// Puts a backup in place as the store of a stopped server's data directory.
pub fn restore(args: &RestoreArgs) -> Result<(), CliError> {
    let report = maintenance::restore(&args.from, &args.data_dir, args.replace).map_err(failure)?;
    outln!(
        "restored {} into {} ({} queues, {} jobs, integrity ok)",
        args.from.display(),
        args.data_dir.display(),
        report.queues,
        report.jobs
    );
    Ok(())
}
