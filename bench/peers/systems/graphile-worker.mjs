// graphile-worker on the machine's PostgreSQL, in a schema of its own made for the run and dropped
// after it. Producers: `WorkerUtils.addJobs` of 100 jobs (one statement per batch). Consumer: one
// `run()` runner with CONCURRENT_JOBS jobs at once, a local queue that locks LOCAL_QUEUE_SIZE jobs
// per fetch, and batched completion (`completeJobBatchDelay` 0: the completions that gather
// while one batch commits go in the next). A job's `job:success` event fires before its batched
// completion commits, so the clock stops when the jobs table is empty (polled once every job has
// succeeded): the last completion committed.

import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";
import pg from "pg";

import { packageVersion } from "../lib/versions.mjs";
import { jobNumber, payloadObject } from "../lib/workload.mjs";

/** Jobs the runner runs at once. */
const CONCURRENT_JOBS = 100;
/** Jobs one fetch locks into the runner's local queue. */
const LOCAL_QUEUE_SIZE = 500;
/** Connections of the runner's pool. */
const POOL_SIZE = 10;
/** How often the consumer looks whether the last completions have committed, in ms. */
const EMPTY_POLL_MS = 2;

export const name = "graphile-worker";

const databaseUrl = () => process.env.PEERS_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/**
 * graphile-worker's logger, keeping its per-job lines out of the report. Warnings and errors still
 * print, but for the advice that the pool be as large as the concurrency: with the local queue and
 * batched completion a job holds no connection of its own.
 */
function quietLogger() {
  return new Logger(() => (level, message) => {
    if ((level === "error" || level === "warning") && !message.includes("maxPoolSize")) console.error(`graphile-worker ${level}: ${message}`);
  });
}

export async function prepare() {
  const schema = `onceq_peers_gw_${process.pid}_${Date.now()}`;
  const connectionString = databaseUrl();
  const logger = quietLogger();
  await runMigrations({ connectionString, schema, logger });
  const client = new pg.Client({ connectionString });
  await client.connect();
  const { rows } = await client.query("select current_setting('server_version') as version, current_setting('synchronous_commit') as sync, current_setting('fsync') as fsync");
  await client.end();
  const { version, sync, fsync } = rows[0];
  return {
    ctx: { connectionString, schema },
    setting:
      `graphile-worker ${packageVersion("graphile-worker")} on the same PostgreSQL ${version} (fsync ${fsync}, synchronous_commit ${sync}), a schema of its own; ` +
      `addJobs of 100; one runner, concurrency ${CONCURRENT_JOBS}, localQueue size ${LOCAL_QUEUE_SIZE}, completeJobBatchDelay 0 (batched completion), pool ${POOL_SIZE}`,
    stop: async () => {
      const drop = new pg.Client({ connectionString });
      await drop.connect();
      try {
        await drop.query(`drop schema if exists "${schema}" cascade`);
      } finally {
        await drop.end();
      }
    },
  };
}

export async function producer(ctx) {
  const utils = await makeWorkerUtils({ connectionString: ctx.connectionString, schema: ctx.schema, maxPoolSize: 4 });
  return {
    enqueue: async (numbers) => {
      await utils.addJobs(numbers.map((n) => ({ identifier: "noop", payload: payloadObject(n) })));
    },
    close: () => utils.release(),
  };
}

export async function consumer(ctx, completions, finished) {
  const logger = quietLogger();
  const runner = await run({
    connectionString: ctx.connectionString,
    schema: ctx.schema,
    concurrency: CONCURRENT_JOBS,
    maxPoolSize: POOL_SIZE,
    noHandleSignals: true,
    logger,
    taskList: { noop: async () => {} },
    preset: { worker: { localQueue: { size: LOCAL_QUEUE_SIZE }, completeJobBatchDelay: 0 } },
  });
  const poller = new pg.Client({ connectionString: ctx.connectionString });
  await poller.connect();
  runner.events.on("job:success", ({ job }) => {
    completions.record(jobNumber(job.payload));
    if (completions.done) void untilEmpty();
  });
  async function untilEmpty() {
    for (;;) {
      const { rows } = await poller.query(`select count(*)::int as left from "${ctx.schema}"._private_jobs`);
      if (rows[0].left === 0) return finished();
      await new Promise((r) => setTimeout(r, EMPTY_POLL_MS));
    }
  }
  return {
    close: async () => {
      await runner.stop();
      await poller.end();
    },
  };
}

export async function check(ctx) {
  const client = new pg.Client({ connectionString: ctx.connectionString });
  await client.connect();
  try {
    const { rows } = await client.query(`select count(*)::int as left from "${ctx.schema}"._private_jobs`);
    if (rows[0].left !== 0) throw new Error(`graphile-worker still holds ${rows[0].left} jobs after the run`);
  } finally {
    await client.end();
  }
}
