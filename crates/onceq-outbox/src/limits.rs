//! Every bound the outbox enforces, in one place (docs/design.md, Invariant 8).
//!
//! A message past any of these is refused by `stage` with [`OutboxError::InvalidMessage`]
//! (nothing is written), and a relay option past its bound is refused when the relay is built
//! ([`OutboxError::InvalidOptions`]). Relations between the constants are checked at compile
//! time at the bottom of this file.
//!
//! [`OutboxError::InvalidMessage`]: crate::OutboxError::InvalidMessage
//! [`OutboxError::InvalidOptions`]: crate::OutboxError::InvalidOptions

use onceq_core::limits as core;

/// Largest payload, in bytes: the same as a onceq job's (1 MiB), so that whatever can be staged
/// can be published to a onceq queue.
pub const PAYLOAD_BYTES_MAX: usize = core::PAYLOAD_BYTES_MAX;
/// Longest destination, in bytes (a queue name, a subject, an exchange and routing key, or a
/// webhook path).
pub const DESTINATION_LEN_MAX: usize = 1024;
/// Most headers on one message: the same as a onceq job's.
pub const HEADERS_COUNT_MAX: usize = core::HEADERS_COUNT_MAX;
/// Longest header name, in bytes.
pub const HEADER_NAME_LEN_MAX: usize = core::HEADER_NAME_LEN_MAX;
/// Longest header value, in bytes.
pub const HEADER_VALUE_LEN_MAX: usize = core::HEADER_VALUE_LEN_MAX;
/// Longest ordering key, in bytes.
pub const ORDERING_KEY_LEN_MAX: usize = 256;
/// Longest outbox name (the dedup-id prefix), in bytes: `<name>-<row id>` must fit a onceq dedup
/// id, and a row id has at most 19 digits.
pub const OUTBOX_NAME_LEN_MAX: usize = 200;
/// Longest PostgreSQL schema name of an outbox: its `NOTIFY` channel, `onceq_outbox_<schema>`,
/// must stay within PostgreSQL's 63-byte identifiers.
pub const SCHEMA_NAME_LEN_MAX: usize = 48;
/// Most messages one relay round claims.
pub const BATCH_SIZE_MAX: u32 = 1000;
/// Most publish attempts a message may be given before it is parked.
pub const ATTEMPTS_MAX: u32 = 1000;
/// Most publishes a relay runs at once within one batch.
pub const PUBLISH_CONCURRENCY_MAX: usize = 1000;
/// Longest wait for one publish before it counts as a transient failure, in milliseconds
/// (10 minutes). The claimed rows stay locked meanwhile.
pub const PUBLISH_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest backoff before a retry, in milliseconds (1 day).
pub const BACKOFF_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Longest retention of sent rows, in milliseconds (30 days).
pub const RETENTION_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Longest fallback poll interval, in milliseconds (1 minute).
pub const POLL_INTERVAL_MS_MAX: u64 = 60 * 1000;
/// Longest connect timeout of a relay's PostgreSQL outbox at start, in milliseconds (10 min).
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest error text kept with a message (last error, parked error), in bytes: longer text is
/// cut at a character boundary and marked with `…`.
pub const ERROR_TEXT_BYTES_MAX: usize = core::ERROR_TEXT_BYTES_MAX;

const _: () = assert!(OUTBOX_NAME_LEN_MAX + 1 + 19 <= core::DEDUP_ID_LEN_MAX);
const _: () = assert!("onceq_outbox_".len() + SCHEMA_NAME_LEN_MAX <= 63);
const _: () = assert!(BATCH_SIZE_MAX as usize <= PUBLISH_CONCURRENCY_MAX);
const _: () = assert!(PAYLOAD_BYTES_MAX <= core::PAYLOAD_BYTES_MAX);
const _: () = assert!(ATTEMPTS_MAX >= 1);
