//! Reading an idempotent request: its key, its body (buffered up to a limit) and its fingerprint.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, Method, Uri};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};

use super::body::BoxError;
use super::error::Rejection;
use super::limits::KEY_LEN_MAX;

/// The client's idempotency key from `header`, or `None` when the request has none.
///
/// The value is taken as sent, less surrounding spaces; a value in double quotes (the
/// structured-field string the IETF `Idempotency-Key` draft specifies, `"8e03978e-..."`) is
/// unquoted, so the quoted and bare forms of a key are one key. A key is 1 to [`KEY_LEN_MAX`]
/// bytes of printable ASCII (spaces allowed inside); a header sent twice is refused, since the
/// two values could name two operations.
pub(crate) fn read_key(headers: &HeaderMap, header: &HeaderName) -> Result<Option<String>, Rejection> {
    let invalid = |reason: String| Rejection::KeyInvalid { header: header.clone(), reason };
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("it was sent more than once; send one key".to_owned()));
    }
    let text = value.to_str().map_err(|_| invalid("it must be printable ASCII text".to_owned()))?.trim();
    let key = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if inner.contains(['"', '\\']) => {
            return Err(invalid("a quoted key must not contain quotes or backslashes".to_owned()))
        }
        Some(inner) => inner,
        None => text,
    };
    if key.is_empty() {
        return Err(invalid("it is empty; send a unique value, such as a UUID".to_owned()));
    }
    if key.len() > KEY_LEN_MAX {
        return Err(invalid(format!("it is {} bytes long; the limit is {KEY_LEN_MAX}", key.len())));
    }
    if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(invalid("it must be printable ASCII text".to_owned()));
    }
    Ok(Some(key.to_owned()))
}

/// The whole body of a request, read up to `limit_bytes`.
///
/// A `Content-Length` over the limit is refused before anything is read; a body without one is
/// read until it passes the limit.
pub(crate) async fn buffer<B>(headers: &HeaderMap, body: B, limit_bytes: usize) -> Result<Bytes, Rejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit_bytes as u64) {
        return Err(Rejection::BodyTooLarge { limit_bytes });
    }
    match Limited::new(body, limit_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Rejection::BodyTooLarge { limit_bytes })
        }
        Err(error) => {
            tracing::debug!(%error, "the body of an idempotent request could not be read");
            Err(Rejection::BodyUnreadable)
        }
    }
}

/// What makes two requests "the same request" for a key: SHA-256 of the method, the path with
/// its query, and the body, in lowercase hex (64 characters).
///
/// The parts are separated by NUL bytes, which neither a method nor a request target can hold,
/// so no two different requests feed the hash the same bytes. Headers are not part of it: a
/// retry may differ in `Date`, tracing or auth-refresh headers and still be the same operation.
pub(crate) fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"onceq-layer fingerprint 1\0");
    hash.update(method.as_str().as_bytes());
    hash.update([0]);
    hash.update(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http::HeaderValue;
    use http_body_util::Full;

    fn key_of(values: &[&[u8]]) -> Result<Option<String>, Rejection> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("idempotency-key", HeaderValue::from_bytes(value).unwrap());
        }
        read_key(&headers, &HeaderName::from_static("idempotency-key"))
    }

    fn reason(result: Result<Option<String>, Rejection>) -> String {
        match result {
            Err(Rejection::KeyInvalid { reason, .. }) => reason,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_read_bare_or_quoted_and_trimmed() {
        assert_eq!(key_of(&[]).unwrap(), None);
        assert_eq!(key_of(&[b"pay-42"]).unwrap().as_deref(), Some("pay-42"));
        assert_eq!(key_of(&[b"\"pay-42\""]).unwrap().as_deref(), Some("pay-42"));
        assert_eq!(key_of(&[b"  pay 42  "]).unwrap().as_deref(), Some("pay 42"));
        let longest = "k".repeat(KEY_LEN_MAX);
        assert_eq!(key_of(&[longest.as_bytes()]).unwrap(), Some(longest));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert_eq!(reason(key_of(&[b"a", b"b"])), "it was sent more than once; send one key");
        assert_eq!(reason(key_of(&[b""])), "it is empty; send a unique value, such as a UUID");
        assert_eq!(reason(key_of(&[b"\"\""])), "it is empty; send a unique value, such as a UUID");
        assert_eq!(reason(key_of(&[b"caf\xc3\xa9"])), "it must be printable ASCII text");
        assert_eq!(reason(key_of(&[b"a\tb"])), "it must be printable ASCII text");
        assert_eq!(reason(key_of(&[b"\"a\"b\""])), "a quoted key must not contain quotes or backslashes");
        let long = "k".repeat(KEY_LEN_MAX + 1);
        assert_eq!(
            reason(key_of(&[long.as_bytes()])),
            format!("it is {} bytes long; the limit is {KEY_LEN_MAX}", KEY_LEN_MAX + 1)
        );
    }

    #[test]
    fn the_fingerprint_tells_method_path_query_and_body_apart() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let base = fingerprint(&Method::POST, &uri("/payments?currency=eur"), b"{\"amount\":5}");
        assert_eq!(base.len(), 64);
        assert!(base.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(base, fingerprint(&Method::POST, &uri("/payments?currency=eur"), b"{\"amount\":5}"));
        assert_ne!(base, fingerprint(&Method::PUT, &uri("/payments?currency=eur"), b"{\"amount\":5}"));
        assert_ne!(base, fingerprint(&Method::POST, &uri("/payments?currency=usd"), b"{\"amount\":5}"));
        assert_ne!(base, fingerprint(&Method::POST, &uri("/refunds?currency=eur"), b"{\"amount\":5}"));
        assert_ne!(base, fingerprint(&Method::POST, &uri("/payments?currency=eur"), b"{\"amount\":6}"));
        // The absolute form of a target fingerprints as its origin form.
        assert_eq!(
            base,
            fingerprint(&Method::POST, &uri("http://shop.example/payments?currency=eur"), b"{\"amount\":5}")
        );
    }

    #[tokio::test]
    async fn bodies_are_buffered_up_to_the_limit() {
        let headers = HeaderMap::new();
        let body = Full::new(Bytes::from_static(b"12345678"));
        assert_eq!(buffer(&headers, body.clone(), 8).await.unwrap(), Bytes::from_static(b"12345678"));
        assert_eq!(buffer(&headers, body, 7).await.unwrap_err(), Rejection::BodyTooLarge { limit_bytes: 7 });
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("1000"));
        let empty = Full::new(Bytes::new());
        assert_eq!(buffer(&declared, empty, 999).await.unwrap_err(), Rejection::BodyTooLarge { limit_bytes: 999 });
    }
}
