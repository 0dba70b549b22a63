//! [`Message`]: what an application stages in its business transaction, and its validation;
//! [`ParkedMessage`]: what the dead letters of either database give back.

use std::collections::BTreeMap;

use crate::limits::*;
use crate::{OutboxError, Result};

/// A message to stage: where it goes, its payload, its headers and an optional ordering key.
///
/// ```
/// use onceq_outbox::Message;
///
/// let message = Message::new("orders.created", br#"{"order":42}"#.to_vec())
///     .header("content-type", "application/json")
///     .ordering_key("customer-7");
/// assert!(message.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it goes, in the sink's own terms (a onceq queue name, a JetStream subject, a
    /// RabbitMQ `exchange/routing-key`, a webhook path): 1 to [`DESTINATION_LEN_MAX`] bytes.
    pub destination: String,
    /// Opaque bytes, at most [`PAYLOAD_BYTES_MAX`].
    pub payload: Vec<u8>,
    /// String headers, forwarded by sinks that have headers: at most [`HEADERS_COUNT_MAX`].
    pub headers: BTreeMap<String, String>,
    /// Messages with the same key are published one at a time, in staging order; messages
    /// without a key are independent of each other. 1 to [`ORDERING_KEY_LEN_MAX`] bytes.
    pub ordering_key: Option<String>,
}

impl Message {
    /// A message to `destination` with this payload, no headers and no ordering key.
    pub fn new(destination: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            destination: destination.into(),
            payload: payload.into(),
            headers: BTreeMap::new(),
            ordering_key: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the ordering key.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Checks every field against its limit ([`crate::limits`]). `stage` calls it first.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(OutboxError::InvalidMessage(m));
        if self.destination.is_empty() || self.destination.len() > DESTINATION_LEN_MAX {
            return invalid(format!(
                "the destination is {} bytes; it must be 1 to {DESTINATION_LEN_MAX} (DESTINATION_LEN_MAX)",
                self.destination.len()
            ));
        }
        no_nul("the destination", &self.destination)?;
        if self.payload.len() > PAYLOAD_BYTES_MAX {
            return invalid(format!(
                "the payload is {} bytes; the limit is {PAYLOAD_BYTES_MAX} (PAYLOAD_BYTES_MAX)",
                self.payload.len()
            ));
        }
        if self.headers.len() > HEADERS_COUNT_MAX {
            return invalid(format!(
                "{} headers; the limit is {HEADERS_COUNT_MAX} (HEADERS_COUNT_MAX)",
                self.headers.len()
            ));
        }
        for (name, value) in &self.headers {
            if name.is_empty() || name.len() > HEADER_NAME_LEN_MAX {
                return invalid(format!(
                    "header name {name:?} is {} bytes; it must be 1 to {HEADER_NAME_LEN_MAX} (HEADER_NAME_LEN_MAX)",
                    name.len()
                ));
            }
            if value.len() > HEADER_VALUE_LEN_MAX {
                return invalid(format!(
                    "header {name:?} is {} bytes; the limit is {HEADER_VALUE_LEN_MAX} (HEADER_VALUE_LEN_MAX)",
                    value.len()
                ));
            }
            no_nul(&format!("header name {name:?}"), name)?;
            no_nul(&format!("header {name:?}"), value)?;
        }
        if let Some(key) = &self.ordering_key {
            if key.is_empty() || key.len() > ORDERING_KEY_LEN_MAX {
                return invalid(format!(
                    "the ordering key is {} bytes; it must be 1 to {ORDERING_KEY_LEN_MAX} (ORDERING_KEY_LEN_MAX); \
                     leave it unset for a message that needs no order",
                    key.len()
                ));
            }
            no_nul("the ordering key", key)?;
        }
        Ok(())
    }

    /// The headers as the JSON object both outbox tables store.
    pub(crate) fn headers_json(&self) -> Result<String> {
        serde_json::to_string(&self.headers)
            .map_err(|e| OutboxError::InvalidMessage(format!("the headers cannot be written as JSON: {e}")))
    }
}

