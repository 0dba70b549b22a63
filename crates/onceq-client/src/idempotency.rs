//! `impl IdempotencyStore for Client`: the idempotency endpoints of `docs/api.md`.
//!
//! Over HTTP a result is JSON (`"result": <any JSON>`): `complete` refuses bytes that are not
//! JSON text, so what a later `begin` returns is byte for byte what was completed.

use async_trait::async_trait;
use onceq_core::api::{BeginRequest, BeginResponse, CompleteRequest, ReleaseRequest};
use onceq_core::idempotency::validate_release;
use onceq_core::{Begin, BeginOutcome, Complete, Error, IdempotencyStore, Result};
use reqwest::Method;
use serde_json::value::RawValue;

use crate::Client;

/// `/v1/idempotency/{key}/{action}`, the key percent-encoded (keys may hold any character).
fn key_path(key: &str, action: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            // '.' too: a key of dots must not read as a relative path segment.
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("/v1/idempotency/{encoded}/{action}")
}

#[async_trait]
impl IdempotencyStore for Client {
    async fn idempotency_begin(&self, begin: Begin) -> Result<BeginOutcome> {
        begin.validate()?;
        let body = BeginRequest { owner: begin.owner, ttl_ms: begin.ttl_ms, fingerprint: begin.fingerprint };
        let reply: BeginResponse = self.call(Method::POST, &key_path(&begin.key, "begin")).json(&body).fetch().await?;
        reply.into_outcome()
    }

    async fn idempotency_complete(&self, complete: Complete) -> Result<()> {
        complete.validate()?;
        let text = String::from_utf8(complete.result)
            .map_err(|_| Error::invalid("over HTTP an idempotency result must be JSON text"))?;
        let result = RawValue::from_string(text)
            .map_err(|e| Error::invalid(format!("over HTTP an idempotency result must be JSON text: {e}")))?;
        let body = CompleteRequest { owner: complete.owner, result, retention_ms: complete.retention_ms };
        self.call(Method::POST, &key_path(&complete.key, "complete")).json(&body).send().await
    }

    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        validate_release(key, owner)?;
        let body = ReleaseRequest { owner: owner.to_owned() };
        self.call(Method::POST, &key_path(key, "release")).json(&body).send().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(key_path("payments.42", "begin"), "/v1/idempotency/payments%2E42/begin");
        assert_eq!(key_path("a/b c", "release"), "/v1/idempotency/a%2Fb%20c/release");
    }
}
