// An Express middleware that runs each request at most once per idempotency key and replays its
// response to retries, over onceq's idempotency store. It behaves as the Rust
// `IdempotencyLayer` (crates/onceq-layer/src/idempotency/mod.rs) and writes the same records,
// so the two can share keys:
//
// - Which requests: POST and PATCH (`requiredForMethods`) on the paths `requiredForPaths`
//   accepts (default every path) must carry a key: without one, 400 `idempotency_key_missing`.
//   Other unsafe methods are guarded when they carry a key; GET, HEAD, OPTIONS and TRACE pass.
//   The key comes from the `Idempotency-Key` header (`keyHeader`), or, when the header is absent
//   and `bodyField` is set, from that field of the parsed body. 1 to 192 bytes of printable
//   ASCII; a quoted form is unquoted; a header sent twice is 400 `idempotency_key_invalid`.
// - A guarded request is fingerprinted (SHA-256 of method, path with query and body), then
//   begun under `namespace` + key with a fresh owner:
//   - acquired: the handler runs; its response (status, headers, body) is stored before it is
//     sent, so a retry that follows it finds it;
//   - completed: the stored response is replayed with `Idempotent-Replayed: true`, and the
//     handler does not run;
//   - in progress: 409 `idempotency_key_in_progress` with `Retry-After`;
//   - another fingerprint: 422 `idempotency_key_reused`;
//   - the store unreachable: 503 `unavailable` with `Retry-After: 2`, nothing runs (fail-closed);
//     with `failOpen: true` the request runs without idempotency.
// - A response whose status `releaseOn` accepts (5xx, 408, 429) releases the key instead of
//   being stored, so a retry runs again. A response over `responseBodyBytesMax` is sent, not
//   stored; the key is completed with a "not stored" record and a retry gets 500
//   `response_not_stored` rather than a second run. `Set-Cookie`, `Content-Length` and
//   hop-by-hop headers are never stored. A request that never finishes keeps its key claimed
//   for `inProgressTtlMs`.
//
// Mount it after the body parser: the fingerprint hashes the raw body when the parser keeps it
// as `req.rawBody` (`express.json({ verify: (req, _res, buf) => { req.rawBody = buf } })`),
// else the parsed body as JSON text.

import { createHash, randomBytes } from "node:crypto";
import type { NextFunction, Request, RequestHandler, Response } from "express";

import type { Client } from "./client.js";
import { Conflict, Unavailable } from "./errors.js";
import type { Json } from "./types.js";

/** The header a client sends its key in, unless configured otherwise. */
export const KEY_HEADER_DEFAULT = "idempotency-key";
/** The header every replayed response carries, with the value `true`. */
export const REPLAYED_HEADER = "idempotent-replayed";
/** Longest namespace, in bytes; the store key is the namespace followed by the client's key. */
export const NAMESPACE_BYTES_MAX = 64;
export const NAMESPACE_DEFAULT = "http:";
/** Longest key a client may send, in bytes: the store's 256 less the longest namespace. */
export const KEY_BYTES_MAX = 256 - NAMESPACE_BYTES_MAX;
/** How long a request holds its key while the handler runs, unless configured otherwise. */
export const IN_PROGRESS_TTL_MS_DEFAULT = 60_000;
export const IN_PROGRESS_TTL_MS_MAX = 86_400_000;
/** How long a stored response is replayed, unless configured otherwise. */
export const RETENTION_MS_DEFAULT = 86_400_000;
export const RETENTION_MS_MAX = 2_592_000_000;
/** Largest response body stored for replay, unless configured otherwise. */
export const RESPONSE_BODY_BYTES_DEFAULT = 512 * 1024;
/** Largest configurable: the record (body in base64, headers) must fit the store's 1 MiB result. */
export const RESPONSE_BODY_BYTES_MAX = 640 * 1024;
/** Most response headers stored, and their largest total size (names and values). */
export const RESPONSE_HEADER_COUNT_MAX = 64;
export const RESPONSE_HEADER_BYTES_MAX = 32 * 1024;
/** Seconds a client is told to wait when the store is unavailable. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 2;

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);
const NOT_STORED_HEADERS = new Set([
  "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
  "transfer-encoding", "upgrade", "content-length", "set-cookie", REPLAYED_HEADER,
]);

/** Statuses whose responses release the key instead of being stored: 5xx, 408 and 429. */
export function retryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

