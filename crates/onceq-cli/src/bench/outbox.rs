//! `onceq bench --outbox postgres://...`: the transactional outbox on PostgreSQL.
//!
//! Three figures, each on fresh schemas of the given database (dropped at the end):
//!
//! 1. **The cost of `stage`** in a business transaction: the same transaction — `BEGIN`,
//!    `INSERT` one order row, `COMMIT` — without and with `PgOutbox::stage` of one message
//!    before the commit, from 1 connection and from 8 at once, alternating the variants in
//!    rounds so that all see the same machine. Staging has two paths: while every relay is busy
//!    (the case under load) it sends no `NOTIFY`; while a relay sleeps it does, and `NOTIFY`
//!    serializes commits. Both are measured (the sleeping relay is a registration in the
//!    outbox's `sleepers` table for the duration). Reported as transactions/s and as the ratio
//!    with/without of the time per transaction (the target: at most 1.10).
//!
//!    In the same rounds, a floor: the transaction with one bare `INSERT` of the same message
//!    columns into a plain table of the application's (its key and nothing else; no wake-up, no
//!    order per key), the least any outbox that writes a row in the business transaction adds.
//!    On a transaction of one small `INSERT` this floor is itself far above 1.10 on a machine
//!    whose round trip and commit are short (here: a loopback round trip ~0.08 ms, a commit
//!    ~0.35 ms), so the report also gives stage's time against the floor's.
//! 2. **Staged/s**: messages staged by 8 producers, one message per business transaction.
//! 3. **Published/s**: the relay (in-process, [`Relay`] with its defaults but 100 publishes in
//!    flight, a whole batch) draining that backlog
//!    into a onceq queue of a `PgStore` in the same database, with 1 relay and then 2 at once
//!    (on a second backlog of the same size). Every message is checked to be in the queue once.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{QueueName, Store};
use onceq_outbox::{Message, OnceqSink, PgOutbox, Relay, RelayOptions};
use onceq_postgres::{PgOptions, PgStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::error::BenchError;
use super::options::{payload, BenchArgs};
use super::report::{emit, progress};

/// Connections (and producers) of the concurrent measurements.
const CLIENTS: usize = 8;
/// Rounds each variant of the stage-cost measurement runs, alternating.
const ROUNDS: usize = 6;

/// Runs the outbox benchmark against the database at `url`.
pub(super) fn run(args: &BenchArgs, url: &str, command_line: &str) -> Result<(), BenchError> {
    let messages = args.jobs.unwrap_or(if args.quick { 5_000 } else { 20_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let tag = format!("{:08x}", rand::random::<u32>());
        let schemas = Schemas {
            app: format!("onceq_bench_app_{tag}"),
            outbox: format!("onceq_bench_ob_{tag}"),
            store: format!("onceq_bench_q_{tag}"),
        };
        let pool = PgPoolOptions::new()
            .max_connections(CLIENTS as u32 + 2)
            .connect(url)
            .await
            .map_err(|e| BenchError::Store(onceq_core::Error::Unavailable(format!("connecting to {url}: {e}"))))?;
        let result = measure(&pool, url, &schemas, messages, &payload(args.payload_bytes), command_line).await;
        schemas.drop_all(&pool).await;
        pool.close().await;
        result
    })
}

struct Schemas {
    app: String,
    outbox: String,
    store: String,
}

impl Schemas {
    async fn drop_all(&self, pool: &PgPool) {
        for schema in [&self.app, &self.outbox, &self.store] {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(pool).await;
        }
    }
}

fn failed(context: &str) -> impl Fn(sqlx::Error) -> BenchError + '_ {
    move |e| BenchError::Check(format!("{context}: {e}"))
}

fn outbox_failed(e: onceq_outbox::OutboxError) -> BenchError {
    BenchError::Check(e.to_string())
}

