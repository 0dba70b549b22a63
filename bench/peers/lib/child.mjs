// One side of one measurement, in a process of its own: `node lib/child.mjs SYSTEM produce|consume`
// with the measurement's context in PEERS_CTX and its job count in PEERS_JOBS. The producers and
// the consumers of a system run in two processes, as an application's would, so that neither side
// shares one Node.js thread with the other.
//
// Protocol with the harness (IPC messages): the child connects, then sends {ready}. A producer
// waits for {go}, enqueues every job and sends {produced, started} (monotonic ns, as a string);
// a consumer consumes from the start and sends {consumed, finished, summary} once the system has
// confirmed the completion of every job. Both then close their connections and exit.

const [, , system, role] = process.argv;
const ctx = JSON.parse(process.env.PEERS_CTX ?? "{}");
const jobs = Number(process.env.PEERS_JOBS);

const { Completions, produce } = await import("./workload.mjs");
const module = await import(`../systems/${system}.mjs`);

function send(message) {
  return new Promise((resolve, reject) => process.send(message, (e) => (e ? reject(e) : resolve())));
}

async function main() {
  if (role === "produce") {
    const producer = await module.producer(ctx);
    const go = new Promise((resolve) => process.once("message", resolve));
    await send({ ready: true });
    await go;
    const started = await produce(jobs, (numbers, loop) => producer.enqueue(numbers, loop));
    await send({ produced: true, started: String(started) });
    await producer.close();
  } else if (role === "consume") {
    const completions = new Completions(jobs);
    let finishedAt;
    let markFinished;
    const finished = new Promise((resolve) => {
      markFinished = () => {
        finishedAt ??= process.hrtime.bigint();
        resolve();
      };
    });
    const consumer = await module.consumer(ctx, completions, markFinished);
    await send({ ready: true });
    await finished;
    await send({ consumed: true, finished: String(finishedAt), summary: completions.summary() });
    await consumer.close();
  } else {
    throw new Error(`unknown role ${role}`);
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`${system} ${role}: ${e?.stack ?? e}`);
    process.exit(1);
  },
);
