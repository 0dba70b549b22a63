//! `onceq relay`: publishes a transactional outbox (`onceq-outbox`) to a sink until SIGINT or
//! SIGTERM.
//!
//! The outbox is `--outbox postgres://...` (schema `--outbox-schema`, several relays may run on
//! one) or `--outbox sqlite:PATH` (the application's database file; one relay per file). The
//! sink is `--sink`: `onceq` (a onceq queue per destination, through `--server URL` or directly
//! in `--store postgres://...`), `nats://host:port` (JetStream), `amqp://...` (RabbitMQ), or an
//! `http://` / `https://` base URL (webhook). Each knob of [`onceq_outbox::RelayOptions`] is a
//! flag. On start the relay prints one line on stderr: `onceq relay: outbox ... → sink ...`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use onceq_outbox::relay::{
    BACKOFF_INITIAL_DEFAULT, BACKOFF_MAX_DEFAULT, BACKOFF_MULTIPLIER_DEFAULT, BATCH_SIZE_DEFAULT,
    CONNECT_TIMEOUT_DEFAULT, FAILPOINT_ENV, MAX_ATTEMPTS_DEFAULT, PUBLISH_CONCURRENCY_DEFAULT, PUBLISH_TIMEOUT_DEFAULT,
    RETENTION_DEFAULT,
};
use onceq_outbox::sink::nats::NatsSink;
use onceq_outbox::sink::rabbitmq::RabbitMqSink;
use onceq_outbox::{OnceqSink, OutboxError, PgOutbox, PublishError, Relay, RelayOptions, Sink, WebhookSink};

use crate::error::CliError;

/// The end of `onceq relay --help`.
const RELAY_AFTER_HELP: &str = "\
Each message is published with dedup id <outbox name>-<row id> and marked sent only after the sink
confirmed it; a relay that dies in between publishes it again with the same dedup id, which onceq,
JetStream and an Idempotency-Key-honouring webhook absorb (RabbitMQ: at least once). For the onceq
sink, the queue's dedup window (default 5 min) must cover the time a dead relay takes to come back.
Exit codes: 0 after a graceful shutdown (SIGINT, SIGTERM), 2 bad arguments, 3 the outbox database
or the sink unreachable at start, 1 any other failure.";

