//! Targets: what a run drives, and the ledger that goes with it.
//!
//! - embedded: a [`SqliteStore`] opened in-process on a data directory (a temporary one unless
//!   given); its own idempotency store; a SQLite ledger.
//! - server: an `onceq serve` reached through [`onceq_client::Client`] (store and idempotency
//!   store over HTTP); a SQLite ledger. With [`TargetSpec::ManagedServer`] verify starts the
//!   server itself (the `onceq` binary, on a free port, with a temporary data directory), and
//!   the `server-kill` fault kills it with SIGKILL and starts it again on the same port and
//!   data directory.
//! - PostgreSQL: a [`PgStore`] on a schema of its own (a fresh one, created and dropped, unless
//!   one is named); its idempotency store; the ledger is a table in that schema. Its connections
//!   carry an `application_name` unique to the run, so that `pg-drop` terminates only them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use onceq_client::Client;
use onceq_core::{Error, IdempotencyStore, Result, Store};
use onceq_postgres::{PgOptions, PgStore};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::faults::TargetKind;
use crate::ledger::{Ledger, PgLedger, SqliteLedger};

/// What `onceq serve` prints once it listens; the address follows.
const LISTENING_PREFIX: &str = "onceq listening on http://";
/// Longest wait for a managed server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client call may take before its outcome is unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pooled PostgreSQL connections of the store (workers run many jobs at once).
const PG_POOL_SIZE: u32 = 24;

/// Which target to drive.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// The embedded store in-process; `None`: a temporary data directory.
    Embedded {
        /// Data directory.
        data_dir: Option<PathBuf>,
    },
    /// A running server.
    Server {
        /// Its base URL.
        url: String,
        /// Its bearer token, when auth is on (needs produce, consume and admin on `verify.*`).
        token: Option<String>,
    },
    /// A server verify starts, and may kill and restart.
    ManagedServer {
        /// The `onceq` binary.
        binary: PathBuf,
    },
    /// PostgreSQL directly.
    Postgres {
        /// The database URL.
        url: String,
        /// The schema; `None`: a fresh one, dropped at the end unless `keep_schema`.
        schema: Option<String>,
        /// Keep a fresh schema at the end.
        keep_schema: bool,
    },
}

/// Where the ledger of a non-PostgreSQL target lives.
#[derive(Debug, Clone, Default)]
pub struct LedgerSpec {
    /// The SQLite ledger file; `None`: in a temporary directory.
    pub path: Option<PathBuf>,
}

/// An opened target.
pub struct Target {
    /// The kind, for fault applicability.
    pub kind: TargetKind,
    /// The seam.
    pub store: Arc<dyn Store>,
    /// The target's idempotency store.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// The PostgreSQL store, for transactional effects.
    pub postgres: Option<PgStore>,
    /// The managed server process.
    pub managed: Option<Arc<ManagedServer>>,
    /// Where effects go.
    pub ledger: Ledger,
    /// Said in the report: what was driven.
    pub description: String,
    /// The embedded store, to close at the end.
    embedded: Option<SqliteStore>,
    /// The `application_name` of this run's PostgreSQL connections.
    pg_application: Option<String>,
    /// The database URL and the fresh schema to drop at the end.
    pg_drop_schema: Option<(String, String)>,
    /// Temporary directories, removed when the target goes.
    _temp: Vec<tempfile::TempDir>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("kind", &self.kind).field("description", &self.description).finish()
    }
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| Error::Storage(format!("cannot make a temporary directory: {e}")))
}

fn sqlite_ledger(spec: &LedgerSpec, temp: &mut Vec<tempfile::TempDir>) -> Result<Ledger> {
    let path = match &spec.path {
        Some(path) => path.clone(),
        None => {
            let dir = temp_dir("onceq-verify-ledger")?;
            let path = dir.path().join("ledger.db");
            temp.push(dir);
            path
        }
    };
    Ok(Ledger::Sqlite(SqliteLedger::open(&path)?))
}

/// A schema name no other run uses.
fn fresh_schema() -> String {
    format!("onceq_verify_{}_{:08x}", std::process::id(), rand::random::<u32>())
}

/// `url` with `application_name` set (added to its query).
fn with_application_name(url: &str, name: &str) -> Result<String> {
    if url.contains("application_name=") {
        return Err(Error::invalid(
            "the PostgreSQL URL sets application_name; verify sets its own to find its connections for pg-drop",
        ));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}application_name={name}"))
}