export interface IdempotencyOptions {
  /** The onceq server holding the keys. */
  client: Client;
  /** Header the key is read from (default `Idempotency-Key`). */
  keyHeader?: string;
  /** When the header is absent, read the key from this field of the parsed body (a string). */
  bodyField?: string;
  /** Put before every key in the store, at most 64 bytes (default `http:`). */
  namespace?: string;
  /** Methods on which a key is required (default POST and PATCH). */
  requiredForMethods?: string[];
  /** Paths on which the key is required (default: every path). */
  requiredForPaths?: (path: string) => boolean;
  /** How long a request holds its key, 1 to 86,400,000 ms (default 60,000). Keep it above the slowest handler. */
  inProgressTtlMs?: number;
  /** How long a response is replayed, 1 to 2,592,000,000 ms (default one day). */
  retentionMs?: number;
  /** Largest response body stored, at most 655,360 bytes (default 524,288). */
  responseBodyBytesMax?: number;
  /** Run requests without idempotency when the store is unreachable (default false: 503). */
  failOpen?: boolean;
  /** Statuses that release the key instead of being stored (default {@link retryableStatus}). */
  releaseOn?: (status: number) => boolean;
  /** Told of what the middleware cannot return to the client (a response it could not store). Default: console.warn. */
  onError?: (message: string, error?: unknown) => void;
}

/** The middleware's own answers, in the error format of docs/api.md. */
function reject(res: Response, status: number, code: string, message: string, headers: Record<string, string> = {}): void {
  res.status(status);
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ error: { code, message } }));
}

type KeyRead = { key: string } | { invalid: string } | null;

function checkKey(raw: string): KeyRead {
  const text = raw.trim();
  let key = text;
  if (text.length >= 2 && text.startsWith('"') && text.endsWith('"')) {
    key = text.slice(1, -1);
    if (/["\\]/.test(key)) return { invalid: "a quoted key must not contain quotes or backslashes" };
  }
  if (key === "") return { invalid: "it is empty; send a unique value, such as a UUID" };
  if (!/^[\x20-\x7e]*$/.test(key)) return { invalid: "it must be printable ASCII text" };
  if (key.length > KEY_BYTES_MAX) return { invalid: `it is ${key.length} bytes long; the limit is ${KEY_BYTES_MAX}` };
  return { key };
}

function readKey(req: Request, header: string, bodyField: string | undefined): KeyRead {
  const values: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === header) values.push(req.rawHeaders[i + 1] ?? "");
  }
  if (values.length > 1) return { invalid: "it was sent more than once; send one key" };
  if (values.length === 1) return checkKey(values[0] as string);
  if (bodyField !== undefined && req.body !== null && typeof req.body === "object" && bodyField in req.body) {
    const value = (req.body as Record<string, unknown>)[bodyField];
    if (typeof value !== "string") return { invalid: `the body field ${bodyField} must be a string` };
    return checkKey(value);
  }
  return null;
}

/** The bytes the fingerprint hashes for the body. */
function bodyBytes(req: Request): Buffer {
  const raw = (req as Request & { rawBody?: unknown }).rawBody;
  if (Buffer.isBuffer(raw)) return raw;
  if (Buffer.isBuffer(req.body)) return req.body;
  if (typeof req.body === "string") return Buffer.from(req.body);
  if (req.body === undefined) return Buffer.alloc(0);
  return Buffer.from(JSON.stringify(req.body));
}

/** SHA-256 of method, path with query and body, as the Rust layer computes it. */
export function fingerprint(method: string, pathAndQuery: string, body: Buffer): string {
  return createHash("sha256")
    .update("onceq-layer fingerprint 1\0")
    .update(method)
    .update("\0")
    .update(pathAndQuery)
    .update("\0")
    .update(body)
    .digest("hex");
}

/** The stored response, as the Rust layer's record (format 1). */
interface StoredRecord {
  format: number;
  status: number;
  headers?: [string, string | { base64: string }][];
  body_base64?: string;
  not_stored?: "body_too_large" | "headers_too_large";
}

function chunkBuffer(chunk: unknown, encoding: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk);
  return Buffer.from(String(chunk), typeof encoding === "string" ? (encoding as BufferEncoding) : "utf8");
}

function range(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new RangeError(`onceq idempotency: ${name} must be an integer from 1 to ${max}, got ${value}`);
  }
  return value;
}