/// Options of `onceq relay`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = RELAY_AFTER_HELP)]
pub struct RelayArgs {
    /// The outbox: `postgres://user:password@host:port/database` (the application's database;
    /// several relays may serve it) or `sqlite:PATH` (the application's database file; one relay
    /// per file, polling every --poll-interval-ms since SQLite has no notifications).
    #[arg(long, env = "ONCEQ_RELAY_OUTBOX", value_name = "URL")]
    pub outbox: String,
    /// PostgreSQL schema of the outbox tables (created and migrated if needed).
    #[arg(long, env = "ONCEQ_RELAY_OUTBOX_SCHEMA", default_value = onceq_outbox::postgres::DEFAULT_SCHEMA)]
    pub outbox_schema: String,
    /// Dedup-id prefix: messages are published with dedup id `<outbox name>-<row id>`. Give each
    /// outbox feeding one destination its own, and keep it stable [default: the schema name, or
    /// the SQLite file's name without extension].
    #[arg(long, env = "ONCEQ_RELAY_OUTBOX_NAME")]
    pub outbox_name: Option<String>,
    /// Where to publish: `onceq` (the destination is a queue; with --server or --store),
    /// `nats://host:port` (JetStream; the destination is a subject), `amqp://...` (RabbitMQ),
    /// or `http://...` / `https://...` (webhook: the destination is a path under this URL, `.`
    /// for the URL itself).
    #[arg(long, env = "ONCEQ_RELAY_SINK", value_name = "SINK")]
    pub sink: String,
    /// With --sink onceq: the onceq server to enqueue into, e.g. http://127.0.0.1:7700.
    #[arg(long, env = "ONCEQ_SERVER", value_name = "URL", conflicts_with = "store")]
    pub server: Option<String>,
    /// With --sink onceq --server: the bearer token (needs `produce` on the destination queues).
    #[arg(long, env = "ONCEQ_TOKEN", hide_env_values = true, requires = "server")]
    pub token: Option<String>,
    /// With --sink onceq: enqueue directly into the onceq PostgreSQL store at this URL.
    #[arg(long, env = "ONCEQ_RELAY_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// With --store: the onceq store's schema.
    #[arg(long, default_value = "onceq", requires = "store")]
    pub store_schema: String,
    /// Most messages claimed per round (1 to 1000).
    #[arg(long, default_value_t = BATCH_SIZE_DEFAULT)]
    pub batch_size: u32,
    /// Publish attempts of a message before it is parked in the outbox dead letters (1 to 1000).
    /// A permanent failure (e.g. a 4xx answer) parks it at once.
    #[arg(long, default_value_t = MAX_ATTEMPTS_DEFAULT)]
    pub max_attempts: u32,
    /// Backoff cap after the first failed attempt, in ms; retries wait a random time up to the
    /// cap (full jitter), the cap growing by --backoff-multiplier per attempt.
    #[arg(long, default_value_t = millis(BACKOFF_INITIAL_DEFAULT))]
    pub backoff_initial_ms: u64,
    /// Largest backoff cap, in ms (at most one day). Keep it plus --publish-timeout-ms below the
    /// destination's dedup window (JetStream `duplicate_window`, default 2 min; onceq queue
    /// `dedup_window_ms`, default 5 min): a retry after a lost confirmation must still be deduped.
    #[arg(long, default_value_t = millis(BACKOFF_MAX_DEFAULT))]
    pub backoff_max_ms: u64,
    /// Growth of the backoff cap per attempt (1 to 100).
    #[arg(long, default_value_t = BACKOFF_MULTIPLIER_DEFAULT)]
    pub backoff_multiplier: f64,
    /// Longest wait for the sink to confirm one publish, in ms, before it counts as a transient
    /// failure (at most 10 minutes). PostgreSQL rows stay locked meanwhile.
    #[arg(long, default_value_t = millis(PUBLISH_TIMEOUT_DEFAULT))]
    pub publish_timeout_ms: u64,
    /// Most publishes in flight at once within a batch (1 to 1000).
    #[arg(long, default_value_t = PUBLISH_CONCURRENCY_DEFAULT)]
    pub publish_concurrency: usize,
    /// Longest sleep with nothing to do, in ms: on PostgreSQL a fallback for missed
    /// notifications [default: 5000]; on SQLite the polling period [default: 200].
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
    /// How long sent rows are kept before deletion, in ms (0: delete when marked; at most 30 days).
    #[arg(long, default_value_t = millis(RETENTION_DEFAULT))]
    pub retention_ms: u64,
    /// How long the first connection to a PostgreSQL outbox, or to the --store database, may take
    /// at start before the relay exits 3, in ms (1 to 600000).
    #[arg(long, default_value_t = millis(CONNECT_TIMEOUT_DEFAULT), value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub connect_timeout_ms: u64,
    /// Serve `GET /metrics` (Prometheus text: onceq_outbox_pending, onceq_outbox_lag_seconds,
    /// onceq_outbox_published_total, onceq_outbox_publish_failures_total,
    /// onceq_outbox_parked_total, ...) on this address, e.g. 127.0.0.1:9464 [default: no endpoint].
    #[arg(long, env = "ONCEQ_RELAY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

const fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

impl RelayArgs {
    /// The relay options the flags describe.
    pub fn options(&self) -> RelayOptions {
        RelayOptions {
            outbox_name: self.outbox_name.clone(),
            batch_size: self.batch_size,
            max_attempts: self.max_attempts,
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            backoff_multiplier: self.backoff_multiplier,
            publish_timeout: Duration::from_millis(self.publish_timeout_ms),
            publish_concurrency: self.publish_concurrency,
            poll_interval: self.poll_interval_ms.map(Duration::from_millis),
            retention: Duration::from_millis(self.retention_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        }
    }
}

/// The outbox the relay serves.
enum OutboxChoice {
    Postgres(String, PgOutbox),
    Sqlite(PathBuf),
}

fn outbox_choice(args: &RelayArgs) -> Result<OutboxChoice, CliError> {
    let url = &args.outbox;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let outbox = PgOutbox::new(&args.outbox_schema).map_err(|e| CliError::Usage(e.to_string()))?;
        return Ok(OutboxChoice::Postgres(url.clone(), outbox));
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(CliError::Usage("--outbox sqlite: needs a path, e.g. sqlite:./app.db".into()));
        }
        return Ok(OutboxChoice::Sqlite(PathBuf::from(path)));
    }
    Err(CliError::Usage(format!("--outbox {url:?}: use postgres://user@host:port/database or sqlite:PATH")))
}

