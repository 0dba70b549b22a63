//! [`ResponseBody`], the body of every response the layer returns.
//!
//! One type covers the handler's body streamed through, a body held in memory (a replay, an
//! error, a first response the layer buffered to store it), and a buffered prefix followed by the
//! rest of the handler's body (a response over the storage limit, or one whose body failed).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// A boxed error, as bodies and tower use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response from [`IdempotencyService`](super::IdempotencyService).
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    /// Bytes in memory, then the trailers the handler's body ended with, if any.
    Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
    /// Bytes already read from the handler's body (none for a body passed through untouched),
    /// then the rest of that body.
    Stream { prefix: Option<Bytes>, rest: UnsyncBoxBody<Bytes, BoxError> },
    /// Bytes already read from the handler's body, then the error that ended it.
    Failed { prefix: Option<Bytes>, error: Option<BoxError> },
}

fn non_empty(bytes: Bytes) -> Option<Bytes> {
    (!bytes.is_empty()).then_some(bytes)
}

impl ResponseBody {
    /// A body held in memory.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ResponseBody { kind: Kind::Full { data: non_empty(data), trailers } }
    }

    /// The handler's body, passed through.
    pub(crate) fn stream<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::prefixed(Bytes::new(), body.map_err(Into::into).boxed_unsync())
    }

    /// `prefix`, already read from a body, then the rest of it.
    pub(crate) fn prefixed(prefix: Bytes, rest: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        ResponseBody { kind: Kind::Stream { prefix: non_empty(prefix), rest } }
    }

    /// `prefix`, already read from a body, then the error that ended it.
    pub(crate) fn failed(prefix: Bytes, error: BoxError) -> Self {
        ResponseBody { kind: Kind::Failed { prefix: non_empty(prefix), error: Some(error) } }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "full",
            Kind::Stream { .. } => "stream",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish_non_exhaustive()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is Unpin (the boxed body is a `Pin<Box<_>>`), so no projection is needed.
        match &mut self.get_mut().kind {
            Kind::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
            }
            Kind::Stream { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(rest).poll_frame(cx)
            }
            Kind::Failed { prefix, error } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            Kind::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stream { prefix, rest } => {
                let before = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower().saturating_add(before));
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper.saturating_add(before));
                }
                sum
            }
            Kind::Failed { prefix, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(prefix.as_ref().map_or(0, |p| p.len() as u64));
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn a_prefixed_body_yields_the_prefix_then_the_rest_in_order() {
        let rest = Full::new(Bytes::from_static(b" world")).map_err(|never| match never {}).boxed_unsync();
        let body = ResponseBody::prefixed(Bytes::from_static(b"hello"), rest);
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(body.collect().await.unwrap().to_bytes(), Bytes::from_static(b"hello world"));
    }

    #[tokio::test]
    async fn a_full_body_yields_its_trailers_after_its_data() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = ResponseBody::full(Bytes::from_static(b"data"), Some(trailers.clone()));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"data"));
    }

    #[tokio::test]
    async fn a_failed_body_yields_its_prefix_then_its_error() {
        let mut body = ResponseBody::failed(Bytes::from_static(b"part"), "broken".into());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part"));
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "broken");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn an_empty_full_body_is_at_its_end() {
        let body = ResponseBody::full(Bytes::new(), None);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