async fn measure(
    pool: &PgPool,
    url: &str,
    schemas: &Schemas,
    messages: u64,
    payload: &[u8],
    command_line: &str,
) -> Result<(), BenchError> {
    let mut out = String::new();
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await.map_err(failed("version"))?;
    let sync: String =
        sqlx::query_scalar("SHOW synchronous_commit").fetch_one(pool).await.map_err(failed("synchronous_commit"))?;
    let _ = writeln!(out, "$ {command_line}");
    let _ = writeln!(
        out,
        "onceq {} · outbox on PostgreSQL {version} (synchronous_commit={sync}) · {} CPUs · payload {} B · {messages} \
         messages",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        payload.len()
    );
    emit(&mut out);
    let app = &schemas.app;
    let create = format!(
        "CREATE SCHEMA \"{app}\"; CREATE TABLE \"{app}\".orders (id bigint PRIMARY KEY, customer text NOT NULL, \
         total_cents bigint NOT NULL); CREATE TABLE \"{app}\".events (id bigserial PRIMARY KEY, destination text NOT NULL, \
         payload bytea NOT NULL, headers jsonb NOT NULL, ordering_key text, created_at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::Executor::execute(pool, create.as_str()).await.map_err(failed("creating the orders table"))?;
    let outbox = PgOutbox::new(&schemas.outbox).map_err(outbox_failed)?;
    outbox.migrate(&mut *pool.acquire().await.map_err(failed("connecting"))?).await.map_err(outbox_failed)?;
    let next_id = Arc::new(std::sync::atomic::AtomicI64::new(1));

    // 1. The cost of stage.
    let _ = writeln!(
        out,
        "\nstage cost: business transaction = BEGIN; INSERT order; COMMIT; with stage = the same + one stage; \
         floor = the same + one bare INSERT of the message's columns"
    );
    let _ = writeln!(
        out,
        "{:<12} {:>13} {:>10} {:>7} {:>16} {:>7} {:>20} {:>7} {:>11}",
        "connections",
        "without tx/s",
        "floor tx/s",
        "ratio",
        "with, relay busy",
        "ratio",
        "with, relay sleeping",
        "ratio",
        "busy/floor"
    );
    emit(&mut out);
    let per_round = (messages / ROUNDS as u64).clamp(200, 20_000);
    for clients in [1, CLIENTS] {
        progress(&format!("stage cost, {clients} connection(s)"));
        let (mut without, mut floor, mut busy, mut sleeping) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut count = 0;
        let sleepers = format!("\"{}\".sleepers", outbox.schema());
        for _ in 0..ROUNDS {
            without += business(pool, &outbox, app, payload, clients, per_round, Extra::Nothing, &next_id).await?;
            floor += business(pool, &outbox, app, payload, clients, per_round, Extra::BareInsert, &next_id).await?;
            busy += business(pool, &outbox, app, payload, clients, per_round, Extra::Stage, &next_id).await?;
            sqlx::query(&format!("INSERT INTO {sleepers} VALUES ('bench', now() + interval '1 hour')"))
                .execute(pool)
                .await
                .map_err(failed("registering a sleeping relay"))?;
            sleeping += business(pool, &outbox, app, payload, clients, per_round, Extra::Stage, &next_id).await?;
            sqlx::query(&format!("DELETE FROM {sleepers}")).execute(pool).await.map_err(failed("unregistering"))?;
            count += per_round;
        }
        let rate = |d: Duration| count as f64 / d.as_secs_f64();
        let ratio = |d: Duration| d.as_secs_f64() / without.as_secs_f64();
        let _ = writeln!(
            out,
            "{clients:<12} {:>13.0} {:>10.0} {:>7.3} {:>16.0} {:>7.3} {:>20.0} {:>7.3} {:>11.3}",
            rate(without),
            rate(floor),
            ratio(floor),
            rate(busy),
            ratio(busy),
            rate(sleeping),
            ratio(sleeping),
            busy.as_secs_f64() / floor.as_secs_f64()
        );
        emit(&mut out);
    }

    // 2 and 3. Staged/s, then published/s through the relay into onceq.
    let store = PgStore::connect(PgOptions::new(url).schema(&schemas.store).pool_size(16)).await?;
    let queue = QueueName::new("orders")?;
    let _ = writeln!(out, "\n{:<66} {:>9} {:>9} {:>10}", "scenario", "messages", "seconds", "msg/s");
    emit(&mut out);
    for relays in [1usize, 2] {
        // Rows left sent by the stage-cost runs and the previous round do not count.
        sqlx::query(&format!("DELETE FROM \"{}\".messages", outbox.schema()))
            .execute(pool)
            .await
            .map_err(failed("emptying the outbox"))?;
        progress(&format!("staging {messages} messages"));
        let staged = business(pool, &outbox, app, payload, CLIENTS, messages, Extra::Stage, &next_id).await?;
        let _ = writeln!(
            out,
            "{:<66} {messages:>9} {:>9.2} {:>10.0}",
            format!("staged, {CLIENTS} producers, 1 message per transaction"),
            staged.as_secs_f64(),
            messages as f64 / staged.as_secs_f64()
        );
        emit(&mut out);
        progress(&format!("publishing with {relays} relay(s)"));
        let before = store.queue_get(&queue).await.map(|i| i.stats.ready).unwrap_or(0);
        let mut built = Vec::new();
        for _ in 0..relays {
            let sink = Arc::new(OnceqSink::new(Arc::new(store.clone())));
            built.push(Arc::new(
                Relay::postgres(url, outbox.clone(), sink, relay_options()).await.map_err(outbox_failed)?,
            ));
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for relay in &built {
            let relay = relay.clone();
            tasks.push(tokio::spawn(async move { relay.run_until_idle().await }));
        }
        let mut sent = 0;
        for task in tasks {
            sent += task.await.map_err(|e| BenchError::Check(e.to_string()))?.map_err(outbox_failed)?.sent;
        }
        let elapsed = started.elapsed();
        let after = store.queue_get(&queue).await?.stats.ready;
        if sent as u64 != messages || after - before != messages {
            return Err(BenchError::Check(format!(
                "{relays} relay(s) sent {sent} and the queue gained {} jobs; {messages} were staged",
                after - before
            )));
        }
        let _ = writeln!(
            out,
            "{:<66} {messages:>9} {:>9.2} {:>10.0}",
            format!("published to onceq (PgStore), {relays} relay(s), batch 100, 100 at once"),
            elapsed.as_secs_f64(),
            messages as f64 / elapsed.as_secs_f64()
        );
        emit(&mut out);
        for relay in built {
            if let Ok(relay) = Arc::try_unwrap(relay) {
                relay.close().await;
            }
        }
    }
    store.close().await;
    let _ = writeln!(
        out,
        "\nratio = time per business transaction with stage (or the floor's bare INSERT) / without (target for \
         stage <= 1.10); busy/floor = time with stage, relay busy / with the bare INSERT; msg/s = messages / wall time"
    );
    emit(&mut out);
    Ok(())
}

/// The relay's defaults, with a whole batch in flight at once (the onceq sink gathers
/// concurrent publishes into one enqueue).
fn relay_options() -> RelayOptions {
    RelayOptions { publish_concurrency: 100, ..RelayOptions::default() }
}

/// What a business transaction writes besides its order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// Nothing.
    Nothing,
    /// One message, staged.
    Stage,
    /// The floor: the same message's columns, inserted into the application's `events` table.
    BareInsert,
}

/// Runs `count` business transactions from `clients` connections at once, each writing one
/// order and `extra`. Returns the wall time.
#[allow(clippy::too_many_arguments)]
async fn business(
    pool: &PgPool,
    outbox: &PgOutbox,
    app: &str,
    payload: &[u8],
    clients: usize,
    count: u64,
    extra: Extra,
    next_id: &Arc<std::sync::atomic::AtomicI64>,
) -> Result<Duration, BenchError> {
    let insert = Arc::new(format!("INSERT INTO \"{app}\".orders (id, customer, total_cents) VALUES ($1, $2, $3)"));
    let event = Arc::new(format!(
        "INSERT INTO \"{app}\".events (destination, payload, headers, ordering_key) VALUES ($1, $2, $3::jsonb, $4)"
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let share = count / clients as u64 + u64::from((client as u64) < count % clients as u64);
        let (pool, outbox, insert, event, next_id) =
            (pool.clone(), outbox.clone(), insert.clone(), event.clone(), next_id.clone());
        let payload = payload.to_vec();
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let customer = format!("customer-{}", id % 1000);
                let mut tx = pool.begin().await.map_err(failed("begin"))?;
                sqlx::query(&insert)
                    .bind(id)
                    .bind(&customer)
                    .bind(id * 100)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed("inserting an order"))?;
                // Built only by the variants that write it: the baseline does no more than its order.
                let message = || Message::new("orders", payload.clone()).ordering_key(customer.clone());
                match extra {
                    Extra::Nothing => {}
                    Extra::Stage => {
                        outbox.stage(&mut tx, &message()).await.map_err(outbox_failed)?;
                    }
                    Extra::BareInsert => {
                        let message = message();
                        sqlx::query(&event)
                            .bind(&message.destination)
                            .bind(&message.payload)
                            .bind(
                                serde_json::to_string(&message.headers)
                                    .map_err(|e| BenchError::Check(e.to_string()))?,
                            )
                            .bind(message.ordering_key.as_deref())
                            .execute(&mut *tx)
                            .await
                            .map_err(failed("inserting an event"))?;
                    }
                }
                tx.commit().await.map_err(failed("commit"))?;
            }
            Ok::<_, BenchError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError::Check(e.to_string()))??;
    }
    Ok(started.elapsed())
}