/// Maps an outbox failure at start onto the exit codes.
fn outbox_error(error: OutboxError) -> CliError {
    match error {
        OutboxError::InvalidOptions(_) | OutboxError::InvalidMessage(_) => CliError::Usage(error.to_string()),
        OutboxError::Unavailable(_) => CliError::Unavailable(error.to_string()),
        _ => CliError::Failed(error.to_string()),
    }
}

/// Maps a sink's connect failure onto the exit codes.
fn sink_error(what: &str, error: PublishError) -> CliError {
    match error {
        PublishError::Transient(e) => CliError::Unavailable(format!("cannot connect the {what} sink: {e}")),
        PublishError::Permanent(e) => CliError::Failed(format!("cannot connect the {what} sink: {e}")),
    }
}

/// The sink the flags name, and a description for the startup line (never a password).
async fn open_sink(args: &RelayArgs) -> Result<(Arc<dyn Sink>, String, Option<onceq_postgres::PgStore>), CliError> {
    let sink = args.sink.as_str();
    if sink == "onceq" {
        if let Some(server) = &args.server {
            let client = onceq_client::Client::builder(server)
                // An empty token (ONCEQ_TOKEN set to "") means none, as for the operator commands.
                .token(args.token.clone().filter(|token| !token.is_empty()))
                .timeout(Duration::from_millis(args.publish_timeout_ms))
                .build()
                .map_err(|e| CliError::Usage(format!("--server {server:?}: {e}")))?;
            // Unreachable at start is exit 3, as for the other sinks (which connect here).
            client.ready().await.map_err(|e| match e {
                onceq_core::Error::Unavailable(m) => CliError::Unavailable(format!("--server: {m}")),
                other => CliError::Failed(format!("--server: {other}")),
            })?;
            let sink = OnceqSink::with_retry_horizon(Arc::new(client), retry_horizon(args));
            return Ok((Arc::new(sink), format!("onceq server {server}"), None));
        }
        if let Some(store) = &args.store {
            let options = onceq_postgres::PgOptions::new(store)
                .schema(&args.store_schema)
                .connect_timeout(Duration::from_millis(args.connect_timeout_ms));
            let pg = onceq_postgres::PgStore::connect(options).await.map_err(|e| match e {
                onceq_core::Error::InvalidRequest(m) => CliError::Usage(format!("--store: {m}")),
                onceq_core::Error::Unavailable(m) => CliError::Unavailable(format!("--store: {m}")),
                other => CliError::Failed(format!("--store: {other}")),
            })?;
            if pg.created() {
                crate::serve::warn_created(&args.store_schema, "--store-schema");
            }
            let description = format!("onceq PostgreSQL store, schema {}", args.store_schema);
            let sink = OnceqSink::with_retry_horizon(Arc::new(pg.clone()), retry_horizon(args));
            return Ok((Arc::new(sink), description, Some(pg)));
        }
        return Err(CliError::Usage(
            "--sink onceq needs --server URL (a running onceq serve) or --store postgres://... (its database)".into(),
        ));
    }
    if args.server.is_some() || args.store.is_some() {
        return Err(CliError::Usage(format!("--server and --store go with --sink onceq, not --sink {sink}")));
    }
    if sink.starts_with("nats://") || sink.starts_with("tls://") {
        let nats = NatsSink::connect(sink).await.map_err(|e| sink_error("NATS", e))?;
        return Ok((Arc::new(nats), format!("nats {}", redact(sink)), None));
    }
    if sink.starts_with("amqp://") || sink.starts_with("amqps://") {
        let rabbit = RabbitMqSink::connect(sink).await.map_err(|e| sink_error("RabbitMQ", e))?;
        return Ok((Arc::new(rabbit), format!("rabbitmq {}", redact(sink)), None));
    }
    if sink.starts_with("http://") || sink.starts_with("https://") {
        let webhook = WebhookSink::new(sink, Duration::from_millis(args.publish_timeout_ms)).map_err(outbox_error)?;
        return Ok((Arc::new(webhook), format!("webhook {}", redact(sink)), None));
    }
    Err(CliError::Usage(format!(
        "--sink {sink:?}: use onceq, nats://host:port, amqp://host:port, or an http(s):// URL"
    )))
}