impl Target {
    /// Opens the target (starting the managed server, creating the schema...).
    pub async fn open(spec: &TargetSpec, ledger: &LedgerSpec) -> Result<Target> {
        let mut temp = Vec::new();
        match spec {
            TargetSpec::Embedded { data_dir } => {
                let dir = match data_dir {
                    Some(dir) => dir.clone(),
                    None => {
                        let t = temp_dir("onceq-verify-data")?;
                        let dir = t.path().to_owned();
                        temp.push(t);
                        dir
                    }
                };
                let store = SqliteStore::open(SqliteOptions::new(&dir))?;
                let shared = Arc::new(store.clone());
                let ledger = sqlite_ledger(ledger, &mut temp)?;
                Ok(Target {
                    kind: TargetKind::Embedded,
                    store: shared.clone(),
                    idempotency: shared,
                    postgres: None,
                    managed: None,
                    ledger,
                    description: format!("embedded store in {}", dir.display()),
                    embedded: Some(store),
                    pg_application: None,
                    pg_drop_schema: None,
                    _temp: temp,
                })
            }
            TargetSpec::Server { url, token } => {
                let client = Client::builder(url.clone()).token(token.clone()).timeout(CLIENT_TIMEOUT).build()?;
                let shared = Arc::new(client);
                let ledger = sqlite_ledger(ledger, &mut temp)?;
                Ok(Target {
                    kind: TargetKind::Server,
                    store: shared.clone(),
                    idempotency: shared,
                    postgres: None,
                    managed: None,
                    ledger,
                    description: format!("server at {url}"),
                    embedded: None,
                    pg_application: None,
                    pg_drop_schema: None,
                    _temp: temp,
                })
            }
            TargetSpec::ManagedServer { binary } => {
                let dir = temp_dir("onceq-verify-server")?;
                let server = ManagedServer::start(binary.clone(), dir.path().to_owned(), ServeStore::Embedded).await?;
                let url = server.url();
                temp.push(dir);
                let client = Client::builder(url.clone()).timeout(CLIENT_TIMEOUT).build()?;
                let shared = Arc::new(client);
                let ledger = sqlite_ledger(ledger, &mut temp)?;
                Ok(Target {
                    kind: TargetKind::ManagedServer,
                    store: shared.clone(),
                    idempotency: shared,
                    postgres: None,
                    managed: Some(Arc::new(server)),
                    ledger,
                    description: format!("managed onceq serve at {url} (embedded store)"),
                    embedded: None,
                    pg_application: None,
                    pg_drop_schema: None,
                    _temp: temp,
                })
            }
            TargetSpec::Postgres { url, schema, keep_schema } => {
                let application = format!("onceq-verify-{}-{:08x}", std::process::id(), rand::random::<u32>());
                let (schema, fresh) = match schema {
                    Some(schema) => (schema.clone(), false),
                    None => (fresh_schema(), true),
                };
                let app_url = with_application_name(url, &application)?;
                let options = PgOptions::new(app_url).schema(&schema).pool_size(PG_POOL_SIZE);
                let store = PgStore::connect(options).await?;
                let ledger = Ledger::Postgres(PgLedger::open(store.pool().clone(), &schema).await?);
                let shared = Arc::new(store.clone());
                Ok(Target {
                    kind: TargetKind::Postgres,
                    store: shared.clone(),
                    idempotency: shared,
                    postgres: Some(store),
                    managed: None,
                    ledger,
                    description: format!(
                        "PostgreSQL, schema {schema}{}",
                        if fresh && !keep_schema { " (fresh, dropped at the end)" } else { "" }
                    ),
                    embedded: None,
                    pg_application: Some(application),
                    pg_drop_schema: (fresh && !keep_schema).then(|| (url.clone(), schema)),
                    _temp: temp,
                })
            }
        }
    }

    /// The `application_name` of this run's PostgreSQL connections.
    pub fn pg_application(&self) -> Option<&str> {
        self.pg_application.as_deref()
    }

    /// Closes the store, stops the managed server, drops a fresh schema.
    pub async fn close(self) -> Result<()> {
        if let Some(store) = &self.embedded {
            store.close().await;
        }
        if let Some(server) = &self.managed {
            server.stop().await;
        }
        if let Some(store) = &self.postgres {
            store.close().await;
        }
        if let Some((url, schema)) = &self.pg_drop_schema {
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .map_err(|e| Error::Unavailable(format!("dropping schema {schema}: {e}")))?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&mut conn)
                .await
                .map_err(|e| Error::Storage(format!("dropping schema {schema}: {e}")))?;
            let _ = conn.close().await;
        }
        Ok(())
    }
}

