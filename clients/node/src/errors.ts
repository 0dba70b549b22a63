// Errors by API code: every error response of onceq is `{"error": {"code", "message"}}` with a
// stable `code` (docs/api.md, "Errors"); each code a caller reacts to differently is a class, so
// `catch (e) { if (e instanceof LeaseLost) ... }` branches on it.

/** Any error from onceq: an error response, or a server that could not be reached. */
export class OnceqError extends Error {
  /** The stable API code (`lease_lost`, `not_found`, ...); `connection_failed` when no reply came. */
  readonly code: string;
  /** The HTTP status; 0 when no reply came. */
  readonly status: number;
  /** Job ids the error names (a commit's stale leases), else empty. */
  readonly jobs: string[];

  constructor(code: string, message: string, status: number, jobs: string[] = [], options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.jobs = jobs;
  }
}

/** 400 `invalid_request`, and the 405, 414 and 431 the parser answers with that code. */
export class InvalidRequest extends OnceqError {}
/** 401 `unauthorized`: no token, or an unknown one. */
export class Unauthorized extends OnceqError {}
/** 403 `forbidden`: the token lacks the permission. */
export class Forbidden extends OnceqError {}
/** 404 `not_found`: unknown queue, job, schedule, or a job already acked. */
export class NotFound extends OnceqError {}
/** 408 `request_timeout`: the outcome is unknown; read the state back. */
export class RequestTimeout extends OnceqError {}
/** 409 `lease_lost`: the token is not the job's current lease. */
export class LeaseLost extends OnceqError {}
/** 409 `job_cancelled`: an extend of a lease whose job was cancelled; stop the handler (an ack still settles it). */
export class JobCancelled extends OnceqError {}
/** 409 `fenced`: a newer epoch of this producer registered; this instance must stop. */
export class Fenced extends OnceqError {}
/** 409 `conflict`: an idempotency key held by another owner or reused, a group or commit id clash. */
export class Conflict extends OnceqError {}
/** 409 `not_member`: the consumer-group member is gone; join again. */
export class NotMember extends OnceqError {}
/** 409 `queue_not_empty`: `ordering` or `partitions` change only on an empty queue. */
export class QueueNotEmpty extends OnceqError {}
/** 413 `payload_too_large`. */
export class PayloadTooLarge extends OnceqError {}
/** 415 `unsupported_media_type`. */
export class UnsupportedMediaType extends OnceqError {}
/** 500 `corrupt`: the store's data is damaged; restore from a backup. */
export class Corrupt extends OnceqError {}

/** 429 `rate_limited`: the queue is at its `max_depth`. Retry no sooner than `retryAfterMs`. */
export class RateLimited extends OnceqError {
  /** How long to wait before retrying, in ms (`retry_after_ms`, else `Retry-After`). */
  readonly retryAfterMs: number;
  constructor(message: string, status: number, retryAfterMs: number) {
    super("rate_limited", message, status);
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * 503 `unavailable` (the store failed, the server is shutting down), or `connection_failed`:
 * the server could not be reached or the connection broke. Either way, retrying later may help.
 */
export class Unavailable extends OnceqError {
  /** How long to wait before retrying, in ms (`Retry-After`); 1000 when none was given. */
  readonly retryAfterMs: number;
  constructor(code: string, message: string, status: number, retryAfterMs: number, options?: { cause?: unknown }) {
    super(code, message, status, [], options);
    this.retryAfterMs = retryAfterMs;
  }
}

const BY_CODE: Record<string, new (code: string, message: string, status: number, jobs?: string[]) => OnceqError> = {
  invalid_request: InvalidRequest,
  unauthorized: Unauthorized,
  forbidden: Forbidden,
  not_found: NotFound,
  request_timeout: RequestTimeout,
  lease_lost: LeaseLost,
  job_cancelled: JobCancelled,
  fenced: Fenced,
  conflict: Conflict,
  not_member: NotMember,
  queue_not_empty: QueueNotEmpty,
  payload_too_large: PayloadTooLarge,
  unsupported_media_type: UnsupportedMediaType,
  corrupt: Corrupt,
};

/** Milliseconds of a `Retry-After` header in whole seconds, or `fallback`. */
function retryAfterHeaderMs(value: string | null, fallback: number): number {
  if (value === null) return fallback;
  const seconds = Number(value);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : fallback;
}

/** The error of a reply whose status is not a success. */
export function errorFromReply(status: number, headers: Headers, bodyText: string): OnceqError {
  let code = "";
  let message = "";
  let jobs: string[] = [];
  let retryAfterMs: number | undefined;
  try {
    const body = JSON.parse(bodyText) as { error?: { code?: unknown; message?: unknown; jobs?: unknown; retry_after_ms?: unknown } };
    const error = body?.error;
    if (error && typeof error.code === "string") {
      code = error.code;
      message = typeof error.message === "string" ? error.message : "";
      if (Array.isArray(error.jobs)) jobs = error.jobs.filter((j): j is string => typeof j === "string");
      if (typeof error.retry_after_ms === "number") retryAfterMs = error.retry_after_ms;
    }
  } catch {
    // Not the error format (a proxy in between): the status and text say what happened.
  }
  if (code === "") {
    code = status === 503 ? "unavailable" : status === 429 ? "rate_limited" : `http_${status}`;
    message = `HTTP ${status} without an onceq error body: ${bodyText.slice(0, 200)}`;
  }
  if (code === "rate_limited") {
    return new RateLimited(message, status, retryAfterMs ?? retryAfterHeaderMs(headers.get("retry-after"), 1000));
  }
  if (code === "unavailable") {
    return new Unavailable(code, message, status, retryAfterHeaderMs(headers.get("retry-after"), 1000));
  }
  const Class = BY_CODE[code] ?? OnceqError;
  return new Class(code, message, status, jobs);
}
