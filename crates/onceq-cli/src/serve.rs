//! `onceq serve`: the HTTP API over the embedded store.
//!
//! Settings come from flags, then their environment variables, then the config file, then the
//! defaults: the embedded store in `./onceq-data`, listen address `127.0.0.1:7700`, durability
//! `fsync`. With `--store postgres://...` the server uses PostgreSQL instead, and several servers
//! (and workers) may share one database.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use onceq_server::{Api, Auth, ServeOptions, TokenConfig};
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};
use serde::Deserialize;

use crate::error::CliError;

/// Default data directory, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "./onceq-data";
/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7700";
/// How long a PostgreSQL store waits for its first connection at start, unless told otherwise.
pub const PG_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;

/// Options of `onceq serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where jobs live: `embedded` (the default: SQLite in --data-dir) or a PostgreSQL URL
    /// (`postgres://user:password@host:port/database`), which several servers may share.
    #[arg(long, env = "ONCEQ_STORE")]
    pub store: Option<String>,
    /// PostgreSQL schema of onceq's tables [default: onceq].
    #[arg(long, env = "ONCEQ_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// Most PostgreSQL connections the server's statements use at once, 1 to 1000 [default:
    /// 10]; the server holds one more for LISTEN. Each server sharing a database opens its own.
    #[arg(long, env = "ONCEQ_PG_POOL_SIZE")]
    pub pg_pool_size: Option<u32>,
    /// How long a PostgreSQL store waits for its first connection at start before serve exits
    /// 3 (unavailable), in milliseconds, 1 to 600000 [default: 3000].
    #[arg(long, env = "ONCEQ_PG_CONNECT_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub pg_connect_timeout_ms: Option<u64>,
    /// Data directory of the embedded store [default: ./onceq-data].
    #[arg(long, env = "ONCEQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7700]; port 0 picks a free port.
    #[arg(long, env = "ONCEQ_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML config file: store, data_dir, listen, durability, page_cache_mib, body_memory_mib,
    /// pg_schema, pg_pool_size, pg_connect_timeout_ms, insecure_no_auth, and
    /// [[tokens]] (flags and environment variables win over it).
    #[arg(long, env = "ONCEQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Memory of the embedded store's writer page cache, in MiB, 1 to 65536 [default: 16]. A
    /// bigger one is not faster: SQLite walks the whole cache in many commits (see
    /// `onceq_sqlite::PAGE_CACHE_BYTES_DEFAULT`); pages it drops are read again from the
    /// operating system's file cache.
    #[arg(long, env = "ONCEQ_PAGE_CACHE_MIB", value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub page_cache_mib: Option<u64>,
    /// Memory that request bodies being read may take at once, in MiB, 16 to 65536 [default:
    /// 256, 16 bodies of the largest size]. Each body holds its Content-Length of it while it is
    /// read and parsed (16 MiB when it declares none); one that finds too little left gets 503.
    #[arg(long, env = "ONCEQ_BODY_MEMORY_MIB", value_parser = clap::value_parser!(u64).range(16..=65_536))]
    pub body_memory_mib: Option<u64>,
    /// Commit durability: fsync (survives power loss) or relaxed (survives a process crash).
    #[arg(long, env = "ONCEQ_DURABILITY", value_parser = ["fsync", "relaxed"])]
    pub durability: Option<String>,
    /// Run SQLite's full integrity check of the embedded store at start and refuse a damaged file
    /// (it reads the whole file: seconds per gigabyte).
    #[arg(long, env = "ONCEQ_VERIFY_ON_START")]
    pub verify_on_start: bool,
    /// Listen on a non-loopback address without any token configured.
    #[arg(long, env = "ONCEQ_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// `embedded` or a PostgreSQL URL.
    pub store: Option<String>,
    /// PostgreSQL schema.
    pub pg_schema: Option<String>,
    /// PostgreSQL pool size.
    pub pg_pool_size: Option<u32>,
    /// PostgreSQL connect timeout at start, ms.
    pub pg_connect_timeout_ms: Option<u64>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// `fsync` or `relaxed`.
    pub durability: Option<String>,
    /// The embedded store's writer page cache, MiB.
    pub page_cache_mib: Option<u64>,
    /// Memory of request bodies being read at once, MiB.
    pub body_memory_mib: Option<u64>,
    /// Check the embedded store's integrity at start.
    pub verify_on_start: Option<bool>,
    /// Allow a non-loopback address without tokens.
    pub insecure_no_auth: Option<bool>,
    /// Bearer tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| CliError::Usage(format!("config file {}: {e}", path.display())))
    }
}

