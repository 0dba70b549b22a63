// RabbitMQ (the machine's broker) with a quorum queue (`x-queue-type: quorum`, durable) of the
// run's own name, deleted after it. A quorum queue confirms a publish once its Raft log entry is
// written and fsynced. Producers: one confirm channel each, 100 persistent messages, then
// `waitForConfirms` (publisher confirms per 100). Consumer: CONSUMERS channels, each with prefetch
// 100, that ack with `multiple` once 100 messages are unacked, or when no delivery came for
// ACK_IDLE_MS (the tail of the run). AMQP 0-9-1 does not confirm an ack: the clock stops after the
// last ack is sent and every channel has answered one more request (`checkQueue`), so the broker
// has received every ack.

import amqp from "amqplib";

import { packageVersion } from "../lib/versions.mjs";
import { BATCH, jobNumber, payloadText, PRODUCERS } from "../lib/workload.mjs";

/** Consumer channels, as many as `onceq bench`'s end-to-end workers. */
const CONSUMERS = 8;
/** How long a channel with unacked messages waits for another delivery before it acks them. */
const ACK_IDLE_MS = 2;

export const name = "RabbitMQ";

const amqpUrl = () => process.env.PEERS_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

export async function prepare() {
  const queue = `onceq-peers-${process.pid}-${Date.now()}`;
  const connection = await amqp.connect(amqpUrl());
  const version = connection.connection.serverProperties?.version ?? "?";
  try {
    const channel = await connection.createChannel();
    await channel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });
    await channel.close();
  } finally {
    await connection.close();
  }
  return {
    ctx: { url: amqpUrl(), queue },
    setting:
      `amqplib ${packageVersion("amqplib")}, RabbitMQ ${version}, a quorum queue (one node); persistent messages, publisher confirms awaited per 100 on a confirm channel per producer; ` +
      `${CONSUMERS} consumer channels, prefetch ${BATCH}, one ack with multiple per 100 (acks are not confirmed in AMQP 0-9-1)`,
    stop: async () => {
      const c = await amqp.connect(amqpUrl());
      try {
        const channel = await c.createChannel();
        await channel.deleteQueue(queue);
      } finally {
        await c.close();
      }
    },
  };
}

export async function producer(ctx) {
  const connection = await amqp.connect(ctx.url);
  const channels = await Promise.all(Array.from({ length: PRODUCERS }, () => connection.createConfirmChannel()));
  return {
    enqueue: async (numbers, loop) => {
      const channel = channels[loop];
      for (const n of numbers) channel.sendToQueue(ctx.queue, Buffer.from(payloadText(n)), { persistent: true });
      await channel.waitForConfirms();
    },
    close: () => connection.close(),
  };
}

export async function consumer(ctx, completions, finished) {
  const connection = await amqp.connect(ctx.url);
  const channels = [];
  let finishing = false;
  for (let i = 0; i < CONSUMERS; i++) {
    const channel = await connection.createChannel();
    await channel.prefetch(BATCH);
    channels.push(channel);
    let unacked = [];
    let idle;
    const ackAll = () => {
      clearTimeout(idle);
      if (unacked.length === 0) return;
      channel.ack(unacked[unacked.length - 1], true);
      for (const message of unacked) completions.record(jobNumber(message.content));
      unacked = [];
      if (completions.done && !finishing) {
        finishing = true;
        // One request per channel: each answers after it has handled every ack sent before.
        void Promise.all(channels.map((c) => c.checkQueue(ctx.queue))).then(finished);
      }
    };
    await channel.consume(
      ctx.queue,
      (message) => {
        if (message === null) return;
        unacked.push(message);
        clearTimeout(idle);
        if (unacked.length >= BATCH) ackAll();
        else idle = setTimeout(ackAll, ACK_IDLE_MS);
      },
      { noAck: false },
    );
  }
  return { close: () => connection.close() };
}

export async function check(ctx) {
  const connection = await amqp.connect(ctx.url);
  try {
    const channel = await connection.createChannel();
    const { messageCount, consumerCount } = await channel.checkQueue(ctx.queue);
    if (messageCount !== 0) throw new Error(`RabbitMQ queue ${ctx.queue} still holds ${messageCount} messages after the run (${consumerCount} consumers)`);
  } finally {
    await connection.close();
  }
}
