// The shared client scenarios (clients/scenarios/*.json, format in its README.md) through this
// client against a real `onceq serve`: the Node client must give the results every client gives.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { Client, OnceqError } from "../dist/index.js";
import { startServer } from "./server.mjs";

const DIR = new URL("../../scenarios/", import.meta.url);
const files = readdirSync(DIR).filter((name) => name.endsWith(".json")).sort();

let server;
let client;
before(async () => {
  server = await startServer();
  client = new Client(server.url);
});
after(() => server.close());

/** Each op through the client's own call; the result is the endpoint's body, `{}` for a 204. */
function operations(queue) {
  const key = (args) => `${queue}.${args.key}`;
  const empty = async (promise) => (await promise, {});
  return {
    queue_get: () => client.queueGet(queue),
    enqueue: async (a) => ({ jobs: await client.enqueue(queue, a.jobs) }),
    lease: async (a) => ({ jobs: await client.lease(queue, a) }),
    job_get: (a) => client.jobGet(a.id),
    ack: (a) => empty(client.ack(a.id, a.lease_token)),
    nack: (a) => empty(client.nack(a.id, a.lease_token, withoutIdAndToken(a))),
    extend: async (a) => ({ lease_expires_at: await client.extend(a.id, a.lease_token, a.visibility_timeout_ms) }),
    fail: (a) => empty(client.fail(a.id, a.lease_token, a.error)),
    release: (a) => empty(client.release(a.id, a.lease_token, withoutIdAndToken(a))),
    acks: async (a) => ({ results: await client.acks(a.acks) }),
    nacks: async (a) => ({ results: await client.nacks(a.nacks) }),
    extends: async (a) => ({ results: await client.extends(a.extends) }),
    fails: async (a) => ({ results: await client.fails(a.fails) }),
    releases: async (a) => ({ results: await client.releases(a.releases) }),
    dead_list: (a) => client.deadList(queue, a),
    dead_redrive: (a) => client.deadRedrive(queue, a),
    dead_purge: async () => ({ purged: await client.deadPurge(queue) }),
    idempotency_begin: (a) => {
      const { key: _key, ...rest } = a;
      return client.idempotencyBegin(key(a), rest);
    },
    idempotency_complete: (a) => empty(client.idempotencyComplete(key(a), { owner: a.owner, result: a.result, retention_ms: a.retention_ms })),
    idempotency_release: (a) => empty(client.idempotencyRelease(key(a), a.owner)),
    sleep: (a) => empty(new Promise((r) => setTimeout(r, a.ms))),
  };
}

function withoutIdAndToken(args) {
  const { id: _id, lease_token: _token, ...rest } = args;
  return rest;
}

/** Replaces `$queue` and `$<saved>.<path>` references, keeping each value's JSON type. */
function resolve(value, queue, saved, where) {
  if (typeof value === "string" && value.startsWith("$")) {
    if (value === "$queue") return queue;
    const [name, ...path] = value.slice(1).split(".");
    if (!(name in saved)) throw new Error(`${where}: ${value} names a result never saved`);
    let current = saved[name];
    for (const part of path) {
      const match = /^([^[\]]+)((?:\[\d+\])*)$/.exec(part);
      if (!match) throw new Error(`${where}: bad reference ${value}`);
      const steps = [match[1], ...[...match[2].matchAll(/\[(\d+)\]/g)].map((m) => Number(m[1]))];
      for (const step of steps) {
        if (current === null || typeof current !== "object" || !(step in current)) {
          throw new Error(`${where}: ${value} names a missing field`);
        }
        current = current[step];
      }
    }
    return current;
  }
  if (Array.isArray(value)) return value.map((v) => resolve(v, queue, saved, where));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(v, queue, saved, where)]));
  }
  return value;
}

/** Why `actual` does not match `expected` (README, "Matching"), or null when it does. */
function mismatch(expected, actual, path = "result") {
  if (expected === "<any>") return actual === undefined ? `${path} is absent` : null;
  if (expected === "<absent>") return actual === undefined ? null : `${path} is present: ${JSON.stringify(actual)}`;
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) return `${path}: expected ${expected.length} items, got ${JSON.stringify(actual)}`;
    for (let i = 0; i < expected.length; i++) {
      const why = mismatch(expected[i], actual[i], `${path}[${i}]`);
      if (why) return why;
    }
    return null;
  }
  if (expected !== null && typeof expected === "object") {
    if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return `${path}: expected an object, got ${JSON.stringify(actual)}`;
    for (const [name, value] of Object.entries(expected)) {
      const why = mismatch(value, actual[name], `${path}.${name}`);
      if (why) return why;
    }
    return null;
  }
  return expected === actual ? null : `${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`;
}

for (const file of files) {
  const scenario = JSON.parse(readFileSync(new URL(file, DIR), "utf8"));
  test(`scenario ${scenario.name}: ${scenario.description}`, async () => {
    assert.equal(`${scenario.name}.json`, file, "a scenario's name is its file's name");
    const queue = `scn-${scenario.name}-${randomBytes(4).toString("hex")}`;
    await client.queuePut(queue, scenario.queue);
    const ops = operations(queue);
    const saved = {};
    for (const [index, step] of scenario.steps.entries()) {
      const where = `${file} step ${index} (${step.op})`;
      const op = ops[step.op];
      if (!op) throw new Error(`${where}: unknown op`);
      // References are replaced before the step runs, in `args` and `expect` alike (README.md).
      const args = resolve(step.args ?? {}, queue, saved, where);
      const expected = step.expect === undefined ? undefined : resolve(step.expect, queue, saved, where);
      let result;
      try {
        result = await op(args);
      } catch (error) {
        if (!(error instanceof OnceqError)) throw error;
        result = { error: error.code };
      }
      if (expected === undefined) {
        assert.ok(!("error" in result && typeof result.error === "string"), `${where}: expected success, got ${JSON.stringify(result)}`);
      } else {
        const isError = typeof result.error === "string" && Object.keys(result).length === 1;
        const why = isError !== ("error" in expected)
          ? `expected ${JSON.stringify(expected)}, got ${JSON.stringify(result)}`
          : mismatch(expected, result);
        assert.equal(why, null, `${where}: ${why}`);
      }
      if (step.save) saved[step.save] = result;
    }
  });
}
