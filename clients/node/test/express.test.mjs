// The Express idempotency middleware against a real `onceq serve`, including the two failures of
// the naive middleware it replaces: a store outage does not let the handler run twice, and a
// retry after success gets the stored response without running the handler.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import express from "express";

import { Client } from "../dist/index.js";
import { idempotency } from "../dist/express.js";
import { queueName, Server } from "./server.mjs";

let server;
/** The store's outage kills and restarts it on the same address, so it keeps every write (fsync). */
before(async () => {
  server = await new Server([]).start();
});
after(() => server.close());

/** An app guarded by the middleware; `handler` answers POST /payments. Resolves to its base URL and closer. */
async function app(options, handler) {
  const runs = { count: 0 };
  const application = express();
  application.use(express.json());
  application.use(idempotency({ client: new Client({ url: server.url, requestTimeoutMs: 2_000 }), onError: () => {}, ...options }));
  application.post("/payments", async (req, res) => {
    runs.count++;
    await handler(req, res, runs.count);
  });
  application.get("/payments", (_req, res) => res.json({ list: [] }));
  const listener = await new Promise((resolve) => {
    const s = application.listen(0, "127.0.0.1", () => resolve(s));
  });
  const base = `http://127.0.0.1:${listener.address().port}`;
  return { base, runs, close: () => new Promise((r) => listener.close(r)) };
}

const post = (base, key, body = { amount: 5 }, extra = {}) =>
  fetch(`${base}/payments`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key === undefined ? {} : { "idempotency-key": key }), ...extra },
    body: JSON.stringify(body),
  });

const created = (req, res, n) => {
  res.status(201).set("x-charge", `ch_${n}`).cookie("session", "secret").json({ charge: `ch_${n}`, amount: req.body.amount });
};

test("a retry after success gets the stored response without running the handler", async () => {
  const { base, runs, close } = await app({}, created);
  const key = queueName("k");
  const first = await post(base, key);
  assert.equal(first.status, 201);
  assert.deepEqual(await first.json(), { charge: "ch_1", amount: 5 });
  assert.equal(first.headers.get("idempotent-replayed"), null);
  const retry = await post(base, key);
  assert.equal(retry.status, 201);
  assert.equal(retry.headers.get("idempotent-replayed"), "true");
  assert.equal(retry.headers.get("x-charge"), "ch_1");
  assert.equal(retry.headers.get("set-cookie"), null, "a replay never hands out the first caller's cookies");
  assert.match(retry.headers.get("content-type"), /application\/json/);
  assert.deepEqual(await retry.json(), { charge: "ch_1", amount: 5 });
  assert.equal(runs.count, 1);
  await close();
});

test("a store outage does not let the handler run twice", async () => {
  let killDuringHandler = true;
  const { base, runs, close } = await app({}, async (req, res, n) => {
    if (killDuringHandler) await server.kill(); // the store goes down while the effect happens
    created(req, res, n);
  });
  const key = queueName("k");
  // The effect happened, so the first caller gets its response though it could not be stored.
  const first = await post(base, key);
  assert.equal(first.status, 201);
  // Retries while the store is down: 503, fail-closed, the handler does not run.
  const down = await post(base, key);
  assert.equal(down.status, 503);
  assert.equal(down.headers.get("retry-after"), "2");
  assert.equal((await down.json()).error.code, "unavailable");
  // A new key while the store is down does not run either.
  assert.equal((await post(base, queueName("k"))).status, 503);
  // The store is back: the first request's claim still holds the key, so the retry waits, not runs.
  killDuringHandler = false;
  await server.start();
  const back = await post(base, key);
  assert.equal(back.status, 409);
  assert.equal((await back.json()).error.code, "idempotency_key_in_progress");
  assert.ok(Number(back.headers.get("retry-after")) >= 1);
  assert.equal(runs.count, 1);
  await close();
});

test("fail-open is an explicit option: then an outage runs the handler without idempotency", async () => {
  const { base, runs, close } = await app({ failOpen: true }, created);
  await server.kill();
  try {
    const response = await post(base, queueName("k"));
    assert.equal(response.status, 201);
    assert.equal(runs.count, 1);
  } finally {
    await server.start();
    await close();
  }
});

test("409 while a request with the same key is in progress; 422 when the key is reused with another body", async () => {
  let release;
  let entered;
  const gate = new Promise((r) => (release = r));
  const inHandler = new Promise((r) => (entered = r));
  const { base, runs, close } = await app({}, async (req, res, n) => {
    entered();
    await gate;
    created(req, res, n);
  });
  const key = queueName("k");
  const first = post(base, key);
  // The first request holds the key once its handler runs.
  await inHandler;
  const probe = await post(base, key);
  assert.equal(probe.status, 409);
  assert.equal((await probe.json()).error.code, "idempotency_key_in_progress");
  assert.ok(Number(probe.headers.get("retry-after")) >= 1);
  release();
  assert.equal((await first).status, 201);
  const reused = await post(base, key, { amount: 6 });
  assert.equal(reused.status, 422);
  assert.equal((await reused.json()).error.code, "idempotency_key_reused");
  assert.equal(runs.count, 1);
  await close();
});

test("400 when the key is missing or invalid where required; a GET passes; a body field may carry it", async () => {
  const { base, runs, close } = await app({}, created);
  const missing = await post(base, undefined);
  assert.equal(missing.status, 400);
  assert.equal((await missing.json()).error.code, "idempotency_key_missing");
  const empty = await post(base, "   ");
  assert.equal((await empty.json()).error.code, "idempotency_key_invalid");
  const long = await post(base, "k".repeat(193));
  assert.match((await long.json()).error.message, /193 bytes long; the limit is 192/);
  assert.equal((await fetch(`${base}/payments`)).status, 200);
  assert.equal(runs.count, 0);
  await close();

  const byField = await app({ bodyField: "request_id" }, created);
  const key = queueName("k");
  assert.equal((await post(byField.base, undefined, { amount: 1, request_id: key })).status, 201);
  const again = await post(byField.base, undefined, { amount: 1, request_id: key });
  assert.equal(again.headers.get("idempotent-replayed"), "true");
  assert.equal(byField.runs.count, 1);
  await byField.close();
});

test("a 5xx releases the key so the retry runs; an oversized response is sent but not replayed", async () => {
  const flaky = await app({}, (req, res, n) => (n === 1 ? res.status(500).json({ error: "db down" }) : created(req, res, n)));
  const key = queueName("k");
  assert.equal((await post(flaky.base, key)).status, 500);
  const retry = await post(flaky.base, key);
  assert.equal(retry.status, 201);
  assert.equal(retry.headers.get("idempotent-replayed"), null);
  assert.equal(flaky.runs.count, 2);
  await flaky.close();

  const big = await app({ responseBodyBytesMax: 1024 }, (_req, res) => {
    res.status(200).type("text/plain");
    res.write("x".repeat(800));
    res.end("y".repeat(800));
  });
  const bigKey = queueName("k");
  const first = await post(big.base, bigKey);
  assert.equal((await first.text()).length, 1600);
  const replay = await post(big.base, bigKey);
  assert.equal(replay.status, 500);
  assert.equal(replay.headers.get("idempotent-replayed"), "true");
  assert.equal((await replay.json()).error.code, "response_not_stored");
  assert.equal(big.runs.count, 1);
  await big.close();
});
