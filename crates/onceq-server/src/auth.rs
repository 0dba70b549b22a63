//! Bearer-token auth: tokens from the config file, stored as SHA-256 hashes, compared in constant
//! time, each with `produce` / `consume` / `admin` permissions on queue-name patterns.
//!
//! Tokens are random secrets of high entropy (`onceq token new` makes one), so a plain SHA-256 is
//! the right hash: it keeps the config file from holding usable secrets, and a slow password hash
//! would add nothing but latency to every request.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// One token as the config file declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (for logs).
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Queue-name patterns this token may enqueue to.
    #[serde(default)]
    pub produce: Vec<String>,
    /// Queue-name patterns this token may lease, ack, nack, extend and fail on.
    #[serde(default)]
    pub consume: Vec<String>,
    /// Queue-name patterns this token may configure, pause, delete, and manage dead letters of.
    #[serde(default)]
    pub admin: Vec<String>,
}

/// What a request wants to do to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Enqueue.
    Produce,
    /// Lease and settle.
    Consume,
    /// Configure, pause, resume, delete, dead letters.
    Admin,
    /// Read the queue's config and stats: any permission on the queue allows it.
    Read,
}

impl Action {
    /// The permission's name, as the config file spells it (`read`: any of the three).
    pub fn word(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "admin",
            Action::Read => "produce, consume or admin",
        }
    }
}

/// A queue-name pattern: `*` matches any run of characters, everything else itself.
#[derive(Debug, Clone)]
struct Pattern(String);

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    fn is_everything(&self) -> bool {
        self.0 == "*"
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((c, rest)) => text.split_first().is_some_and(|(t, text_rest)| t == c && glob(rest, text_rest)),
    }
}

/// A configured token.
#[derive(Debug)]
pub struct Token {
    /// Who holds it.
    pub name: String,
    hash: [u8; 32],
    produce: Vec<Pattern>,
    consume: Vec<Pattern>,
    admin: Vec<Pattern>,
}

/// The server's tokens; none configured means auth is off.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Arc<Vec<Arc<Token>>>,
}

/// The hex SHA-256 of a token, as the config file wants it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Auth {
    /// No tokens: every request is allowed (only sensible on loopback).
    pub fn disabled() -> Self {
        Auth::default()
    }

    /// Tokens from the config file. Fails on a malformed hash or pattern.
    pub fn from_tokens(configs: &[TokenConfig]) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(configs.len());
        for config in configs {
            let hash = parse_hash(&config.sha256).ok_or_else(|| {
                format!("token {:?}: sha256 must be 64 hex digits (`onceq token new` prints one)", config.name)
            })?;
            let patterns = |list: &[String]| -> Result<Vec<Pattern>, String> {
                list.iter()
                    .map(|p| {
                        let ok = !p.is_empty()
                            && p.len() <= onceq_core::limits::QUEUE_NAME_LEN_MAX
                            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'));
                        if ok {
                            Ok(Pattern(p.clone()))
                        } else {
                            Err(format!("token {:?}: {p:?} is not a queue pattern ([A-Za-z0-9._-] and *)", config.name))
                        }
                    })
                    .collect()
            };
            tokens.push(Arc::new(Token {
                name: config.name.clone(),
                hash,
                produce: patterns(&config.produce)?,
                consume: patterns(&config.consume)?,
                admin: patterns(&config.admin)?,
            }));
        }
        Ok(Auth { tokens: Arc::new(tokens) })
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The principal behind an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        if !self.enabled() {
            return Ok(Principal(None));
        }
        let presented = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare against every token, without stopping early, so timing says nothing.
        let mut found = None;
        for token in self.tokens.iter() {
            if bool::from(token.hash.ct_eq(&digest)) {
                found = Some(token.clone());
            }
        }
        found.map(|t| Principal(Some(t))).ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}

/// Who is calling: a token, or anyone when auth is off.
#[derive(Debug, Clone)]
pub struct Principal(Option<Arc<Token>>);