/// What `onceq serve` runs with: its flags, their environment variables, the config file and
/// the defaults, in that order, resolved and checked. `onceq config check` prints it.
#[derive(Debug)]
pub struct Settings {
    /// `embedded` or a PostgreSQL URL.
    pub store: String,
    /// PostgreSQL schema.
    pub pg_schema: String,
    /// PostgreSQL pool size.
    pub pg_pool_size: u32,
    /// How long a PostgreSQL store waits for its first connection.
    pub pg_connect_timeout: std::time::Duration,
    /// The embedded store's data directory.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The embedded store's commit durability.
    pub durability: Durability,
    /// The embedded store's writer page cache.
    pub page_cache_bytes: u64,
    /// Memory that request bodies being read may take at once.
    pub body_memory_bytes: u64,
    /// Whether the embedded store's integrity is checked at start.
    pub verify_on_start: bool,
    /// Whether a non-loopback address without tokens is allowed.
    pub insecure_no_auth: bool,
    /// The bearer tokens, as configured.
    pub tokens: Vec<TokenConfig>,
    /// The tokens, checked.
    auth: Auth,
}

impl Settings {
    /// Resolves `args` with the config file they name, and checks everything that can be
    /// checked without opening the store or the listening socket.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, CliError> {
        let config = match &args.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let data_dir = args.data_dir.clone().or(config.data_dir).unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let listen = match args.listen.or(config.listen) {
            Some(addr) => addr,
            None => LISTEN_DEFAULT.parse().map_err(|e| CliError::Usage(format!("{e}")))?,
        };
        let durability: Durability = args
            .durability
            .clone()
            .or(config.durability)
            .unwrap_or_else(|| "fsync".into())
            .parse()
            .map_err(|e: onceq_core::Error| CliError::Usage(e.to_string()))?;
        let page_cache_bytes = match args.page_cache_mib.or(config.page_cache_mib) {
            Some(mib) if (1..=65_536).contains(&mib) => mib << 20,
            Some(mib) => return Err(CliError::Usage(format!("page_cache_mib is {mib}; it must be 1 to 65536"))),
            None => onceq_sqlite::PAGE_CACHE_BYTES_DEFAULT,
        };
        let body_memory_bytes = match args.body_memory_mib.or(config.body_memory_mib) {
            Some(mib) if (16..=65_536).contains(&mib) => mib << 20,
            Some(mib) => return Err(CliError::Usage(format!("body_memory_mib is {mib}; it must be 16 to 65536"))),
            None => onceq_server::BODY_MEMORY_BYTES_DEFAULT as u64,
        };
        let auth = Auth::from_tokens(&config.tokens).map_err(CliError::Usage)?;
        let store = args.store.clone().or(config.store).unwrap_or_else(|| "embedded".into());
        if store != "embedded" && !is_postgres_url(&store) {
            return Err(CliError::Usage(format!("store {store:?}: use `embedded` or a postgres:// URL")));
        }
        let pg_pool_size = args.pg_pool_size.or(config.pg_pool_size).unwrap_or(onceq_postgres::DEFAULT_POOL_SIZE);
        if !(1..=onceq_postgres::POOL_SIZE_MAX).contains(&pg_pool_size) {
            return Err(CliError::Usage(format!(
                "pg_pool_size: pool size is {pg_pool_size}; it must be between 1 and {}",
                onceq_postgres::POOL_SIZE_MAX
            )));
        }
        let pg_connect_timeout_ms =
            args.pg_connect_timeout_ms.or(config.pg_connect_timeout_ms).unwrap_or(PG_CONNECT_TIMEOUT_MS_DEFAULT);
        if !(1..=600_000).contains(&pg_connect_timeout_ms) {
            return Err(CliError::Usage(format!(
                "pg_connect_timeout_ms is {pg_connect_timeout_ms}; it must be 1 to 600000"
            )));
        }
        let settings = Settings {
            pg_connect_timeout: std::time::Duration::from_millis(pg_connect_timeout_ms),
            store,
            pg_schema: args.pg_schema.clone().or(config.pg_schema).unwrap_or_else(|| "onceq".into()),
            pg_pool_size,
            data_dir,
            listen,
            durability,
            page_cache_bytes,
            body_memory_bytes,
            verify_on_start: args.verify_on_start || config.verify_on_start.unwrap_or(false),
            insecure_no_auth: args.insecure_no_auth || config.insecure_no_auth.unwrap_or(false),
            tokens: config.tokens,
            auth,
        };
        // Refused before the store opens, so a refused start leaves no data directory behind.
        onceq_server::check_auth_exposure(settings.auth.enabled(), settings.listen, &settings.serve_options())
            .map_err(|error| CliError::Failed(error.to_string()))?;
        Ok(settings)
    }

    /// The server's options.
    fn serve_options(&self) -> ServeOptions {
        let mut options = ServeOptions::default();
        options.insecure_no_auth = self.insecure_no_auth;
        options
    }

    /// The store as `onceq config check` prints it: a PostgreSQL URL without its password.
    pub fn store_shown(&self) -> String {
        if !is_postgres_url(&self.store) {
            return self.store.clone();
        }
        // postgres://user:password@host/...: the password is the text between the first ':'
        // after the scheme and the last '@' of the authority.
        let (scheme, rest) = self.store.split_once("://").unwrap_or(("postgres", &self.store));
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let authority = match authority.rsplit_once('@') {
            Some((user_info, host)) => match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        if path.is_empty() && !rest.contains('/') {
            format!("{scheme}://{authority}")
        } else {
            format!("{scheme}://{authority}/{path}")
        }
    }
}

