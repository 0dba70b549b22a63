// BullMQ on a Redis of its own with `appendonly yes` and `appendfsync always`: Redis fsyncs its
// append-only file before it answers a write, so a job BullMQ reports added, or completed,
// survives a power loss. Producers: `Queue.addBulk` of 100 jobs (`removeOnComplete`, so that a
// completed job is deleted as an acked onceq job is). Consumer: one BullMQ `Worker` whose
// concurrency is WORKER_CONCURRENCY; BullMQ completes each job on its own (its `moveToFinished`
// script also fetches the next job); a job counts when its `completed` event fires, after that
// script's reply.

import { execFileSync } from "node:child_process";

import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";

import { freePort, ServerProcess, tempDir } from "../lib/services.mjs";
import { packageVersion } from "../lib/versions.mjs";
import { jobNumber, payloadObject } from "../lib/workload.mjs";

/** Jobs a BullMQ worker runs at once. */
const WORKER_CONCURRENCY = 100;
const QUEUE = "peers";

export const name = "BullMQ";

/** A connection to the run's Redis (BullMQ takes a client instance under ESM). */
function connection(ctx) {
  return new Redis({ host: "127.0.0.1", port: ctx.port, maxRetriesPerRequest: null });
}

export async function prepare() {
  const port = await freePort();
  const dir = tempDir("redis");
  const server = await ServerProcess.start(
    "redis-server",
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
    { dir, port },
  );
  const version = execFileSync("redis-server", ["--version"], { encoding: "utf8" }).match(/v=(\S+)/)?.[1] ?? "?";
  return {
    ctx: { port },
    setting: `bullmq ${packageVersion("bullmq")}, Redis ${version} started for the run with appendonly yes, appendfsync always; addBulk of 100; one Worker, concurrency ${WORKER_CONCURRENCY}; removeOnComplete`,
    stop: () => server.stop(),
  };
}

export async function producer(ctx) {
  const redis = connection(ctx);
  const queue = new Queue(QUEUE, { connection: redis });
  await queue.waitUntilReady();
  return {
    enqueue: async (numbers) => {
      await queue.addBulk(numbers.map((n) => ({ name: "noop", data: payloadObject(n), opts: { removeOnComplete: true } })));
    },
    close: async () => {
      await queue.close();
      await redis.quit();
    },
  };
}

export async function consumer(ctx, completions, finished) {
  const redis = connection(ctx);
  const worker = new Worker(QUEUE, async () => {}, { connection: redis, concurrency: WORKER_CONCURRENCY, autorun: false });
  worker.on("completed", (job) => {
    completions.record(jobNumber(job.data));
    if (completions.done) finished();
  });
  worker.on("failed", (job, error) => {
    console.error(`BullMQ job ${job?.id} failed: ${error}`);
  });
  await worker.waitUntilReady();
  worker.run();
  return {
    close: async () => {
      await worker.close();
      await redis.quit();
    },
  };
}

export async function check(ctx) {
  const redis = connection(ctx);
  const queue = new Queue(QUEUE, { connection: redis });
  try {
    const counts = await queue.getJobCounts("waiting", "active", "delayed", "prioritized", "waiting-children", "completed", "failed");
    const left = Object.values(counts).reduce((a, b) => a + b, 0);
    if (left !== 0) throw new Error(`BullMQ still holds jobs after the run: ${JSON.stringify(counts)}`);
  } finally {
    await queue.close();
    await redis.quit();
  }
}
