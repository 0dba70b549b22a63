// Throughput of the Node worker on no-op jobs against `onceq serve` with the embedded store
// (fsync durability, the default): batched leases and batched acks. Prints figures; it is not a
// test. Beside it, the same run measures the Rust client's batched lease+ack through
// `onceq bench --server` against the same server, so both figures come from one machine state.
//
//   cargo build --release -p onceq-cli && cd clients/node && npm ci && npm run bench
//
// Knobs (environment): ONCEQ_BIN (default ../../target/release/onceq), BENCH_JOBS (jobs per run,
// default 100000), BENCH_CONCURRENCY (handlers at once, default 1000), BENCH_LEASE_BATCH (jobs per
// lease, 1 to 1000, default 1000), BENCH_RUST (0 skips the Rust figure).

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { Client, Worker } from "./dist/index.js";
import { Server } from "./test/server.mjs";

function knob(name, fallback, min, max) {
  const raw = process.env[name];
  const value = raw === undefined ? fallback : Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    console.error(`${name} must be an integer from ${min} to ${max}, got ${raw}`);
    process.exit(2);
  }
  return value;
}

const jobs = knob("BENCH_JOBS", 100_000, 1_000, 10_000_000);
const concurrency = knob("BENCH_CONCURRENCY", 1_000, 1, 100_000);
const leaseBatch = knob("BENCH_LEASE_BATCH", 1_000, 1, 1_000);
const rust = process.env.BENCH_RUST !== "0";
const bin = process.env.ONCEQ_BIN ?? fileURLToPath(new URL("../../target/release/onceq", import.meta.url));
if (!existsSync(bin)) {
  console.error(`no onceq binary at ${bin}: build it (cargo build --release -p onceq-cli) or set ONCEQ_BIN`);
  process.exit(2);
}
process.env.ONCEQ_BIN = bin;

const server = await new Server([]).start();
try {
  const client = new Client(server.url);
  const queue = "bench-node";

  // Fill the queue first (untimed), 1000 jobs per enqueue, four at a time.
  const payload = { n: 0, pad: "x".repeat(80) };
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < jobs) {
        const size = Math.min(1000, jobs - next);
        next += size;
        await client.enqueue(queue, Array.from({ length: size }, () => ({ payload })));
      }
    }),
  );

  const seen = new Set();
  let duplicates = 0;
  let finished;
  const allSeen = new Promise((resolve) => (finished = resolve));
  const worker = new Worker(client, { concurrency, leaseBatchMax: leaseBatch, prefetch: leaseBatch, leaseWaitMs: 1_000 });
  worker.handle(queue, (job) => {
    if (seen.has(job.id)) duplicates++;
    seen.add(job.id);
    if (seen.size === jobs) finished();
  });
  const started = process.hrtime.bigint();
  worker.start();
  await allSeen;
  await worker.stop(); // sends the last acks
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const stats = (await client.queueGet(queue)).stats;
  if (stats.ready + stats.leased + stats.scheduled !== 0 || duplicates !== 0) {
    throw new Error(`the run did not ack every job once: ${JSON.stringify(stats)}, ${duplicates} duplicates`);
  }
  console.log(`onceq Node worker, no-op jobs, embedded store (fsync), ${jobs} jobs ready`);
  console.log(`  node worker: concurrency ${concurrency}, leases of ${leaseBatch}, batched acks: ${(jobs / seconds).toFixed(0)} jobs/s (${seconds.toFixed(2)} s)`);

  if (rust) {
    // The Rust client's figure on the same server: `onceq bench --server` (lease+ack 100/call).
    const run = spawnSync(bin, ["bench", "--server", server.url, "--jobs", String(jobs)], { encoding: "utf8" });
    if (run.status !== 0) throw new Error(`onceq bench --server failed: ${run.stderr}`);
    console.log("  rust client, the same server (onceq bench --server; its own targets included):");
    for (const line of run.stdout.trimEnd().split("\n")) console.log(`    ${line}`);
  }
} finally {
  await server.close();
}
