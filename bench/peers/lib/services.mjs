// Server processes a measurement starts for itself (a Redis with AOF always, a nats-server with
// sync_interval always, an `onceq serve`), each on a free loopback port in a fresh temporary
// directory, killed and removed when the measurement ends.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Longest wait for a started server to accept connections. */
const START_TIMEOUT_MS = 30_000;

/** A free TCP port on 127.0.0.1 (the kernel's pick, released for the caller to take). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A fresh temporary directory named after `what`. */
export function tempDir(what) {
  return mkdtempSync(join(process.env.PEERS_TMPDIR ?? tmpdir(), `onceq-peers-${what}-`));
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** A started server process; `stop()` kills it (SIGKILL) and removes its directory. */
export class ServerProcess {
  constructor(name, child, dir) {
    this.name = name;
    this.child = child;
    this.dir = dir;
    this.output = "";
    const keep = (chunk) => {
      this.output = (this.output + chunk).slice(-20_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
  }

  /** Starts `command args` in `dir` and waits until it accepts connections on `port`. */
  static async start(name, command, args, { dir, port, env }) {
    const child = spawn(command, args, { cwd: dir, env: env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    const server = new ServerProcess(name, child, dir);
    const spawnError = new Promise((_, reject) => child.once("error", (e) => reject(new Error(`${name}: ${command} did not start: ${e.message}`))));
    const deadline = Date.now() + START_TIMEOUT_MS;
    const ready = (async () => {
      while (Date.now() < deadline) {
        if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}) before listening:\n${server.output}`);
        if (await canConnect(port)) return;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`${name} did not listen on port ${port} within ${START_TIMEOUT_MS} ms:\n${server.output}`);
    })();
    try {
      await Promise.race([ready, spawnError]);
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  async stop() {
    const child = this.child;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    }
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