/// Whether `store` names PostgreSQL.
fn is_postgres_url(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<(), CliError> {
    let settings = Settings::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let options = settings.serve_options();
    let listen = settings.listen;
    runtime.block_on(async move {
        let opened = open_store(&settings).await?;
        let api = Api::new(opened.store.clone())
            .idempotency(opened.idempotency.clone())
            .inspect(opened.inspect.clone())
            .auth(settings.auth)
            .body_memory(usize::try_from(settings.body_memory_bytes).unwrap_or(usize::MAX));
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                opened.close().await;
                return Err(CliError::Failed(format!("cannot listen on {listen}: {e}")));
            }
        };
        let local = listener.local_addr().map_err(|e| CliError::Failed(e.to_string()))?;
        // Scripts and tests read this line to find the port. A closed standard output does not
        // stop the server (`println!` would panic).
        let _ = writeln!(std::io::stdout(), "onceq listening on http://{local} ({})", opened.description);
        tracing::info!(%local, store = %opened.description, "serving");
        let result = onceq_server::serve(api, listener, options, shutdown_signal()).await;
        // Whatever happened, flush and release the store.
        opened.close().await;
        result.map_err(|e| CliError::Failed(e.to_string()))
    })
}

/// The store a server runs over.
struct Opened {
    store: Arc<dyn onceq_core::Store>,
    idempotency: Arc<dyn onceq_core::IdempotencyStore>,
    /// Its bounded reads, for the dashboard.
    inspect: Arc<dyn onceq_core::Inspect>,
    /// Closes it: the embedded store flushes and releases its data directory.
    embedded: Option<SqliteStore>,
    postgres: Option<onceq_postgres::PgStore>,
    /// For the listening line and logs (never a password).
    description: String,
}

impl Opened {
    async fn close(&self) {
        if let Some(store) = &self.embedded {
            store.close().await;
        }
        if let Some(store) = &self.postgres {
            store.close().await;
        }
    }
}

async fn open_store(settings: &Settings) -> Result<Opened, CliError> {
    let Settings { store: choice, pg_schema, pg_pool_size, data_dir, durability, page_cache_bytes, .. } = settings;
    let (pg_pool_size, durability, page_cache_bytes) = (*pg_pool_size, *durability, *page_cache_bytes);
    if is_postgres_url(choice) {
        // A bad schema name or URL is usage (exit 2); a database that cannot be reached is
        // unavailable (exit 3), as for the relay.
        let options = onceq_postgres::PgOptions::new(choice)
            .schema(pg_schema)
            .pool_size(pg_pool_size)
            .connect_timeout(settings.pg_connect_timeout);
        let store = onceq_postgres::PgStore::connect(options).await.map_err(|e| match e {
            onceq_core::Error::InvalidRequest(_) => CliError::Usage(e.to_string()),
            onceq_core::Error::Unavailable(_) => CliError::Unavailable(e.to_string()),
            other => CliError::Failed(other.to_string()),
        })?;
        if store.created() {
            warn_created(pg_schema, "--pg-schema (ONCEQ_PG_SCHEMA, pg_schema in the config file)");
        }
        let shared = Arc::new(store.clone());
        return Ok(Opened {
            store: shared.clone(),
            idempotency: shared.clone(),
            inspect: shared,
            embedded: None,
            postgres: Some(store),
            description: format!("PostgreSQL store, schema {pg_schema}"),
        });
    }
    if choice != "embedded" {
        return Err(CliError::Usage(format!("--store {choice:?}: use `embedded` or a postgres:// URL")));
    }
    let options = SqliteOptions::new(data_dir)
        .durability(durability)
        .page_cache_bytes(page_cache_bytes)
        .verify_on_start(settings.verify_on_start);
    let store = SqliteStore::open(options).map_err(|e| CliError::Failed(e.to_string()))?;
    let shared = Arc::new(store.clone());
    Ok(Opened {
        store: shared.clone(),
        idempotency: shared.clone(),
        inspect: shared,
        embedded: Some(store),
        postgres: None,
        description: format!("data dir {}, durability {durability:?}", data_dir.display()),
    })
}

/// The one line an operator cannot miss when a PostgreSQL schema held no store and connecting
/// created an empty one there: a mistyped schema name would otherwise look like lost queues.
/// On stderr whatever the log level; `flag` names where the schema was given.
pub(crate) fn warn_created(schema: &str, flag: &str) {
    eprintln!(
        "onceq: schema {schema} held no onceq store; created an empty one (no queues, no jobs). \
         If you expected queues there, check {flag}"
    );
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
/// SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
