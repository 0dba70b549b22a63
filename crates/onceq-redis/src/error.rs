//! Mapping Redis failures onto the seam's portable [`Error`] kinds.
//!
//! A Redis that cannot serve now (unreachable, connection dropped, timed out, loading, failing
//! over, out of memory) is [`Error::Unavailable`]: retrying later may succeed. A reply that
//! makes no sense to this store (a value that is not a record, a script answer of the wrong
//! shape, a refused command) is [`Error::Storage`].

use onceq_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What `connect` is doing when it fails, as `from_redis` takes it.
pub(crate) const CONNECTING: &str = "connecting";

/// The error for a failure of `doing` against the Redis at `address` (host:port, never the
/// URL, which may hold a password).
pub(crate) fn from_redis(address: &str, doing: &str, error: RedisError) -> Error {
    let kind = error.kind();
    if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() || error.is_connection_refusal() {
        // After connect, the connection manager reconnects by itself; before, the caller retries.
        let recovery = if doing == CONNECTING { "" } else { " (onceq reconnects by itself once it can)" };
        return Error::Unavailable(format!(
            "Redis at {address} is unreachable while {doing} ({error}); check that it is running and that the \
             URL, network and firewall let onceq reach it{recovery}"
        ));
    }
    if kind == ErrorKind::AuthenticationFailed {
        return Error::Unavailable(format!(
            "Redis at {address} refused onceq's credentials while {doing} ({error}); check the user and password \
             in the Redis URL"
        ));
    }
    if matches!(
        kind,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    ) {
        return Error::Unavailable(format!(
            "Redis at {address} cannot serve now while {doing} ({error}); it is loading, failing over or its \
             cluster is down: retry later"
        ));
    }
    if error.code() == Some("OOM") || error.detail().is_some_and(|detail| detail.contains("OOM command not allowed")) {
        return Error::Unavailable(format!(
            "Redis at {address} is out of memory while {doing} ({error}); raise maxmemory or free memory \
             (onceq needs maxmemory-policy noeviction, so full memory refuses writes instead of losing records)"
        ));
    }
    if matches!(kind, ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)) {
        return Error::Storage(format!(
            "Redis at {address} is a Redis Cluster node that does not own the key while {doing} ({error}); \
             this store connects to one Redis (standalone, or a proxy in front of a cluster), not to a cluster"
        ));
    }
    if kind == ErrorKind::Server(ServerErrorKind::NoPerm) {
        return Error::Storage(format!(
            "Redis at {address} denied a command while {doing} ({error}); the Redis user needs GET, SET, DEL, \
             PTTL, TIME, EVAL, EVALSHA and SCRIPT LOAD on the key prefix"
        ));
    }
    Error::Storage(format!("Redis at {address} failed while {doing}: {error}"))
}

/// The error for a reply of the wrong shape.
pub(crate) fn unexpected_reply(address: &str, doing: &str, reply: impl std::fmt::Debug) -> Error {
    let mut shown = format!("{reply:?}");
    if shown.len() > REPLY_SHOWN_LEN_MAX {
        let mut end = REPLY_SHOWN_LEN_MAX;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push_str("...");
    }
    Error::Storage(format!("Redis at {address} gave an unexpected reply while {doing}: {shown}"))
}

/// Longest excerpt of an unexpected reply put into an error message (a reply may hold a result
/// of up to a mebibyte).
const REPLY_SHOWN_LEN_MAX: usize = 200;
