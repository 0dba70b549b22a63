//! Answers to requests that are not HTTP, in the API's error format.
//!
//! hyper answers a request it cannot parse by itself, before any of onceq's code sees the
//! request: `400` for a malformed request line or header, `414` for a URI over 65,534 bytes,
//! `431` for more than [`HEADERS_MAX`] headers or a head over [`HEAD_BYTES_MAX`] bytes. It
//! offers no hook to shape that answer, and writes it with an empty body, which a client of the
//! API cannot tell from a proxy's. [`ApiParseErrors`] wraps a connection's socket and rewrites
//! exactly those answers on their way out into the API's JSON error body, in onceq's words.
//!
//! How it knows one: hyper's automatic answer is the only response this server writes with one
//! of those statuses and no `content-type` (every response of the router that is an error
//! carries a JSON body; docs/api.md, "Errors"). After it, hyper closes the connection, so the
//! longer body never confuses the framing of a later response.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this many headers in a request; `431` beyond.
pub(crate) const HEADERS_MAX: usize = 100;
/// The request line and headers together: at most this many bytes; `431` beyond. (Also the most
/// a connection buffers of a request at once.)
pub(crate) const HEAD_BYTES_MAX: usize = 417_792;

/// A socket whose automatic parse-error answers are rewritten in the API's format.
pub(crate) struct ApiParseErrors<T> {
    inner: T,
    /// A rewritten answer, and how much of it is written: hyper was told the original was
    /// written whole, so the rest goes out before anything else.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ApiParseErrors<T> {
    pub(crate) fn new(inner: T) -> Self {
        ApiParseErrors { inner, pending: None }
    }
}

impl<T: AsyncWrite + Unpin> ApiParseErrors<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = self.pending.as_mut() {
            if *written == answer.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ApiParseErrors<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ApiParseErrors<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some((head_len, answer)) = rewrite(buf) {
            this.pending = Some((answer, 0));
            // Said written now; the rewritten answer goes out before anything after it.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(head_len));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(first) if rewrite(first).is_some() => Pin::new(this).poll_write(cx, first),
            _ => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// If `written` starts with hyper's automatic answer to an unparsable request: the length of
/// that answer's head in `written`, and the answer to send instead.
fn rewrite(written: &[u8]) -> Option<(usize, Vec<u8>)> {
    let status = written.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (status_line, message) = match status {
        b"400" => (
            "400 Bad Request",
            "the request is not valid HTTP/1.1: its request line must read `METHOD /path HTTP/1.1`, and each header \
             `Name: value` with a name of letters, digits and `-`",
        ),
        b"414" => ("414 URI Too Long", "the request's URI (path and query) is over 65,534 bytes"),
        b"431" => (
            "431 Request Header Fields Too Large",
            "the request has more than 100 headers, or its request line and headers are over 417,792 bytes",
        ),
        _ => return None,
    };
    let end = find(written, b"\r\n\r\n")? + 4;
    let head = written[..end].to_ascii_lowercase();
    // The router's answers with these statuses all carry a JSON body (and so a content type).
    if find(&head, b"\r\ncontent-type:").is_some() || find(&head, b"\r\ncontent-length: 0\r\n").is_none() {
        return None;
    }
    let body = serde_json::json!({"error": {"code": "invalid_request", "message": message}}).to_string();
    let answer = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Some((end, answer.into_bytes()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn hyper_s_automatic_answers_are_rewritten_and_nothing_else() {
        let automatic = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 17:00:00 GMT\r\n\r\n";
        let (len, answer) = rewrite(automatic).expect("rewritten");
        assert_eq!(len, automatic.len());
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"), "{answer}");
        let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
        // Followed by more bytes: only the head is consumed.
        let mut more = automatic.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(rewrite(&more).unwrap().0, automatic.len());
        for status in ["414 URI Too Long", "431 Request Header Fields Too Large"] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            assert!(rewrite(head.as_bytes()).is_some(), "{status}");
        }
        // The router's own answers are left alone: a JSON error, a 200, an empty 204.
        let json_error = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n{}";
        assert!(rewrite(json_error).is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 204 No Content\r\n\r\n").is_none());
        // A head that is not whole in this write is not guessed at.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
    }
}
