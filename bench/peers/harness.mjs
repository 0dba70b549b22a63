// onceq beside its peers, on this machine, in one run: the same workload (N no-op jobs of 64-byte
// payloads, enqueued in batches of 100 by 4 producers while the consumers run, each completed with
// the batched acknowledgement each system allows) through every system, round after round, so that
// a drift of the machine hits them all alike. Prints and writes one table: each system's setting,
// its median end-to-end jobs/s (first enqueue to last confirmed completion) with every round, and
// its ratio to onceq. `bench/peers/run` installs what this needs and runs it; see README.md here.

import { execFileSync, fork, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { BATCH, PAYLOAD_BYTES, PRODUCERS } from "./lib/workload.mjs";

const here = dirname(fileURLToPath(import.meta.url));

/** Every system, in the order each round runs them; `onceq` is the embedded store through `onceq bench`. */
const SYSTEMS = ["onceq", "onceq-http", "bullmq", "graphile-worker", "rabbitmq", "jetstream"];
/** Longest a measurement may take, per 1,000 jobs (plus a minute), before it is called failed. */
const TIMEOUT_MS_PER_1000_JOBS = 10_000;

const usage = `usage: bench/peers/run [--jobs N] [--rounds R] [--only SYSTEM,...] [--out FILE]

  --jobs N      jobs per system per round, a multiple of ${BATCH} from 1,000 to 10,000,000 (default 100000)
  --rounds R    rounds, 1 to 20 (default 3); each round runs every system once, back to back
  --only LIST   systems to run, comma-separated, of: ${SYSTEMS.join(", ")} (default: all)
  --out FILE    where to write the markdown table (default bench/peers/results/peers-<UTC time>.md)

environment: ONCEQ_BIN (the onceq binary, default target/release/onceq), PEERS_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/test), PEERS_AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672), PEERS_NATS_SERVER (a nats-server binary that knows
sync_interval; bench/peers/run installs one), PEERS_TMPDIR (the disk for the servers this run
starts: Redis, nats-server, onceq; default the system's temporary directory)`;

function fail(message) {
  console.error(`bench/peers: ${message}`);
  process.exit(2);
}

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        jobs: { type: "string", default: "100000" },
        rounds: { type: "string", default: "3" },
        only: { type: "string" },
        out: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    fail(`${e.message}\n${usage}`);
  }
  if (parsed.help) {
    console.log(usage);
    process.exit(0);
  }
  const jobs = Number(parsed.jobs);
  if (!Number.isInteger(jobs) || jobs < 1_000 || jobs > 10_000_000 || jobs % BATCH !== 0) {
    fail(`--jobs must be a multiple of ${BATCH} from 1000 to 10000000, got ${parsed.jobs}`);
  }
  const rounds = Number(parsed.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) fail(`--rounds must be an integer from 1 to 20, got ${parsed.rounds}`);
  const systems = parsed.only ? parsed.only.split(",").map((s) => s.trim()) : SYSTEMS;
  for (const system of systems) if (!SYSTEMS.includes(system)) fail(`unknown system ${system} in --only; the systems are ${SYSTEMS.join(", ")}`);
  const stamp = new Date().toISOString().slice(0, 16).replace(":", "");
  const out = parsed.out ?? join(here, "results", `peers-${stamp}Z.md`);
  return { jobs, rounds, systems: SYSTEMS.filter((s) => systems.includes(s)), out };
}

