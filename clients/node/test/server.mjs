// The harness of the tests: a real `onceq serve` (the binary in ONCEQ_BIN) on a free port with
// an embedded store in a fresh temporary directory. Each test file starts its own, so files run
// in parallel without sharing anything.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Longest wait for a server to print its listening line (debug builds, a loaded machine). */
const START_TIMEOUT_MS = 30_000;
const LISTENING = "onceq listening on http://";

export class Server {
  /** `args`: more arguments of `onceq serve` (default: relaxed durability, which a crash of the process does not lose). */
  constructor(args = ["--durability", "relaxed"]) {
    const bin = process.env.ONCEQ_BIN;
    if (!bin) {
      throw new Error("ONCEQ_BIN is not set: point it at the onceq binary (cargo build -p onceq-cli; ONCEQ_BIN=target/debug/onceq)");
    }
    this.bin = bin;
    this.dir = mkdtempSync(join(tmpdir(), "onceq-node-"));
    this.listen = "127.0.0.1:0";
    this.child = undefined;
    this.url = undefined;
    this.stderr = "";
    this.args = args;
  }

  /** Starts the server (again, on the same address and data after a stop). */
  async start() {
    const env = { ...process.env };
    for (const name of Object.keys(env)) if (name.startsWith("ONCEQ_")) delete env[name];
    const child = spawn(this.bin, ["serve", "--data-dir", join(this.dir, "data"), "--listen", this.listen, ...this.args], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    child.stderr.on("data", (chunk) => {
      this.stderr = (this.stderr + chunk).slice(-20_000);
    });
    const addr = await new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error(`onceq serve did not listen within ${START_TIMEOUT_MS} ms: ${this.stderr}`)), START_TIMEOUT_MS);
      child.stdout.on("data", (chunk) => {
        out += chunk;
        const at = out.indexOf(LISTENING);
        if (at >= 0 && out.indexOf(" ", at + LISTENING.length) > 0) {
          clearTimeout(timer);
          resolve(out.slice(at + LISTENING.length).split(" ")[0]);
        }
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`onceq serve exited (${code}) before listening: ${this.stderr}`));
      });
    });
    this.listen = addr;
    this.url = `http://${addr}`;
    return this;
  }

  /** Kills the process at once (SIGKILL): an outage. */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    this.child = undefined;
  }

  /** Kills the server and removes its directory. */
  async close() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A started server. */
export async function startServer(args) {
  return new Server(args).start();
}

/** A queue name of its own for each test. */
let counter = 0;
export function queueName(prefix = "q") {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

/** Waits until `check()` is truthy, at most `ms`. */
export async function eventually(check, ms = 10_000, what = "the condition") {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