/// The longest time after a publish that this relay may publish it again: its backoff cap plus
/// its publish timeout. A onceq destination's dedup window must cover it.
fn retry_horizon(args: &RelayArgs) -> Duration {
    Duration::from_millis(args.backoff_max_ms.saturating_add(args.publish_timeout_ms))
}

/// `url` without the password, for the startup line.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://…@{}", &url[..scheme_end], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Runs the relay until SIGINT or SIGTERM.
pub fn run(args: &RelayArgs) -> Result<(), CliError> {
    let options = args.options();
    options.validate().map_err(outbox_error)?;
    let outbox = outbox_choice(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = match args.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| CliError::Usage(format!("--metrics-listen {addr}: {e}")))?;
                let shutdown = async move {
                    let _ = metrics_stopped.await;
                };
                Some(tokio::spawn(onceq_server::serve_metrics(listener, shutdown)))
            }
            None => None,
        };
        let (sink, sink_description, pg_store) = open_sink(args).await?;
        let relay = match outbox {
            OutboxChoice::Postgres(url, outbox) => Relay::postgres(&url, outbox, sink, options).await,
            OutboxChoice::Sqlite(path) => Relay::sqlite(&path, sink, options).await,
        }
        .map_err(outbox_error)?;
        let failpoint = std::env::var(FAILPOINT_ENV).map(|v| format!(" (fail point {v})")).unwrap_or_default();
        let description = relay.describe();
        let outbox_part = description.split(" → ").next().unwrap_or(&description);
        let metrics_part =
            args.metrics_listen.map(|addr| format!(" · metrics on http://{addr}/metrics")).unwrap_or_default();
        eprintln!("onceq relay: {outbox_part} → sink {sink_description}{failpoint}{metrics_part}");
        let result = relay.run(shutdown_signal()).await.map_err(outbox_error);
        if let Some(store) = pg_store {
            store.close().await;
        }
        let _ = stop_metrics.send(());
        if let Some(metrics) = metrics {
            if let Ok(Err(error)) = metrics.await {
                tracing::warn!(%error, "the metrics endpoint failed");
            }
        }
        result
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_knob_is_a_flag_and_reaches_the_relay_options() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "onceq",
            "relay",
            "--outbox",
            "sqlite:./app.db",
            "--sink",
            "http://h/",
            "--outbox-name",
            "shop",
            "--batch-size",
            "7",
            "--max-attempts",
            "3",
            "--backoff-initial-ms",
            "10",
            "--backoff-max-ms",
            "20",
            "--backoff-multiplier",
            "1.5",
            "--publish-timeout-ms",
            "30",
            "--publish-concurrency",
            "4",
            "--poll-interval-ms",
            "40",
            "--retention-ms",
            "0",
        ]);
        let Ok(crate::Cli { command: crate::Command::Relay(args), .. }) = cli else {
            panic!("relay did not parse: {cli:?}");
        };
        let expected = RelayOptions {
            outbox_name: Some("shop".into()),
            batch_size: 7,
            max_attempts: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            backoff_multiplier: 1.5,
            publish_timeout: Duration::from_millis(30),
            publish_concurrency: 4,
            poll_interval: Some(Duration::from_millis(40)),
            retention: Duration::ZERO,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        };
        assert_eq!(args.options(), expected);
        assert!(matches!(outbox_choice(&args), Ok(OutboxChoice::Sqlite(p)) if p == std::path::Path::new("./app.db")));
        let both = crate::Cli::try_parse_from([
            "onceq",
            "relay",
            "--outbox",
            "sqlite:a",
            "--sink",
            "onceq",
            "--server",
            "http://h",
            "--store",
            "postgres://h",
        ]);
        assert_eq!(both.map_err(|e| e.kind()).err(), Some(clap::error::ErrorKind::ArgumentConflict));
    }

    #[test]
    fn passwords_stay_out_of_the_startup_line() {
        assert_eq!(redact("amqp://user:secret@host:5672/%2f"), "amqp://…@host:5672/%2f");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
