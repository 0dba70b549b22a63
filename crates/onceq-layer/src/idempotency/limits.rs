//! Every bound the idempotency layer enforces, as named constants (docs/design.md, Invariant 8), and
//! the relations between them, checked at compile time.

use std::time::Duration;

use onceq_core::idempotency::{FINGERPRINT_LEN_MAX, KEY_LEN_MAX as STORE_KEY_LEN_MAX, RESULT_BYTES_MAX};
use onceq_core::idempotency::{RETENTION_MS_MAX, TTL_MS_MAX};

/// The header a client sends its idempotency key in, unless configured otherwise.
pub const KEY_HEADER_DEFAULT: &str = "idempotency-key";
/// The header every replayed response carries, with the value `true`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Longest namespace, in bytes. The store key is the namespace followed by the client's key.
pub const NAMESPACE_LEN_MAX: usize = 64;
/// The namespace unless configured otherwise.
pub const NAMESPACE_DEFAULT: &str = "http:";
/// Longest key a client may send, in bytes: what the store takes, less the longest namespace.
pub const KEY_LEN_MAX: usize = STORE_KEY_LEN_MAX - NAMESPACE_LEN_MAX;

/// How long a request holds its key while the handler runs, unless configured otherwise. A
/// holder that dies (crash, dropped connection) blocks retries of its key for at most this long.
pub const IN_PROGRESS_TTL_DEFAULT: Duration = Duration::from_secs(60);
/// Longest in-progress claim: the store's limit.
pub const IN_PROGRESS_TTL_MAX: Duration = Duration::from_millis(TTL_MS_MAX);
/// How long a stored response is replayed, unless configured otherwise.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest retention of a stored response: the store's limit.
pub const RETENTION_MAX: Duration = Duration::from_millis(RETENTION_MS_MAX);

/// Largest request body buffered (to fingerprint it), unless configured otherwise.
pub const REQUEST_BODY_BYTES_DEFAULT: usize = 1024 * 1024;
/// Largest request body the layer can be configured to buffer. Request bodies are only held in
/// memory for the request's life, never stored.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest response body stored for replay, unless configured otherwise.
pub const RESPONSE_BODY_BYTES_DEFAULT: usize = 512 * 1024;
/// Largest response body the layer can be configured to store: its record must fit in the
/// store's [`RESULT_BYTES_MAX`] (see the assertion below).
pub const RESPONSE_BODY_BYTES_MAX: usize = 640 * 1024;
/// Most response headers stored for replay.
pub const RESPONSE_HEADER_COUNT_MAX: usize = 64;
/// Largest total size (names and values) of the response headers stored for replay.
pub const RESPONSE_HEADER_BYTES_MAX: usize = 32 * 1024;

/// Bytes a stored record spends on one header besides its name and value (JSON punctuation and
/// the `base64` member of a value that is not text).
pub(crate) const RECORD_HEADER_OVERHEAD_BYTES: usize = 32;
/// Bytes a stored record spends besides its headers and body (format version, status, names).
pub(crate) const RECORD_ENVELOPE_BYTES: usize = 256;

/// Seconds a client is told to wait (`Retry-After`) when the store is unavailable.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 2;

/// The length of `n` bytes in padded base64.
const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

// The client's key fits in the store's key after the longest namespace.
const _: () = assert!(NAMESPACE_DEFAULT.len() <= NAMESPACE_LEN_MAX);
const _: () = assert!(KEY_LEN_MAX >= 64, "a key must hold at least a UUID with a prefix");
// The fingerprint (SHA-256 in hex) fits the store's limit.
const _: () = assert!(64 <= FINGERPRINT_LEN_MAX);
// The defaults are within their bounds.
const _: () = assert!(IN_PROGRESS_TTL_DEFAULT.as_millis() <= IN_PROGRESS_TTL_MAX.as_millis());
const _: () = assert!(RETENTION_DEFAULT.as_millis() <= RETENTION_MAX.as_millis());
const _: () = assert!(REQUEST_BODY_BYTES_DEFAULT <= REQUEST_BODY_BYTES_MAX);
const _: () = assert!(RESPONSE_BODY_BYTES_DEFAULT <= RESPONSE_BODY_BYTES_MAX);
// The largest record fits in the store's result: the body in base64, every header at its worst
// JSON escaping (two bytes per byte: `"`, `\` and tab are escaped; bytes that are not text go in
// base64, four bytes per three), and the envelope.
const _: () = assert!(
    base64_len(RESPONSE_BODY_BYTES_MAX)
        + 2 * RESPONSE_HEADER_BYTES_MAX
        + RESPONSE_HEADER_COUNT_MAX * RECORD_HEADER_OVERHEAD_BYTES
        + RECORD_ENVELOPE_BYTES
        <= RESULT_BYTES_MAX
);
