//! What an operator does to a data directory beside (or instead of) running the store: check it
//! ([`check`], `onceq doctor`), copy it while it serves ([`backup`], `onceq backup`), and put a copy
//! back ([`restore`], `onceq restore`).
//!
//! A backup is SQLite's `VACUUM INTO` from a read-only connection: one read transaction, so the
//! copy is the store as of one commit, and, in WAL mode, the writer goes on committing meanwhile
//! (a reader never blocks it). Every commit acknowledged before the backup began is in the copy:
//! an acknowledged commit is committed (and, with `fsync`, synced) before its reply leaves, and a
//! read transaction that starts later sees it. The copy is written under a temporary name, synced
//! and renamed into place, so a backup file that exists is whole.

use std::fs::File;
use std::path::{Path, PathBuf};

use onceq_core::{Error, Result};
use rusqlite::{Connection, OpenFlags};

use crate::schema::{APPLICATION_ID, SCHEMA_VERSION};
use crate::{lock_data_dir, DATA_FILE_NAME};

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The data file checked.
    pub path: PathBuf,
    /// Its schema version.
    pub schema_version: i64,
    /// Its size, in bytes.
    pub bytes: u64,
    /// Queues and jobs it holds (when it could be read).
    pub queues: u64,
    /// Jobs, in every state.
    pub jobs: u64,
    /// What SQLite's `PRAGMA integrity_check` reported wrong; empty when the file is sound.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether the file is sound.
    pub fn sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size, in bytes.
    pub bytes: u64,
    /// Jobs in it, in every state.
    pub jobs: u64,
}

/// The most problems [`check`] lists (SQLite's own default for `integrity_check`).
pub const CHECK_PROBLEMS_MAX: u32 = crate::schema::INTEGRITY_PROBLEMS_MAX;

/// Checks the store in `data_dir`, which must not be in use (its lock is taken for the check): the
/// file is an onceq data file of a version this build reads, and SQLite's full integrity check
/// (every page, every index against its table) finds nothing wrong. An error means the file
/// could not be checked at all (missing, in use, foreign, newer); a damaged file is a report whose
/// `problems` say what is wrong.
pub fn check(data_dir: &Path) -> Result<CheckReport> {
    let path = data_dir.join(DATA_FILE_NAME);
    if !path.is_file() {
        return Err(Error::invalid(format!("{} holds no onceq data file ({DATA_FILE_NAME})", data_dir.display())));
    }
    let _lock = lock_data_dir(data_dir)?;
    let conn = open_read_only(&path)?;
    let schema_version = ours(&conn, &path)?;
    let problems = crate::schema::integrity_problems(&conn, &path)?;
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| u64::try_from(n).unwrap_or(0));
    // A damaged file may not count; its problems already say why.
    let queues = count("SELECT count(*) FROM queues").unwrap_or(0);
    let jobs = count("SELECT count(*) FROM jobs").unwrap_or(0);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(CheckReport { path, schema_version, bytes, queues, jobs, problems })
}

