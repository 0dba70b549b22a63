//! The record of one idempotency key in Redis: its key name and its value format.
//!
//! Each idempotency key is one Redis string under `<prefix>{<key>}`. The braces are a Redis
//! Cluster hash tag: everything the store keeps for a key lives in that one Redis key, so every
//! operation touches a single slot, and a future second key for the same idempotency key
//! (`<prefix>{<key>}:something`) would share the slot too. The value format is described in
//! `lua/record.lua`, which decodes it; [`in_progress`] encodes the same format for the plain
//! acquire path (`SET NX PX`).

use onceq_core::idempotency::TTL_MS_MAX;
use onceq_core::Timestamp;

/// How long an in-progress record outlives its claim.
///
/// A holder whose claim expired may still complete as long as nobody took the key over, so the
/// record must stay after `until`; the embedded store likewise sweeps expired claims only a day
/// later. Every in-progress key therefore expires `ttl_ms + IN_PROGRESS_GRACE_MS` after it was
/// written, and its `until` inside the value says when the claim ends.
pub const IN_PROGRESS_GRACE_MS: u64 = TTL_MS_MAX;

/// The Redis key holding the record of idempotency key `key` under `prefix`.
///
/// The prefix never holds braces (checked at connect), so the hash tag is the first `{` after
/// the prefix up to the next `}`: the idempotency key itself, or its part before a `}` it holds.
/// Either way one idempotency key always maps to one slot.
pub fn record_key(prefix: &str, key: &str) -> String {
    format!("{prefix}{{{key}}}")
}

/// The value of a new in-progress record, as `lua/record.lua` decodes it.
///
/// `until` is `None` when Redis's clock judges: the claim then ends `IN_PROGRESS_GRACE_MS`
/// before the key expires, which Redis alone computes (the client does not know Redis's time).
pub(crate) fn in_progress(until: Option<Timestamp>, owner: &str, fingerprint: Option<&str>) -> Vec<u8> {
    let until = until.map(|t| t.as_millis().to_string()).unwrap_or_default();
    let fingerprint_len = fingerprint.map(|f| f.len().to_string()).unwrap_or_default();
    let fingerprint = fingerprint.unwrap_or_default();
    format!("1|p|{until}|{}|{fingerprint_len}|{owner}{fingerprint}", owner.len()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_hash_tagged_by_the_idempotency_key() {
        assert_eq!(record_key("onceq:idempotency:", "order-42"), "onceq:idempotency:{order-42}");
    }

    #[test]
    fn an_in_progress_value_spells_out_every_field() {
        let value = in_progress(Some(Timestamp::from_millis(1_767_225_601_000)), "w1", Some("POST /pay"));
        assert_eq!(value, b"1|p|1767225601000|2|9|w1POST /pay".to_vec());
    }

    #[test]
    fn an_in_progress_value_leaves_out_what_it_does_not_know() {
        assert_eq!(in_progress(None, "worker-é", None), "1|p||9||worker-é".as_bytes().to_vec());
    }
}