/// The store a managed `onceq serve` runs on.
#[derive(Debug, Clone)]
pub enum ServeStore {
    /// The embedded store in `<dir>/data`, fsync durability.
    Embedded,
    /// PostgreSQL at this URL, in this schema (several servers may share it).
    Postgres {
        /// The database URL.
        url: String,
        /// The schema.
        schema: String,
    },
}

/// An `onceq serve` process verify started, its stderr in `dir`: the embedded store in
/// `dir/data` or PostgreSQL ([`ServeStore`]), on one port for its whole life (restarts reuse it,
/// so clients keep their URL).
pub struct ManagedServer {
    binary: PathBuf,
    dir: PathBuf,
    store: ServeStore,
    port: u16,
    child: Mutex<Option<Child>>,
    /// Times started, naming the stderr logs.
    starts: std::sync::atomic::AtomicU32,
}

impl ManagedServer {
    /// Starts `binary serve` on `store`, listening on a free loopback port, its logs in `dir`.
    pub async fn start(binary: PathBuf, dir: PathBuf, store: ServeStore) -> Result<ManagedServer> {
        let server = ManagedServer {
            binary,
            dir,
            store,
            port: 0,
            child: Mutex::new(None),
            starts: std::sync::atomic::AtomicU32::new(0),
        };
        let port = server.spawn(0).await?;
        Ok(ManagedServer { port, ..server })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process listening on `port` (0: any); returns the port.
    async fn spawn(&self, port: u16) -> Result<u16> {
        let n = self.starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let stderr_path = self.dir.join(format!("stderr-{n}.log"));
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", stderr_path.display())))?;
        let mut command = Command::new(&self.binary);
        command.arg("serve");
        match &self.store {
            ServeStore::Embedded => {
                command.arg("--store").arg("embedded").arg("--data-dir").arg(self.dir.join("data"));
                command.arg("--durability").arg("fsync");
            }
            ServeStore::Postgres { url, schema } => {
                command.arg("--store").arg(url).arg("--pg-schema").arg(schema);
            }
        }
        command.arg("--listen").arg(format!("127.0.0.1:{port}"));
        for var in
            ["ONCEQ_CONFIG", "ONCEQ_STORE", "ONCEQ_PG_SCHEMA", "ONCEQ_DATA_DIR", "ONCEQ_LISTEN", "ONCEQ_PAGE_CACHE_MIB"]
        {
            command.env_remove(var);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Storage(format!("cannot start {} serve: {e}", self.binary.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Storage("no stdout from onceq serve".into()))?;
        let (line_tx, line_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut line_tx = Some(line_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(LISTENING_PREFIX) {
                    if let Some(tx) = line_tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let line = match tokio::time::timeout(START_TIMEOUT, line_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = child.wait().await;
                return Err(Error::Storage(format!("onceq serve exited ({status:?}) before listening:\n{}", log())));
            }
            Err(_) => return Err(Error::Storage(format!("onceq serve did not listen within {START_TIMEOUT:?}"))),
        };
        let addr = line
            .strip_prefix(LISTENING_PREFIX)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .ok_or_else(|| Error::Storage(format!("cannot read the address in {line:?}")))?;
        *self.child.lock().await = Some(child);
        Ok(addr.port())
    }

    /// `kill -9`, and reaps the process.
    pub async fn kill(&self) -> Result<()> {
        if let Some(mut child) = self.child.lock().await.take() {
            child.kill().await.map_err(|e| Error::Storage(format!("kill -9 of onceq serve: {e}")))?;
        }
        Ok(())
    }

    /// Starts it again on the same port and data directory, retrying while the port is busy.
    pub async fn restart(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match self.spawn(self.port).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Storage("onceq serve did not restart".into())))
    }

    /// Stops it for good (SIGKILL: verify has read everything it needs by then).
    pub async fn stop(&self) {
        let _ = self.kill().await;
    }
}

/// Terminates every PostgreSQL connection named `application` but the one asking (the
/// `pg-drop` fault); returns how many.
pub async fn pg_terminate(store: &PgStore, application: &str) -> Result<u64> {
    let mut conn = store.pool().acquire().await.map_err(|e| Error::Unavailable(e.to_string()))?;
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
    )
    .bind(application)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::Unavailable(e.to_string()))?;
    Ok(killed.into_iter().filter(|(k,)| *k).count() as u64)
}