/** The Express middleware; see the top of this file for what it does. */
export function idempotency(options: IdempotencyOptions): RequestHandler {
  const client = options.client;
  const header = (options.keyHeader ?? KEY_HEADER_DEFAULT).toLowerCase();
  const namespace = options.namespace ?? NAMESPACE_DEFAULT;
  if (Buffer.byteLength(namespace) > NAMESPACE_BYTES_MAX) {
    throw new RangeError(`onceq idempotency: namespace must be at most ${NAMESPACE_BYTES_MAX} bytes`);
  }
  const required = new Set((options.requiredForMethods ?? ["POST", "PATCH"]).map((m) => m.toUpperCase()));
  const ttlMs = range("inProgressTtlMs", options.inProgressTtlMs ?? IN_PROGRESS_TTL_MS_DEFAULT, IN_PROGRESS_TTL_MS_MAX);
  const retentionMs = range("retentionMs", options.retentionMs ?? RETENTION_MS_DEFAULT, RETENTION_MS_MAX);
  const bodyMax = range("responseBodyBytesMax", options.responseBodyBytesMax ?? RESPONSE_BODY_BYTES_DEFAULT, RESPONSE_BODY_BYTES_MAX);
  const releaseOn = options.releaseOn ?? retryableStatus;
  const warn = options.onError ?? ((message: string, error?: unknown) => console.warn(`onceq idempotency: ${message}`, error ?? ""));

  return async function onceqIdempotency(req: Request, res: Response, next: NextFunction): Promise<void> {
    const method = req.method.toUpperCase();
    const methodRequires = required.has(method);
    if (!methodRequires && SAFE_METHODS.has(method)) return next();
    const read = readKey(req, header, options.bodyField);
    if (read !== null && "invalid" in read) {
      return reject(res, 400, "idempotency_key_invalid", `the ${header} header is invalid: ${read.invalid}`);
    }
    if (read === null) {
      if (methodRequires && (options.requiredForPaths?.(req.path) ?? true)) {
        return reject(res, 400, "idempotency_key_missing",
          `this endpoint requires an ${header} header: send a unique value (a UUID) for each operation, and the same value when you retry that operation`);
      }
      return next();
    }
    const key = namespace + read.key;
    const owner = `http-${randomBytes(16).toString("hex")}`;
    let begin;
    try {
      begin = await client.idempotencyBegin(key, { owner, ttl_ms: ttlMs, fingerprint: fingerprint(method, req.originalUrl, bodyBytes(req)) });
    } catch (error) {
      if (error instanceof Conflict) {
        return reject(res, 422, "idempotency_key_reused",
          "this idempotency key was already used for a different request (another method, path, query or body); use a new key for a new operation");
      }
      if (error instanceof Unavailable) {
        if (options.failOpen) {
          warn("the idempotency store is unreachable; running the request without idempotency (failOpen)", error);
          return next();
        }
        return reject(res, 503, "unavailable",
          `idempotency cannot be checked right now, so the request was not processed; retry after ${UNAVAILABLE_RETRY_AFTER_SECONDS} s with the same key`,
          { "retry-after": String(UNAVAILABLE_RETRY_AFTER_SECONDS) });
      }
      warn("the idempotency store refused a begin", error);
      return reject(res, 500, "internal", "the idempotency layer failed; the cause is in the server's log. Retry later with the same key");
    }
    if (begin.state === "completed") return replay(res, begin.result, warn);
    if (begin.state === "in_progress") {
      const seconds = Math.max(1, Math.ceil((Date.parse(begin.until) - Date.now()) / 1000));
      return reject(res, 409, "idempotency_key_in_progress",
        `a request with this idempotency key is being processed; retry after ${seconds} s to get its response`,
        { "retry-after": String(seconds) });
    }
    capture(res, { client, key, owner, retentionMs, bodyMax, releaseOn, warn });
    next();
  };
}

interface Claim {
  client: Client;
  key: string;
  owner: string;
  retentionMs: number;
  bodyMax: number;
  releaseOn: (status: number) => boolean;
  warn: (message: string, error?: unknown) => void;
}

async function completeClaim(claim: Claim, record: StoredRecord): Promise<void> {
  try {
    await claim.client.idempotencyComplete(claim.key, { owner: claim.owner, result: record as unknown as Json, retention_ms: claim.retentionMs });
  } catch (error) {
    claim.warn(
      error instanceof Conflict
        ? "the in-progress claim expired before the handler finished and another request took the key; its response was not stored (make inProgressTtlMs longer than the slowest handler)"
        : "could not store the response; a retry after the claim expires will run the handler again",
      error,
    );
  }
}