/** One measurement of a Node.js-driven system: its producer and consumer processes, timed. */
async function measureNode(system, jobs) {
  const module = await import(`./systems/${system}.mjs`);
  const prepared = await module.prepare({ jobs });
  const children = [];
  const timeoutMs = 60_000 + (jobs / 1000) * TIMEOUT_MS_PER_1000_JOBS;
  try {
    const env = { ...process.env, PEERS_CTX: JSON.stringify(prepared.ctx), PEERS_JOBS: String(jobs) };
    const start = (role) => {
      const child = fork(join(here, "lib", "child.mjs"), [system, role], { env, stdio: ["ignore", "inherit", "inherit", "ipc"] });
      children.push(child);
      const messages = [];
      const waiters = [];
      child.on("message", (m) => {
        const waiter = waiters.shift();
        if (waiter) waiter.resolve(m);
        else messages.push(m);
      });
      child.on("exit", (code, signal) => {
        for (const waiter of waiters.splice(0)) waiter.reject(new Error(`${system} ${role} exited (${code ?? signal})`));
      });
      return {
        child,
        next: () =>
          messages.length > 0
            ? Promise.resolve(messages.shift())
            : child.exitCode !== null
              ? Promise.reject(new Error(`${system} ${role} exited (${child.exitCode})`))
              : new Promise((resolve, reject) => waiters.push({ resolve, reject })),
      };
    };
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${system}: no result within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const consumer = start("consume");
      await Promise.race([consumer.next(), timeout]);
      const producer = start("produce");
      await Promise.race([producer.next(), timeout]);
      producer.child.send({ go: true });
      const [produced, consumed] = await Promise.race([Promise.all([producer.next(), consumer.next()]), timeout]);
      const { completed, duplicates, unexpected } = consumed.summary;
      if (completed !== jobs || unexpected !== 0) {
        throw new Error(`${system}: ${completed} of ${jobs} jobs completed, ${unexpected} unexpected`);
      }
      const seconds = Number(BigInt(consumed.finished) - BigInt(produced.started)) / 1e9;
      await Promise.race([Promise.all(children.map((c) => (c.exitCode !== null ? null : new Promise((r) => c.once("exit", r))))), timeout]);
      await module.check(prepared.ctx, jobs);
      return { jobsPerS: jobs / seconds, seconds, duplicates, setting: prepared.setting };
    } finally {
      clearTimeout(timer);
    }
  } finally {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await prepared.stop();
  }
}

/**
 * onceq's embedded store: one round of `onceq bench`'s batched end-to-end scenario with fsync
 * durability and 64-byte payloads (4 producers enqueueing 100 per call, 8 workers leasing 100 and
 * acking them in one call), with its raw SQLite floor measured in the same call.
 */