/// PostgreSQL text cannot hold a NUL character; refuse it here with a clear message.
fn no_nul(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(OutboxError::InvalidMessage(format!("{what} contains a NUL character, which cannot be stored")));
    }
    Ok(())
}

/// A message the relay parked in the outbox dead letters: its attempts were exhausted, or the
/// sink refused it for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The outbox row id it had (and keeps if redriven).
    pub id: i64,
    /// Where it was going.
    pub destination: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// Its ordering key.
    pub ordering_key: Option<String>,
    /// Publish attempts made.
    pub attempts: u32,
    /// The error of the last attempt.
    pub error: String,
    /// When it was staged, in ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When it was parked, in ms since the Unix epoch.
    pub parked_at_ms: i64,
}

/// Reads headers back from their stored JSON.
pub(crate) fn headers_from_json(id: i64, json: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(json).map_err(|e| {
        OutboxError::Storage(format!("outbox row {id}: its headers are not a JSON object of strings: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
            failure_persistence: None,
            ..Default::default()
        })]

        /// Fuzzing (issue 25): a row's stored headers, whatever text they hold, decode to a map
        /// of strings or to an error naming the row, never a panic.
        #[test]
        fn stored_headers_decode_or_are_refused_without_a_panic(
            text in proptest::prop_oneof![
                ".{0,64}",
                r#"\{("[a-z]{0,4}": ("[ -~]{0,8}"|[0-9]{1,3}|null|true|\[\]|\{\}), ?){0,4}\}"#,
            ],
            id in proptest::prelude::any::<i64>(),
        ) {
            match headers_from_json(id, &text) {
                Ok(headers) => proptest::prop_assert!(headers.len() <= text.len()),
                Err(error) => {
                    let named = format!("outbox row {id}");
                    proptest::prop_assert!(error.to_string().contains(&named));
                }
            }
        }
    }

    #[test]
    fn every_limit_is_enforced_with_its_name() {
        let ok = Message::new("q", b"x".to_vec());
        assert_eq!(ok.validate(), Ok(()));
        let cases: Vec<(Message, &str)> = vec![
            (Message::new("", b"x".to_vec()), "DESTINATION_LEN_MAX"),
            (Message::new("d".repeat(DESTINATION_LEN_MAX + 1), b"x".to_vec()), "DESTINATION_LEN_MAX"),
            (Message::new("q", vec![0u8; PAYLOAD_BYTES_MAX + 1]), "PAYLOAD_BYTES_MAX"),
            (Message::new("q", b"x".to_vec()).header("", "v"), "HEADER_NAME_LEN_MAX"),
            (
                Message::new("q", b"x".to_vec()).header("h", "v".repeat(HEADER_VALUE_LEN_MAX + 1)),
                "HEADER_VALUE_LEN_MAX",
            ),
            (Message::new("q", b"x".to_vec()).ordering_key(""), "ORDERING_KEY_LEN_MAX"),
            (
                Message::new("q", b"x".to_vec()).ordering_key("k".repeat(ORDERING_KEY_LEN_MAX + 1)),
                "ORDERING_KEY_LEN_MAX",
            ),
            (Message::new("q\0", b"x".to_vec()), "NUL"),
        ];
        for (message, named) in cases {
            match message.validate() {
                Err(OutboxError::InvalidMessage(text)) => assert!(text.contains(named), "{text} should name {named}"),
                other => panic!("{message:?} gave {other:?}"),
            }
        }
        let mut many = Message::new("q", b"x".to_vec());
        for i in 0..=HEADERS_COUNT_MAX {
            many = many.header(format!("h{i}"), "v");
        }
        assert!(matches!(many.validate(), Err(OutboxError::InvalidMessage(t)) if t.contains("HEADERS_COUNT_MAX")));
        let at_limit = Message::new("d".repeat(DESTINATION_LEN_MAX), vec![0u8; PAYLOAD_BYTES_MAX]);
        assert_eq!(at_limit.validate(), Ok(()));
    }
}
