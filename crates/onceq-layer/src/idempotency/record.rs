//! The stored response: what `complete` records under a key, and what a retry replays.
//!
//! A record is JSON text, so every store can hold it (the HTTP client's store takes only JSON
//! results), and it round-trips exactly: status, headers (in order, repeated names kept, values
//! that are not text in base64) and body bytes (base64).
//!
//! ```json
//! {"format":1,"status":201,"headers":[["content-type","application/json"],["x-raw",{"base64":"/w=="}]],
//!  "body_base64":"eyJpZCI6MX0="}
//! ```
//!
//! A response the layer could not keep (over a limit) is recorded without headers and body,
//! with the reason: `{"format":1,"status":201,"not_stored":"body_too_large"}`. The key stays
//! completed, so a retry does not run the handler again; it gets
//! [`Rejection::ResponseNotStored`](super::Rejection::ResponseNotStored).
//!
//! Headers that are not stored: hop-by-hop headers (`Connection` and those it names,
//! `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`), which describe one
//! connection; `Content-Length`, which the replay takes from the stored body; and `Set-Cookie`,
//! so that a replay, which anyone holding the key and the same request can get, never hands out
//! the first caller's session or other cookies.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::header::{TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use onceq_core::idempotency::RESULT_BYTES_MAX;
use serde::{Deserialize, Serialize};

use super::limits::{REPLAYED_HEADER, RESPONSE_HEADER_BYTES_MAX, RESPONSE_HEADER_COUNT_MAX};

/// The record format this layer writes and reads. A record of another format was written by
/// something else under the same key, or by a later version of this layer.
const FORMAT: u32 = 1;

/// Why a response was recorded without its headers and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NotStoredReason {
    /// The body was over the layer's response body limit.
    BodyTooLarge,
    /// The headers were over [`RESPONSE_HEADER_COUNT_MAX`] or [`RESPONSE_HEADER_BYTES_MAX`].
    HeadersTooLarge,
}

/// What is recorded under a completed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// The response, to be replayed as it was.
    Response {
        /// Its status.
        status: StatusCode,
        /// Its headers, less those that are never stored (see the module docs).
        headers: HeaderMap,
        /// Its body.
        body: Bytes,
    },
    /// A response that was sent but not kept.
    NotStored {
        /// Its status.
        status: StatusCode,
        /// Why it was not kept.
        reason: NotStoredReason,
    },
}

/// The JSON shape of a record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: u32,
    status: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, WireValue)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_stored: Option<NotStoredReason>,
}

/// A header value: text when it is, else its bytes in base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum WireValue {
    Text(String),
    Bytes { base64: String },
}

/// Whether `name` is kept in a stored response (see the module docs).
fn is_stored(name: &HeaderName, named_by_connection: &[String]) -> bool {
    let never = [
        CONNECTION,
        CONTENT_LENGTH,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        SET_COOKIE,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static(REPLAYED_HEADER),
    ];
    !never.contains(name) && !named_by_connection.iter().any(|n| n == name.as_str())
}

/// The headers of `headers` a stored response keeps, in order.
pub(crate) fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        if is_stored(name, &named_by_connection) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

