//! Unique jobs: an enqueue may ask that no second job with the same key exists in its queue
//! while the first is in the states it names (docs/design.md, "Unique jobs").
//!
//! A job's unique key is its dedup id (`by: dedup_id`) or the SHA-256 of the canonical form of
//! its JSON payload (`by: payload`). The key is held by its job ([`UniqueWhile::holds`]):
//! `pending` while the job is scheduled, ready or blocked; `active` while it is any of those or
//! leased; `window` for `window_ms` after the enqueue, whatever the job's state. An enqueue whose
//! key is held creates nothing and gets the holder's id with `duplicate: true`.
//!
//! Stores keep one record per (queue, key) naming the job that took the key last, and judge it
//! when the next enqueue of the key comes: a job that left its states (acked, dead, cancelled,
//! deleted with its queue, moved to another queue by a redrive) frees its key without any of
//! those paths touching the record.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::UNIQUE_WINDOW_MS_MAX;
use crate::{Error, Result};

/// What a job's unique key is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UniqueBy {
    /// The job's dedup id (which it must have).
    DedupId,
    /// The SHA-256 of the canonical form of its JSON payload ([`canonical_json`]).
    Payload,
}

/// How long a job holds its unique key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UniqueWhile {
    /// While the job waits to run: scheduled, ready, or blocked behind its ordering key.
    Pending,
    /// While it waits or runs: `pending`'s states and leased.
    Active,
    /// For `window_ms` after its enqueue, whatever its state.
    Window,
}

impl UniqueWhile {
    /// The small integer stores keep for the rule.
    pub const fn code(self) -> i16 {
        match self {
            UniqueWhile::Pending => 0,
            UniqueWhile::Active => 1,
            UniqueWhile::Window => 2,
        }
    }

    /// The rule a stored code names.
    pub fn from_code(code: i64) -> Result<Self> {
        match code {
            0 => Ok(UniqueWhile::Pending),
            1 => Ok(UniqueWhile::Active),
            2 => Ok(UniqueWhile::Window),
            other => Err(Error::Storage(format!("a unique key's record has the unknown rule {other}"))),
        }
    }
}

/// An enqueue's request for uniqueness: `{"by", "while", "window_ms"?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unique {
    /// What the key is made of.
    pub by: UniqueBy,
    /// How long the job holds it.
    pub held_while: UniqueWhile,
    /// With `while: window` only: how long, 1 to [`UNIQUE_WINDOW_MS_MAX`] ms.
    pub window_ms: Option<u64>,
}

impl Unique {
    /// Unique by `by` while the job is pending (`Pending`) or active (`Active`).
    pub const fn new(by: UniqueBy, held_while: UniqueWhile) -> Self {
        Unique { by, held_while, window_ms: None }
    }

    /// Unique by `by` for `window_ms` after the enqueue.
    pub const fn window(by: UniqueBy, window_ms: u64) -> Self {
        Unique { by, held_while: UniqueWhile::Window, window_ms: Some(window_ms) }
    }

    /// Checks the request against a job with this dedup id and payload: a window of 1 to [`UNIQUE_WINDOW_MS_MAX`] ms with
    /// `while: window` and none otherwise, a dedup id for `by: dedup_id`, a JSON payload for
    /// `by: payload`.
    pub fn validate_of(&self, dedup_id: Option<&str>, payload: &[u8]) -> Result<()> {
        match (self.held_while, self.window_ms) {
            (UniqueWhile::Window, None) => {
                return Err(Error::invalid("unique.while is window, so unique.window_ms is needed"));
            }
            (UniqueWhile::Window, Some(ms)) if !(1..=UNIQUE_WINDOW_MS_MAX).contains(&ms) => {
                return Err(Error::invalid(format!(
                    "unique.window_ms is {ms}; it must be between 1 and {UNIQUE_WINDOW_MS_MAX}"
                )));
            }
            (UniqueWhile::Pending | UniqueWhile::Active, Some(_)) => {
                return Err(Error::invalid(
                    "unique.window_ms goes with unique.while window only; pending and active hold by the job's state",
                ));
            }
            _ => {}
        }
        match self.by {
            UniqueBy::DedupId if dedup_id.is_none() => {
                Err(Error::invalid("unique.by is dedup_id, so the job needs a dedup_id"))
            }
            UniqueBy::DedupId => Ok(()),
            UniqueBy::Payload => canonical_json(payload).map(|_| ()),
        }
    }

    /// [`Unique::key`] of a job with this dedup id and payload.
    pub fn key_of(&self, dedup_id: Option<&str>, payload: &[u8]) -> Result<Vec<u8>> {
        match self.by {
            UniqueBy::DedupId => {
                let id =
                    dedup_id.ok_or_else(|| Error::invalid("unique.by is dedup_id, so the job needs a dedup_id"))?;
                let mut key = Vec::with_capacity(1 + id.len());
                key.push(b'd');
                key.extend_from_slice(id.as_bytes());
                Ok(key)
            }
            UniqueBy::Payload => {
                let canonical = canonical_json(payload)?;
                let mut key = Vec::with_capacity(33);
                key.push(b'p');
                key.extend_from_slice(&Sha256::digest(canonical.as_bytes()));
                Ok(key)
            }
        }
    }
}