function measureOnceqEmbedded(bin, jobs) {
  const args = ["bench", "--only", "end-to-end-batched", "--durability", "fsync", "--payload-bytes", String(PAYLOAD_BYTES), "--jobs", String(jobs), "--rounds", "1"];
  if (process.env.PEERS_TMPDIR) args.push("--data-dir", process.env.PEERS_TMPDIR);
  const run = spawnSync(bin, args, { encoding: "utf8", timeout: 60_000 + (jobs / 1000) * TIMEOUT_MS_PER_1000_JOBS });
  if (run.status !== 0) throw new Error(`onceq ${args.join(" ")} failed (${run.status ?? run.signal}): ${run.stderr}`);
  const line = run.stdout.split("\n").find((l) => l.startsWith(`end-to-end ${BATCH}/call,`));
  if (!line) throw new Error(`no end-to-end row in the output of onceq ${args.join(" ")}:\n${run.stdout}`);
  const scenario = line.slice(0, 44).trim();
  const [count, perS, , , floorPerS] = line.slice(44).trim().split(/\s+/);
  const number = (text) => Number(text.replaceAll(",", ""));
  if (number(count) !== jobs || !(number(perS) > 0) || !(number(floorPerS) > 0)) throw new Error(`cannot read the row: ${line}`);
  return {
    jobsPerS: number(perS),
    seconds: jobs / number(perS),
    floorPerS: number(floorPerS),
    setting: `embedded store, durability fsync, in-process: \`onceq bench --only end-to-end-batched --durability fsync --payload-bytes ${PAYLOAD_BYTES}\` (${scenario}, lease 100 and one ack call per 100)`,
  };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const thousands = (n) => Math.round(n).toLocaleString("en-US");

function machine() {
  const cpuModel = readFileSync("/proc/cpuinfo", "utf8").match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown CPU";
  const tmp = process.env.PEERS_TMPDIR ?? "/tmp";
  let disk = "unknown disk";
  try {
    const source = execFileSync("findmnt", ["-n", "-o", "SOURCE,FSTYPE", "-T", tmp], { encoding: "utf8" }).trim();
    const device = source.split(/\s+/)[0].replace(/^\/dev\//, "").replace(/[0-9]+$/, "");
    const rota = readFileSync(`/sys/block/${device}/queue/rotational`, "utf8").trim();
    disk = `${source.replace(/\s+/, ", ")}${rota === "1" ? " (reports rotational)" : " (non-rotational)"}`;
  } catch {
    // findmnt or sysfs missing: the disk stays unnamed.
  }
  const memGiB = Math.round(Number(readFileSync("/proc/meminfo", "utf8").match(/MemTotal:\s+(\d+)/)[1]) / 1024 / 1024);
  return `${cpus().length} CPUs (${cpuModel}), ${memGiB} GiB, data on ${disk}`;
}

async function main() {
  const { jobs, rounds, systems, out } = options();
  const bin = process.env.ONCEQ_BIN ?? join(here, "..", "..", "target", "release", "onceq");
  process.env.ONCEQ_BIN = bin;
  const onceqVersion = spawnSync(bin, ["--version"], { encoding: "utf8" }).stdout?.trim() || fail(`cannot run ${bin} --version`);
  const started = new Date();
  const load = [loadavg()[0]];
  console.log(`bench/peers: ${thousands(jobs)} jobs of ${PAYLOAD_BYTES} bytes per system, ${rounds} round(s), ${PRODUCERS} producers, batches of ${BATCH}; ${onceqVersion}`);

  const results = new Map(systems.map((s) => [s, { rounds: [], setting: "", duplicates: 0, floors: [] }]));
  for (let round = 1; round <= rounds; round++) {
    for (const system of systems) {
      const result = system === "onceq" ? measureOnceqEmbedded(bin, jobs) : await measureNode(system, jobs);
      const entry = results.get(system);
      entry.rounds.push(result.jobsPerS);
      entry.setting = result.setting;
      entry.duplicates += result.duplicates ?? 0;
      if (result.floorPerS) entry.floors.push(result.floorPerS);
      console.log(`  round ${round}  ${system.padEnd(16)} ${thousands(result.jobsPerS).padStart(9)} jobs/s  (${result.seconds.toFixed(2)} s)`);
      load.push(loadavg()[0]);
    }
  }
  const finished = new Date();

  const onceqMedian = results.has("onceq") ? median(results.get("onceq").rounds) : undefined;
  const httpMedian = results.has("onceq-http") ? median(results.get("onceq-http").rounds) : undefined;
  // Two decimals, or two significant digits below 0.1, so that a slow peer's ratio is not 0.00.
  const ratio = (value, base) => (base ? (value / base >= 0.1 ? (value / base).toFixed(2) : (value / base).toPrecision(2)) : "-");
  const rows = [];
  for (const [system, entry] of results) {
    const med = median(entry.rounds);
    rows.push({
      system: LABELS[system],
      setting: entry.setting,
      median: thousands(med),
      rounds: entry.rounds.map(thousands).join(", "),
      ratio: ratio(med, onceqMedian),
      ratioHttp: ratio(med, httpMedian),
      note: entry.duplicates ? `${entry.duplicates} duplicate completions` : "",
    });
    if (entry.floors.length > 0) {
      const floor = median(entry.floors);
      rows.push({
        system: "raw SQLite floor (onceq bench)",
        setting: "the same writes as raw rusqlite, synchronous=FULL, pipelined 100 jobs per transaction, measured in the same `onceq bench` call",
        median: thousands(floor),
        rounds: entry.floors.map(thousands).join(", "),
        ratio: ratio(floor, onceqMedian),
        ratioHttp: ratio(floor, httpMedian),
        note: "",
      });
    }
  }

  const header = `| system | jobs/s (median) | rounds (jobs/s) | ÷ onceq embedded | ÷ onceq over HTTP |`;
  const lines = [
    `Measured ${started.toISOString().slice(0, 16).replace("T", " ")}–${finished.toISOString().slice(11, 16)} UTC on ${machine()}; ` +
      `load average ${load.map((l) => l.toFixed(1)).join(" → ")} (1 min, at the start and after each measurement). ` +
      `${thousands(jobs)} no-op jobs of ${PAYLOAD_BYTES} bytes per system and round, enqueued by ${PRODUCERS} producers in batches of ${BATCH} while the consumers run; ` +
      `jobs/s is end to end, first enqueue to last confirmed completion; ${rounds} round(s), each system once per round, back to back. ${onceqVersion}.`,
    "",
    header,
    "|---|---:|---|---:|---:|",
    ...rows.map((r) => `| ${r.system} | ${r.median} | ${r.rounds} | ${r.ratio} | ${r.ratioHttp} |`),
    "",
    "Settings:",
    "",
    ...rows.map((r) => `- **${r.system}**: ${r.setting}${r.note ? ` (${r.note})` : ""}.`),
    "",
  ];
  const text = lines.join("\n");
  console.log(`\n${text}`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, text);
  console.log(`written to ${out}`);
}

const LABELS = {
  onceq: "onceq, embedded",
  "onceq-http": "onceq over HTTP",
  bullmq: "BullMQ",
  "graphile-worker": "graphile-worker",
  rabbitmq: "RabbitMQ quorum queue",
  jetstream: "NATS JetStream",
};

main().catch((e) => {
  console.error(`bench/peers: ${e?.stack ?? e}`);
  process.exit(1);
});