impl Record {
    /// The record of a response: the response itself when it fits the limits, else a
    /// [`Record::NotStored`]. `headers` are the response's own; the ones never stored are left out.
    pub(crate) fn of_response(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Record {
        let headers = stored_headers(headers);
        let header_bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        if headers.len() > RESPONSE_HEADER_COUNT_MAX || header_bytes > RESPONSE_HEADER_BYTES_MAX {
            return Record::NotStored { status, reason: NotStoredReason::HeadersTooLarge };
        }
        Record::Response { status, headers, body }
    }

    /// The status of the recorded response.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Record::Response { status, .. } | Record::NotStored { status, .. } => *status,
        }
    }

    /// The record as the bytes `complete` stores: JSON text, at most the store's
    /// [`RESULT_BYTES_MAX`] (the limits module proves a response within the layer's limits fits).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let wire = match self {
            Record::Response { status, headers, body } => Wire {
                format: FORMAT,
                status: status.as_u16(),
                headers: headers
                    .iter()
                    .map(|(name, value)| {
                        let value = match value.to_str() {
                            Ok(text) => WireValue::Text(text.to_owned()),
                            Err(_) => WireValue::Bytes { base64: STANDARD.encode(value.as_bytes()) },
                        };
                        (name.as_str().to_owned(), value)
                    })
                    .collect(),
                body_base64: Some(STANDARD.encode(body)),
                not_stored: None,
            },
            Record::NotStored { status, reason } => Wire {
                format: FORMAT,
                status: status.as_u16(),
                headers: Vec::new(),
                body_base64: None,
                not_stored: Some(*reason),
            },
        };
        // A struct of strings, numbers and sequences always serializes; the fallback (a record
        // that cannot be read back, so a retry gets a 500) is unreachable.
        let bytes = serde_json::to_vec(&wire).unwrap_or_default();
        debug_assert!(bytes.len() <= RESULT_BYTES_MAX, "a record within the layer's limits fits the store");
        bytes
    }

    /// Reads a record back. The error says why the bytes are not a record of this layer.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| format!("not a stored response: {e}"))?;
        if wire.format != FORMAT {
            return Err(format!("stored response format {} is not {FORMAT}", wire.format));
        }
        let status = StatusCode::from_u16(wire.status).map_err(|_| format!("invalid status {}", wire.status))?;
        match (wire.body_base64, wire.not_stored) {
            (None, Some(reason)) if wire.headers.is_empty() => Ok(Record::NotStored { status, reason }),
            (Some(body), None) => {
                let body = STANDARD.decode(body).map_err(|e| format!("invalid body: {e}"))?;
                let mut headers = HeaderMap::with_capacity(wire.headers.len());
                for (name, value) in wire.headers {
                    let name =
                        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
                    let value = match value {
                        WireValue::Text(text) => HeaderValue::from_str(&text),
                        WireValue::Bytes { base64 } => {
                            let bytes = STANDARD.decode(base64).map_err(|e| format!("invalid header value: {e}"))?;
                            HeaderValue::from_bytes(&bytes)
                        }
                    }
                    .map_err(|_| format!("invalid value of header {name}"))?;
                    headers.append(name, value);
                }
                Ok(Record::Response { status, headers, body: body.into() })
            }
            _ => Err("a stored response has either a body or a reason it was not stored".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn header_map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn a_response_round_trips_with_repeated_and_binary_headers() {
        let headers = header_map(&[
            ("content-type", b"application/json"),
            ("x-tag", b"one"),
            ("x-tag", b"two \"quoted\" \\ and\ttab"),
            ("x-raw", b"caf\xc3\xa9 \xff"),
        ]);
        let record = Record::of_response(StatusCode::CREATED, &headers, Bytes::from_static(b"{\"id\":1}\n\0\xff"));
        let decoded = Record::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        let Record::Response { headers: kept, .. } = decoded else { panic!("a response record") };
        assert_eq!(kept, headers);
    }

    #[test]
    fn connection_scoped_length_and_cookie_headers_are_not_stored() {
        let headers = header_map(&[
            ("connection", b"keep-alive, X-Per-Hop"),
            ("keep-alive", b"timeout=5"),
            ("x-per-hop", b"1"),
            ("transfer-encoding", b"chunked"),
            ("content-length", b"7"),
            ("set-cookie", b"session=secret"),
            ("idempotent-replayed", b"true"),
            ("x-request-id", b"abc"),
        ]);
        assert_eq!(stored_headers(&headers), header_map(&[("x-request-id", b"abc")]));
    }

    #[test]
    fn headers_over_their_limit_make_a_not_stored_record() {
        let mut headers = HeaderMap::new();
        for i in 0..=RESPONSE_HEADER_COUNT_MAX {
            headers.append(HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(), HeaderValue::from(i));
        }
        let record = Record::of_response(StatusCode::OK, &headers, Bytes::new());
        assert_eq!(record, Record::NotStored { status: StatusCode::OK, reason: NotStoredReason::HeadersTooLarge });
        assert_eq!(
            std::str::from_utf8(&record.encode()).unwrap(),
            r#"{"format":1,"status":200,"not_stored":"headers_too_large"}"#
        );
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn records_of_others_are_refused_with_a_reason() {
        assert!(Record::decode(b"{\"charged\":true}").unwrap_err().contains("not a stored response"));
        assert_eq!(
            Record::decode(br#"{"format":2,"status":200,"body_base64":""}"#).unwrap_err(),
            "stored response format 2 is not 1"
        );
        assert_eq!(Record::decode(br#"{"format":1,"status":42,"body_base64":""}"#).unwrap_err(), "invalid status 42");
        assert!(Record::decode(br#"{"format":1,"status":200}"#).unwrap_err().contains("either a body"));
    }

    #[test]
    fn the_largest_response_within_the_limits_fits_the_store() {
        use super::super::limits::RESPONSE_BODY_BYTES_MAX;
        let mut headers = HeaderMap::new();
        // Every header at its worst escaping, the total at its limit.
        let per_header = RESPONSE_HEADER_BYTES_MAX / RESPONSE_HEADER_COUNT_MAX;
        for i in 0..RESPONSE_HEADER_COUNT_MAX {
            let name = format!("x-{i:04}");
            let value = "\"".repeat(per_header - name.len());
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(&value).unwrap());
        }
        let body = Bytes::from(vec![0xffu8; RESPONSE_BODY_BYTES_MAX]);
        let record = Record::of_response(StatusCode::OK, &headers, body);
        assert!(matches!(record, Record::Response { .. }), "the headers are within their limits");
        let encoded = record.encode();
        assert!(encoded.len() <= RESULT_BYTES_MAX, "{} > {RESULT_BYTES_MAX}", encoded.len());
        assert_eq!(Record::decode(&encoded).unwrap(), record);
    }

    proptest! {
        #[test]
        fn any_response_round_trips_exactly(
            status in 100u16..=999,
            pairs in proptest::collection::vec(("x-[a-z]{1,8}", proptest::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff], 0..40)), 0..10),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in &pairs {
                headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
            }
            let record = Record::of_response(StatusCode::from_u16(status).unwrap(), &headers, Bytes::from(body));
            prop_assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
    }
}