async function releaseClaim(claim: Claim): Promise<void> {
  try {
    await claim.client.idempotencyRelease(claim.key, claim.owner);
  } catch (error) {
    claim.warn("could not release the idempotency key; it frees itself when its claim expires", error);
  }
}

/** The response's headers as stored, or null when over the limits. */
function storedHeaders(res: Response): [string, string][] | null {
  const out: [string, string][] = [];
  let bytes = 0;
  for (const [name, value] of Object.entries(res.getHeaders())) {
    if (NOT_STORED_HEADERS.has(name) || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [String(value)]) {
      out.push([name, v]);
      bytes += name.length + Buffer.byteLength(v);
    }
  }
  return out.length > RESPONSE_HEADER_COUNT_MAX || bytes > RESPONSE_HEADER_BYTES_MAX ? null : out;
}

/**
 * Holds the handler's response back until it is stored (or its key released), then sends it.
 * A body that grows past the limit is sent as it comes and recorded as not stored.
 */
function capture(res: Response, claim: Claim): void {
  const originalWrite = res.write.bind(res) as (...args: unknown[]) => boolean;
  const originalEnd = res.end.bind(res) as (...args: unknown[]) => Response;
  const chunks: Buffer[] = [];
  let size = 0;
  let overflowed = false;

  const callbackOf = (args: unknown[]): (() => void) | undefined => args.find((a): a is () => void => typeof a === "function");

  res.write = function write(chunk: unknown, ...rest: unknown[]): boolean {
    if (overflowed) return originalWrite(chunk, ...rest);
    const buffer = chunkBuffer(chunk, rest[0]);
    chunks.push(buffer);
    size += buffer.length;
    if (size > claim.bodyMax) {
      overflowed = true;
      claim.warn(`response body over ${claim.bodyMax} bytes; sent but not stored, so retries get 500 response_not_stored`);
      void completeClaim(claim, { format: 1, status: res.statusCode, not_stored: "body_too_large" });
      return originalWrite(Buffer.concat(chunks.splice(0)), callbackOf(rest));
    }
    callbackOf(rest)?.();
    return true;
  } as Response["write"];

  res.end = function end(...args: unknown[]): Response {
    const [chunk] = args;
    if (chunk !== undefined && chunk !== null && typeof chunk !== "function") {
      const buffer = chunkBuffer(chunk, args[1]);
      if (overflowed) return originalEnd(buffer, callbackOf(args));
      chunks.push(buffer);
      size += buffer.length;
    } else if (overflowed) {
      return originalEnd(callbackOf(args));
    }
    const body = Buffer.concat(chunks);
    const status = res.statusCode;
    const finish = async (): Promise<void> => {
      if (claim.releaseOn(status)) {
        await releaseClaim(claim);
      } else if (body.length > claim.bodyMax) {
        claim.warn(`response body over ${claim.bodyMax} bytes; sent but not stored, so retries get 500 response_not_stored`);
        await completeClaim(claim, { format: 1, status, not_stored: "body_too_large" });
      } else {
        const headers = storedHeaders(res);
        await completeClaim(
          claim,
          headers === null
            ? { format: 1, status, not_stored: "headers_too_large" }
            : { format: 1, status, headers, body_base64: body.toString("base64") },
        );
      }
      // The record is stored before the response leaves, so a retry that follows it finds it completed.
      originalEnd(body, callbackOf(args));
    };
    void finish();
    return res;
  } as Response["end"];
}

/** Sends the stored response of a completed key, marked as a replay. */
function replay(res: Response, result: Json, warn: (message: string, error?: unknown) => void): void {
  const record = result as unknown as StoredRecord;
  if (record === null || typeof record !== "object" || record.format !== 1 || typeof record.status !== "number") {
    warn("the record under an idempotency key is not a stored response of this middleware");
    return reject(res, 500, "internal", "the idempotency layer failed; the cause is in the server's log. Retry later with the same key");
  }
  if (record.not_stored !== undefined) {
    return reject(res, 500, "response_not_stored",
      `this request was already processed (it answered ${record.status}), but its response was too large to keep; do not retry it: look its result up instead`,
      { [REPLAYED_HEADER]: "true" });
  }
  res.status(record.status);
  for (const [name, value] of record.headers ?? []) {
    const text = typeof value === "string" ? value : Buffer.from(value.base64, "base64").toString("latin1");
    res.append(name, text);
  }
  res.setHeader(REPLAYED_HEADER, "true");
  res.end(Buffer.from(record.body_base64 ?? "", "base64"));
}
