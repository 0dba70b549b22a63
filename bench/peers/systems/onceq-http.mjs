// onceq over HTTP: an `onceq serve` started for the run (the binary in ONCEQ_BIN) on a fresh
// embedded store with the default durability, fsync (a reply is sent after its commit is synced),
// driven by the repository's Node.js client (clients/node, built by bench/peers/run). Producers:
// `Client.enqueue` of 100 jobs. Consumer: CONSUMERS loops, each leasing up to 100 jobs (long poll
// LEASE_WAIT_MS) and acking them in one call (`Client.acks`), as `onceq bench`'s end-to-end
// workers do; a job counts when its ack's reply says ok.

import { execFileSync } from "node:child_process";
import { join } from "node:path";

import { Client } from "../../../clients/node/dist/index.js";
import { freePort, ServerProcess, tempDir } from "../lib/services.mjs";
import { BATCH, jobNumber, payloadObject } from "../lib/workload.mjs";

/** Consumer loops, as many as `onceq bench`'s end-to-end workers. */
const CONSUMERS = 8;
/** Long poll of each lease call, in ms. */
const LEASE_WAIT_MS = 50;
/** Lease length: far longer than any run, so no job is handed out twice. */
const VISIBILITY_TIMEOUT_MS = 600_000;
const QUEUE = "peers";

export const name = "onceq over HTTP";

export async function prepare() {
  const bin = process.env.ONCEQ_BIN;
  if (!bin) throw new Error("ONCEQ_BIN is not set");
  const port = await freePort();
  const dir = tempDir("onceq");
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("ONCEQ_")));
  const server = await ServerProcess.start("onceq serve", bin, ["serve", "--data-dir", join(dir, "data"), "--listen", `127.0.0.1:${port}`, "--durability", "fsync"], { dir, port, env });
  const version = execFileSync(bin, ["--version"], { encoding: "utf8" }).trim();
  return {
    ctx: { url: `http://127.0.0.1:${port}` },
    setting:
      `${version} serve, embedded store, durability fsync, over HTTP/1.1 on loopback, through the Node.js client of clients/node; ` +
      `enqueue of 100 per request; ${CONSUMERS} consumer loops, each a lease of up to ${BATCH} (long poll ${LEASE_WAIT_MS} ms) and one batch ack of them`,
    stop: () => server.stop(),
  };
}

export async function producer(ctx) {
  const client = new Client(ctx.url);
  return {
    enqueue: async (numbers) => {
      const enqueued = await client.enqueue(
        QUEUE,
        numbers.map((n) => ({ payload: payloadObject(n) })),
      );
      if (enqueued.length !== numbers.length) throw new Error(`${enqueued.length} jobs enqueued of ${numbers.length}`);
    },
    close: async () => {},
  };
}

export async function consumer(ctx, completions, finished) {
  const client = new Client(ctx.url);
  let stopping = false;
  const loops = Array.from({ length: CONSUMERS }, async () => {
    while (!stopping && !completions.done) {
      const jobs = await client.lease(QUEUE, { max_jobs: BATCH, wait_ms: LEASE_WAIT_MS, visibility_timeout_ms: VISIBILITY_TIMEOUT_MS });
      if (jobs.length === 0) continue;
      const results = await client.acks(jobs.map((job) => ({ id: job.id, lease_token: job.lease_token })));
      results.forEach((result, i) => {
        if (!result.ok) throw new Error(`ack of job ${result.id} failed: ${JSON.stringify(result.error)}`);
        completions.record(jobNumber(jobs[i].payload));
      });
      if (completions.done) finished();
    }
  });
  return {
    close: async () => {
      stopping = true;
      await Promise.all(loops);
    },
  };
}

export async function check(ctx) {
  const stats = (await new Client(ctx.url).queueGet(QUEUE)).stats;
  const left = stats.ready + stats.leased + stats.scheduled;
  if (left !== 0) throw new Error(`onceq still holds ${left} jobs after the run: ${JSON.stringify(stats)}`);
}