/// The canonical form of a JSON payload that `by: payload` hashes: the same value in one
/// spelling, so that key order and whitespace do not matter. Object keys sorted by their UTF-8
/// bytes (a repeated key keeps its last value); no whitespace; strings with serde_json's
/// escapes (only `"`, `\` and control characters escaped, `\uXXXX` spelled as the character);
/// an integer that fits 64 bits as its digits; any other number as the double it reads as, in the
/// shortest form that reads back to it (`1.0`, `1.00` and `10e-1` are one key; `1` is another).
/// A payload that is not JSON is refused.
pub fn canonical_json(payload: &[u8]) -> Result<String> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| Error::invalid(format!("unique.by is payload, so the payload must be JSON: {e}")))?;
    let mut out = String::with_capacity(payload.len());
    write_canonical(&value, &mut out);
    Ok(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => out.push_str(&value.to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{JobState, NewJob};

    #[test]
    fn canonical_form_sorts_keys_and_drops_whitespace() {
        let a = canonical_json(br#"{ "b": [1, 2.50, {"y": null, "x": true}], "a": "\u00e9\n" }"#).unwrap();
        assert_eq!(a, r#"{"a":"é\n","b":[1,2.5,{"x":true,"y":null}]}"#);
        let b = canonical_json(b"{\"a\":\"\xc3\xa9\\n\",\"b\":[1,2.5,{\"x\":true,\"y\":null}]}").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn canonical_numbers() {
        assert_eq!(canonical_json(b"1.0").unwrap(), canonical_json(b"10e-1").unwrap());
        assert_eq!(canonical_json(b"1.00").unwrap(), "1.0");
        assert_ne!(canonical_json(b"1").unwrap(), canonical_json(b"1.0").unwrap());
        assert_eq!(canonical_json(b"-0").unwrap(), "-0.0", "-0 is no integer: it reads as the double -0.0");
        assert_eq!(canonical_json(b"18446744073709551615").unwrap(), "18446744073709551615");
        assert_eq!(canonical_json(b"1e400").ok(), None, "out of a double's range");
    }

    #[test]
    fn keys_by_payload_ignore_spelling_and_keys_by_dedup_id_are_apart() {
        let by_payload = Unique::new(UniqueBy::Payload, UniqueWhile::Pending);
        let a = by_payload.key(&NewJob::new(r#"{"a":1,"b":2}"#)).unwrap();
        let b = by_payload.key(&NewJob::new("{ \"b\" : 2,\n \"a\" : 1 }")).unwrap();
        let c = by_payload.key(&NewJob::new(r#"{"a":1,"b":3}"#)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 33);
        let by_id = Unique::new(UniqueBy::DedupId, UniqueWhile::Pending);
        assert_eq!(by_id.key(&NewJob::new("x").dedup_id("k")).unwrap(), b"dk".to_vec());
    }

    #[test]
    fn requests_are_checked() {
        let job = NewJob::new("{}");
        let err = |u: Unique, job: &NewJob| match u.validate(job) {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(err(Unique::new(UniqueBy::DedupId, UniqueWhile::Active), &job).contains("dedup_id"));
        assert!(err(Unique::new(UniqueBy::Payload, UniqueWhile::Window), &job).contains("window_ms is needed"));
        assert!(err(Unique::window(UniqueBy::Payload, 0), &job).contains("between 1 and"));
        assert!(err(Unique::window(UniqueBy::Payload, UNIQUE_WINDOW_MS_MAX + 1), &job).contains("between 1 and"));
        let with_window = Unique { window_ms: Some(5), ..Unique::new(UniqueBy::Payload, UniqueWhile::Pending) };
        assert!(err(with_window, &job).contains("window only"));
        assert!(err(Unique::new(UniqueBy::Payload, UniqueWhile::Pending), &NewJob::new("not json")).contains("JSON"));
        assert_eq!(Unique::window(UniqueBy::Payload, UNIQUE_WINDOW_MS_MAX).validate(&job), Ok(()));
        assert_eq!(Unique::new(UniqueBy::DedupId, UniqueWhile::Pending).validate(&job.dedup_id("d")), Ok(()));
    }

    #[test]
    fn which_states_hold() {
        use JobState::*;
        for state in [Scheduled, Ready, Blocked] {
            assert!(UniqueWhile::Pending.holds(state) && UniqueWhile::Active.holds(state));
        }
        assert!(!UniqueWhile::Pending.holds(Leased));
        assert!(UniqueWhile::Active.holds(Leased));
        assert!(!UniqueWhile::Active.holds(Dead));
        assert!(!UniqueWhile::Window.holds(Ready));
        for rule in [UniqueWhile::Pending, UniqueWhile::Active, UniqueWhile::Window] {
            assert_eq!(UniqueWhile::from_code(i64::from(rule.code())), Ok(rule));
        }
    }
}