/// Copies the store in `data_dir` to the new file `to`, while the store may be serving (a read
/// transaction: the writer is never paused). Refuses a `to` that exists. The copy is checked
/// (an onceq data file, SQLite's quick check) before it is renamed into place.
pub fn backup(data_dir: &Path, to: &Path) -> Result<BackupReport> {
    let path = data_dir.join(DATA_FILE_NAME);
    if !path.is_file() {
        return Err(Error::invalid(format!("{} holds no onceq data file ({DATA_FILE_NAME})", data_dir.display())));
    }
    if to.exists() {
        return Err(Error::invalid(format!("{} exists; a backup is written to a new file", to.display())));
    }
    let partial = with_suffix(to, ".partial");
    let _ = std::fs::remove_file(&partial);
    let failed =
        |what: &str, e: &dyn std::fmt::Display| Error::Storage(format!("backing up to {}: {what}: {e}", to.display()));
    {
        let conn = open_read_only(&path)?;
        ours(&conn, &path)?;
        let target = partial.to_str().ok_or_else(|| Error::invalid(format!("{} is not UTF-8", partial.display())))?;
        conn.execute("VACUUM INTO ?1", [target]).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            crate::schema::sqlite_error("copying the store", e)
        })?;
    }
    let jobs = {
        let copy = open_read_only(&partial)?;
        let quick: String =
            copy.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| failed("checking the copy", &e))?;
        if quick != "ok" {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Corrupt(format!("the copy of {} does not check out: {quick}", path.display())));
        }
        let jobs: i64 =
            copy.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)).map_err(|e| failed("counting", &e))?;
        u64::try_from(jobs).unwrap_or(0)
    };
    File::open(&partial).and_then(|f| f.sync_all()).map_err(|e| failed("syncing", &e))?;
    std::fs::rename(&partial, to).map_err(|e| failed("renaming it into place", &e))?;
    sync_dir_of(to).map_err(|e| failed("syncing its directory", &e))?;
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport { path: to.to_owned(), bytes, jobs })
}

/// Puts the backup `from` in place as the store of `data_dir`, which must not be in use (its lock
/// is held throughout). Refuses a `from` that is not a sound onceq data file, and a directory that
/// already holds a store unless `replace`. The file is copied under a temporary name, synced, and
/// renamed into place; the old store's write-ahead log goes first, so nothing of it is applied to
/// the restored file.
pub fn restore(from: &Path, data_dir: &Path, replace: bool) -> Result<CheckReport> {
    if !from.is_file() {
        return Err(Error::invalid(format!("{} is not a file", from.display())));
    }
    {
        let conn = open_read_only(from)?;
        ours(&conn, from)?;
        let problems = crate::schema::integrity_problems(&conn, from)?;
        if !problems.is_empty() {
            return Err(Error::Corrupt(format!(
                "{} is damaged, not restored: {}",
                from.display(),
                problems.join("; ")
            )));
        }
    }
    let lock = lock_data_dir(data_dir)?;
    let path = data_dir.join(DATA_FILE_NAME);
    if path.exists() && !replace {
        return Err(Error::invalid(format!(
            "{} already holds a store; restoring replaces it and everything in it: say so with --replace",
            data_dir.display()
        )));
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::Storage(format!("restoring {} into {}: {what}: {e}", from.display(), data_dir.display()))
    };
    let restoring = with_suffix(&path, ".restoring");
    std::fs::copy(from, &restoring).map_err(|e| failed("copying", &e))?;
    File::open(&restoring).and_then(|f| f.sync_all()).map_err(|e| failed("syncing", &e))?;
    for suffix in ["-wal", "-shm"] {
        match std::fs::remove_file(with_suffix(&path, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("removing the old write-ahead log", &e)),
        }
    }
    std::fs::rename(&restoring, &path).map_err(|e| failed("renaming it into place", &e))?;
    sync_dir_of(&path).map_err(|e| failed("syncing the data directory", &e))?;
    drop(lock);
    check(data_dir)
}

/// A read-only connection to the data file at `path`.
fn open_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;").map_err(|e| crate::schema::sqlite_error("opening", e))?;
    Ok(conn)
}

/// Checks that `conn` holds an onceq data file of a version this build reads; its version.
fn ours(conn: &Connection, path: &Path) -> Result<i64> {
    let read = |pragma: &str| {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0))
            .map_err(|e| crate::schema::sqlite_error(&format!("reading {}", path.display()), e))
    };
    if read("application_id")? != i64::from(APPLICATION_ID) {
        return Err(Error::Storage(format!("{} is not an onceq data file", path.display())));
    }
    let version = read("user_version")?;
    if version > SCHEMA_VERSION {
        return Err(Error::Storage(format!(
            "{} was written by a newer onceq (schema version {version}; this build reads up to {SCHEMA_VERSION})",
            path.display()
        )));
    }
    Ok(version)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all())
}