impl Principal {
    /// Anyone: the principal of every request when no token is configured.
    pub(crate) fn anyone() -> Principal {
        Principal(None)
    }

    /// Whether this principal may do `action` on `queue`.
    pub fn can(&self, action: Action, queue: &str) -> bool {
        let Some(token) = &self.0 else { return true };
        let any = |list: &[Pattern]| list.iter().any(|p| p.matches(queue));
        match action {
            Action::Produce => any(&token.produce),
            Action::Consume => any(&token.consume),
            Action::Admin => any(&token.admin),
            Action::Read => any(&token.produce) || any(&token.consume) || any(&token.admin),
        }
    }

    /// Fails with 403 unless this principal may do `action` on `queue`.
    pub fn check(&self, action: Action, queue: &str) -> Result<(), ApiError> {
        if self.can(action, queue) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "token {:?} has no {} permission on queue {queue:?}",
            self.name(),
            action.word()
        )))
    }

    /// Whether `action` is allowed on at least one queue-name pattern.
    pub fn anywhere(&self, action: Action) -> bool {
        let Some(token) = &self.0 else { return true };
        match action {
            Action::Produce => !token.produce.is_empty(),
            Action::Consume => !token.consume.is_empty(),
            Action::Admin => !token.admin.is_empty(),
            Action::Read => !(token.produce.is_empty() && token.consume.is_empty() && token.admin.is_empty()),
        }
    }

    /// The token's name (`anonymous` with auth off).
    pub fn name(&self) -> &str {
        self.0.as_ref().map(|t| t.name.as_str()).unwrap_or("anonymous")
    }

    /// Whether `action` is allowed on every queue (so no per-job lookup is needed).
    pub fn everywhere(&self, action: Action) -> bool {
        let Some(token) = &self.0 else { return true };
        let all = |list: &[Pattern]| list.iter().any(Pattern::is_everything);
        match action {
            Action::Produce => all(&token.produce),
            Action::Consume => all(&token.consume),
            Action::Admin => all(&token.admin),
            Action::Read => all(&token.produce) || all(&token.consume) || all(&token.admin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::from_tokens(&[TokenConfig {
            name: "orders".into(),
            sha256: hash_token("s3cret"),
            produce: vec!["orders.*".into()],
            consume: vec!["orders.*".into(), "audit".into()],
            admin: vec![],
        }])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn patterns_match_whole_names() {
        assert!(glob(b"orders.*", b"orders.eu"));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(!glob(b"orders.*", b"orders"));
        assert!(!glob(b"audit", b"audit2"));
    }

    #[test]
    fn tokens_are_checked_and_scoped() {
        let auth = auth();
        assert_eq!(auth.authenticate(None).map(|_| ()).map_err(|e| e.detail().code), Err("unauthorized".into()));
        assert_eq!(
            auth.authenticate(Some("Bearer nope")).map(|_| ()).map_err(|e| e.detail().code),
            Err("unauthorized".into())
        );
        let p = auth.authenticate(Some("Bearer s3cret")).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(p.can(Action::Produce, "orders.eu"));
        assert!(!p.can(Action::Produce, "audit"));
        assert!(p.can(Action::Consume, "audit"));
        assert!(p.can(Action::Read, "audit"));
        assert!(!p.can(Action::Admin, "orders.eu"));
        assert!(!p.everywhere(Action::Consume));
    }

    #[test]
    fn malformed_configs_are_refused() {
        let bad =
            TokenConfig { name: "x".into(), sha256: "abc".into(), produce: vec![], consume: vec![], admin: vec![] };
        assert!(Auth::from_tokens(std::slice::from_ref(&bad)).is_err());
        let bad_pattern = TokenConfig { sha256: hash_token("t"), produce: vec!["a b".into()], ..bad };
        assert!(Auth::from_tokens(&[bad_pattern]).is_err());
    }
}
