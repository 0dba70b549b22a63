//! What the HTTP tests of the server (in-process, against the router) and of the binary (a real
//! `onceq serve`) share: a response read whole and the assertions on the API's response shapes,
//! and the description of a bearer token of a test.

use serde_json::Value;

/// A bearer token of a test: its secret and its permissions (queue-name patterns).
pub struct TokenSpec {
    /// Name (for the server's logs).
    pub name: &'static str,
    /// The secret the client sends.
    pub secret: &'static str,
    /// Patterns it may enqueue to.
    pub produce: &'static [&'static str],
    /// Patterns it may lease and settle on.
    pub consume: &'static [&'static str],
    /// Patterns it may administer.
    pub admin: &'static [&'static str],
}

/// One HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Request line, for failure messages.
    pub request: String,
    /// Status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// The body.
    pub text: String,
}

impl Reply {
    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.request, self.text))
    }

    /// Asserts `status` and a JSON body; returns the body.
    #[track_caller]
    pub fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}: unexpected status; body: {}", self.request, self.text);
        assert_json_content_type(&self);
        self.json()
    }

    /// Asserts 204 and an empty body.
    #[track_caller]
    pub fn no_content(self) {
        assert_eq!(self.status, 204, "{}: unexpected status; body: {}", self.request, self.text);
        assert_eq!(self.text, "", "{}: a 204 has no body", self.request);
    }

    /// Asserts an error response of the API: this status, a JSON content type, and the body
    /// `{"error": {"code": code, "message": <non-empty>}}` with nothing else. Returns the message.
    #[track_caller]
    pub fn err(self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}: unexpected status; body: {}", self.request, self.text);
        assert_json_content_type(&self);
        error_message(&self.request, &self.json(), code)
    }
}

/// Asserts that `body` is exactly `{"error": {"code": code, "message": <non-empty>}}`; returns
/// the message.
#[track_caller]
pub fn error_message(context: &str, body: &Value, code: &str) -> String {
    let object = body.as_object().unwrap_or_else(|| panic!("{context}: error body is not an object: {body}"));
    assert_eq!(object.keys().collect::<Vec<_>>(), ["error"], "{context}: error body has other keys: {body}");
    assert_error_detail(context, &body["error"], code)
}

/// Asserts that `detail` is exactly `{"code": code, "message": <non-empty>}`; returns the message.
#[track_caller]
pub fn assert_error_detail(context: &str, detail: &Value, code: &str) -> String {
    let object = detail.as_object().unwrap_or_else(|| panic!("{context}: error detail is not an object: {detail}"));
    let mut keys: Vec<&String> = object.keys().collect();
    keys.sort();
    assert_eq!(keys, ["code", "message"], "{context}: error detail keys: {detail}");
    assert_eq!(detail["code"], code, "{context}: error code; detail: {detail}");
    let message = detail["message"].as_str().unwrap_or_else(|| panic!("{context}: message is not a string: {detail}"));
    assert!(!message.trim().is_empty(), "{context}: empty error message");
    message.to_owned()
}

#[track_caller]
fn assert_json_content_type(reply: &Reply) {
    let content_type = reply.content_type.as_deref().unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "{}: content type is {content_type:?}, not JSON; body: {}",
        reply.request,
        reply.text
    );
}
