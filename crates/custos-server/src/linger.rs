//! Reading the rest of a request body the handler did not want.
//!
//! A handler that refuses a request (a bad name, a wrong credential, a key
//! that does not exist) answers before it reads the body. Left alone, hyper
//! then closes the connection with the client's bytes still arriving; the
//! kernel answers them with a reset, and a client that writes its whole
//! body before reading (Python's `http.client`, most scripts) never sees the
//! answer: it gets "EOF occurred in violation of protocol" instead of the
//! 400 or 401 that says what to fix. So a body dropped unfinished is read to
//! its end and thrown away, up to [`DRAIN_BYTES`] and [`DRAIN_TIME`]; past
//! either, the connection is closed as before.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// At most this much of an unwanted body is read and thrown away.
pub const DRAIN_BYTES: u64 = 64 << 20;
/// For at most this long after the handler let go of the body.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A request body that, dropped before its end, is drained on a task of its
/// own so the connection can answer and stay usable.
pub struct Lingering {
    inner: Option<Incoming>,
    /// The client asked `Expect: 100-continue`: it waits for a word before
    /// sending, so a refusal needs no draining (reading would invite the
    /// body the refusal is meant to spare).
    expects_continue: bool,
}

impl Lingering {
    pub fn new(req: hyper::Request<Incoming>) -> hyper::Request<Lingering> {
        let expects_continue = req
            .headers()
            .get(hyper::header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        req.map(|b| Lingering { inner: Some(b), expects_continue })
    }
}

impl Body for Lingering {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if body.is_end_stream() || self.expects_continue {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

async fn drain(mut body: Incoming) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut left = DRAIN_BYTES;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
        match left.checked_sub(n) {
            Some(l) => left = l,
            None => return,
        }
    }
}
